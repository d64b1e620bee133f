//! A Deployment's status and conditions, as `kubectl rollout status`
//! reads them: counts summed over its ReplicaSets, `Available` (at least
//! `replicas - maxUnavailable` available) and `Progressing` with
//! upstream's reasons, including the progress deadline.
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};

use super::strategy;

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
pub const NEW_REPLICA_SET_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_REPLICA_SET: &str = "FoundNewReplicaSet";
pub const REPLICA_SET_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_REPLICA_SET_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";

pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(
    rs: &ReplicaSet,
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32,
) -> i32 {
    rs.status.as_ref().map(f).unwrap_or(0)
}

/// Pods the ReplicaSet's controller counts (`status.replicas`).
pub fn rs_actual(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.replicas)
}

pub fn rs_available(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.available_replicas.unwrap_or(0))
}

pub fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.ready_replicas.unwrap_or(0))
}

pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

pub fn get_condition<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.iter().flatten().find(|c| c.type_ == type_)
}

/// Upstream's `SetDeploymentCondition`: a condition with the same status
/// and reason is left alone; the transition time survives a change of
/// reason with the same status.
pub fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = get_condition(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(s, &c.type_.clone());
    s.conditions.get_or_insert_with(Vec::new).push(c);
}

pub fn remove_condition(s: &mut DeploymentStatus, type_: &str) {
    if let Some(cs) = s.conditions.as_mut() {
        cs.retain(|c| c.type_ != type_);
        if cs.is_empty() {
            s.conditions = None;
        }
    }
}

/// Zero counts are omitted, as upstream serializes them; statuses built
/// here and read back compare equal.
pub fn normalized(s: &DeploymentStatus) -> DeploymentStatus {
    let nz = |v: Option<i32>| v.filter(|n| *n != 0);
    DeploymentStatus {
        available_replicas: nz(s.available_replicas),
        collision_count: s.collision_count,
        conditions: s.conditions.clone().filter(|c| !c.is_empty()),
        observed_generation: s.observed_generation.filter(|g| *g != 0),
        ready_replicas: nz(s.ready_replicas),
        replicas: nz(s.replicas),
        terminating_replicas: nz(s.terminating_replicas),
        unavailable_replicas: nz(s.unavailable_replicas),
        updated_replicas: nz(s.updated_replicas),
    }
}

pub fn status(d: &Deployment) -> DeploymentStatus {
    normalized(&d.status.clone().unwrap_or_default())
}

fn count(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

/// Upstream's `calculateStatus`: counts over `all` (which includes the new
/// ReplicaSet), the conditions carried over, Available recomputed.
pub fn calculate(
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    d: &Deployment,
    now: DateTime<Utc>,
) -> DeploymentStatus {
    let available: i32 = all.iter().map(|rs| rs_available(rs)).sum();
    let total: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let old = status(d);
    let mut s = normalized(&DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(all.iter().map(|rs| rs_actual(rs)).sum()),
        updated_replicas: Some(new.map(rs_actual).unwrap_or(0)),
        ready_replicas: Some(all.iter().map(|rs| rs_ready(rs)).sum()),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: None,
    });
    if available >= strategy::replicas(d) - strategy::max_unavailable(d) {
        set_condition(
            &mut s,
            new_condition(
                AVAILABLE,
                "True",
                MINIMUM_REPLICAS_AVAILABLE,
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut s,
            new_condition(
                AVAILABLE,
                "False",
                MINIMUM_REPLICAS_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    s
}

pub fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
}

/// Every replica updated and available, and this generation observed.
pub fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = strategy::replicas(d);
    count(s.updated_replicas) == want
        && count(s.replicas) == want
        && count(s.available_replicas) == want
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Something moved since the last status: more updated, ready or
/// available Pods, or fewer old ones.
pub fn progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = status(d);
    let old_old = count(old.replicas) - count(old.updated_replicas);
    let new_old = count(new.replicas) - count(new.updated_replicas);
    count(new.updated_replicas) > count(old.updated_replicas)
        || new_old < old_old
        || count(new.ready_replicas) > count(old.ready_replicas)
        || count(new.available_replicas) > count(old.available_replicas)
}

/// No progress for `progressDeadlineSeconds` since the Progressing
/// condition last moved.
pub fn timed_out(d: &Deployment, new: &DeploymentStatus, now: DateTime<Utc>) -> bool {
    let Some(deadline) = progress_deadline(d) else {
        return false;
    };
    let Some(c) = get_condition(new, PROGRESSING) else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_REPLICA_SET_AVAILABLE) => false,
        Some(PROGRESS_DEADLINE_EXCEEDED) => true,
        _ => {
            let from = c.last_update_time.as_ref().map(|t| t.0).unwrap_or_default();
            from + k8s_openapi::chrono::Duration::seconds(i64::from(deadline)) < now
        }
    }
}

/// Upstream's `requeueStuckDeployment`: when to look again to notice a
/// rollout that stopped progressing (None: no deadline, done, or already
/// timed out).
pub fn recheck_for_deadline(
    d: &Deployment,
    new: &DeploymentStatus,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let deadline = progress_deadline(d)?;
    let cur = status(d);
    let c = get_condition(&cur, PROGRESSING)?;
    if complete(d, new) || c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED) {
        return None;
    }
    let from = c.last_update_time.as_ref().map(|t| t.0).unwrap_or_default();
    let after = (from + k8s_openapi::chrono::Duration::seconds(i64::from(deadline)) - now)
        .to_std()
        .unwrap_or_default();
    if after < Duration::from_secs(1) {
        return Some(Duration::from_secs(1));
    }
    Some(after + Duration::from_secs(1))
}

/// A ReplicaSet's ReplicaFailure as the Deployment's.
pub fn from_replica_set_failure(
    c: &k8s_openapi::api::apps::v1::ReplicaSetCondition,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: REPLICA_FAILURE.into(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_update_time: c.last_transition_time.clone(),
        last_transition_time: c.last_transition_time.clone(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetSpec, ReplicaSetStatus};

    use super::*;
    use crate::pods::test_pods::t;

    fn d(replicas: i32) -> Deployment {
        Deployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("web".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                progress_deadline_seconds: Some(600),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rs(spec: i32, actual: i32, ready: i32, available: i32) -> ReplicaSet {
        ReplicaSet {
            spec: Some(ReplicaSetSpec {
                replicas: Some(spec),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas: actual,
                ready_replicas: Some(ready),
                available_replicas: Some(available),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn reason<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a str> {
        get_condition(s, type_).and_then(|c| c.reason.as_deref())
    }

    #[test]
    fn counts_sum_over_replica_sets_and_updated_is_the_new_ones() {
        let old = rs(2, 3, 3, 2);
        let new = rs(3, 2, 1, 1);
        let s = calculate(&[&old, &new], Some(&new), &d(4), t(0));
        assert_eq!(s.replicas, Some(5));
        assert_eq!(s.updated_replicas, Some(2));
        assert_eq!(s.ready_replicas, Some(4));
        assert_eq!(s.available_replicas, Some(3));
        assert_eq!(
            s.unavailable_replicas,
            Some(2),
            "5 wanted by spec, 3 available"
        );
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn available_needs_replicas_minus_max_unavailable() {
        // 4 replicas, 25%: one may be unavailable.
        let s = calculate(&[&rs(4, 4, 3, 3)], None, &d(4), t(0));
        assert_eq!(reason(&s, AVAILABLE), Some(MINIMUM_REPLICAS_AVAILABLE));
        assert_eq!(get_condition(&s, AVAILABLE).unwrap().status, "True");
        let s = calculate(&[&rs(4, 4, 2, 2)], None, &d(4), t(0));
        assert_eq!(reason(&s, AVAILABLE), Some(MINIMUM_REPLICAS_UNAVAILABLE));
        assert_eq!(get_condition(&s, AVAILABLE).unwrap().status, "False");
    }

    #[test]
    fn a_condition_with_the_same_reason_is_not_touched() {
        let mut s = DeploymentStatus::default();
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", REPLICA_SET_UPDATED, "a".into(), t(0)),
        );
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", REPLICA_SET_UPDATED, "b".into(), t(9)),
        );
        let c = get_condition(&s, PROGRESSING).unwrap();
        assert_eq!(c.message.as_deref(), Some("a"));
        set_condition(
            &mut s,
            new_condition(
                PROGRESSING,
                "True",
                NEW_REPLICA_SET_AVAILABLE,
                "c".into(),
                t(20),
            ),
        );
        let c = get_condition(&s, PROGRESSING).unwrap();
        assert_eq!(
            c.last_transition_time,
            Some(Time(t(0))),
            "same status keeps its transition"
        );
        assert_eq!(c.last_update_time, Some(Time(t(20))));
        set_condition(
            &mut s,
            new_condition(
                PROGRESSING,
                "False",
                PROGRESS_DEADLINE_EXCEEDED,
                "d".into(),
                t(30),
            ),
        );
        assert_eq!(
            get_condition(&s, PROGRESSING).unwrap().last_transition_time,
            Some(Time(t(30)))
        );
        assert_eq!(s.conditions.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn complete_needs_every_count_and_the_generation() {
        let dep = d(3);
        let mut s = DeploymentStatus {
            replicas: Some(3),
            updated_replicas: Some(3),
            available_replicas: Some(3),
            observed_generation: Some(2),
            ..Default::default()
        };
        assert!(complete(&dep, &s));
        s.observed_generation = Some(1);
        assert!(!complete(&dep, &s));
        s.observed_generation = Some(2);
        s.replicas = Some(4);
        assert!(!complete(&dep, &s), "an old pod is still there");
    }

    #[test]
    fn progress_is_any_count_moving_the_right_way() {
        let mut dep = d(3);
        dep.status = Some(DeploymentStatus {
            replicas: Some(4),
            updated_replicas: Some(1),
            ready_replicas: Some(3),
            available_replicas: Some(3),
            ..Default::default()
        });
        let same = status(&dep);
        assert!(!progressing(&dep, &same));
        let more_updated = DeploymentStatus {
            updated_replicas: Some(2),
            replicas: Some(5),
            ..same.clone()
        };
        assert!(progressing(&dep, &more_updated));
        let fewer_old = DeploymentStatus {
            replicas: Some(3),
            ..same.clone()
        };
        assert!(progressing(&dep, &fewer_old));
        let more_available = DeploymentStatus {
            available_replicas: Some(4),
            ..same
        };
        assert!(progressing(&dep, &more_available));
    }

    #[test]
    fn the_deadline_counts_from_the_last_progress() {
        let dep = d(3);
        let mut s = DeploymentStatus::default();
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", REPLICA_SET_UPDATED, "m".into(), t(0)),
        );
        assert!(!timed_out(&dep, &s, t(600)));
        assert!(timed_out(&dep, &s, t(601)));
        let mut done = DeploymentStatus::default();
        set_condition(
            &mut done,
            new_condition(
                PROGRESSING,
                "True",
                NEW_REPLICA_SET_AVAILABLE,
                "m".into(),
                t(0),
            ),
        );
        assert!(
            !timed_out(&dep, &done, t(10_000)),
            "a finished rollout never times out"
        );
        let mut no_deadline = d(3);
        no_deadline.spec.as_mut().unwrap().progress_deadline_seconds = Some(i32::MAX);
        assert!(!timed_out(&no_deadline, &s, t(10_000)));
    }

    #[test]
    fn a_stuck_rollout_is_looked_at_when_its_deadline_passes() {
        let mut dep = d(3);
        let mut s = DeploymentStatus::default();
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", REPLICA_SET_UPDATED, "m".into(), t(0)),
        );
        dep.status = Some(s.clone());
        let after = recheck_for_deadline(&dep, &s, t(100)).unwrap();
        assert_eq!(after, Duration::from_secs(501));
        assert_eq!(
            recheck_for_deadline(&dep, &s, t(700)),
            Some(Duration::from_secs(1))
        );
        let mut timed = s.clone();
        set_condition(
            &mut timed,
            new_condition(
                PROGRESSING,
                "False",
                PROGRESS_DEADLINE_EXCEEDED,
                "m".into(),
                t(601),
            ),
        );
        dep.status = Some(timed.clone());
        assert_eq!(recheck_for_deadline(&dep, &timed, t(700)), None);
    }
}
