//! The annotations a Deployment keeps on its ReplicaSets and itself:
//! `deployment.kubernetes.io/revision` (what `kubectl rollout history`
//! lists and `kubectl rollout undo` picks from), the revision history of a
//! ReplicaSet that was rolled back to, and `desired-replicas` /
//! `max-replicas` (what proportional scaling divides by). The
//! Deployment's own annotations are copied onto its new ReplicaSet (so
//! `kubernetes.io/change-cause` shows in the history), except these.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::strategy;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";

/// Upstream's `maxRevHistoryLengthInChars`.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

fn annotation<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The revision annotation as a number (None: absent or not a number).
pub fn revision(meta: &ObjectMeta) -> Option<i64> {
    annotation(meta, REVISION)?.parse().ok()
}

/// The highest revision among `rss` (0 when none has one).
pub fn max_revision<'a>(rss: impl IntoIterator<Item = &'a ReplicaSet>) -> i64 {
    rss.into_iter()
        .filter_map(|rs| revision(&rs.metadata))
        .max()
        .unwrap_or(0)
        .max(0)
}

pub fn desired_replicas(rs: &ReplicaSet) -> Option<i32> {
    annotation(&rs.metadata, DESIRED_REPLICAS)?.parse().ok()
}

pub fn max_replicas(rs: &ReplicaSet) -> Option<i32> {
    annotation(&rs.metadata, MAX_REPLICAS)?.parse().ok()
}

fn skip_copy(key: &str) -> bool {
    matches!(
        key,
        LAST_APPLIED | REVISION | REVISION_HISTORY | DESIRED_REPLICAS | MAX_REPLICAS | ROLLBACK_TO
    )
}

/// Copies the Deployment's annotations onto `rs`; true if any changed.
fn copy_deployment_annotations(d: &Deployment, rs: &mut ReplicaSet) -> bool {
    let mut changed = false;
    let to = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if skip_copy(k) || to.get(k) == Some(v) {
            continue;
        }
        to.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// Upstream's `SetNewReplicaSetAnnotations`: copies the Deployment's
/// annotations, raises the revision to `new_revision` (recording the old
/// one in the history when an old ReplicaSet is reused, i.e. rolled back
/// to), and on a ReplicaSet about to be created (`exists` false) sets the
/// replicas annotations. True if anything changed.
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let mut changed = copy_deployment_annotations(d, rs);
    let anns = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let old = anns.get(REVISION).cloned();
    let old_revision = match old.as_deref() {
        None | Some("") => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(v) => v,
            // Upstream gives up on a ReplicaSet whose revision is garbage.
            Err(_) => return false,
        },
    };
    if old_revision < new_revision {
        anns.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| !o.is_empty()) {
            append_history(anns, &old);
        }
    }
    if !exists {
        let want = strategy::replicas(d);
        changed |= set_replicas_annotations(rs, want, want + strategy::max_surge(d));
    }
    changed
}

fn append_history(anns: &mut BTreeMap<String, String>, old: &str) {
    let history = anns.get(REVISION_HISTORY).cloned().unwrap_or_default();
    if history.is_empty() {
        anns.insert(REVISION_HISTORY.into(), old.into());
        return;
    }
    let mut olds: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + old.len() + 1;
    let mut start = 0;
    while total > MAX_REVISION_HISTORY_CHARS && start < olds.len() {
        total -= olds[start].len() + 1;
        start += 1;
    }
    if total <= MAX_REVISION_HISTORY_CHARS {
        olds = olds.split_off(start);
        olds.push(old);
        anns.insert(REVISION_HISTORY.into(), olds.join(","));
    }
}

/// Sets `desired-replicas` and `max-replicas`; true if either changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let anns = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if anns.get(k) != Some(&v) {
            anns.insert(k.into(), v);
            changed = true;
        }
    }
    changed
}

pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation(&rs.metadata, DESIRED_REPLICAS) != Some(desired.to_string().as_str())
        || annotation(&rs.metadata, MAX_REPLICAS) != Some(max.to_string().as_str())
}

/// Sets the Deployment's revision annotation; true if it changed.
pub fn set_deployment_revision(d: &mut Deployment, revision: &str) -> bool {
    let anns = d.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if anns.get(REVISION).map(String::as_str) == Some(revision) {
        return false;
    }
    anns.insert(REVISION.into(), revision.into());
    true
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentSpec;

    use super::*;

    fn with_annotations(pairs: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn deployment(pairs: &[(&str, &str)]) -> Deployment {
        Deployment {
            metadata: with_annotations(pairs),
            spec: Some(DeploymentSpec {
                replicas: Some(4),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rs(pairs: &[(&str, &str)]) -> ReplicaSet {
        ReplicaSet {
            metadata: with_annotations(pairs),
            ..Default::default()
        }
    }

    fn ann<'a>(rs: &'a ReplicaSet, k: &str) -> Option<&'a str> {
        annotation(&rs.metadata, k)
    }

    #[test]
    fn max_revision_ignores_garbage() {
        let a = rs(&[(REVISION, "3")]);
        let b = rs(&[(REVISION, "x")]);
        let c = rs(&[]);
        assert_eq!(max_revision([&a, &b, &c]), 3);
        assert_eq!(max_revision([&c]), 0);
    }

    #[test]
    fn a_new_replica_set_gets_the_revision_and_replica_annotations() {
        let d = deployment(&[("kubernetes.io/change-cause", "v2"), (REVISION, "1")]);
        let mut r = rs(&[]);
        assert!(set_new_rs_annotations(&d, &mut r, 2, false));
        assert_eq!(ann(&r, REVISION), Some("2"));
        assert_eq!(ann(&r, "kubernetes.io/change-cause"), Some("v2"));
        assert_eq!(ann(&r, DESIRED_REPLICAS), Some("4"));
        assert_eq!(ann(&r, MAX_REPLICAS), Some("5"), "4 + 25% surge");
        assert_eq!(ann(&r, REVISION_HISTORY), None);
    }

    #[test]
    fn kubectl_and_deployment_annotations_are_not_copied() {
        let d = deployment(&[(LAST_APPLIED, "{}"), (REVISION, "9"), (ROLLBACK_TO, "1")]);
        let mut r = rs(&[]);
        set_new_rs_annotations(&d, &mut r, 1, true);
        assert_eq!(ann(&r, LAST_APPLIED), None);
        assert_eq!(ann(&r, ROLLBACK_TO), None);
        assert_eq!(ann(&r, REVISION), Some("1"));
    }

    #[test]
    fn reusing_an_old_replica_set_raises_its_revision_and_records_history() {
        let d = deployment(&[]);
        let mut r = rs(&[(REVISION, "1")]);
        assert!(set_new_rs_annotations(&d, &mut r, 3, true));
        assert_eq!(ann(&r, REVISION), Some("3"));
        assert_eq!(ann(&r, REVISION_HISTORY), Some("1"));
        assert!(set_new_rs_annotations(&d, &mut r, 5, true));
        assert_eq!(ann(&r, REVISION_HISTORY), Some("1,3"));
        assert!(
            !set_new_rs_annotations(&d, &mut r, 5, true),
            "idempotent: a second sync changes nothing"
        );
        assert_eq!(
            ann(&r, DESIRED_REPLICAS),
            None,
            "existing: scaling sets those"
        );
    }

    #[test]
    fn the_revision_never_goes_down() {
        let d = deployment(&[]);
        let mut r = rs(&[(REVISION, "7")]);
        assert!(!set_new_rs_annotations(&d, &mut r, 3, true));
        assert_eq!(ann(&r, REVISION), Some("7"));
    }

    #[test]
    fn the_history_is_bounded_dropping_the_oldest() {
        let long: Vec<String> = (1000..1400).map(|i| i.to_string()).collect();
        let mut anns = BTreeMap::from([(REVISION_HISTORY.to_string(), long.join(","))]);
        append_history(&mut anns, "9999");
        let h = &anns[REVISION_HISTORY];
        assert!(h.len() <= MAX_REVISION_HISTORY_CHARS);
        assert!(h.ends_with(",9999"));
        assert!(!h.starts_with("1000,"));
    }

    #[test]
    fn replica_annotations_report_changes() {
        let mut r = rs(&[]);
        assert!(replicas_annotations_need_update(&r, 3, 4));
        assert!(set_replicas_annotations(&mut r, 3, 4));
        assert!(!replicas_annotations_need_update(&r, 3, 4));
        assert!(!set_replicas_annotations(&mut r, 3, 4));
        assert_eq!((desired_replicas(&r), max_replicas(&r)), (Some(3), Some(4)));
    }

    #[test]
    fn the_deployment_revision_is_set_once() {
        let mut d = deployment(&[]);
        assert!(set_deployment_revision(&mut d, "2"));
        assert!(!set_deployment_revision(&mut d, "2"));
        assert_eq!(revision(&d.metadata), Some(2));
    }
}
