//! The Endpoints controller (upstream pkg/controller/endpoint): the
//! legacy core/v1 Endpoints object of every Service with a selector, which
//! `kubectl describe service` and older clients read. The decisions are
//! [`reconciler`]'s; this file watches, queues and writes.
mod reconciler;

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::Instrument;

pub use reconciler::{
    CONTROLLER_NAME, LABEL_MANAGED_BY, MAX_CAPACITY, OVER_CAPACITY, TRUNCATED, Write, reconcile,
};

use crate::informer::{Change, WriteTracker, follow, mirror};
use crate::pod_endpoint as pe;
use crate::workqueue::WorkQueue;
use crate::{Context, api_error, events};

/// Upstream's `--concurrent-endpoint-syncs` default.
const WORKERS: usize = 5;

/// (namespace, name) of a Service and of its Endpoints.
type Key = (String, String);

struct Shared {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    queue: WorkQueue<Key>,
    written: WriteTracker<Key>,
    recorder: Recorder,
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (services, services_w) = reflector::store();
    let pods = ctx.pods.store();
    let (endpoints, endpoints_w) = reflector::store();
    let sh = Arc::new(Shared {
        client: client.clone(),
        services,
        pods,
        endpoints,
        queue: WorkQueue::default(),
        written: WriteTracker::default(),
        recorder: Recorder::new(client.clone(), Reporter::from("endpoint-controller")),
    });

    let watch_services = mirror(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        services_w,
        |svc, _| sh.queue.add(key_of(svc)),
        || enqueue_all(&sh),
    );
    let watch_pods = follow(
        "Pod",
        ctx.pods.subscribe(),
        |pod, _| {
            for key in services_for_pod(&sh, pod) {
                sh.queue.add(key);
            }
        },
        || enqueue_all(&sh),
    );
    // Every Endpoints object: a deleted or edited one of ours is restored,
    // and one left by a Service deleted while we were down is found.
    let watch_endpoints = mirror(
        Api::<Endpoints>::all(client),
        watcher::Config::default(),
        endpoints_w,
        |e, change| {
            let key = key_of(e);
            sh.written.observed(
                &key,
                &e.name_any(),
                e.resource_version().as_deref(),
                change == Change::Deleted,
            );
            sh.queue.add(key);
        },
        || {
            sh.written.clear();
            enqueue_all(&sh);
        },
    );
    let workers = async {
        for ready in [
            sh.services.wait_until_ready().await,
            sh.pods.wait_until_ready().await,
            sh.endpoints.wait_until_ready().await,
        ] {
            if ready.is_err() {
                return;
            }
        }
        tracing::info!("endpoints controller synced its caches; starting workers");
        join_all((0..WORKERS).map(|_| worker(&sh))).await;
    };
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {}
        _ = futures::future::join4(watch_services, watch_pods, watch_endpoints, workers) => {}
    }
    Ok(())
}

fn key_of<K: Resource>(o: &K) -> Key {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

/// Every Service, and every Endpoints of ours (its Service may be gone).
fn enqueue_all(sh: &Shared) {
    for svc in sh.services.state() {
        sh.queue.add(key_of(svc.as_ref()));
    }
    for e in sh.endpoints.state() {
        if reconciler::managed_by_us(&e) {
            sh.queue.add(key_of(e.as_ref()));
        }
    }
}

/// The Services a Pod change may concern: those selecting it now, and
/// those whose Endpoints list it (it may have stopped matching).
fn services_for_pod(sh: &Shared, pod: &Pod) -> Vec<Key> {
    let ns = pod.namespace();
    let name = pod.metadata.name.as_deref();
    let mut keys: Vec<Key> = sh
        .services
        .state()
        .iter()
        .filter(|s| s.namespace() == ns && pe::selector(s).is_some_and(|sel| pe::selects(sel, pod)))
        .map(|s| key_of(s.as_ref()))
        .collect();
    keys.extend(
        sh.endpoints
            .state()
            .iter()
            .filter(|e| {
                e.namespace() == ns
                    && e.subsets.iter().flatten().any(|s| {
                        s.addresses
                            .iter()
                            .flatten()
                            .chain(s.not_ready_addresses.iter().flatten())
                            .any(|a| {
                                a.target_ref
                                    .as_ref()
                                    .is_some_and(|r| r.name.as_deref() == name)
                            })
                    })
            })
            .map(|e| key_of(e.as_ref())),
    );
    keys.sort();
    keys.dedup();
    keys
}

async fn worker(sh: &Shared) {
    loop {
        let key = sh.queue.get().await;
        let span = tracing::info_span!("sync_endpoints", service = %format!("{}/{}", key.0, key.1));
        match sync(sh, &key).instrument(span.clone()).await {
            Ok(true) => sh.queue.forget(&key),
            Ok(false) => {
                span.in_scope(|| tracing::debug!("waiting for the store to show our last write"));
                sh.queue.add_rate_limited(key.clone());
            }
            Err(e) => {
                span.in_scope(|| tracing::warn!(error = %e, "syncing Endpoints failed; retrying"));
                sh.queue.add_rate_limited(key.clone());
            }
        }
        sh.queue.done(&key);
    }
}

/// False when the store is behind our own last write and the sync must be
/// retried.
async fn sync(sh: &Shared, key: &Key) -> Result<bool, kube::Error> {
    let (ns, name) = key;
    let in_store = |e: &str| {
        sh.endpoints
            .get(&ObjectRef::new(e).within(ns))
            .and_then(|e| e.resource_version())
    };
    if sh.written.is_stale(key, in_store) {
        return Ok(false);
    }
    let svc = sh.services.get(&ObjectRef::new(name).within(ns));
    let existing = sh.endpoints.get(&ObjectRef::new(name).within(ns));
    let selector = svc.as_deref().and_then(pe::selector);
    let pods: Vec<Arc<Pod>> = match selector {
        Some(sel) => sh
            .pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_ref() == Some(ns) && pe::selects(sel, p))
            .collect(),
        None => Vec::new(),
    };
    let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let trigger = svc
        .as_deref()
        .and_then(|s| pe::last_change_trigger_time(s, pod_refs.iter().copied()));
    let Some(write) = reconcile(
        name,
        svc.as_deref(),
        &pod_refs,
        existing.as_deref(),
        trigger.as_ref(),
    ) else {
        return Ok(true);
    };
    let api: Api<Endpoints> = Api::namespaced(sh.client.clone(), ns);
    let result = match write {
        Write::Create(e) => api.create(&PostParams::default(), &e).await.map(|made| {
            tracing::debug!("created");
            sh.written.wrote(key, name, made.resource_version());
        }),
        Write::Update(e) => api
            .replace(name, &PostParams::default(), &e)
            .await
            .map(|made| {
                tracing::debug!("updated");
                sh.written.wrote(key, name, made.resource_version());
            }),
        Write::Delete { name } => {
            let dp = DeleteParams {
                preconditions: existing
                    .as_ref()
                    .and_then(|e| e.uid())
                    .map(|uid| Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::debug!("deleted: its Service is gone");
                    sh.written.deleted(key, &name);
                    Ok(())
                }
                Err(e) if api_error::is_not_found(&e) => Ok(()),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if api_error::is_namespace_terminating(&e) => Ok(true),
        Err(e) => {
            if let Some(svc) = &svc {
                events::publish(
                    &sh.recorder,
                    &svc.object_ref(&()),
                    EventType::Warning,
                    "FailedToUpdateEndpoint",
                    "Sync",
                    format!("Failed to update endpoint {ns}/{name}: {e}"),
                )
                .await;
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod edge_tests {
    use super::*;

    #[allow(dead_code)]
    fn run_can_be_spawned(ctx: Context) {
        tokio::spawn(run(ctx));
    }
}
