//! The TTL-after-finished controller (upstream's
//! pkg/controller/ttlafterfinished): a Job that finished (Complete or
//! Failed) and has `ttlSecondsAfterFinished` is deleted, with its pods
//! (Background propagation), that many seconds after it finished. It
//! sleeps until then (requeue-after) and reads the Job afresh before
//! deleting, so a TTL changed meanwhile is honoured.
mod expiry;

use std::{sync::Arc, time::Duration};

use futures::{StreamExt as _, future};
use k8s_openapi::{api::batch::v1::Job, chrono::Utc};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, PropagationPolicy},
    runtime::{
        WatchStreamExt as _,
        controller::{Action, Config as ApplierConfig, applier, trigger_self},
        reflector::{self, reflector},
        watcher,
    },
};
use tracing::Instrument as _;

use crate::Context;

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (jobs, writer) = reflector::store::<Job>();
    let events = reflector(
        writer,
        watcher(Api::<Job>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .touched_objects();
    let run = applier(
        |job, client: Arc<kube::Client>| Box::pin(reconcile(job, client)),
        |job, err: &kube::Error, _| {
            tracing::warn!(job = %job.name_any(), error = %err, "ttl-after-finished: deleting a job");
            Action::requeue(Duration::from_secs(5))
        },
        Arc::new(client),
        jobs,
        trigger_self(events, ()),
        ApplierConfig::default(),
    )
    .for_each(|res| {
        if let Err(e) = res {
            tracing::debug!(error = %e, "ttl-after-finished controller");
        }
        future::ready(())
    });
    tracing::info!("ttl-after-finished controller started");
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {}
        _ = run => {}
    }
    Ok(())
}

async fn reconcile(job: Arc<Job>, client: Arc<kube::Client>) -> Result<Action, kube::Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let span = tracing::info_span!("ttl-after-finished", job = %format!("{ns}/{name}"));
    async move {
        match expiry::decide(&job, Utc::now()) {
            expiry::Decision::Keep => return Ok(Action::await_change()),
            expiry::Decision::Wait(d) => return Ok(Action::requeue(d)),
            expiry::Decision::Delete => {}
        }
        // The cache may be behind: decide again on the Job as stored.
        let api: Api<Job> = Api::namespaced((*client).clone(), &ns);
        let fresh = match api.get(&name).await {
            Ok(j) => j,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        };
        if fresh.metadata.uid != job.metadata.uid {
            return Ok(Action::await_change());
        }
        match expiry::decide(&fresh, Utc::now()) {
            expiry::Decision::Keep => return Ok(Action::await_change()),
            expiry::Decision::Wait(d) => return Ok(Action::requeue(d)),
            expiry::Decision::Delete => {}
        }
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(kube::api::Preconditions {
                uid: fresh.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        tracing::info!("deleting a finished job whose ttl expired");
        match api.delete(&name, &params).await {
            Ok(_) => Ok(Action::await_change()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
            Err(e) => Err(e),
        }
    }
    .instrument(span)
    .await
}
