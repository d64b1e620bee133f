//! The StatefulSet controller (upstream's pkg/controller/statefulset):
//! Pods named `<set>-<ordinal>` with stable identity labels and the
//! headless Service's hostname/subdomain, created and deleted in the
//! order [`sync::next_step`] decides (OrderedReady or Parallel), rolled
//! in reverse ordinal order down to the partition. This file is the I/O
//! edge: StatefulSet and Pod reflectors feed one applier.
//!
//! Where sluice differs: the API server serves no ControllerRevisions, so
//! revisions are hashes of the template (`controller-revision-hash`,
//! `status.currentRevision/updateRevision`) and a Pod below the partition
//! that is deleted comes back with the current spec's template, not the
//! old revision's; no storage provisioner exists, so a set with
//! `volumeClaimTemplates` gets no Pods, a `VolumeClaimsUnsupported`
//! condition and a Warning event; orphans are not adopted.
mod sync;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt, future::join_all, stream};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::Utc;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, applier, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use self::sync::REVISION_LABEL;
use crate::pods::{owner, template};
use crate::replicaset::expectations::{Cached, Expectations};
use crate::workload::{self, Backoff, Events};
use crate::{Context, api_error};

const CONTROLLER: &str = "statefulset-controller";

/// Upstream's identity labels.
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The condition a set asking for volume claims gets.
const NO_CLAIMS_CONDITION: &str = "VolumeClaimsUnsupported";
const NO_CLAIMS_MESSAGE: &str = "volumeClaimTemplates are not supported: this cluster has no \
     storage provisioner, so no PersistentVolumeClaims can be bound; no pods are created";

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
    expectations: Expectations,
    events: Events,
    backoff: Backoff,
}

fn key_of(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn controller_key(pod: &Pod) -> Option<String> {
    let r = owner::controller_of(&pod.metadata)?;
    (r.kind == "StatefulSet").then(|| key_of(&pod.namespace().unwrap_or_default(), &r.name))
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (set_reader, set_writer) = reflector::store();
    let pod_reader = ctx.pods.store();
    let c = Arc::new(Ctx {
        client: client.clone(),
        pods: pod_reader,
        expectations: Expectations::default(),
        events: Events::new(client.clone(), CONTROLLER),
        backoff: Backoff::default(),
    });

    let forget = c.clone();
    let sets = reflector(
        set_writer,
        watcher(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .inspect_ok(move |ev| {
        if let watcher::Event::Delete(s) = ev {
            let key = key_of(&s.namespace().unwrap_or_default(), &s.name_any());
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

    let queue = stream::select(
        controller::trigger_self(sets, ()),
        controller::trigger_with(pods, |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            owner::controller_of(&pod.metadata)
                .filter(|r| r.kind == "StatefulSet")
                .map(|r| ObjectRef::new(&r.name).within(&ns))
        }),
    )
    .take_until(ctx.shutdown.clone().cancelled_owned());

    applier(
        |s, c| workload::spawn(reconcile(s, c)),
        error_policy,
        c,
        set_reader,
        queue,
        controller::Config::default().concurrency(5),
    )
    .take_until(ctx.shutdown.clone().cancelled_owned())
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "statefulset controller");
        }
    })
    .await;
    Ok(())
}

fn error_policy(s: Arc<StatefulSet>, err: &ReconcileError, c: Arc<Ctx>) -> Action {
    let key = key_of(&s.namespace().unwrap_or_default(), &s.name_any());
    tracing::info!(statefulset = %key, error = %err, "sync failed; retrying");
    Action::requeue(c.backoff.failed(&key))
}

async fn reconcile(s: Arc<StatefulSet>, c: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = s.namespace().unwrap_or_default();
    let key = key_of(&ns, &s.name_any());
    let span = tracing::info_span!("reconcile", statefulset = %key);
    let res = sync_stateful_set(&s, &c, &ns, &key).instrument(span).await;
    if res.is_ok() {
        c.backoff.succeeded(&key);
    }
    res
}

fn asks_for_claims(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .is_some_and(|v| !v.is_empty())
}

async fn sync_stateful_set(
    set: &StatefulSet,
    c: &Ctx,
    ns: &str,
    key: &str,
) -> Result<Action, ReconcileError> {
    c.pods
        .wait_until_ready()
        .await
        .map_err(|_| ReconcileError::CacheGone)?;
    let now = Utc::now();
    let name = set.name_any();
    let satisfied = c.expectations.satisfied(key, Instant::now(), |n| {
        c.pods.get(&ObjectRef::new(n).within(ns)).map(|p| Cached {
            uid: p.uid().unwrap_or_default(),
            terminating: p.metadata.deletion_timestamp.is_some(),
        })
    });
    let written = set
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let revision = template::compute_hash(
        &written,
        set.status.as_ref().and_then(|s| s.collision_count),
    );
    let uid = set.uid().unwrap_or_default();
    let all = c.pods.state();
    let by_ordinal: BTreeMap<i32, &Pod> = all
        .iter()
        .map(|p| &**p)
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .filter(|p| owner::controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .filter_map(|p| Some((sync::ordinal_of(&name, &p.name_any())?, p)))
        .collect();

    let claims = asks_for_claims(set);
    let mut manage_error = None;
    if claims {
        c.events.warning(
            &set.object_ref(&()),
            "FailedCreate",
            "Create",
            NO_CLAIMS_MESSAGE.into(),
        );
    } else if satisfied && set.metadata.deletion_timestamp.is_none() {
        let step = sync::next_step(set, &by_ordinal, &revision);
        let created = create_pods(set, c, ns, key, &revision, &step.create).await;
        let deleted = delete_pods(set, c, ns, key, &step.delete).await;
        manage_error = created.err().or(deleted.err());
    }

    let mut status = sync::status(set, &by_ordinal, &revision, now);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != NO_CLAIMS_CONDITION);
    if claims {
        let since = set
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == NO_CLAIMS_CONDITION))
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        conditions.push(StatefulSetCondition {
            type_: NO_CLAIMS_CONDITION.into(),
            status: "True".into(),
            reason: Some("NoStorageProvisioner".into()),
            message: Some(NO_CLAIMS_MESSAGE.into()),
            last_transition_time: Some(since),
        });
    }
    if conditions.is_empty() {
        status.conditions = None;
    }
    if set.status.as_ref() != Some(&status) {
        let mut body = json!({ "status": status });
        if status.conditions.is_none() {
            body["status"]["conditions"] = serde_json::Value::Null;
        }
        Api::<StatefulSet>::namespaced(c.client.clone(), ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(body))
            .await?;
    }
    if let Some(e) = manage_error {
        return Err(ReconcileError::Manage(e));
    }
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let next = by_ordinal
        .values()
        .filter_map(|p| crate::pods::available_after(p, min_ready, now))
        .min();
    Ok(next.map_or_else(Action::await_change, Action::requeue))
}

/// The Pod of `ordinal`: the template, its identity labels, the
/// revision, and `hostname`/`subdomain` for the governing Service's DNS.
fn pod_for(set: &StatefulSet, revision: &str, ordinal: i32) -> Pod {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.name_any();
    let name = sync::pod_name(&set_name, ordinal);
    let mut pod = template::pod_from_template(&spec.template, owner::controller_ref(set));
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());
    let pod_spec = pod.spec.get_or_insert_with(Default::default);
    pod_spec.hostname = Some(name);
    pod_spec.subdomain = spec.service_name.filter(|s| !s.is_empty());
    pod
}

async fn create_pods(
    set: &StatefulSet,
    c: &Ctx,
    ns: &str,
    key: &str,
    revision: &str,
    ordinals: &[i32],
) -> Result<(), String> {
    if ordinals.is_empty() {
        return Ok(());
    }
    let regarding = set.object_ref(&());
    let api = Api::<Pod>::namespaced(c.client.clone(), ns);
    let results = join_all(ordinals.iter().map(|o| {
        let pod = pod_for(set, revision, *o);
        let api = api.clone();
        async move { api.create(&PostParams::default(), &pod).await }
    }))
    .await;
    let mut created = Vec::new();
    let mut first_err = None;
    for (o, r) in ordinals.iter().zip(results) {
        let name = sync::pod_name(&set.name_any(), *o);
        match r {
            Ok(p) => {
                c.events.normal(
                    &regarding,
                    "SuccessfulCreate",
                    "Create",
                    format!(
                        "create Pod {name} in StatefulSet {} successful",
                        set.name_any()
                    ),
                );
                created.push((p.uid().unwrap_or_default(), name));
            }
            // Our cache is behind; the next sync sees it.
            Err(e) if api_error::is_already_exists(&e) => {}
            Err(e) if api_error::is_namespace_terminating(&e) => {}
            Err(e) => {
                let msg = workload::api_message(&e);
                c.events.warning(
                    &regarding,
                    "FailedCreate",
                    "Create",
                    format!(
                        "create Pod {name} in StatefulSet {} failed error: {msg}",
                        set.name_any()
                    ),
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
    set: &StatefulSet,
    c: &Ctx,
    ns: &str,
    key: &str,
    victims: &[&Pod],
) -> Result<(), String> {
    let set_name = set.name_any();
    let notes = workload::DeleteNotes {
        deleted: &|name| format!("delete Pod {name} in StatefulSet {set_name} successful"),
        failed: &|name, msg| {
            format!("delete Pod {name} in StatefulSet {set_name} failed error: {msg}")
        },
        conflict_is_gone: true,
    };
    let regarding = set.object_ref(&());
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
