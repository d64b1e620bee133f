//! What the workload controllers must agree on about Pods, owners and pod
//! templates, as pure functions: whether a Pod counts, is ready or is
//! available (upstream's `controller.IsPodActive`, `podutil.IsPodReady`,
//! `podutil.IsPodAvailable`); label selectors ([`selector`]); controller
//! references and adoption ([`owner`]); Pods stamped from a template and
//! the `pod-template-hash` ([`template`]).
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::chrono::{DateTime, Utc};

pub mod owner;
pub mod selector;
pub mod template;

/// A Pod a controller still counts: not being deleted and not finished.
/// A terminating or finished Pod is replaced, not waited for.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), "Succeeded" | "Failed")
}

/// The Pod's phase, "" when the kubelet has not reported one yet.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The kubelet says the Pod can serve (its Ready condition is True).
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// When a ready Pod last became ready (None: not ready, or the kubelet did
/// not say when).
pub fn ready_since(pod: &Pod) -> Option<DateTime<Utc>> {
    ready_condition(pod)
        .filter(|c| c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// Ready for longer than `min_ready_seconds`: what `availableReplicas`
/// counts and what a rolling update waits for. Like upstream, a Pod ready
/// since an unknown time is available only when `min_ready_seconds` is 0.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: DateTime<Utc>) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod).is_some_and(|t| t + secs(min_ready_seconds) < now)
}

/// How long until a ready Pod becomes available, so a controller can look
/// again then instead of polling (None: not ready, already available, or
/// never without news from the kubelet).
pub fn available_after(pod: &Pod, min_ready_seconds: i32, now: DateTime<Utc>) -> Option<Duration> {
    if min_ready_seconds <= 0 || is_available(pod, min_ready_seconds, now) {
        return None;
    }
    let since = ready_since(pod)?;
    let at = since + secs(min_ready_seconds);
    // `is_available` wants strictly after; a millisecond past is enough.
    Some((at - now).to_std().unwrap_or_default() + Duration::from_millis(1))
}

fn secs(s: i32) -> k8s_openapi::chrono::Duration {
    k8s_openapi::chrono::Duration::seconds(i64::from(s))
}

#[cfg(test)]
pub(crate) mod test_pods {
    //! Pod fixtures shared by the controllers' unit tests.
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
    use k8s_openapi::chrono::{DateTime, TimeZone, Utc};

    pub fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    /// A Pod named `name` with labels `app=web`.
    pub fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                creation_timestamp: Some(Time(t(0))),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        }
    }

    pub fn created(mut p: Pod, at: i64) -> Pod {
        p.metadata.creation_timestamp = Some(Time(t(at)));
        p
    }

    pub fn on_node(mut p: Pod, node: &str) -> Pod {
        p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        p
    }

    pub fn phase(mut p: Pod, phase: &str) -> Pod {
        p.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        p
    }

    /// Running and Ready since `since`.
    pub fn ready(p: Pod, since: i64) -> Pod {
        let mut p = phase(p, "Running");
        p.status.get_or_insert_with(Default::default).conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(Time(t(since))),
            ..Default::default()
        }]);
        p
    }

    pub fn restarts(mut p: Pod, n: i32) -> Pod {
        p.status
            .get_or_insert_with(Default::default)
            .container_statuses = Some(vec![ContainerStatus {
            name: "c".into(),
            restart_count: n,
            ..Default::default()
        }]);
        p
    }

    pub fn owned_by(mut p: Pod, uid: &str) -> Pod {
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "owner".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        p
    }

    pub fn terminating(mut p: Pod) -> Pod {
        p.metadata.deletion_timestamp = Some(Time(t(1)));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::test_pods::{phase, pod, ready, t, terminating};
    use super::{Duration, available_after, is_active, is_available, is_ready};

    #[test]
    fn terminating_and_finished_pods_do_not_count() {
        assert!(is_active(&pod("a")));
        assert!(is_active(&phase(pod("a"), "Running")));
        assert!(is_active(&phase(pod("a"), "Unknown")));
        assert!(!is_active(&terminating(pod("a"))));
        assert!(!is_active(&phase(pod("a"), "Succeeded")));
        assert!(!is_active(&phase(pod("a"), "Failed")));
    }

    #[test]
    fn ready_means_the_ready_condition_is_true() {
        assert!(!is_ready(&pod("a")));
        assert!(!is_ready(&phase(pod("a"), "Running")));
        assert!(is_ready(&ready(pod("a"), 0)));
        let mut p = ready(pod("a"), 0);
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert!(!is_ready(&p));
    }

    #[test]
    fn available_waits_min_ready_seconds_after_ready() {
        let p = ready(pod("a"), 100);
        assert!(is_available(&p, 0, t(100)));
        assert!(!is_available(&p, 10, t(105)));
        assert!(
            !is_available(&p, 10, t(110)),
            "strictly after, like upstream"
        );
        assert!(is_available(&p, 10, t(111)));
        assert!(!is_available(&pod("a"), 0, t(1000)), "not ready");
    }

    #[test]
    fn available_after_says_when_to_look_again() {
        let p = ready(pod("a"), 100);
        let after = available_after(&p, 10, t(104)).unwrap();
        assert!(after > Duration::from_secs(6) && after < Duration::from_secs(7));
        assert_eq!(available_after(&p, 10, t(200)), None);
        assert_eq!(available_after(&p, 0, t(100)), None);
        assert_eq!(available_after(&pod("a"), 10, t(100)), None);
    }
}
