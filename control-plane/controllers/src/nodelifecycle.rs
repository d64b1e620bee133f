//! Node lifecycle, like upstream's node lifecycle controller and its
//! taint-eviction controller: a Node whose kubelet stopped renewing its
//! Lease in kube-node-lease (and stopped posting status) for
//! `node_monitor_grace_period` gets its conditions set to Unknown and the
//! `node.kubernetes.io/unreachable` taints; a Node whose kubelet reports
//! Ready=False gets the `not-ready` ones. Pods on a Node with a NoExecute
//! taint they do not tolerate are deleted, at once or after their
//! `tolerationSeconds` (the API server gives every Pod 300 s for these two
//! taints), so their owners recreate them on healthy Nodes.
//!
//! Time is observed locally, as upstream does: a Lease counts as renewed
//! when this controller sees its renewTime change, so clocks of the
//! kubelets' machines never need to agree with ours.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, NodeCondition, Pod, Taint, Toleration},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    chrono::{DateTime, Utc},
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt as _,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::time::Instant;

use crate::Context;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// How often Node health is looked at (upstream `--node-monitor-period`).
const MONITOR_PERIOD: Duration = Duration::from_secs(5);

/// The Node's health as the controller judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// The kubelet says Ready=False.
    NotReady,
    /// Nothing heard from the kubelet for the grace period (or it said
    /// Unknown).
    Unreachable,
}

/// The Ready condition of a Node, if any.
fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Health from the kubelet's last word and how long ago (local time) we
/// last heard from it, by Lease or status.
pub fn health(node: &Node, silent_for: Duration, grace: Duration) -> Health {
    if silent_for > grace {
        return Health::Unreachable;
    }
    match ready_condition(node).map(|c| c.status.as_str()) {
        Some("True") => Health::Ready,
        Some("False") => Health::NotReady,
        _ => Health::Unreachable,
    }
}

/// The taints a Node of this health carries (NoSchedule keeps new pods
/// off, NoExecute evicts the ones there), upstream's keys.
pub fn taints_for(health: Health) -> Vec<(&'static str, &'static str)> {
    match health {
        Health::Ready => vec![],
        Health::NotReady => vec![(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
        Health::Unreachable => vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
    }
}

/// The Node's taints with the lifecycle taints made to match `health`
/// (others untouched; existing matching taints keep their timeAdded), or
/// None when nothing changes.
pub fn reconcile_taints(node: &Node, health: Health, now: DateTime<Utc>) -> Option<Vec<Taint>> {
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let want = taints_for(health);
    let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| !ours(t) || want.contains(&(t.key.as_str(), t.effect.as_str())))
        .cloned()
        .collect();
    for (key, effect) in &want {
        if !next.iter().any(|t| t.key == *key && t.effect == *effect) {
            next.push(Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                time_added: (*effect == "NoExecute").then_some(Time(now)),
                value: None,
            });
        }
    }
    (next != current).then_some(next)
}

/// Whether `tol` tolerates `taint` (upstream's ToleratesTaint).
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = tol.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => {
            key == taint.key
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// When a pod on a node with these taints must go: None if it tolerates
/// every NoExecute taint forever, else the earliest deadline (now for an
/// untolerated taint; timeAdded + tolerationSeconds otherwise).
pub fn eviction_time(pod: &Pod, taints: &[Taint], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut earliest: Option<DateTime<Utc>> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let due = if matching.is_empty() {
            now
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        } else {
            // The shortest of the matching tolerations wins, like upstream.
            let secs = matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .unwrap_or(0)
                .max(0);
            let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
            added + k8s_openapi::chrono::Duration::seconds(secs)
        };
        earliest = Some(earliest.map_or(due, |e| e.min(due)));
    }
    earliest
}

/// Local bookkeeping: when each Node was last heard from.
#[derive(Default)]
struct Heard {
    /// node -> (last seen lease renewTime / heartbeat, local instant it changed)
    by_node: HashMap<String, (String, Instant)>,
}

impl Heard {
    /// Records what the node shows now; returns how long it has been
    /// silent, in local time.
    fn silent_for(&mut self, node: &str, signal: String, now: Instant) -> Duration {
        let entry = self
            .by_node
            .entry(node.to_string())
            .or_insert_with(|| (signal.clone(), now));
        if entry.0 != signal {
            *entry = (signal, now);
        }
        now.saturating_duration_since(entry.1)
    }
}

/// What the kubelet last wrote: its Lease renewTime and its Ready
/// heartbeat, as one comparable value.
fn signal(node: &Node, lease: Option<&Lease>) -> String {
    let renew = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.to_rfc3339())
        .unwrap_or_default();
    let heartbeat = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0.to_rfc3339())
        .unwrap_or_default();
    format!("{renew}|{heartbeat}")
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let grace = ctx.config.node_monitor_grace_period;
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (leases, leases_w) = reflector::store::<Lease>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let node_api: Api<Node> = Api::all(client.clone());
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pod_api: Api<Pod> = Api::all(client.clone());
    let drive = |s: futures::stream::BoxStream<'static, ()>| tokio::spawn(s.for_each(|_| async {}));
    let tasks = [
        drive(
            watcher(node_api, watcher::Config::default())
                .default_backoff()
                .reflect(nodes_w)
                .map(|_| ())
                .boxed(),
        ),
        drive(
            watcher(lease_api, watcher::Config::default())
                .default_backoff()
                .reflect(leases_w)
                .map(|_| ())
                .boxed(),
        ),
        drive(
            watcher(pod_api, watcher::Config::default())
                .default_backoff()
                .reflect(pods_w)
                .map(|_| ())
                .boxed(),
        ),
    ];
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "node-controller".into(),
            instance: None,
        },
    );
    let ready = async {
        let _ = nodes.wait_until_ready().await;
        let _ = leases.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
    };
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {}
        _ = ready => {
            let mut heard = Heard::default();
            let mut health_of: BTreeMap<String, Health> = BTreeMap::new();
            loop {
                monitor(&client, &recorder, &nodes, &leases, &pods, &mut heard, &mut health_of, grace).await;
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(MONITOR_PERIOD) => {}
                }
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// One monitor pass over every Node.
#[allow(clippy::too_many_arguments)]
async fn monitor(
    client: &kube::Client,
    recorder: &Recorder,
    nodes: &Store<Node>,
    leases: &Store<Lease>,
    pods: &Store<Pod>,
    heard: &mut Heard,
    health_of: &mut BTreeMap<String, Health>,
    grace: Duration,
) {
    let now = Instant::now();
    let wall = Utc::now();
    let lease_by_node: HashMap<String, Arc<Lease>> = leases
        .state()
        .into_iter()
        .map(|l| (l.name_any(), l))
        .collect();
    let node_api: Api<Node> = Api::all(client.clone());
    let mut taints_by_node: HashMap<String, Vec<Taint>> = HashMap::new();
    let live: Vec<Arc<Node>> = nodes.state();
    heard
        .by_node
        .retain(|n, _| live.iter().any(|x| x.name_any() == *n));
    health_of.retain(|n, _| live.iter().any(|x| x.name_any() == *n));
    for node in &live {
        let name = node.name_any();
        let span = tracing::info_span!("node_lifecycle", node = %name);
        let _g = span.enter();
        let silent = heard.silent_for(
            &name,
            signal(node, lease_by_node.get(&name).map(|l| l.as_ref())),
            now,
        );
        let h = health(node, silent, grace);
        if h == Health::Unreachable && silent > grace {
            mark_unknown(&node_api, node, wall).await;
        }
        let before = health_of.insert(name.clone(), h);
        if before.is_some_and(|b| b != h) || (before.is_none() && h != Health::Ready) {
            let (type_, reason, note) = match h {
                Health::Ready => (
                    EventType::Normal,
                    "NodeReady",
                    format!("Node {name} status is now: NodeReady"),
                ),
                Health::NotReady => (
                    EventType::Normal,
                    "NodeNotReady",
                    format!("Node {name} status is now: NodeNotReady"),
                ),
                Health::Unreachable => (
                    EventType::Normal,
                    "NodeNotReady",
                    format!(
                        "Node {name} status is now: NodeNotReady (kubelet stopped posting node status)"
                    ),
                ),
            };
            publish(recorder, node.as_ref(), type_, reason, note).await;
        }
        let taints = match reconcile_taints(node, h, wall) {
            Some(next) => {
                let patch = json!({"spec": {"taints": next}});
                match node_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => tracing::info!(health = ?h, "lifecycle taints updated"),
                    Err(e) => tracing::warn!(error = %e, "updating lifecycle taints"),
                }
                next
            }
            None => node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default(),
        };
        taints_by_node.insert(name, taints);
    }
    // Taint-based eviction.
    for pod in pods.state() {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(taints) = taints_by_node.get(&node) else {
            continue;
        };
        let Some(due) = eviction_time(&pod, taints, wall) else {
            continue;
        };
        if due > wall {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api.delete(&pod.name_any(), &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{}", pod.name_any()), %node, "evicted by taint");
                publish(
                    recorder,
                    pod.as_ref(),
                    EventType::Normal,
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {ns}/{}", pod.name_any()),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(error = %e, "evicting a pod"),
        }
    }
}

/// Sets the kubelet-owned conditions Unknown, as upstream does when the
/// kubelet went silent (once; later passes find them Unknown already).
async fn mark_unknown(api: &Api<Node>, node: &Node, now: DateTime<Utc>) {
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if conditions.iter().all(|c| c.status == "Unknown") && !conditions.is_empty() {
        return;
    }
    let mut next = conditions.clone();
    for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        let c = match next.iter_mut().find(|c| c.type_ == t) {
            Some(c) => c,
            None => {
                next.push(NodeCondition {
                    type_: t.into(),
                    ..Default::default()
                });
                next.last_mut().expect("just pushed")
            }
        };
        if c.status != "Unknown" {
            c.status = "Unknown".into();
            c.reason = Some("NodeStatusUnknown".into());
            c.message = Some("Kubelet stopped posting node status.".into());
            c.last_transition_time = Some(Time(now));
        }
    }
    let patch = json!({"status": {"conditions": next}});
    if let Err(e) = api
        .patch_status(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        tracing::warn!(error = %e, "marking node conditions Unknown");
    }
}

async fn publish<K>(recorder: &Recorder, obj: &K, type_: EventType, reason: &str, note: String)
where
    K: kube::Resource<DynamicType = ()>,
{
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::debug!(error = %e, reason, "publishing an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: Option<&str>, taints: serde_json::Value) -> Node {
        let conditions = match ready {
            Some(s) => json!([{"type": "Ready", "status": s}]),
            None => json!([]),
        };
        serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": taints},
            "status": {"conditions": conditions},
        }))
        .expect("node")
    }

    fn pod(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": [], "tolerations": tolerations},
        }))
        .expect("pod")
    }

    const GRACE: Duration = Duration::from_secs(40);

    #[test]
    fn health_follows_the_kubelet_until_it_goes_silent() {
        let s = Duration::from_secs(1);
        assert_eq!(
            health(&node(Some("True"), json!([])), s, GRACE),
            Health::Ready
        );
        assert_eq!(
            health(&node(Some("False"), json!([])), s, GRACE),
            Health::NotReady
        );
        assert_eq!(
            health(&node(None, json!([])), s, GRACE),
            Health::Unreachable
        );
        assert_eq!(
            health(&node(Some("True"), json!([])), GRACE + s, GRACE),
            Health::Unreachable
        );
        assert_eq!(
            health(&node(Some("True"), json!([])), GRACE, GRACE),
            Health::Ready
        );
    }

    #[test]
    fn silence_is_measured_from_the_last_change_seen_locally() {
        let mut heard = Heard::default();
        let t0 = Instant::now();
        assert_eq!(heard.silent_for("n1", "a".into(), t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(
            heard.silent_for("n1", "a".into(), later),
            Duration::from_secs(30)
        );
        assert_eq!(heard.silent_for("n1", "b".into(), later), Duration::ZERO);
    }

    #[test]
    fn an_unreachable_node_gets_both_unreachable_taints_and_keeps_its_own() {
        let now = Utc::now();
        let n = node(
            Some("True"),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        );
        let next = reconcile_taints(&n, Health::Unreachable, now).expect("changed");
        let keys: Vec<(String, String)> = next
            .iter()
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("dedicated".into(), "NoSchedule".into()),
                (UNREACHABLE.into(), "NoSchedule".into()),
                (UNREACHABLE.into(), "NoExecute".into()),
            ]
        );
        assert_eq!(next[2].time_added, Some(Time(now)));
    }

    #[test]
    fn a_recovered_node_loses_the_lifecycle_taints_and_a_ready_one_is_left_alone() {
        let now = Utc::now();
        let n = node(
            Some("True"),
            json!([{"key": UNREACHABLE, "effect": "NoExecute"}, {"key": "x", "effect": "NoSchedule"}]),
        );
        let next = reconcile_taints(&n, Health::Ready, now).expect("changed");
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].key, "x");
        let clean = node(Some("True"), json!([]));
        assert_eq!(reconcile_taints(&clean, Health::Ready, now), None);
    }

    #[test]
    fn taints_already_present_are_not_rewritten() {
        let now = Utc::now();
        let n = node(
            Some("False"),
            json!([
                {"key": NOT_READY, "effect": "NoSchedule"},
                {"key": NOT_READY, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"},
            ]),
        );
        assert_eq!(reconcile_taints(&n, Health::NotReady, now), None);
    }

    fn noexecute(key: &str, added: DateTime<Utc>) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(added)),
            value: None,
        }
    }

    #[test]
    fn a_pod_without_a_matching_toleration_is_evicted_at_once() {
        let now = Utc::now();
        let taints = [noexecute(
            UNREACHABLE,
            now - k8s_openapi::chrono::Duration::seconds(5),
        )];
        assert_eq!(eviction_time(&pod(json!([])), &taints, now), Some(now));
    }

    #[test]
    fn toleration_seconds_count_from_when_the_taint_was_added() {
        let now = Utc::now();
        let added = now - k8s_openapi::chrono::Duration::seconds(5);
        let taints = [noexecute(UNREACHABLE, added)];
        let p = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
        );
        assert_eq!(
            eviction_time(&p, &taints, now),
            Some(added + k8s_openapi::chrono::Duration::seconds(300))
        );
    }

    #[test]
    fn a_toleration_without_seconds_keeps_the_pod_forever() {
        let now = Utc::now();
        let taints = [noexecute(UNREACHABLE, now)];
        let p = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_time(&p, &taints, now), None);
    }

    #[test]
    fn noschedule_taints_never_evict() {
        let now = Utc::now();
        let taints = [Taint {
            key: UNREACHABLE.into(),
            effect: "NoSchedule".into(),
            time_added: None,
            value: None,
        }];
        assert_eq!(eviction_time(&pod(json!([])), &taints, now), None);
    }

    #[test]
    fn toleration_matching_follows_operator_key_value_and_effect() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoExecute".into(),
            time_added: None,
        };
        let tol =
            |v: serde_json::Value| -> Toleration { serde_json::from_value(v).expect("toleration") };
        assert!(tolerates(&tol(json!({"key": "k", "value": "v"})), &taint));
        assert!(!tolerates(&tol(json!({"key": "k", "value": "w"})), &taint));
        assert!(tolerates(
            &tol(json!({"key": "k", "operator": "Exists"})),
            &taint
        ));
        assert!(!tolerates(
            &tol(json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"})),
            &taint
        ));
        assert!(tolerates(&tol(json!({"operator": "Exists"})), &taint));
        assert!(!tolerates(
            &tol(json!({"key": "j", "operator": "Exists"})),
            &taint
        ));
    }
}
