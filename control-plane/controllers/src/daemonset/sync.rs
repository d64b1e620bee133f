//! The DaemonSet's decisions, pure (upstream's `manage`, `rollingUpdate`
//! with maxSurge 0, and `updateDaemonSetStatus`): from each node's
//! [`Placement`] and the DaemonSet's Pods grouped by target node, which
//! nodes get a Pod, which Pods go, and the status counters.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::chrono::{DateTime, Utc};

use super::placement::{Placement, target_node};
use crate::pods;

/// The label carrying the hash of the template a Pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// Nodes by name with where their daemon Pod stands.
pub type Nodes = BTreeMap<String, Placement>;

/// What one sync does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan<'a> {
    /// Nodes that get a new Pod.
    pub create_on: Vec<String>,
    pub delete: Vec<&'a Pod>,
}

impl Plan<'_> {
    pub fn is_empty(&self) -> bool {
        self.create_on.is_empty() && self.delete.is_empty()
    }
}

/// The DaemonSet's Pods not being deleted, by target node (oldest first);
/// a Pod with no target node is under `""`.
pub fn by_node<'a>(owned: &[&'a Pod]) -> BTreeMap<String, Vec<&'a Pod>> {
    let mut m: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in owned
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        m.entry(target_node(p).unwrap_or_default().to_string())
            .or_default()
            .push(p);
    }
    for pods in m.values_mut() {
        pods.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
    }
    m
}

fn finished(p: &Pod) -> bool {
    matches!(pods::phase(p), "Failed" | "Succeeded")
}

/// Upstream's `podsShouldBeOnNode` over every node, plus Pods for nodes
/// that no longer exist: a node that should run a Pod and has none gets
/// one; a finished Pod is replaced; extra Pods on a node go (the oldest
/// stays); a node that must not run one loses its Pods.
pub fn manage<'a>(nodes: &Nodes, pods: &BTreeMap<String, Vec<&'a Pod>>) -> Plan<'a> {
    let mut plan = Plan::default();
    for (name, place) in nodes {
        let on_node = pods.get(name).map(Vec::as_slice).unwrap_or_default();
        if !place.should_continue_running {
            plan.delete.extend(on_node);
            continue;
        }
        let (done, running): (Vec<&Pod>, Vec<&Pod>) =
            on_node.iter().copied().partition(|p| finished(p));
        plan.delete.extend(done);
        if running.is_empty() {
            if place.should_run {
                plan.create_on.push(name.clone());
            }
        } else {
            plan.delete.extend(running.into_iter().skip(1));
        }
    }
    for (name, on_node) in pods {
        if !nodes.contains_key(name) {
            plan.delete.extend(on_node);
        }
    }
    plan
}

/// `maxUnavailable` against the number of nodes that should run a Pod,
/// percentages rounded up (upstream's `unavailableCount`); at least 1 so
/// a rollout always moves.
pub fn max_unavailable(ds: &DaemonSet, desired: i32) -> i32 {
    let v = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    let n = match v {
        IntOrString::Int(i) => i,
        IntOrString::String(s) => {
            let pct = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .unwrap_or(0);
            ((i64::from(desired) * pct + 99) / 100) as i32
        }
    };
    n.max(1)
}

pub fn is_rolling_update(ds: &DaemonSet) -> bool {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

fn updated(p: &Pod, hash: &str) -> bool {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .is_some_and(|h| h == hash)
}

/// Upstream's `rollingUpdate` with maxSurge 0, run when [`manage`] has
/// nothing to do (so every node holds at most one Pod): old Pods that are
/// not available go at once; available old Pods go while fewer than
/// `max_unavailable` nodes are without an available Pod. The node's new
/// Pod is then created by the next [`manage`].
pub fn rolling_deletes<'a>(
    pods: &BTreeMap<String, Vec<&'a Pod>>,
    hash: &str,
    max_unavailable: i32,
    min_ready_seconds: i32,
    now: DateTime<Utc>,
) -> Vec<&'a Pod> {
    let available = |p: &Pod| pods::is_available(p, min_ready_seconds, now);
    let mut unavailable = 0;
    let mut broken_old = Vec::new();
    let mut candidates = Vec::new();
    for on_node in pods.values() {
        let [pod] = on_node.as_slice() else {
            unavailable += 1;
            continue;
        };
        match (updated(pod, hash), available(pod)) {
            (true, true) => {}
            (true, false) => unavailable += 1,
            (false, false) => broken_old.push(*pod),
            (false, true) => candidates.push(*pod),
        }
    }
    let room = (max_unavailable - unavailable).max(0) as usize;
    broken_old.extend(candidates.into_iter().take(room));
    broken_old
}

/// Upstream's `updateDaemonSetStatus` counters.
pub fn status(
    ds: &DaemonSet,
    nodes: &Nodes,
    pods: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    now: DateTime<Utc>,
) -> DaemonSetStatus {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let mut s = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    for (name, place) in nodes {
        let first = pods.get(name).and_then(|p| p.first());
        if place.should_run {
            s.desired_number_scheduled += 1;
            if let Some(p) = first {
                s.current_number_scheduled += 1;
                if pods::is_ready(p) {
                    s.number_ready += 1;
                }
                if pods::is_available(p, min_ready, now) {
                    s.number_available = Some(s.number_available.unwrap_or(0) + 1);
                }
                if updated(p, hash) {
                    s.updated_number_scheduled = Some(s.updated_number_scheduled.unwrap_or(0) + 1);
                }
            }
        } else if first.is_some() {
            s.number_misscheduled += 1;
        }
    }
    let available = s.number_available.unwrap_or(0);
    s.number_available = Some(available);
    s.updated_number_scheduled = Some(s.updated_number_scheduled.unwrap_or(0));
    s.number_unavailable = Some(s.desired_number_scheduled - available);
    s
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{
        DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
    };

    use super::*;
    use crate::daemonset::placement::pin_to_node;
    use crate::pods::test_pods::{created, phase, pod, ready, t, terminating};

    const RUN: Placement = Placement {
        should_run: true,
        should_continue_running: true,
    };
    const STAY: Placement = Placement {
        should_run: false,
        should_continue_running: true,
    };
    const NEVER: Placement = Placement {
        should_run: false,
        should_continue_running: false,
    };

    fn nodes(n: &[(&str, Placement)]) -> Nodes {
        n.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn on(node: &str, name: &str, hash: &str) -> Pod {
        let mut p = pod(name);
        pin_to_node(p.spec.as_mut().unwrap(), node);
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), hash.into());
        p
    }

    fn names(pods: &[&Pod]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn each_node_that_should_run_and_has_no_pod_gets_one() {
        let a = on("a", "pa", "h");
        let owned = [&a];
        let plan = manage(
            &nodes(&[("a", RUN), ("b", RUN), ("c", STAY), ("d", NEVER)]),
            &by_node(&owned),
        );
        assert_eq!(plan.create_on, vec!["b".to_string()]);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn a_terminating_pod_does_not_hold_its_node() {
        let a = terminating(on("a", "pa", "h"));
        let owned = [&a];
        let plan = manage(&nodes(&[("a", RUN)]), &by_node(&owned));
        assert_eq!(plan.create_on, vec!["a".to_string()]);
    }

    #[test]
    fn pods_go_from_nodes_that_must_not_run_them_or_are_gone() {
        let (a, b, c) = (on("a", "pa", "h"), on("b", "pb", "h"), on("c", "pc", "h"));
        let owned = [&a, &b, &c];
        let plan = manage(&nodes(&[("a", NEVER), ("b", STAY)]), &by_node(&owned));
        assert_eq!(names(&plan.delete), ["pa", "pc"]);
        assert!(plan.create_on.is_empty());
    }

    #[test]
    fn extra_pods_on_a_node_go_and_the_oldest_stays() {
        let old = created(on("a", "old", "h"), 1);
        let new = created(on("a", "new", "h"), 5);
        let owned = [&new, &old];
        let plan = manage(&nodes(&[("a", RUN)]), &by_node(&owned));
        assert_eq!(names(&plan.delete), ["new"]);
    }

    #[test]
    fn a_failed_pod_is_replaced() {
        let failed = phase(on("a", "pa", "h"), "Failed");
        let owned = [&failed];
        let plan = manage(&nodes(&[("a", RUN)]), &by_node(&owned));
        assert_eq!(names(&plan.delete), ["pa"]);
        assert_eq!(plan.create_on, vec!["a".to_string()]);
    }

    fn ds(max_unavailable: Option<IntOrString>) -> DaemonSet {
        DaemonSet {
            spec: Some(DaemonSetSpec {
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_unavailable,
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn max_unavailable_is_absolute_or_a_percentage_rounded_up() {
        assert_eq!(max_unavailable(&ds(None), 10), 1);
        assert_eq!(max_unavailable(&ds(Some(IntOrString::Int(3))), 10), 3);
        assert_eq!(
            max_unavailable(&ds(Some(IntOrString::String("25%".into()))), 10),
            3
        );
        assert_eq!(
            max_unavailable(&ds(Some(IntOrString::String("0%".into()))), 10),
            1,
            "a rollout always moves"
        );
    }

    #[test]
    fn a_rolling_update_replaces_no_more_than_max_unavailable_at_once() {
        let pods: Vec<Pod> = ["a", "b", "c"]
            .iter()
            .map(|n| ready(on(n, &format!("p{n}"), "old"), 0))
            .collect();
        let owned: Vec<&Pod> = pods.iter().collect();
        let del = rolling_deletes(&by_node(&owned), "new", 2, 0, t(10));
        assert_eq!(names(&del), ["pa", "pb"]);
    }

    #[test]
    fn an_unavailable_new_pod_uses_up_the_budget() {
        let a = on("a", "pa", "new");
        let b = ready(on("b", "pb", "old"), 0);
        let owned = [&a, &b];
        assert!(rolling_deletes(&by_node(&owned), "new", 1, 0, t(10)).is_empty());
        let a = ready(a, 0);
        let owned = [&a, &b];
        assert_eq!(
            names(&rolling_deletes(&by_node(&owned), "new", 1, 0, t(10))),
            ["pb"]
        );
    }

    #[test]
    fn an_unavailable_old_pod_is_replaced_whatever_the_budget() {
        let a = on("a", "pa", "new");
        let b = on("b", "pb", "old");
        let owned = [&a, &b];
        assert_eq!(
            names(&rolling_deletes(&by_node(&owned), "new", 1, 0, t(10))),
            ["pb"]
        );
    }

    #[test]
    fn status_counts_per_node() {
        let mut d = ds(None);
        d.metadata.generation = Some(4);
        let a = ready(on("a", "pa", "new"), 0);
        let b = ready(on("b", "pb", "old"), 0);
        let c = on("c", "pc", "new");
        let x = on("x", "px", "new");
        let owned = [&a, &b, &c, &x];
        let s = status(
            &d,
            &nodes(&[("a", RUN), ("b", RUN), ("c", RUN), ("e", RUN), ("x", NEVER)]),
            &by_node(&owned),
            "new",
            t(10),
        );
        assert_eq!(s.desired_number_scheduled, 4);
        assert_eq!(s.current_number_scheduled, 3);
        assert_eq!(s.number_ready, 2);
        assert_eq!(s.number_available, Some(2));
        assert_eq!(s.updated_number_scheduled, Some(2));
        assert_eq!(s.number_misscheduled, 1);
        assert_eq!(s.number_unavailable, Some(2));
        assert_eq!(s.observed_generation, Some(4));
    }
}
