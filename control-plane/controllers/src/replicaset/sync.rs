//! The ReplicaSet controller's decisions, without I/O (upstream's
//! `syncReplicaSet` / `manageReplicas` / `calculateStatus`): how many Pods
//! to create or which to delete, in what batches, and the status.
use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::rank;
use crate::pods::{self, owner, selector::Selector};

/// Upstream's `BurstReplicas`: at most this many creates or deletes per
/// sync, so one huge ReplicaSet cannot flood the API server.
pub const BURST_REPLICAS: usize = 500;

/// Upstream's `SlowStartInitialBatchSize`.
pub const SLOW_START_INITIAL_BATCH: usize = 1;

pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// What to do about the Pod count.
#[derive(Debug, PartialEq)]
pub enum Manage<'a> {
    Nothing,
    /// Create this many Pods from the template.
    Create(usize),
    /// Delete these Pods, in this order.
    Delete(Vec<&'a Pod>),
}

/// `spec.replicas` (1 when unset, as the API server defaults it).
pub fn desired(rs: &ReplicaSet) -> usize {
    rs.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize
}

pub fn min_ready_seconds(rs: &ReplicaSet) -> i32 {
    rs.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

/// `owned` are the ReplicaSet's active Pods; `related` the Pods of every
/// ReplicaSet sharing its controller (see [`rank::pods_to_delete`]).
pub fn manage<'a>(
    rs: &ReplicaSet,
    owned: &[&'a Pod],
    related: &[&Pod],
    now: DateTime<Utc>,
) -> Manage<'a> {
    let want = desired(rs);
    if owned.len() < want {
        Manage::Create((want - owned.len()).min(BURST_REPLICAS))
    } else if owned.len() > want {
        let n = (owned.len() - want).min(BURST_REPLICAS);
        Manage::Delete(rank::pods_to_delete(owned, related, n, now))
    } else {
        Manage::Nothing
    }
}

/// Upstream's `slowStartBatch` sizes: 1, 2, 4, ... summing to `count`.
/// The caller stops at the first batch with a failure, so a ReplicaSet
/// whose Pods are refused (quota, a bad template) makes one failing call
/// per sync, not hundreds.
pub fn slow_start_batches(count: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut remaining = count;
    let mut size = SLOW_START_INITIAL_BATCH.min(remaining);
    while size > 0 {
        out.push(size);
        remaining -= size;
        size = (2 * size).min(remaining);
    }
    out
}

/// The Pods of every ReplicaSet controlled by the same owner as `rs`
/// (itself included), each once: upstream's `getIndirectlyRelatedPods`.
/// An uncontrolled ReplicaSet has none.
pub fn related_pods<'a>(
    rs: &ReplicaSet,
    all_replica_sets: &[&ReplicaSet],
    pods_in_namespace: &[&'a Pod],
) -> Vec<&'a Pod> {
    let Some(ctl) = owner::controller_of(&rs.metadata) else {
        return Vec::new();
    };
    let siblings: Vec<Selector> = all_replica_sets
        .iter()
        .filter(|o| o.metadata.namespace == rs.metadata.namespace)
        .filter(|o| owner::controller_of(&o.metadata).is_some_and(|c| c.uid == ctl.uid))
        .filter_map(|o| Selector::new(&o.spec.as_ref()?.selector).ok())
        .collect();
    let mut seen = HashSet::new();
    pods_in_namespace
        .iter()
        .filter(|p| {
            siblings
                .iter()
                .any(|s| s.matches(p.metadata.labels.as_ref()))
        })
        .filter(|p| seen.insert(p.metadata.uid.clone()))
        .copied()
        .collect()
}

/// The status `owned` (active, claimed Pods) gives, with the
/// ReplicaFailure condition set when managing the Pods failed and cleared
/// when it worked.
pub fn calculate_status(
    rs: &ReplicaSet,
    owned: &[&Pod],
    manage_error: Option<&str>,
    now: DateTime<Utc>,
) -> ReplicaSetStatus {
    let mut status = rs.status.clone().unwrap_or_default();
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = min_ready_seconds(rs);
    let mut fully_labeled = 0;
    let mut ready = 0;
    let mut available = 0;
    for p in owned {
        let labels = p.metadata.labels.as_ref();
        if template_labels
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            fully_labeled += 1;
        }
        if pods::is_ready(p) {
            ready += 1;
            if pods::is_available(p, min_ready, now) {
                available += 1;
            }
        }
    }
    let has_failure = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == REPLICA_FAILURE);
    match manage_error {
        Some(msg) if !has_failure => {
            let reason = if owned.len() < desired(rs) {
                "FailedCreate"
            } else {
                "FailedDelete"
            };
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(ReplicaSetCondition {
                    type_: REPLICA_FAILURE.into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    message: Some(msg.into()),
                    last_transition_time: Some(Time(now)),
                });
        }
        None if has_failure => {
            if let Some(cs) = status.conditions.as_mut() {
                cs.retain(|c| c.type_ != REPLICA_FAILURE);
            }
            if status.conditions.as_ref().is_some_and(Vec::is_empty) {
                status.conditions = None;
            }
        }
        _ => {}
    }
    status.replicas = owned.len() as i32;
    status.fully_labeled_replicas = nonzero(fully_labeled);
    status.ready_replicas = nonzero(ready);
    status.available_replicas = nonzero(available);
    status
}

/// Upstream omits zero counts; so does this controller, so a status it
/// wrote compares equal to the one it computes next.
fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// Whether `new` (from [`calculate_status`]) needs writing: a count or a
/// condition changed, or the current generation is not yet observed.
pub fn status_needs_update(rs: &ReplicaSet, new: &ReplicaSetStatus) -> bool {
    let old = rs.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    old.replicas != new.replicas
        || n(old.fully_labeled_replicas) != n(new.fully_labeled_replicas)
        || n(old.ready_replicas) != n(new.ready_replicas)
        || n(old.available_replicas) != n(new.available_replicas)
        || old.conditions.clone().unwrap_or_default() != new.conditions.clone().unwrap_or_default()
        || old.observed_generation.unwrap_or(0) != rs.metadata.generation.unwrap_or(0)
}

/// A merge patch for the status subresource that writes every field,
/// zeros and absent conditions included (a merge patch leaves out what it
/// does not name).
pub fn status_patch(rs: &ReplicaSet, new: &ReplicaSetStatus) -> Value {
    json!({"status": {
        "replicas": new.replicas,
        "fullyLabeledReplicas": new.fully_labeled_replicas,
        "readyReplicas": new.ready_replicas,
        "availableReplicas": new.available_replicas,
        "observedGeneration": rs.metadata.generation,
        "conditions": new.conditions,
    }})
}

/// When to look again so `availableReplicas` counts a ready Pod once its
/// `minReadySeconds` have passed (no event marks that moment).
pub fn recheck_after(rs: &ReplicaSet, owned: &[&Pod], now: DateTime<Utc>) -> Option<Duration> {
    let min_ready = min_ready_seconds(rs);
    owned
        .iter()
        .filter_map(|p| pods::available_after(p, min_ready, now))
        .min()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    use super::*;
    use crate::pods::test_pods::*;

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("rs-uid".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                    match_expressions: None,
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(BTreeMap::from([
                            ("app".into(), "web".into()),
                            ("tier".into(), "fe".into()),
                        ])),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                min_ready_seconds: None,
            }),
            status: None,
        }
    }

    fn refs(pods: &[Pod]) -> Vec<&Pod> {
        pods.iter().collect()
    }

    #[test]
    fn too_few_pods_creates_the_difference() {
        let pods = [pod("a")];
        assert_eq!(manage(&rs(3), &refs(&pods), &[], t(0)), Manage::Create(2));
    }

    #[test]
    fn the_right_count_does_nothing() {
        let pods = [pod("a"), pod("b")];
        assert_eq!(manage(&rs(2), &refs(&pods), &[], t(0)), Manage::Nothing);
    }

    #[test]
    fn too_many_pods_deletes_the_earliest_in_startup() {
        let pods = [
            ready(on_node(pod("a"), "n"), 0),
            pod("b"),
            ready(on_node(pod("c"), "n"), 0),
        ];
        match manage(&rs(2), &refs(&pods), &[], t(10)) {
            Manage::Delete(d) => assert_eq!(d[0].metadata.name.as_deref(), Some("b")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn creates_and_deletes_are_capped_per_sync() {
        assert_eq!(
            manage(&rs(2000), &[], &[], t(0)),
            Manage::Create(BURST_REPLICAS)
        );
        let pods: Vec<Pod> = (0..700).map(|i| pod(&format!("p{i}"))).collect();
        match manage(&rs(0), &refs(&pods), &[], t(0)) {
            Manage::Delete(d) => assert_eq!(d.len(), BURST_REPLICAS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn slow_start_doubles_from_one() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), vec![1]);
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);
        assert_eq!(slow_start_batches(15), vec![1, 2, 4, 8]);
        assert_eq!(slow_start_batches(500).iter().sum::<usize>(), 500);
    }

    #[test]
    fn status_counts_ready_available_and_fully_labeled_pods() {
        let mut r = rs(3);
        r.spec.as_mut().unwrap().min_ready_seconds = Some(10);
        let mut full = ready(pod("a"), 0);
        full.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "fe".into());
        let pods = [full, ready(pod("b"), 95), pod("c")];
        let s = calculate_status(&r, &refs(&pods), None, t(100));
        assert_eq!(s.replicas, 3);
        assert_eq!(s.fully_labeled_replicas, Some(1));
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.available_replicas, Some(1), "b is ready for 5 of 10 s");
    }

    #[test]
    fn a_failed_create_sets_replica_failure_and_success_clears_it() {
        let r = rs(3);
        let pods = [pod("a")];
        let s = calculate_status(&r, &refs(&pods), Some("quota exceeded"), t(0));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_deref(),
                c.message.as_deref()
            ),
            (
                "ReplicaFailure",
                "True",
                Some("FailedCreate"),
                Some("quota exceeded")
            )
        );
        let mut failed = r.clone();
        failed.status = Some(s);
        let again = calculate_status(&failed, &refs(&pods), Some("other"), t(5));
        assert_eq!(
            again.conditions.as_ref().unwrap()[0].message.as_deref(),
            Some("quota exceeded"),
            "an existing failure is kept as is, like upstream"
        );
        let ok = calculate_status(&failed, &refs(&pods), None, t(9));
        assert_eq!(ok.conditions, None);
    }

    #[test]
    fn a_failed_delete_is_named_as_such() {
        let pods = [pod("a"), pod("b")];
        let s = calculate_status(&rs(1), &refs(&pods), Some("denied"), t(0));
        assert_eq!(
            s.conditions.unwrap()[0].reason.as_deref(),
            Some("FailedDelete")
        );
    }

    #[test]
    fn status_is_written_when_counts_change_or_the_generation_is_new() {
        let mut r = rs(1);
        let pods = [ready(pod("a"), 0)];
        let s = calculate_status(&r, &refs(&pods), None, t(100));
        assert!(status_needs_update(&r, &s));
        r.status = Some(ReplicaSetStatus {
            observed_generation: Some(3),
            ..s.clone()
        });
        assert!(!status_needs_update(&r, &s));
        r.metadata.generation = Some(4);
        assert!(status_needs_update(&r, &s));
    }

    #[test]
    fn the_status_patch_names_zeros_so_they_overwrite() {
        let s = calculate_status(&rs(0), &[], None, t(0));
        let p = status_patch(&rs(0), &s);
        assert_eq!(p["status"]["replicas"], 0);
        assert!(
            p["status"]
                .as_object()
                .unwrap()
                .contains_key("readyReplicas")
        );
        assert!(p["status"]["readyReplicas"].is_null());
        assert_eq!(p["status"]["observedGeneration"], 3);
    }

    #[test]
    fn a_ready_pod_is_rechecked_when_it_becomes_available() {
        let mut r = rs(1);
        r.spec.as_mut().unwrap().min_ready_seconds = Some(30);
        let pods = [ready(pod("a"), 0), ready(pod("b"), 20)];
        let after = recheck_after(&r, &refs(&pods), t(25)).unwrap();
        assert!(after >= Duration::from_secs(5) && after < Duration::from_secs(6));
        assert_eq!(recheck_after(&r, &refs(&pods), t(100)), None);
    }

    #[test]
    fn related_pods_are_those_of_sibling_replica_sets() {
        let mut a = rs(1);
        a.metadata.owner_references = owned_by(pod("x"), "deploy").metadata.owner_references;
        let mut b = a.clone();
        b.metadata.name = Some("web-2".into());
        b.spec.as_mut().unwrap().selector.match_labels =
            Some(BTreeMap::from([("app".into(), "other".into())]));
        let mut stranger = rs(1);
        stranger.spec.as_mut().unwrap().selector.match_labels =
            Some(BTreeMap::from([("app".into(), "db".into())]));
        let mut other_pod = pod("o");
        other_pod.metadata.labels = Some(BTreeMap::from([("app".into(), "other".into())]));
        let mut db_pod = pod("d");
        db_pod.metadata.labels = Some(BTreeMap::from([("app".into(), "db".into())]));
        let pods = [pod("w"), other_pod, db_pod];
        let related = related_pods(&a, &[&a, &b, &stranger], &refs(&pods));
        let names: Vec<_> = related
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["w", "o"]);
        assert!(
            related_pods(&rs(1), &[&a], &refs(&pods)).is_empty(),
            "no controller"
        );
    }
}
