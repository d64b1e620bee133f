//! The StatefulSet's decisions, pure (upstream's
//! `stateful_set_control.go`): from the set's Pods by ordinal, which
//! ordinals to create and which Pods to delete next, in the order the
//! pod management policy and the update strategy allow; and the status.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::{DateTime, Utc};

use crate::pods;

/// The label carrying the hash of the template a Pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The ordinal of a Pod named `<set>-<ordinal>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok().filter(|o: &i32| *o >= 0)
}

pub fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// What one sync does next.
#[derive(Debug, Default, PartialEq)]
pub struct Step<'a> {
    pub create: Vec<i32>,
    pub delete: Vec<&'a Pod>,
}

fn replicas(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0)
}

fn ordered_ready(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.pod_management_policy.as_deref())
        .is_none_or(|p| p != "Parallel")
}

/// RollingUpdate's partition; None for OnDelete.
fn partition(set: &StatefulSet) -> Option<i32> {
    let u = set.spec.as_ref()?.update_strategy.as_ref();
    if u.and_then(|u| u.type_.as_deref()) == Some("OnDelete") {
        return None;
    }
    Some(
        u.and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0),
    )
}

fn revision(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Running and Ready, and not being deleted: upstream's `isHealthy`.
fn healthy(p: &Pod) -> bool {
    !terminating(p) && pods::phase(p) == "Running" && pods::is_ready(p)
}

/// Upstream's sync order. For OrderedReady, one thing at a time: create
/// the lowest missing ordinal once every lower one is healthy; replace a
/// failed Pod; delete the highest condemned ordinal (>= replicas) once
/// every other Pod is healthy; then, RollingUpdate, delete the highest
/// ordinal >= partition not on `update_revision` once every Pod is
/// healthy (it is recreated at the new revision by the next sync).
/// Parallel creates and deletes at once but updates one at a time too.
pub fn next_step<'a>(
    set: &StatefulSet,
    by_ordinal: &BTreeMap<i32, &'a Pod>,
    update_revision: &str,
) -> Step<'a> {
    let n = replicas(set);
    let ordered = ordered_ready(set);
    let mut step = Step::default();

    // Failed or finished Pods are deleted, then recreated.
    for p in by_ordinal.values().copied() {
        if !terminating(p) && matches!(pods::phase(p), "Failed" | "Succeeded") {
            step.delete.push(p);
            if ordered {
                return step;
            }
        }
    }
    if !step.delete.is_empty() {
        return step;
    }

    for ord in 0..n {
        match by_ordinal.get(&ord) {
            None => {
                step.create.push(ord);
                if ordered {
                    return step;
                }
            }
            Some(p) if ordered && !healthy(p) => return step,
            Some(_) => {}
        }
    }
    if !step.create.is_empty() {
        return step;
    }

    // Condemned, highest first.
    let condemned: Vec<&'a Pod> = by_ordinal.range(n..).rev().map(|(_, p)| *p).collect();
    if ordered {
        let others_healthy = by_ordinal.range(..n).all(|(_, p)| healthy(p));
        if let Some(p) = condemned.first().copied() {
            if !terminating(p) && others_healthy {
                step.delete.push(p);
            }
            return step;
        }
    } else {
        step.delete
            .extend(condemned.into_iter().filter(|p| !terminating(p)));
        if !step.delete.is_empty() {
            return step;
        }
    }

    let Some(partition) = partition(set) else {
        return step;
    };
    if !by_ordinal.range(..n).all(|(_, p)| healthy(p)) {
        return step;
    }
    if let Some((_, p)) = by_ordinal
        .range(partition.max(0)..n)
        .rev()
        .find(|(_, p)| revision(p) != Some(update_revision))
    {
        step.delete.push(*p);
    }
    step
}

/// Upstream's status counters; `current_revision` becomes the update
/// revision once every replica runs it and is ready.
pub fn status(
    set: &StatefulSet,
    by_ordinal: &BTreeMap<i32, &Pod>,
    update_revision: &str,
    now: DateTime<Utc>,
) -> StatefulSetStatus {
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let old = set.status.clone().unwrap_or_default();
    let mut current_revision = old
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_revision.to_string());
    let mut s = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        update_revision: Some(update_revision.to_string()),
        ..Default::default()
    };
    let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
    for p in by_ordinal.values().filter(|p| !terminating(p)) {
        s.replicas += 1;
        if healthy(p) {
            ready += 1;
            if pods::is_available(p, min_ready, now) {
                available += 1;
            }
        }
        if revision(p) == Some(current_revision.as_str()) {
            current += 1;
        }
        if revision(p) == Some(update_revision) {
            updated += 1;
        }
    }
    let n = replicas(set);
    if updated == n && ready == n && s.replicas == n {
        current_revision = update_revision.to_string();
        current = updated;
    }
    s.ready_replicas = Some(ready);
    s.available_replicas = Some(available);
    s.current_replicas = Some(current);
    s.updated_replicas = Some(updated);
    s.current_revision = Some(current_revision);
    s
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
    };

    use super::*;
    use crate::pods::test_pods::{phase, pod, ready, t, terminating};

    fn set(replicas: i32, policy: &str, partition: i32) -> StatefulSet {
        StatefulSet {
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                pod_management_policy: Some(policy.into()),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateStatefulSetStrategy {
                        partition: Some(partition),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn at(ord: i32, rev: &str) -> Pod {
        let mut p = pod(&pod_name("web", ord));
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(REVISION_LABEL.into(), rev.into());
        p
    }

    fn healthy_at(ord: i32, rev: &str) -> Pod {
        ready(at(ord, rev), 0)
    }

    fn index(pods: &[Pod]) -> BTreeMap<i32, &Pod> {
        pods.iter()
            .map(|p| {
                (
                    ordinal_of("web", p.metadata.name.as_deref().unwrap()).unwrap(),
                    p,
                )
            })
            .collect()
    }

    fn names(step: &Step) -> Vec<String> {
        step.delete
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn ordinals_are_parsed_from_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web--1"), None);
    }

    #[test]
    fn ordered_ready_creates_the_next_ordinal_only_after_the_previous_is_ready() {
        let s = set(3, "OrderedReady", 0);
        assert_eq!(next_step(&s, &index(&[]), "r").create, [0]);
        let pods = [phase(at(0, "r"), "Running")];
        assert_eq!(next_step(&s, &index(&pods), "r"), Step::default());
        let pods = [healthy_at(0, "r")];
        assert_eq!(next_step(&s, &index(&pods), "r").create, [1]);
    }

    #[test]
    fn parallel_creates_every_missing_ordinal_at_once() {
        let s = set(3, "Parallel", 0);
        let pods = [phase(at(0, "r"), "Running")];
        assert_eq!(next_step(&s, &index(&pods), "r").create, [1, 2]);
    }

    #[test]
    fn scale_down_deletes_the_highest_ordinal_first_one_at_a_time() {
        let s = set(1, "OrderedReady", 0);
        let pods = [healthy_at(0, "r"), healthy_at(1, "r"), healthy_at(2, "r")];
        assert_eq!(names(&next_step(&s, &index(&pods), "r")), ["web-2"]);
        let pods = [
            healthy_at(0, "r"),
            healthy_at(1, "r"),
            terminating(healthy_at(2, "r")),
        ];
        assert!(
            next_step(&s, &index(&pods), "r").delete.is_empty(),
            "waits for web-2 to go"
        );
        let pods = [healthy_at(0, "r"), healthy_at(1, "r")];
        assert_eq!(names(&next_step(&s, &index(&pods), "r")), ["web-1"]);
    }

    #[test]
    fn parallel_scale_down_deletes_every_condemned_pod_at_once() {
        let s = set(1, "Parallel", 0);
        let pods = [healthy_at(0, "r"), healthy_at(1, "r"), healthy_at(2, "r")];
        assert_eq!(
            names(&next_step(&s, &index(&pods), "r")),
            ["web-2", "web-1"]
        );
    }

    #[test]
    fn a_rolling_update_replaces_from_the_highest_ordinal_down_to_the_partition() {
        let s = set(3, "OrderedReady", 1);
        let pods = [healthy_at(0, "a"), healthy_at(1, "a"), healthy_at(2, "a")];
        assert_eq!(names(&next_step(&s, &index(&pods), "b")), ["web-2"]);
        let pods = [healthy_at(0, "a"), healthy_at(1, "a"), at(2, "b")];
        assert!(
            next_step(&s, &index(&pods), "b").delete.is_empty(),
            "waits for web-2 to be ready"
        );
        let pods = [healthy_at(0, "a"), healthy_at(1, "a"), healthy_at(2, "b")];
        assert_eq!(names(&next_step(&s, &index(&pods), "b")), ["web-1"]);
        let pods = [healthy_at(0, "a"), healthy_at(1, "b"), healthy_at(2, "b")];
        assert_eq!(
            next_step(&s, &index(&pods), "b"),
            Step::default(),
            "ordinals below the partition keep their revision"
        );
    }

    #[test]
    fn a_failed_pod_is_deleted_to_be_recreated() {
        let s = set(2, "OrderedReady", 0);
        let pods = [healthy_at(0, "r"), phase(at(1, "r"), "Failed")];
        assert_eq!(names(&next_step(&s, &index(&pods), "r")), ["web-1"]);
    }

    #[test]
    fn status_counts_revisions_and_completes_a_rollout() {
        let mut s = set(3, "OrderedReady", 0);
        s.status = Some(StatefulSetStatus {
            current_revision: Some("a".into()),
            ..Default::default()
        });
        let pods = [healthy_at(0, "a"), healthy_at(1, "b"), at(2, "b")];
        let st = status(&s, &index(&pods), "b", t(10));
        assert_eq!(st.replicas, 3);
        assert_eq!(st.ready_replicas, Some(2));
        assert_eq!(st.available_replicas, Some(2));
        assert_eq!(st.current_replicas, Some(1));
        assert_eq!(st.updated_replicas, Some(2));
        assert_eq!(st.current_revision.as_deref(), Some("a"));
        assert_eq!(st.update_revision.as_deref(), Some("b"));

        let pods = [healthy_at(0, "b"), healthy_at(1, "b"), healthy_at(2, "b")];
        let st = status(&s, &index(&pods), "b", t(10));
        assert_eq!(st.current_revision.as_deref(), Some("b"));
        assert_eq!(st.current_replicas, Some(3));
    }
}
