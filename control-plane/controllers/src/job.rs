//! The Job controller (upstream's pkg/controller/job): runs a Job's pods
//! to completion. Pods come from the template (`<job>-` names, owned by
//! the Job, kept by the `batch.kubernetes.io/job-tracking` finalizer until
//! counted); at most `parallelism` run, never more than the completions
//! still missing; failed pods are replaced after an exponential backoff
//! until `backoffLimit` failures or `activeDeadlineSeconds` end the Job
//! (FailureTarget, then Failed once its pods are gone); enough successes
//! complete it (SuccessCriteriaMet, then Complete). Indexed Jobs give each
//! pod an index. Suspending deletes the active pods.
//!
//! The decisions are in [`sync`] (pure, unit-tested); this file is the
//! edge: watches, writes, events. Pods whose Job is gone or finished lose
//! their finalizer here too (upstream's orphan queue).
mod backoff;
mod indexes;
mod pods;
mod sync;

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt as _, future};
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Pod},
    chrono::Utc,
};
use kube::{
    Api, Resource as _, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt as _,
        controller::{Action, Config as ApplierConfig, applier},
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store, reflector},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::Context;

/// Why one sync of one Job failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("encoding the status of job {0}: {1}")]
    Encode(String, serde_json::Error),
}

/// How long a sync waits for its own writes to show in the watch caches
/// before trusting them anyway (upstream's expectations timeout).
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// A safety net for unfinished Jobs: level-triggered even if an event was
/// lost.
const RESYNC: Duration = Duration::from_secs(60 * 60);

/// Writes of ours the caches have not shown yet, per Job.
#[derive(Clone, Copy)]
struct Pending {
    pods_rv: u64,
    job_rv: u64,
    since: Instant,
}

struct State {
    client: kube::Client,
    jobs: Store<Job>,
    pods: Store<Pod>,
    recorder: Recorder,
    backoff: Mutex<HashMap<ObjectRef<Job>, backoff::Record>>,
    pending: Mutex<HashMap<ObjectRef<Job>, Pending>>,
    failures: Mutex<HashMap<ObjectRef<Job>, u32>>,
    /// The highest resourceVersion of any pod event seen.
    pods_seen: AtomicU64,
}

fn rv(meta: &kube::api::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (jobs, job_writer) = reflector::store::<Job>();
    let pods = ctx.pods.store();
    let state = Arc::new(State {
        client: client.clone(),
        jobs: jobs.clone(),
        pods: pods.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "job-controller".into(),
                instance: None,
            },
        ),
        backoff: Mutex::default(),
        pending: Mutex::default(),
        failures: Mutex::default(),
        pods_seen: AtomicU64::new(0),
    });
    let (job_tx, job_rx) = mpsc::unbounded_channel::<ObjectRef<Job>>();
    let (orphan_tx, orphan_rx) = mpsc::unbounded_channel::<ObjectRef<Pod>>();

    let job_events = reflector(
        job_writer,
        watcher(Api::<Job>::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    let watch_jobs = {
        let (state, job_tx, orphan_tx) = (state.clone(), job_tx.clone(), orphan_tx.clone());
        job_events.for_each(move |ev| {
            match ev {
                Ok(watcher::Event::Apply(job)) => {
                    let _ = job_tx.send(ObjectRef::from_obj(&job));
                    if sync::finished(&job).is_some() {
                        orphans_of(&state, &job, &orphan_tx);
                    }
                }
                Ok(watcher::Event::Delete(job)) => {
                    orphans_of(&state, &job, &orphan_tx);
                    let key = ObjectRef::from_obj(&job);
                    state.backoff.lock().expect("backoff").remove(&key);
                    state.pending.lock().expect("pending").remove(&key);
                    state.failures.lock().expect("failures").remove(&key);
                }
                Ok(watcher::Event::InitDone) => {
                    for job in state.jobs.state() {
                        let _ = job_tx.send(ObjectRef::from_obj(&*job));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "job controller: watching jobs"),
            }
            future::ready(())
        })
    };
    let pod_events = ctx.pods.subscribe();
    let watch_pods = {
        let state = state.clone();
        pod_events.for_each(move |ev| {
            let seen = |p: &Pod| {
                state.pods_seen.fetch_max(rv(&p.metadata), Ordering::SeqCst);
            };
            match ev {
                Ok(watcher::Event::Apply(pod) | watcher::Event::Delete(pod)) => {
                    seen(&pod);
                    if let Some(owner) = pods::controller_of(&pod).filter(|r| r.kind == "Job") {
                        let ns = pod.namespace().unwrap_or_default();
                        let _ = job_tx.send(ObjectRef::new(&owner.name).within(&ns));
                    }
                    if pods::has_finalizer(&pod) {
                        let _ = orphan_tx.send(ObjectRef::from_obj(&pod));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    for pod in state.pods.state() {
                        seen(&pod);
                        if pods::has_finalizer(&pod) {
                            let _ = orphan_tx.send(ObjectRef::from_obj(&*pod));
                        }
                    }
                    for job in state.jobs.state() {
                        let _ = job_tx.send(ObjectRef::from_obj(&*job));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "job controller: watching pods"),
            }
            future::ready(())
        })
    };

    let sync_jobs = applier(
        |job, state: Arc<State>| Box::pin(reconcile(job, state)),
        |job, err: &SyncError, state: Arc<State>| retry(&state, &ObjectRef::from_obj(&*job), err),
        state.clone(),
        jobs,
        stream_of(job_rx),
        ApplierConfig::default(),
    )
    .for_each(|res| {
        if let Err(e) = res {
            tracing::debug!(error = %e, "job controller");
        }
        future::ready(())
    });
    let release_orphans = applier(
        |pod, state: Arc<State>| Box::pin(release_orphan(pod, state)),
        |_, err: &SyncError, _| {
            tracing::warn!(error = %err, "job controller: removing a tracking finalizer");
            Action::requeue(Duration::from_secs(5))
        },
        state.clone(),
        pods,
        stream_of(orphan_rx),
        ApplierConfig::default(),
    )
    .for_each(|res| {
        if let Err(e) = res {
            tracing::debug!(error = %e, "job controller: orphan pods");
        }
        future::ready(())
    });
    tracing::info!("job controller started");
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {}
        _ = future::join4(watch_jobs, watch_pods, sync_jobs, release_orphans) => {}
    }
    Ok(())
}

fn stream_of<T>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = Result<T, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok)))
}

/// Pods of `job` still carrying the finalizer, for the orphan queue.
fn orphans_of(state: &State, job: &Job, tx: &mpsc::UnboundedSender<ObjectRef<Pod>>) {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    for pod in state.pods.state() {
        if pods::has_finalizer(&pod) && pods::controlled_by(&pod, uid) {
            let _ = tx.send(ObjectRef::from_obj(&*pod));
        }
    }
}

/// Upstream's rate limiter: 1 s doubling to a minute per Job.
fn retry(state: &State, key: &ObjectRef<Job>, err: &SyncError) -> Action {
    let mut failures = state.failures.lock().expect("failures");
    let n = failures.entry(key.clone()).or_insert(0);
    *n += 1;
    let delay = Duration::from_secs(1u64 << (*n - 1).min(6)).min(Duration::from_secs(60));
    tracing::warn!(job = %key, error = %err, retry_in = ?delay, "job sync failed");
    Action::requeue(delay)
}

async fn publish(state: &State, job: &Job, note: &sync::Note) {
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
    if let Err(e) = state.recorder.publish(&ev, &job.object_ref(&())).await {
        tracing::debug!(error = %e, reason = %note.reason, "job controller: event not recorded");
    }
}

fn normal(reason: &str, message: String) -> sync::Note {
    sync::Note {
        warning: false,
        reason: reason.into(),
        message,
    }
}

fn warning(reason: &str, message: String) -> sync::Note {
    sync::Note {
        warning: true,
        reason: reason.into(),
        message,
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Removes a finalizer-kept pod's finalizer once no unfinished Job
/// controls it any more (its Job is gone, finished, or let go of it).
async fn release_orphan(pod: Arc<Pod>, state: Arc<State>) -> Result<Action, SyncError> {
    if state.jobs.wait_until_ready().await.is_err() || !pods::has_finalizer(&pod) {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = pods::controller_of(&pod) {
        if owner.kind != "Job" || owner.api_version != "batch/v1" {
            return Ok(Action::await_change());
        }
        let job = state.jobs.get(&ObjectRef::new(&owner.name).within(&ns));
        let live = job.filter(|j| j.metadata.uid.as_deref() == Some(owner.uid.as_str()));
        if live.is_some_and(|j| sync::finished(&j).is_none()) {
            return Ok(Action::await_change());
        }
    }
    remove_finalizer(&state, &ns, pods::name(&pod)).await?;
    Ok(Action::await_change())
}

async fn remove_finalizer(state: &State, ns: &str, name: &str) -> Result<u64, kube::Error> {
    let api: Api<Pod> = Api::namespaced(state.client.clone(), ns);
    let patch =
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [pods::TRACKING_FINALIZER]}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Ok(p) => Ok(rv(&p.metadata)),
        Err(e) if is_not_found(&e) => Ok(0),
        Err(e) => Err(e),
    }
}

async fn reconcile(job: Arc<Job>, state: Arc<State>) -> Result<Action, SyncError> {
    let key = ObjectRef::from_obj(&*job);
    let span = tracing::info_span!("sync job", job = %key);
    let res = sync_job(&job, &key, &state).instrument(span).await;
    if res.is_ok() {
        state.failures.lock().expect("failures").remove(&key);
    }
    res
}

async fn sync_job(job: &Job, key: &ObjectRef<Job>, state: &State) -> Result<Action, SyncError> {
    if state.pods.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    if sync::finished(job).is_some() {
        state.backoff.lock().expect("backoff").remove(key);
        return Ok(Action::await_change());
    }
    let mode = job.spec.as_ref().and_then(|s| s.completion_mode.as_deref());
    if !matches!(mode, None | Some("NonIndexed" | "Indexed")) {
        publish(
            state,
            job,
            &warning(
                "UnknownCompletionMode",
                "Skipped Job sync because completion mode is unknown".into(),
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    // Wait until the caches show our last writes, so nothing is created
    // twice or counted from a stale status.
    let waiting = state.pending.lock().expect("pending").get(key).copied();
    if let Some(p) = waiting {
        let caught_up =
            state.pods_seen.load(Ordering::SeqCst) >= p.pods_rv && rv(&job.metadata) >= p.job_rv;
        if !caught_up && p.since.elapsed() < EXPECTATIONS_TIMEOUT {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        state.pending.lock().expect("pending").remove(key);
    }
    let mut writes = Pending {
        pods_rv: 0,
        job_rv: 0,
        since: Instant::now(),
    };
    let owned = claim_pods(job, state, &mut writes).await?;
    let now = Utc::now();
    let record = state
        .backoff
        .lock()
        .expect("backoff")
        .get(key)
        .cloned()
        .unwrap_or_default();
    let observed = sync::Observed {
        job,
        pods: owned.iter().map(|p| &**p).collect(),
        now,
        backoff: &record,
    };
    let plan = sync::plan(&observed);
    let requeue = plan.requeue_after;
    let next_record = plan.backoff.clone();
    let outcome = manage(job, state, &plan.manage, &mut writes).await;
    let track = sync::track(&observed, plan, &outcome);
    for note in &track.notes {
        publish(state, job, note).await;
    }
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let jobs: Api<Job> = Api::namespaced(state.client.clone(), &ns);
    let mut current = job.clone();
    let result = async {
        if track.flush {
            current.status = Some(track.status.clone());
            current = write_status(&jobs, &name, &current).await?;
            writes.job_rv = rv(&current.metadata);
            state
                .backoff
                .lock()
                .expect("backoff")
                .insert(key.clone(), next_record);
        }
        let mut removed = HashSet::new();
        let mut first_err = None;
        for (pod, uid) in &track.remove_finalizers {
            match remove_finalizer(state, &ns, pod).await {
                Ok(v) => {
                    writes.pods_rv = writes.pods_rv.max(v);
                    removed.insert(uid.clone());
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let finish = sync::finish(&observed, track, &removed);
        if finish.write {
            current.status = Some(finish.status);
            current = write_status(&jobs, &name, &current).await?;
            writes.job_rv = rv(&current.metadata);
        }
        if let Some(e) = first_err {
            return Err(SyncError::from(e));
        }
        for note in &finish.notes {
            publish(state, &current, note).await;
        }
        Ok(())
    }
    .await;
    if writes.pods_rv > 0 || writes.job_rv > 0 {
        state
            .pending
            .lock()
            .expect("pending")
            .insert(key.clone(), writes);
    }
    result?;
    Ok(match requeue {
        Some(d) => Action::requeue(d.min(RESYNC)),
        None => Action::requeue(RESYNC),
    })
}

async fn write_status(jobs: &Api<Job>, name: &str, job: &Job) -> Result<Job, SyncError> {
    let body = serde_json::to_vec(job).map_err(|e| SyncError::Encode(name.to_string(), e))?;
    Ok(jobs
        .replace_status(name, &PostParams::default(), body)
        .await?)
}

/// The Job's pods: those it controls, plus orphans its selector matches,
/// which it adopts (owner reference and tracking finalizer), as upstream's
/// ClaimPods does.
async fn claim_pods(
    job: &Job,
    state: &State,
    writes: &mut Pending,
) -> Result<Vec<Arc<Pod>>, SyncError> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let selector = job.spec.as_ref().and_then(|s| s.selector.clone());
    let mut owned = Vec::new();
    let api: Api<Pod> = Api::namespaced(state.client.clone(), &ns);
    for pod in state.pods.state() {
        if pod.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        if pods::controlled_by(&pod, &uid) {
            owned.push(pod);
            continue;
        }
        let adoptable = pods::controller_of(&pod).is_none()
            && !pods::deleting(&pod)
            && job.metadata.deletion_timestamp.is_none()
            && selector.as_ref().is_some_and(|s| {
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                (s.match_labels.is_some() || s.match_expressions.is_some())
                    && pods::selects(s, &labels)
            });
        if !adoptable {
            continue;
        }
        let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
        refs.push(pods::controller_ref(job));
        let mut finalizers = pod.metadata.finalizers.clone().unwrap_or_default();
        if !pods::has_finalizer(&pod) {
            finalizers.push(pods::TRACKING_FINALIZER.into());
        }
        let patch = json!({"metadata": {
            "ownerReferences": refs, "finalizers": finalizers,
            "resourceVersion": pod.metadata.resource_version,
        }});
        match api
            .patch(
                pods::name(&pod),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(adopted) => {
                writes.pods_rv = writes.pods_rv.max(rv(&adopted.metadata));
                owned.push(Arc::new(adopted));
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(owned)
}

/// Carries out [`sync::Manage`]: creates in slow-start batches (1, 2, 4,
/// ... stopping at the first failing batch, as upstream), deletes
/// concurrently. Failures are events and logs; the counts say what
/// happened.
async fn manage(
    job: &Job,
    state: &State,
    manage: &sync::Manage,
    writes: &mut Pending,
) -> sync::Outcome {
    let ns = job.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(state.client.clone(), &ns);
    let mut outcome = sync::Outcome::default();
    match manage {
        sync::Manage::Skip => {}
        sync::Manage::Create(indexes) => {
            let mut rest: &[Option<i32>] = indexes;
            let mut batch = 1;
            while !rest.is_empty() {
                let (now, later) = rest.split_at(batch.min(rest.len()));
                rest = later;
                let results = future::join_all(now.iter().map(|ix| {
                    let pod = pods::new_pod(job, *ix);
                    let api = api.clone();
                    async move { api.create(&PostParams::default(), &pod).await }
                }))
                .await;
                let mut failed = false;
                for r in results {
                    match r {
                        Ok(p) => {
                            outcome.created += 1;
                            writes.pods_rv = writes.pods_rv.max(rv(&p.metadata));
                            publish(
                                state,
                                job,
                                &normal(
                                    "SuccessfulCreate",
                                    format!("Created pod: {}", p.name_any()),
                                ),
                            )
                            .await;
                        }
                        Err(e) => {
                            failed = true;
                            tracing::warn!(error = %e, "creating a pod");
                            publish(
                                state,
                                job,
                                &warning("FailedCreate", format!("Error creating: {e}")),
                            )
                            .await;
                        }
                    }
                }
                if failed {
                    break;
                }
                batch *= 2;
            }
        }
        sync::Manage::Finish(names) | sync::Manage::Remove(names) => {
            let first_unfinalize = matches!(manage, sync::Manage::Remove(_));
            let results = future::join_all(names.iter().map(|name| async {
                if first_unfinalize {
                    remove_finalizer(state, &ns, name).await?;
                }
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(either) => Ok(either.left().map(|p| rv(&p.metadata)).unwrap_or(0)),
                    Err(e) if is_not_found(&e) => Ok(0),
                    Err(e) => Err(e),
                }
            }))
            .await;
            for (name, r) in names.iter().zip(results) {
                match r {
                    Ok(v) => {
                        writes.pods_rv = writes.pods_rv.max(v);
                        outcome.deleted.push(name.clone());
                        publish(
                            state,
                            job,
                            &normal("SuccessfulDelete", format!("Deleted pod: {name}")),
                        )
                        .await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, pod = %name, "deleting a pod");
                        publish(
                            state,
                            job,
                            &warning("FailedDelete", format!("Error deleting: {e}")),
                        )
                        .await;
                    }
                }
            }
        }
    }
    outcome
}
