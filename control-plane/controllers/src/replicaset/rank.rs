//! Which Pods a ReplicaSet deletes first when it has too many: upstream's
//! `ActivePodsWithRanks` order, earliest in startup first, so a scale-down
//! costs as little availability as possible:
//! unassigned < assigned; Pending < Unknown < Running; not ready < ready;
//! lower `controller.kubernetes.io/pod-deletion-cost` first; more Pods of
//! the same owner on its node first; ready for less time first; more
//! container restarts first; newer first.
//!
//! Times compare in logarithmic buckets (upstream's LogarithmicScaleDown,
//! on by default since 1.22): Pods created 1 h 5 min and 1 h 10 min ago
//! rank alike, so scaling down does not always pick the very newest and
//! leave the oldest forever. Upstream breaks a tie inside a bucket by uid
//! at once; here the remaining criteria come first and uid last, which
//! makes the order total (Rust's sort needs one).
use std::cmp::Reverse;
use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::{DateTime, Utc};

use crate::pods;

pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The first `count` Pods of `pods` in deletion order. `related` are the
/// Pods of every ReplicaSet with the same controller (a Deployment's
/// ReplicaSets): a Pod sharing its node with more of them goes first.
pub fn pods_to_delete<'a>(
    pods: &[&'a Pod],
    related: &[&Pod],
    count: usize,
    now: DateTime<Utc>,
) -> Vec<&'a Pod> {
    if count >= pods.len() {
        return pods.to_vec();
    }
    let mut on_node: HashMap<&str, i64> = HashMap::new();
    for p in related.iter().filter(|p| pods::is_active(p)) {
        *on_node.entry(node(p)).or_default() += 1;
    }
    let mut keyed: Vec<(Key, &Pod)> = pods
        .iter()
        .map(|p| {
            let rank = on_node.get(node(p)).copied().unwrap_or(0);
            (key(p, rank, now), *p)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().take(count).map(|(_, p)| p).collect()
}

type Key = (
    bool,
    u8,
    bool,
    i32,
    Reverse<i64>,
    i64,
    Reverse<i32>,
    Reverse<i32>,
    i64,
    String,
);

fn key(p: &Pod, rank: i64, now: DateTime<Utc>) -> Key {
    let ready = pods::is_ready(p);
    let (restarts, sidecar_restarts) = max_restarts(p);
    (
        !node(p).is_empty(),
        phase_ordinal(pods::phase(p)),
        ready,
        deletion_cost(p),
        Reverse(rank),
        if ready {
            bucket(pods::ready_since(p), now)
        } else {
            0
        },
        Reverse(restarts),
        Reverse(sidecar_restarts),
        bucket(p.metadata.creation_timestamp.as_ref().map(|t| t.0), now),
        p.metadata.uid.clone().unwrap_or_default(),
    )
}

fn node(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// Pending < Unknown < Running; anything else (no phase yet) as Pending.
fn phase_ordinal(phase: &str) -> u8 {
    match phase {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn deletion_cost(p: &Pod) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Highest restart count of regular containers, then of restartable
/// (sidecar) init containers.
fn max_restarts(p: &Pod) -> (i32, i32) {
    let Some(status) = p.status.as_ref() else {
        return (0, 0);
    };
    let regular = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let sidecars: Vec<&str> = p
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let sidecar = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| sidecars.contains(&c.name.as_str()))
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    (regular, sidecar)
}

/// floor(log2(age in ns)): younger is smaller; an unknown time sorts
/// first (upstream's `afterOrZero`), a time not in the past as -1.
fn bucket(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> i64 {
    let Some(t) = t else {
        return i64::MIN;
    };
    match (now - t).num_nanoseconds() {
        Some(d) if d > 0 => i64::from(63 - (d as u64).leading_zeros()),
        Some(_) => -1,
        None => i64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, ContainerStatus};

    use super::*;
    use crate::pods::test_pods::*;

    fn first(pods: &[Pod], related: &[Pod]) -> String {
        let p: Vec<&Pod> = pods.iter().collect();
        let r: Vec<&Pod> = related.iter().collect();
        pods_to_delete(&p, &r, 1, t(100_000))[0]
            .metadata
            .name
            .clone()
            .unwrap()
    }

    #[test]
    fn unassigned_goes_before_assigned() {
        let pods = [on_node(pod("assigned"), "n1"), pod("unassigned")];
        assert_eq!(first(&pods, &[]), "unassigned");
    }

    #[test]
    fn pending_before_unknown_before_running() {
        let pods = [
            phase(on_node(pod("running"), "n"), "Running"),
            phase(on_node(pod("unknown"), "n"), "Unknown"),
            phase(on_node(pod("pending"), "n"), "Pending"),
        ];
        assert_eq!(first(&pods, &[]), "pending");
        assert_eq!(first(&pods[..2], &[]), "unknown");
    }

    #[test]
    fn not_ready_before_ready() {
        let pods = [
            ready(on_node(pod("ready"), "n"), 0),
            phase(on_node(pod("notready"), "n"), "Running"),
        ];
        assert_eq!(first(&pods, &[]), "notready");
    }

    #[test]
    fn lower_deletion_cost_first() {
        let mut cheap = ready(on_node(pod("cheap"), "n"), 0);
        cheap.metadata.annotations = Some(BTreeMap::from([(
            DELETION_COST_ANNOTATION.into(),
            "-5".into(),
        )]));
        let pods = [ready(on_node(pod("dear"), "n"), 0), cheap];
        assert_eq!(first(&pods, &[]), "cheap");
    }

    #[test]
    fn doubled_up_on_a_node_first() {
        let pods = [
            ready(on_node(pod("alone"), "n1"), 0),
            ready(on_node(pod("crowded"), "n2"), 0),
        ];
        let related = [
            on_node(pod("x"), "n2"),
            on_node(pod("y"), "n2"),
            on_node(pod("z"), "n1"),
        ];
        assert_eq!(first(&pods, &related), "crowded");
    }

    #[test]
    fn inactive_related_pods_do_not_crowd_a_node() {
        let pods = [
            ready(on_node(pod("a"), "n1"), 0),
            ready(on_node(pod("b"), "n2"), 0),
        ];
        let related = [
            on_node(pod("x"), "n1"),
            terminating(on_node(pod("y"), "n2")),
            terminating(on_node(pod("z"), "n2")),
        ];
        assert_eq!(first(&pods, &related), "a");
    }

    #[test]
    fn ready_for_less_time_first() {
        let pods = [
            ready(on_node(pod("long"), "n"), 0),
            ready(on_node(pod("short"), "n"), 99_000),
        ];
        assert_eq!(first(&pods, &[]), "short");
    }

    #[test]
    fn more_restarts_first() {
        let pods = [
            restarts(ready(on_node(pod("steady"), "n"), 0), 0),
            restarts(ready(on_node(pod("flappy"), "n"), 0), 7),
        ];
        assert_eq!(first(&pods, &[]), "flappy");
    }

    #[test]
    fn sidecar_restarts_break_a_tie() {
        let mut flappy = ready(on_node(pod("flappy"), "n"), 0);
        flappy.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: "side".into(),
            restart_policy: Some("Always".into()),
            ..Default::default()
        }]);
        flappy.status.as_mut().unwrap().init_container_statuses = Some(vec![ContainerStatus {
            name: "side".into(),
            restart_count: 3,
            ..Default::default()
        }]);
        let pods = [ready(on_node(pod("steady"), "n"), 0), flappy];
        assert_eq!(first(&pods, &[]), "flappy");
    }

    #[test]
    fn newer_first() {
        let pods = [
            created(on_node(pod("old"), "n"), 0),
            created(on_node(pod("new"), "n"), 99_000),
        ];
        assert_eq!(first(&pods, &[]), "new");
    }

    #[test]
    fn close_ages_rank_alike_and_fall_to_uid() {
        // 1000 s and 1010 s old: one log2 bucket.
        let pods = [
            created(on_node(pod("b"), "n"), 99_000),
            created(on_node(pod("a"), "n"), 98_990),
        ];
        assert_eq!(first(&pods, &[]), "a", "uid-a < uid-b");
    }

    #[test]
    fn earlier_criteria_win_over_later_ones() {
        // Unassigned but old beats assigned, new, not ready.
        let pods = [
            created(pod("unassigned-old"), 0),
            created(on_node(pod("assigned-new"), "n"), 99_000),
        ];
        assert_eq!(first(&pods, &[]), "unassigned-old");
    }

    #[test]
    fn deleting_everything_needs_no_order() {
        let pods = [pod("a"), pod("b")];
        let p: Vec<&Pod> = pods.iter().collect();
        assert_eq!(pods_to_delete(&p, &[], 5, t(0)).len(), 2);
        assert_eq!(pods_to_delete(&p, &[], 1, t(0)).len(), 1);
    }
}
