//! The Deployment controller (upstream's pkg/controller/deployment):
//! rolls a Deployment's template out through ReplicaSets, one per
//! template, within maxSurge/maxUnavailable (RollingUpdate) or all at once
//! after the old Pods are gone (Recreate), keeping revisions for
//! `kubectl rollout history/undo` and the conditions `kubectl rollout
//! status` reads. Decisions are in [`sync`] (pure); this file is the I/O
//! edge: Deployment and ReplicaSet reflectors plus a Pod watch (for
//! Recreate) feed one applier; ReplicaSet events wake the controlling
//! Deployment (or, for an orphan, every Deployment selecting it).
//!
//! Writes carry the resourceVersion the decision was made on, so a
//! decision taken on a stale cache fails (409) and is retried on fresh
//! data instead of being applied twice; a new ReplicaSet's name is
//! derived from its template, so a repeated create is AlreadyExists.
mod revision;
mod status;
mod strategy;
mod sync;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::{SubsecRound, Utc};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, applier, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use self::sync::{Input, Write};
use crate::pods::owner::{self, Claim, Claimant};
use crate::pods::selector::{self, Selector};
use crate::pods::template;
use crate::workload::{self, Backoff, Events};
use crate::{Context, api_error};

const CONTROLLER: &str = "deployment-controller";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the ReplicaSet cache is gone")]
    CacheGone,
    #[error("replica set {0} exists with another template; collisionCount raised")]
    Collision(String),
    #[error("reconcile task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

struct Ctx {
    client: kube::Client,
    replica_sets: Store<ReplicaSet>,
    events: Events,
    backoff: Backoff,
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (d_reader, d_writer) = reflector::store();
    let (rs_reader, rs_writer) = reflector::store();
    let c = Arc::new(Ctx {
        client: client.clone(),
        replica_sets: rs_reader.clone(),
        events: Events::new(client.clone(), CONTROLLER),
        backoff: Backoff::default(),
    });
    let wc = watcher::Config::default;
    let deployments = reflector(
        d_writer,
        watcher(Api::<Deployment>::all(client.clone()), wc()).default_backoff(),
    )
    .touched_objects();
    let replica_sets = reflector(
        rs_writer,
        watcher(Api::<ReplicaSet>::all(client.clone()), wc()).default_backoff(),
    )
    .touched_objects();
    let pods = ctx.pods.subscribe().touched_objects();

    let by_rs = d_reader.clone();
    let by_pod = (d_reader.clone(), rs_reader);
    let queue = stream::select(
        controller::trigger_self(deployments, ()),
        stream::select(
            controller::trigger_with(replica_sets, move |rs: ReplicaSet| {
                deployments_for(&rs, &by_rs)
            }),
            controller::trigger_with(pods, move |pod: Pod| {
                recreate_deployment_for(&pod, &by_pod.0, &by_pod.1)
            }),
        ),
    )
    .take_until(ctx.shutdown.clone().cancelled_owned());

    applier(
        |d, c| workload::spawn(reconcile(d, c)),
        error_policy,
        c,
        d_reader,
        queue,
        controller::Config::default().concurrency(5),
    )
    .take_until(ctx.shutdown.clone().cancelled_owned())
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "deployment controller");
        }
    })
    .await;
    Ok(())
}

fn key_of(d: &Deployment) -> String {
    format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any())
}

/// The Deployments a ReplicaSet event concerns: its controller if that
/// is a Deployment; for an orphan, every Deployment selecting it.
fn deployments_for(rs: &ReplicaSet, deployments: &Store<Deployment>) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.namespace().unwrap_or_default();
    match owner::controller_of(&rs.metadata) {
        Some(r) if r.kind == "Deployment" => vec![ObjectRef::new(&r.name).within(&ns)],
        Some(_) => Vec::new(),
        None => deployments
            .state()
            .iter()
            .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
            .filter(|d| {
                d.spec
                    .as_ref()
                    .and_then(|s| Selector::new(&s.selector).ok())
                    .is_some_and(|s| {
                        !s.selects_everything() && s.matches(rs.metadata.labels.as_ref())
                    })
            })
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect(),
    }
}

/// A Recreate Deployment waits for its old Pods to go: their events wake
/// it (through the ReplicaSet that controls them).
fn recreate_deployment_for(
    pod: &Pod,
    deployments: &Store<Deployment>,
    replica_sets: &Store<ReplicaSet>,
) -> Option<ObjectRef<Deployment>> {
    let ns = pod.namespace().unwrap_or_default();
    let r = owner::controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
    let rs = replica_sets.get(&ObjectRef::new(&r.name).within(&ns))?;
    let d = owner::controller_of(&rs.metadata).filter(|r| r.kind == "Deployment")?;
    let d = deployments.get(&ObjectRef::new(&d.name).within(&ns))?;
    (strategy::strategy_type(&d) == strategy::RECREATE).then(|| ObjectRef::from_obj(d.as_ref()))
}

fn error_policy(d: Arc<Deployment>, err: &ReconcileError, c: Arc<Ctx>) -> Action {
    let key = key_of(&d);
    match err {
        ReconcileError::Kube(e) if workload::is_conflict(e) => {
            tracing::debug!(deployment = %key, error = %err, "stale; retrying")
        }
        _ => tracing::info!(deployment = %key, error = %err, "sync failed; retrying"),
    }
    Action::requeue(c.backoff.failed(&key))
}

async fn reconcile(d: Arc<Deployment>, c: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let key = key_of(&d);
    let span = tracing::info_span!("reconcile", deployment = %key);
    let res = sync_deployment(&d, &c).instrument(span).await;
    if res.is_ok() {
        c.backoff.succeeded(&key);
    }
    res
}

async fn sync_deployment(d: &Deployment, c: &Ctx) -> Result<Action, ReconcileError> {
    c.replica_sets
        .wait_until_ready()
        .await
        .map_err(|_| ReconcileError::CacheGone)?;
    let ns = d.namespace().unwrap_or_default();
    let Some(spec) = d.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let selector = match Selector::new(&spec.selector) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "invalid selector");
            return Ok(Action::await_change());
        }
    };
    // An empty selector claims nothing; the planner says why.
    let owned = if selector.selects_everything() {
        Vec::new()
    } else {
        claim_replica_sets(d, c, &ns, &selector).await?
    };
    let pods = if strategy::strategy_type(d) == strategy::RECREATE {
        let lp = ListParams::default().labels(&selector::match_labels_query(&spec.selector));
        Api::<Pod>::namespaced(c.client.clone(), &ns)
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|p| selector.matches(p.metadata.labels.as_ref()))
            .collect()
    } else {
        Vec::new()
    };
    // The versions the plan is made on: a write on them fails (409) if
    // the ReplicaSet changed since.
    let versions = owned
        .iter()
        .map(|rs| (rs.name_any(), rs.resource_version()))
        .collect();
    let plan = sync::plan(Input {
        deployment: d,
        replica_sets: owned,
        pods: &pods,
        // What the API stores: condition times compare as written.
        now: Utc::now().trunc_subsecs(0),
    });
    execute(d, c, &ns, plan, versions).await
}

/// Upstream's `getReplicaSetsForDeployment`: the ReplicaSets this
/// Deployment controls after adopting selected orphans and releasing
/// owned ones it no longer selects (adoption re-reads the Deployment
/// uncached first, so one being deleted adopts nothing).
async fn claim_replica_sets(
    d: &Deployment,
    c: &Ctx,
    ns: &str,
    selector: &Selector,
) -> Result<Vec<ReplicaSet>, ReconcileError> {
    let uid = d.uid().unwrap_or_default();
    let claimant = Claimant {
        uid: &uid,
        namespace: ns,
        deleting: d.metadata.deletion_timestamp.is_some(),
        selector,
    };
    let mut owned = Vec::new();
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    for rs in c.replica_sets.state() {
        if rs.namespace().as_deref() != Some(ns) {
            continue;
        }
        match owner::claim(&claimant, &rs.metadata) {
            Claim::Owned => owned.push(rs.as_ref().clone()),
            Claim::Adopt => adopt.push(rs),
            Claim::Release => release.push(rs),
            Claim::Ignore => {}
        }
    }
    if adopt.is_empty() && release.is_empty() {
        return Ok(owned);
    }
    let api = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pp = PatchParams::default();
    if !adopt.is_empty() {
        let fresh = Api::<Deployment>::namespaced(c.client.clone(), ns)
            .get(&d.name_any())
            .await?;
        if fresh.uid() == d.uid() && fresh.metadata.deletion_timestamp.is_none() {
            let me = owner::controller_ref(d);
            for rs in adopt {
                let patch = owner::adopt_patch(&me, &rs.uid().unwrap_or_default());
                match api
                    .patch(&rs.name_any(), &pp, &Patch::Strategic(patch))
                    .await
                {
                    Ok(adopted) => {
                        tracing::info!(replicaset = %rs.name_any(), "adopted");
                        owned.push(adopted);
                    }
                    Err(e) if api_error::is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    for rs in release {
        let patch = owner::release_patch(&uid, &rs.uid().unwrap_or_default());
        match api
            .patch(&rs.name_any(), &pp, &Patch::Strategic(patch))
            .await
        {
            Ok(_) => tracing::info!(replicaset = %rs.name_any(), "released"),
            Err(e) if api_error::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(owned)
}

/// Sends the plan's writes in order, each ReplicaSet write on the
/// resourceVersion the plan saw (or its own previous write returned);
/// then the Deployment's revision annotation and status.
async fn execute(
    d: &Deployment,
    c: &Ctx,
    ns: &str,
    plan: sync::Plan,
    mut versions: HashMap<String, Option<String>>,
) -> Result<Action, ReconcileError> {
    let regarding = d.object_ref(&());
    for w in &plan.warnings {
        c.events
            .warning(&regarding, w.reason, "Sync", w.message.clone());
    }
    let rs_api = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let d_api = Api::<Deployment>::namespaced(c.client.clone(), ns);
    let pp = PatchParams::default();
    let scaled = |event: &Option<String>| {
        if let Some(msg) = event {
            c.events
                .normal(&regarding, "ScalingReplicaSet", "Scale", msg.clone());
        }
    };
    for w in plan.writes {
        match w {
            Write::Create { rs, event } => match rs_api.create(&PostParams::default(), &rs).await {
                Ok(created) => {
                    versions.insert(created.name_any(), created.resource_version());
                    scaled(&event);
                }
                Err(e) if api_error::is_already_exists(&e) => {
                    return on_name_taken(d, c, &rs).await;
                }
                // Nothing to report: the namespace is going away.
                Err(e) if api_error::is_namespace_terminating(&e) => return Err(e.into()),
                Err(e) => {
                    failed_create(d, c, &rs, &e).await;
                    return Err(e.into());
                }
            },
            Write::Update {
                name,
                replicas,
                annotations,
                min_ready_seconds,
                event,
            } => {
                let rv = versions.get(&name).cloned().flatten();
                let patch = json!({
                    "metadata": {"resourceVersion": rv, "annotations": annotations},
                    "spec": {"replicas": replicas, "minReadySeconds": min_ready_seconds},
                });
                let updated = rs_api.patch(&name, &pp, &Patch::Merge(patch)).await?;
                versions.insert(name, updated.resource_version());
                scaled(&event);
            }
            Write::Delete { name, uid } => {
                tracing::info!(replicaset = %name, "deleting an old revision");
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match rs_api.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(e) if api_error::is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let mut version = d.resource_version();
    if let Some(annotations) = plan.annotations {
        let patch = json!({"metadata": {"resourceVersion": version, "annotations": annotations}});
        let updated = d_api
            .patch(&d.name_any(), &pp, &Patch::Merge(patch))
            .await?;
        version = updated.resource_version();
    }
    if let Some(status) = plan.status {
        let mut body = d.clone();
        body.metadata.resource_version = version;
        body.status = Some(status);
        write_status(&d_api, &body).await?;
    }
    Ok(match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

async fn write_status(api: &Api<Deployment>, body: &Deployment) -> Result<Deployment, kube::Error> {
    let bytes = serde_json::to_vec(body).map_err(kube::Error::SerdeError)?;
    api.replace_status(&body.name_any(), &PostParams::default(), bytes)
        .await
}

/// The new ReplicaSet's name is taken. If by this Deployment's own
/// ReplicaSet for this template, the cache is behind: look again soon.
/// Otherwise it is a hash collision: raise `status.collisionCount` so
/// the next sync hashes to another name.
async fn on_name_taken(d: &Deployment, c: &Ctx, rs: &ReplicaSet) -> Result<Action, ReconcileError> {
    let ns = d.namespace().unwrap_or_default();
    let name = rs.name_any();
    let existing = Api::<ReplicaSet>::namespaced(c.client.clone(), &ns)
        .get(&name)
        .await?;
    let ours =
        owner::controller_of(&existing.metadata).is_some_and(|r| Some(&r.uid) == d.uid().as_ref());
    let same = match (
        existing.spec.as_ref().and_then(|s| s.template.as_ref()),
        d.spec.as_ref(),
    ) {
        (Some(t), Some(spec)) => template::equal_ignore_hash(t, &spec.template),
        _ => false,
    };
    if ours && same {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut body = d.clone();
    let st = body.status.get_or_insert_with(Default::default);
    let before = st.collision_count.unwrap_or(0);
    st.collision_count = Some(before + 1);
    write_status(&Api::namespaced(c.client.clone(), &ns), &body).await?;
    tracing::info!(replicaset = %name, collision_count = before + 1, "hash collision; collisionCount raised");
    Err(ReconcileError::Collision(name))
}

/// Upstream reports a failed ReplicaSet create in Progressing
/// (ReplicaSetCreateError) and as a Warning event.
async fn failed_create(d: &Deployment, c: &Ctx, rs: &ReplicaSet, e: &kube::Error) {
    let msg = format!(
        "Failed to create new replica set {:?}: {}",
        rs.name_any(),
        workload::api_message(e)
    );
    c.events.warning(
        &d.object_ref(&()),
        status::FAILED_RS_CREATE,
        "Create",
        msg.clone(),
    );
    if status::progress_deadline(d).is_none() {
        return;
    }
    let mut body = d.clone();
    let st = body.status.get_or_insert_with(Default::default);
    status::set_condition(
        st,
        status::new_condition(
            status::PROGRESSING,
            "False",
            status::FAILED_RS_CREATE,
            msg,
            Utc::now(),
        ),
    );
    let api = Api::namespaced(c.client.clone(), &d.namespace().unwrap_or_default());
    if let Err(e) = write_status(&api, &body).await {
        tracing::debug!(error = %e, "could not record the failed create");
    }
}
