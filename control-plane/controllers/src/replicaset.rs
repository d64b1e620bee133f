//! The ReplicaSet controller (upstream's pkg/controller/replicaset): keeps
//! `spec.replicas` Pods from the template running, adopting matching
//! orphans and releasing Pods that stop matching, and reports counts in
//! `status`. Decisions are in [`sync`] (pure); this file is the I/O edge:
//! a ReplicaSet reflector and a Pod reflector feed one applier, Pod events
//! wake the ReplicaSet that controls the Pod (or, for an orphan, every
//! ReplicaSet selecting it), and [`expectations`] keeps a reconcile that
//! runs before its own creates and deletes are in the cache from doing
//! them twice.
pub(crate) mod expectations;
mod rank;
mod sync;

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt, future::join_all, stream};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::Utc;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, applier, watcher};
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use self::expectations::{Cached, Expectations};
use self::sync::Manage;
use crate::pods::owner::{self, Claim, Claimant};
use crate::pods::selector::Selector;
use crate::pods::{self, template};
use crate::workload::{self, Backoff, Events};
use crate::{Context, api_error};

const CONTROLLER: &str = "replicaset-controller";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Pod cache is gone")]
    CacheGone,
    #[error("{0}")]
    Manage(String),
    #[error("reconcile task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

struct Ctx {
    client: kube::Client,
    pods: Store<Pod>,
    replica_sets: Store<ReplicaSet>,
    expectations: Expectations,
    events: Events,
    backoff: Backoff,
}

fn key_of(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The ReplicaSet that controls `pod`, as an expectations key.
fn controller_key(pod: &Pod) -> Option<String> {
    let r = owner::controller_of(&pod.metadata)?;
    (r.kind == "ReplicaSet").then(|| key_of(&pod.namespace().unwrap_or_default(), &r.name))
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (rs_reader, rs_writer) = reflector::store();
    let pod_reader = ctx.pods.store();
    let c = Arc::new(Ctx {
        client: client.clone(),
        pods: pod_reader,
        replica_sets: rs_reader.clone(),
        expectations: Expectations::default(),
        events: Events::new(client.clone(), CONTROLLER),
        backoff: Backoff::default(),
    });

    let forget = c.clone();
    let replica_sets = reflector(
        rs_writer,
        watcher(
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .inspect_ok(move |ev| {
        if let watcher::Event::Delete(rs) = ev {
            let key = key_of(&rs.namespace().unwrap_or_default(), &rs.name_any());
            forget.expectations.forget(&key);
        }
    })
    .touched_objects();

    let observer = c.clone();
    let pods = ctx
        .pods
        .subscribe()
        .inspect_ok(move |ev| {
            let (pod, gone) = match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    (p, p.metadata.deletion_timestamp.is_some())
                }
                watcher::Event::Delete(p) => (p, true),
                _ => return,
            };
            if let (Some(key), Some(uid)) = (controller_key(pod), pod.uid()) {
                observer.expectations.observe(&key, &uid, gone);
            }
        })
        .touched_objects();

    let owners = rs_reader.clone();
    let queue = stream::select(
        controller::trigger_self(replica_sets, ()),
        controller::trigger_with(pods, move |pod: Pod| replica_sets_for(&pod, &owners)),
    )
    .take_until(ctx.shutdown.clone().cancelled_owned());

    applier(
        |rs, c| workload::spawn(reconcile(rs, c)),
        error_policy,
        c,
        rs_reader,
        queue,
        controller::Config::default().concurrency(5),
    )
    .take_until(ctx.shutdown.clone().cancelled_owned())
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "replicaset controller");
        }
    })
    .await;
    Ok(())
}

/// The ReplicaSets a Pod event concerns: its controller if that is a
/// ReplicaSet; for an orphan, every ReplicaSet of its namespace selecting
/// it (one of them may adopt it).
fn replica_sets_for(pod: &Pod, replica_sets: &Store<ReplicaSet>) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.namespace().unwrap_or_default();
    match owner::controller_of(&pod.metadata) {
        Some(r) if r.kind == "ReplicaSet" => vec![ObjectRef::new(&r.name).within(&ns)],
        Some(_) => Vec::new(),
        None => replica_sets
            .state()
            .iter()
            .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
            .filter(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| Selector::new(&s.selector).ok())
                    .is_some_and(|s| {
                        !s.selects_everything() && s.matches(pod.metadata.labels.as_ref())
                    })
            })
            .map(|rs| ObjectRef::from_obj(rs.as_ref()))
            .collect(),
    }
}

fn error_policy(rs: Arc<ReplicaSet>, err: &ReconcileError, c: Arc<Ctx>) -> Action {
    let key = key_of(&rs.namespace().unwrap_or_default(), &rs.name_any());
    tracing::info!(replicaset = %key, error = %err, "sync failed; retrying");
    Action::requeue(c.backoff.failed(&key))
}

async fn reconcile(rs: Arc<ReplicaSet>, c: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = rs.namespace().unwrap_or_default();
    let key = key_of(&ns, &rs.name_any());
    let span = tracing::info_span!("reconcile", replicaset = %key);
    let res = sync_replica_set(&rs, &c, &ns, &key).instrument(span).await;
    if res.is_ok() {
        c.backoff.succeeded(&key);
    }
    res
}

async fn sync_replica_set(
    rs: &ReplicaSet,
    c: &Ctx,
    ns: &str,
    key: &str,
) -> Result<Action, ReconcileError> {
    c.pods
        .wait_until_ready()
        .await
        .map_err(|_| ReconcileError::CacheGone)?;
    c.replica_sets
        .wait_until_ready()
        .await
        .map_err(|_| ReconcileError::CacheGone)?;
    let now = Utc::now();
    let satisfied = c.expectations.satisfied(key, Instant::now(), |name| {
        c.pods
            .get(&ObjectRef::new(name).within(ns))
            .map(|p| Cached {
                uid: p.uid().unwrap_or_default(),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
    });
    let Some(spec) = rs.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let selector = match Selector::new(&spec.selector) {
        Ok(s) if s.selects_everything() => {
            // Validation refuses this; never claim a whole namespace.
            tracing::warn!("empty selector; not managing pods");
            return Ok(Action::await_change());
        }
        Ok(s) => s,
        Err(e) => {
            // Invalid: it selects nothing, as upstream (which logs it).
            tracing::warn!(error = %e, "invalid selector");
            return Ok(Action::await_change());
        }
    };
    let in_namespace: Vec<Arc<Pod>> = c
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .collect();
    let owned = claim_pods(rs, c, ns, &selector, &in_namespace).await?;
    let owned_refs: Vec<&Pod> = owned.iter().map(AsRef::as_ref).collect();

    let mut manage_error = None;
    if satisfied && rs.metadata.deletion_timestamp.is_none() {
        let all_rs = c.replica_sets.state();
        let all_rs: Vec<&ReplicaSet> = all_rs.iter().map(AsRef::as_ref).collect();
        let pod_refs: Vec<&Pod> = in_namespace.iter().map(AsRef::as_ref).collect();
        let related = sync::related_pods(rs, &all_rs, &pod_refs);
        manage_error = match sync::manage(rs, &owned_refs, &related, now) {
            Manage::Nothing => None,
            Manage::Create(n) => create_pods(rs, c, ns, key, n).await.err(),
            Manage::Delete(victims) => delete_pods(rs, c, ns, key, &victims).await.err(),
        };
    }

    let status = sync::calculate_status(rs, &owned_refs, manage_error.as_deref(), now);
    if sync::status_needs_update(rs, &status) {
        Api::<ReplicaSet>::namespaced(c.client.clone(), ns)
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(sync::status_patch(rs, &status)),
            )
            .await?;
    }
    if let Some(e) = manage_error {
        return Err(ReconcileError::Manage(e));
    }
    Ok(match sync::recheck_after(rs, &owned_refs, now) {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Upstream's `claimPods`: the active Pods this ReplicaSet controls after
/// adopting selected orphans and releasing owned Pods it no longer
/// selects. Adoption first re-reads the ReplicaSet uncached, so one being
/// deleted (or replaced by a namesake) adopts nothing.
async fn claim_pods(
    rs: &ReplicaSet,
    c: &Ctx,
    ns: &str,
    selector: &Selector,
    in_namespace: &[Arc<Pod>],
) -> Result<Vec<Arc<Pod>>, ReconcileError> {
    let uid = rs.uid().unwrap_or_default();
    let claimant = Claimant {
        uid: &uid,
        namespace: ns,
        deleting: rs.metadata.deletion_timestamp.is_some(),
        selector,
    };
    let mut owned = Vec::new();
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    for p in in_namespace.iter().filter(|p| pods::is_active(p)) {
        match owner::claim(&claimant, &p.metadata) {
            Claim::Owned => owned.push(p.clone()),
            Claim::Adopt => adopt.push(p),
            Claim::Release => release.push(p),
            Claim::Ignore => {}
        }
    }
    if adopt.is_empty() && release.is_empty() {
        return Ok(owned);
    }
    let pods_api = Api::<Pod>::namespaced(c.client.clone(), ns);
    let pp = PatchParams::default();
    let mut first_err = None;
    if !adopt.is_empty() {
        let fresh = Api::<ReplicaSet>::namespaced(c.client.clone(), ns)
            .get(&rs.name_any())
            .await?;
        if fresh.uid() != rs.uid() || fresh.metadata.deletion_timestamp.is_some() {
            tracing::info!("not adopting: the ReplicaSet is being deleted or was replaced");
        } else {
            let me = owner::controller_ref(rs);
            for p in adopt {
                let patch = owner::adopt_patch(&me, &p.uid().unwrap_or_default());
                match pods_api
                    .patch(&p.name_any(), &pp, &Patch::Strategic(patch))
                    .await
                {
                    Ok(adopted) => {
                        tracing::info!(pod = %p.name_any(), "adopted");
                        owned.push(Arc::new(adopted));
                    }
                    Err(e) if api_error::is_not_found(&e) => {}
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
    }
    for p in release {
        let patch = owner::release_patch(&uid, &p.uid().unwrap_or_default());
        match pods_api
            .patch(&p.name_any(), &pp, &Patch::Strategic(patch))
            .await
        {
            Ok(_) => tracing::info!(pod = %p.name_any(), "released"),
            Err(e) if api_error::is_not_found(&e) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok(owned),
    }
}

/// Creates `n` Pods in slow-start batches, stopping after the first batch
/// with a failure; the error is that failure's message.
async fn create_pods(
    rs: &ReplicaSet,
    c: &Ctx,
    ns: &str,
    key: &str,
    n: usize,
) -> Result<(), String> {
    let regarding = rs.object_ref(&());
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .cloned()
        .unwrap_or_default();
    if template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .is_none_or(|l| l.is_empty())
    {
        let msg = "unable to create pods, no labels".to_string();
        c.events.warning(
            &regarding,
            "FailedCreate",
            "Create",
            format!("Error creating: {msg}"),
        );
        return Err(msg);
    }
    let pod = template::pod_from_template(&template, owner::controller_ref(rs));
    let api = Api::<Pod>::namespaced(c.client.clone(), ns);
    let pp = PostParams::default();
    tracing::info!(count = n, "too few replicas; creating");
    for batch in sync::slow_start_batches(n) {
        let results = join_all((0..batch).map(|_| api.create(&pp, &pod))).await;
        let mut created = Vec::new();
        let mut first_err = None;
        let mut stop = false;
        for r in results {
            match r {
                Ok(p) => {
                    let name = p.name_any();
                    c.events.normal(
                        &regarding,
                        "SuccessfulCreate",
                        "Create",
                        format!("Created pod: {name}"),
                    );
                    created.push((p.uid().unwrap_or_default(), name));
                }
                // Any create will fail: nothing to report or retry.
                Err(e) if api_error::is_namespace_terminating(&e) => {
                    stop = true;
                }
                Err(e) => {
                    let msg = workload::api_message(&e);
                    c.events.warning(
                        &regarding,
                        "FailedCreate",
                        "Create",
                        format!("Error creating: {msg}"),
                    );
                    first_err.get_or_insert(msg);
                }
            }
        }
        c.expectations
            .expect_creations(key, created, Instant::now());
        if let Some(msg) = first_err {
            return Err(msg);
        }
        if stop {
            break;
        }
    }
    Ok(())
}

/// Deletes `victims` (see [`workload::delete_pods`]).
async fn delete_pods(
    rs: &ReplicaSet,
    c: &Ctx,
    ns: &str,
    key: &str,
    victims: &[&Pod],
) -> Result<(), String> {
    tracing::info!(count = victims.len(), "too many replicas; deleting");
    let notes = workload::DeleteNotes {
        deleted: &|name| format!("Deleted pod: {name}"),
        failed: &|_, msg| format!("Error deleting: {msg}"),
        conflict_is_gone: false,
    };
    let regarding = rs.object_ref(&());
    workload::delete_pods(
        &c.client,
        &c.expectations,
        &c.events,
        &regarding,
        ns,
        key,
        victims,
        notes,
    )
    .await
}
