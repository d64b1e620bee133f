//! The CronJob controller (upstream's pkg/controller/cronjob, v2): creates
//! a Job named `<cronjob>-<scheduled minute since the epoch>` when a
//! scheduled time comes (standard cron syntax, `spec.timeZone`), honours
//! concurrencyPolicy, startingDeadlineSeconds, suspend and the history
//! limits, and keeps `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime`. It sleeps until the next scheduled time
//! (requeue-after), it never polls.
//!
//! The decisions are in [`sync`] (pure, with the time passed in); this
//! file is the edge.
mod schedule;
mod sync;

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, future};
use k8s_openapi::{
    api::batch::v1::{CronJob, Job},
    chrono::Utc,
};
use kube::{
    Api, Resource as _, ResourceExt as _,
    api::{DeleteParams, PostParams, PropagationPolicy},
    runtime::{
        WatchStreamExt as _,
        controller::{Action, Config as ApplierConfig, applier},
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store, reflector},
        watcher,
    },
};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::Context;

/// Why one sync of one CronJob failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("encoding the status of cronjob {0}: {1}")]
    Encode(String, serde_json::Error),
    #[error("could not replace job {0}")]
    Replace(String),
}

struct State {
    client: kube::Client,
    jobs: Store<Job>,
    recorder: Recorder,
    /// The resourceVersion of our last status write per CronJob: a cached
    /// copy older than that is stale.
    written: Mutex<HashMap<ObjectRef<CronJob>, (u64, Instant)>>,
}

fn rv(meta: &kube::api::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (cron_jobs, cj_writer) = reflector::store::<CronJob>();
    let (jobs, job_writer) = reflector::store::<Job>();
    let state = Arc::new(State {
        client: client.clone(),
        jobs: jobs.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "cronjob-controller".into(),
                instance: None,
            },
        ),
        written: Mutex::default(),
    });
    let (tx, rx) = mpsc::unbounded_channel::<ObjectRef<CronJob>>();
    let watch_cron_jobs = {
        let (tx, store, state) = (tx.clone(), cron_jobs.clone(), state.clone());
        reflector(
            cj_writer,
            watcher(
                Api::<CronJob>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .for_each(move |ev| {
            match ev {
                Ok(watcher::Event::Apply(cj)) => {
                    let _ = tx.send(ObjectRef::from_obj(&cj));
                }
                Ok(watcher::Event::Delete(cj)) => {
                    let key = ObjectRef::from_obj(&cj);
                    state.written.lock().expect("written").remove(&key);
                }
                Ok(watcher::Event::InitDone) => {
                    for cj in store.state() {
                        let _ = tx.send(ObjectRef::from_obj(&*cj));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cronjob controller: watching cronjobs"),
            }
            future::ready(())
        })
    };
    let watch_jobs = reflector(
        job_writer,
        watcher(Api::<Job>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .for_each(move |ev| {
        match ev {
            Ok(watcher::Event::Apply(job) | watcher::Event::Delete(job)) => {
                let owner = job
                    .owner_references()
                    .iter()
                    .find(|r| r.controller == Some(true) && r.kind == "CronJob");
                if let Some(owner) = owner {
                    let ns = job.namespace().unwrap_or_default();
                    let _ = tx.send(ObjectRef::new(&owner.name).within(&ns));
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cronjob controller: watching jobs"),
        }
        future::ready(())
    });
    let sync_all = applier(
        |cj, state: Arc<State>| Box::pin(reconcile(cj, state)),
        |cj, err: &SyncError, _| {
            tracing::warn!(cronjob = %ObjectRef::from_obj(&*cj), error = %err, "cronjob sync failed");
            Action::requeue(Duration::from_secs(5))
        },
        state,
        cron_jobs,
        futures::stream::poll_fn({
            let mut rx = rx;
            move |cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>))
        }),
        ApplierConfig::default(),
    )
    .for_each(|res| {
        if let Err(e) = res {
            tracing::debug!(error = %e, "cronjob controller");
        }
        future::ready(())
    });
    tracing::info!("cronjob controller started");
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {}
        _ = future::join3(watch_cron_jobs, watch_jobs, sync_all) => {}
    }
    Ok(())
}

async fn publish(state: &State, cj: &CronJob, note: &sync::Note) {
    let ev = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.clone(),
        note: Some(note.message.clone()),
        action: note.reason.clone(),
        secondary: None,
    };
    if let Err(e) = state.recorder.publish(&ev, &cj.object_ref(&())).await {
        tracing::debug!(error = %e, reason = %note.reason, "cronjob controller: event not recorded");
    }
}

fn note(warning: bool, reason: &str, message: String) -> sync::Note {
    sync::Note {
        warning,
        reason: reason.into(),
        message,
    }
}

async fn reconcile(cj: Arc<CronJob>, state: Arc<State>) -> Result<Action, SyncError> {
    let key = ObjectRef::from_obj(&*cj);
    let span = tracing::info_span!("sync cronjob", cronjob = %key);
    sync_cron_job(&cj, &key, &state).instrument(span).await
}

async fn sync_cron_job(
    cached: &CronJob,
    key: &ObjectRef<CronJob>,
    state: &State,
) -> Result<Action, SyncError> {
    if state.jobs.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    let written = state.written.lock().expect("written").get(key).copied();
    if let Some((v, since)) = written {
        if rv(&cached.metadata) < v && since.elapsed() < Duration::from_secs(60) {
            // Our own last write has not reached the cache yet.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        state.written.lock().expect("written").remove(key);
    }
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let uid = cached.metadata.uid.clone().unwrap_or_default();
    let cron_jobs: Api<CronJob> = Api::namespaced(state.client.clone(), &ns);
    let jobs_api: Api<Job> = Api::namespaced(state.client.clone(), &ns);
    let owned: Vec<Arc<Job>> = state
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.kind == "CronJob" && r.uid == uid)
        })
        .collect();
    // A running Job missing from the active list may just be newer than
    // the cached CronJob: read it afresh (as upstream does) before
    // calling the Job unexpected.
    let mut cj = cached.clone();
    let status = cj.status.clone().unwrap_or_default();
    if owned.iter().any(|j| {
        sync::job_finished(j).is_none()
            && !sync::in_active(&status, j.metadata.uid.as_deref().unwrap_or(""))
    }) {
        match cron_jobs.get(&name).await {
            Ok(fresh) if fresh.metadata.uid.as_deref() == Some(uid.as_str()) => cj = fresh,
            Ok(_) => return Ok(Action::await_change()),
            Err(e) if is_status(&e, 404) => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    // Active Jobs the cache does not have: gone, or only not seen yet?
    let mut missing = HashSet::new();
    let known: HashSet<&str> = owned
        .iter()
        .filter_map(|j| j.metadata.uid.as_deref())
        .collect();
    for r in cj.status.iter().flat_map(|s| s.active.iter().flatten()) {
        let (Some(u), Some(n)) = (r.uid.as_deref(), r.name.as_deref()) else {
            continue;
        };
        if known.contains(u) {
            continue;
        }
        match jobs_api.get(n).await {
            Ok(j) if j.metadata.uid.as_deref() == Some(u) => {}
            Ok(_) => {
                missing.insert(u.to_string());
            }
            Err(e) if is_status(&e, 404) => {
                missing.insert(u.to_string());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let observed = sync::Observed {
        cron_job: &cj,
        jobs: owned.iter().map(|j| &**j).collect(),
        missing,
        now: Utc::now(),
    };
    let mut plan = sync::plan(&observed);
    for n in &plan.notes {
        publish(state, &cj, n).await;
    }
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for job in &plan.prune {
        delete_job(state, &cj, &jobs_api, job, &background).await;
    }
    let mut result = Ok(());
    for job in &plan.replace {
        if !delete_job(state, &cj, &jobs_api, job, &background).await {
            result = Err(SyncError::Replace(job.clone()));
        }
    }
    if result.is_ok()
        && let Some((job, scheduled)) = plan.create.take()
    {
        let job_name = job.name_any();
        match jobs_api.create(&PostParams::default(), &job).await {
            Ok(made) => {
                publish(
                    state,
                    &cj,
                    &note(
                        false,
                        "SuccessfulCreate",
                        format!("Created job {}", made.name_any()),
                    ),
                )
                .await;
                sync::created(&mut plan.status, &made, scheduled);
                plan.write = true;
            }
            Err(e) if is_status(&e, 409) => {
                // Made by an earlier sync whose status write was lost, or
                // by someone else (then it is theirs to track).
                tracing::info!(job = %job_name, "job already exists");
                let existing = jobs_api.get(&job_name).await?;
                let ours = existing
                    .owner_references()
                    .iter()
                    .any(|r| r.controller == Some(true) && r.uid == uid);
                if ours {
                    sync::created(&mut plan.status, &existing, scheduled);
                    plan.write = true;
                }
            }
            Err(e) => {
                publish(
                    state,
                    &cj,
                    &note(true, "FailedCreate", format!("Error creating job: {e}")),
                )
                .await;
                result = Err(e.into());
            }
        }
    }
    if plan.write {
        let mut next = cj.clone();
        next.status = Some(plan.status.clone());
        let body = serde_json::to_vec(&next).map_err(|e| SyncError::Encode(name.clone(), e))?;
        let stored = cron_jobs
            .replace_status(&name, &PostParams::default(), body)
            .await?;
        state
            .written
            .lock()
            .expect("written")
            .insert(key.clone(), (rv(&stored.metadata), Instant::now()));
    }
    result?;
    Ok(match plan.requeue_after {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Deletes a Job with its pods (Background, as upstream's job control);
/// false if that failed.
async fn delete_job(
    state: &State,
    cj: &CronJob,
    jobs: &Api<Job>,
    name: &str,
    params: &DeleteParams,
) -> bool {
    match jobs.delete(name, params).await {
        Ok(_) => {
            publish(
                state,
                cj,
                &note(false, "SuccessfulDelete", format!("Deleted job {name}")),
            )
            .await;
            true
        }
        Err(e) if is_status(&e, 404) => true,
        Err(e) => {
            tracing::warn!(error = %e, job = %name, "deleting a job");
            publish(
                state,
                cj,
                &note(true, "FailedDelete", format!("Deleted job: {e}")),
            )
            .await;
            false
        }
    }
}
