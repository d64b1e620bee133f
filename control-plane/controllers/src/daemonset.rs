//! The DaemonSet controller (upstream's pkg/controller/daemon): one Pod
//! per node that should run it ([`placement`]), placed by the scheduler
//! through a required node affinity on `metadata.name`; RollingUpdate
//! (maxUnavailable) and OnDelete; status counters. Decisions are in
//! [`sync`] (pure); this file is the I/O edge: DaemonSet, Pod and Node
//! reflectors feed one applier (a Pod wakes its DaemonSet, a Node every
//! DaemonSet), with the ReplicaSet's expectations so a sync that runs
//! before its own creates are cached does not create twice.
//!
//! Where sluice differs: the API server serves no ControllerRevisions, so
//! the `controller-revision-hash` label is a hash of the template (as a
//! Deployment's `pod-template-hash`) and `kubectl rollout history/undo`
//! do not work for DaemonSets; orphans matching the selector are not
//! adopted.
mod placement;
mod sync;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt, future::join_all, stream};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::chrono::Utc;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, applier, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use self::sync::{HASH_LABEL, Nodes};
use crate::pods::owner;
use crate::pods::template;
use crate::replicaset::expectations::{Cached, Expectations};
use crate::workload::{self, Backoff, Events};
use crate::{Context, api_error};

const CONTROLLER: &str = "daemonset-controller";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("a cache is gone")]
    CacheGone,
    #[error("{0}")]
    Manage(String),
    #[error("reconcile task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

struct Ctx {
    client: kube::Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    expectations: Expectations,
    events: Events,
    backoff: Backoff,
}

fn key_of(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn controller_key(pod: &Pod) -> Option<String> {
    let r = owner::controller_of(&pod.metadata)?;
    (r.kind == "DaemonSet").then(|| key_of(&pod.namespace().unwrap_or_default(), &r.name))
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (ds_reader, ds_writer) = reflector::store();
    let pod_reader = ctx.pods.store();
    let (node_reader, node_writer) = reflector::store();
    let c = Arc::new(Ctx {
        client: client.clone(),
        pods: pod_reader,
        nodes: node_reader,
        expectations: Expectations::default(),
        events: Events::new(client.clone(), CONTROLLER),
        backoff: Backoff::default(),
    });

    let forget = c.clone();
    let daemon_sets = reflector(
        ds_writer,
        watcher(
            Api::<DaemonSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .inspect_ok(move |ev| {
        if let watcher::Event::Delete(ds) = ev {
            let key = key_of(&ds.namespace().unwrap_or_default(), &ds.name_any());
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

    let nodes = reflector(
        node_writer,
        watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff(),
    )
    .touched_objects();

    let all = ds_reader.clone();
    let queue = stream::select(
        stream::select(
            controller::trigger_self(daemon_sets, ()),
            controller::trigger_with(pods, |pod: Pod| {
                let ns = pod.namespace().unwrap_or_default();
                owner::controller_of(&pod.metadata)
                    .filter(|r| r.kind == "DaemonSet")
                    .map(|r| ObjectRef::new(&r.name).within(&ns))
            }),
        ),
        controller::trigger_with(nodes, move |_: Node| {
            all.state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        }),
    )
    .take_until(ctx.shutdown.clone().cancelled_owned());

    applier(
        |ds, c| workload::spawn(reconcile(ds, c)),
        error_policy,
        c,
        ds_reader,
        queue,
        controller::Config::default().concurrency(5),
    )
    .take_until(ctx.shutdown.clone().cancelled_owned())
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "daemonset controller");
        }
    })
    .await;
    Ok(())
}

fn error_policy(ds: Arc<DaemonSet>, err: &ReconcileError, c: Arc<Ctx>) -> Action {
    let key = key_of(&ds.namespace().unwrap_or_default(), &ds.name_any());
    tracing::info!(daemonset = %key, error = %err, "sync failed; retrying");
    Action::requeue(c.backoff.failed(&key))
}

async fn reconcile(ds: Arc<DaemonSet>, c: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = ds.namespace().unwrap_or_default();
    let key = key_of(&ns, &ds.name_any());
    let span = tracing::info_span!("reconcile", daemonset = %key);
    let res = sync_daemon_set(&ds, &c, &ns, &key).instrument(span).await;
    if res.is_ok() {
        c.backoff.succeeded(&key);
    }
    res
}

/// The template every Pod of `ds` is stamped from: the daemon
/// tolerations added, and the hash label of the template as written.
fn daemon_template(ds: &DaemonSet) -> (k8s_openapi::api::core::v1::PodTemplateSpec, String) {
    let spec = ds.spec.as_ref();
    let written = spec.map(|s| s.template.clone()).unwrap_or_default();
    let hash = template::compute_hash(&written, ds.status.as_ref().and_then(|s| s.collision_count));
    let mut t = written;
    let pod_spec = t.spec.get_or_insert_with(Default::default);
    pod_spec.tolerations = Some(placement::daemon_tolerations(pod_spec));
    t.metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    (t, hash)
}

async fn sync_daemon_set(
    ds: &DaemonSet,
    c: &Ctx,
    ns: &str,
    key: &str,
) -> Result<Action, ReconcileError> {
    for ready in [
        c.pods.wait_until_ready().await,
        c.nodes.wait_until_ready().await,
    ] {
        ready.map_err(|_| ReconcileError::CacheGone)?;
    }
    let now = Utc::now();
    let satisfied = c.expectations.satisfied(key, Instant::now(), |name| {
        c.pods
            .get(&ObjectRef::new(name).within(ns))
            .map(|p| Cached {
                uid: p.uid().unwrap_or_default(),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
    });
    let (tmpl, hash) = daemon_template(ds);
    let pod_spec = tmpl.spec.clone().unwrap_or_default();
    let nodes: Nodes = c
        .nodes
        .state()
        .iter()
        .map(|n| (n.name_any(), placement::placement(&pod_spec, n)))
        .collect();
    let uid = ds.uid().unwrap_or_default();
    let all_pods = c.pods.state();
    let owned: Vec<&Pod> = all_pods
        .iter()
        .map(|p| &**p)
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .filter(|p| owner::controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let by_node = sync::by_node(&owned);

    let mut manage_error = None;
    if satisfied && ds.metadata.deletion_timestamp.is_none() {
        let mut plan = sync::manage(&nodes, &by_node);
        if plan.is_empty() && sync::is_rolling_update(ds) {
            let status = sync::status(ds, &nodes, &by_node, &hash, now);
            let max = sync::max_unavailable(ds, status.desired_number_scheduled);
            let min_ready = ds
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0);
            plan.delete = sync::rolling_deletes(&by_node, &hash, max, min_ready, now);
            if !plan.delete.is_empty() {
                tracing::info!(
                    count = plan.delete.len(),
                    "rolling update: replacing old pods"
                );
            }
        }
        let created = create_pods(ds, c, ns, key, &tmpl, &plan.create_on).await;
        let deleted = delete_pods(ds, c, ns, key, &plan.delete).await;
        manage_error = created.err().or(deleted.err());
    }

    let status = sync::status(ds, &nodes, &by_node, &hash, now);
    if ds.status.as_ref() != Some(&status) {
        Api::<DaemonSet>::namespaced(c.client.clone(), ns)
            .patch_status(
                &ds.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
    }
    if let Some(e) = manage_error {
        return Err(ReconcileError::Manage(e));
    }
    // A ready pod becomes available after minReadySeconds with no event.
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let next = owned
        .iter()
        .filter_map(|p| crate::pods::available_after(p, min_ready, now))
        .min();
    Ok(next.map_or_else(Action::await_change, Action::requeue))
}

async fn create_pods(
    ds: &DaemonSet,
    c: &Ctx,
    ns: &str,
    key: &str,
    tmpl: &k8s_openapi::api::core::v1::PodTemplateSpec,
    on: &[String],
) -> Result<(), String> {
    if on.is_empty() {
        return Ok(());
    }
    let regarding = ds.object_ref(&());
    let api = Api::<Pod>::namespaced(c.client.clone(), ns);
    let pp = PostParams::default();
    tracing::info!(count = on.len(), "nodes without a daemon pod; creating");
    let results = join_all(on.iter().map(|node| {
        let mut pod = template::pod_from_template(tmpl, owner::controller_ref(ds));
        placement::pin_to_node(pod.spec.get_or_insert_with(Default::default), node);
        let api = api.clone();
        let pp = pp.clone();
        async move { api.create(&pp, &pod).await }
    }))
    .await;
    let mut created = Vec::new();
    let mut first_err = None;
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
            Err(e) if api_error::is_namespace_terminating(&e) => {}
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
    first_err.map_or(Ok(()), Err)
}

async fn delete_pods(
    ds: &DaemonSet,
    c: &Ctx,
    ns: &str,
    key: &str,
    victims: &[&Pod],
) -> Result<(), String> {
    let notes = workload::DeleteNotes {
        deleted: &|name| format!("Deleted pod: {name}"),
        failed: &|_, msg| format!("Error deleting: {msg}"),
        conflict_is_gone: false,
    };
    let regarding = ds.object_ref(&());
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
