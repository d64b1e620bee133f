//! What the Job controller reads from its pods and how it makes them.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
    chrono::{DateTime, Utc},
};

/// Keeps a pod (and so its outcome) until the controller has counted it
/// in the Job's status: whoever deletes a finished pod, it is counted once.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation and label of an Indexed Job's pod: which index it runs.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn terminal(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

pub fn deleting(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Upstream's FilterActivePods: neither finished nor being deleted.
pub fn active(p: &Pod) -> bool {
    !terminal(p) && !deleting(p)
}

/// Being deleted but not finished (its containers may still run).
pub fn terminating(p: &Pod) -> bool {
    !terminal(p) && deleting(p)
}

fn ready_condition(p: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
}

pub fn ready(p: &Pod) -> bool {
    ready_condition(p).is_some_and(|c| c.status == "True")
}

/// A failure to count: the pod failed, or (unless only failed pods are
/// replaced) it is being deleted without having succeeded, as an orphan
/// may never reach a phase.
pub fn failed(p: &Pod, only_replace_failed: bool) -> bool {
    match phase(p) {
        "Failed" => true,
        _ if only_replace_failed => false,
        "Succeeded" => false,
        _ => deleting(p),
    }
}

pub fn has_finalizer(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER))
}

pub fn uid(p: &Pod) -> &str {
    p.metadata.uid.as_deref().unwrap_or("")
}

pub fn name(p: &Pod) -> &str {
    p.metadata.name.as_deref().unwrap_or("")
}

/// The pod's completion index, if it has a valid one.
pub fn index(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|i| *i >= 0)
}

/// When the pod finished (upstream's getFinishedTime): the last container
/// termination, else when it stopped being ready, else its deletion time
/// less the grace period, else its creation.
pub fn finished_at(p: &Pod) -> Option<DateTime<Utc>> {
    let statuses = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let from_containers = (!statuses.is_empty())
        .then(|| {
            statuses
                .iter()
                .map(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .and_then(|t| t.finished_at.as_ref())
                        .map(|t| t.0)
                })
                .collect::<Option<Vec<_>>>()
        })
        .flatten()
        .and_then(|ts| ts.into_iter().max());
    from_containers
        .or_else(|| {
            ready_condition(p)
                .filter(|c| c.status == "False")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| {
            p.metadata.deletion_timestamp.as_ref().map(|t| {
                let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(0);
                t.0 - k8s_openapi::chrono::Duration::seconds(grace)
            })
        })
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// Upstream's ActivePods order: the pods cheapest to lose first
/// (unscheduled, pending, not ready, ready for less time, restarting
/// more, newer).
pub fn removal_order(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    use std::cmp::Reverse;
    let scheduled = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let phase_rank = |p: &Pod| match phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    // No time first, then newer first.
    let newest = |t: Option<DateTime<Utc>>| (t.is_some(), t.map(Reverse));
    let ready_since = |p: &Pod| {
        ready(p)
            .then(|| {
                ready_condition(p)
                    .and_then(|c| c.last_transition_time.as_ref())
                    .map(|t| t.0)
            })
            .flatten()
    };
    let key = |p: &Pod| {
        (
            scheduled(p),
            phase_rank(p),
            ready(p),
            newest(ready_since(p)),
            Reverse(restarts(p)),
            newest(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        )
    };
    key(a).cmp(&key(b))
}

/// Whether `labels` satisfy `selector` (matchLabels and
/// matchExpressions; an unknown operator matches nothing).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let v = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => v.is_some_and(|v| values.contains(v)),
            "NotIn" => v.is_none_or(|v| !values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        }
    });
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, want)| labels.get(k) == Some(want));
    exprs_ok && labels_ok
}

/// The owner reference a Job puts on its pods.
pub fn controller_ref(job: &Job) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.metadata.name.clone().unwrap_or_default(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `p`'s controller is the Job with `uid`.
pub fn controlled_by(p: &Pod, uid: &str) -> bool {
    controller_of(p).is_some_and(|r| r.uid == uid)
}

pub fn controller_of(p: &Pod) -> Option<&OwnerReference> {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Upstream's podGenerateNameWithIndex: generated names stay within 63
/// characters with the random suffix.
fn generate_name(job: &str, index: Option<i32>) -> String {
    const MAX: usize = 58;
    let tail = match index {
        Some(i) => format!("-{i}-"),
        None => "-".into(),
    };
    let mut head = job.to_string();
    if head.len() + tail.len() > MAX {
        let keep = MAX.saturating_sub(tail.len());
        head = head.chars().take(keep).collect();
    }
    format!("{head}{tail}")
}

/// A new pod of `job` from its template: named after the Job, owned by it,
/// kept by the tracking finalizer; with an index, annotated and labelled
/// with it, hostname `<job>-<index>` and `JOB_COMPLETION_INDEX` set.
pub fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.as_ref();
    let template = spec.map(|s| s.template.clone()).unwrap_or_default();
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    let mut finalizers = tm.finalizers.unwrap_or_default();
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.into());
    }
    let mut pod_spec = template.spec.unwrap_or_default();
    if let Some(i) = index {
        annotations.insert(COMPLETION_INDEX.into(), i.to_string());
        labels.insert(COMPLETION_INDEX.into(), i.to_string());
        pod_spec.hostname = Some(format!("{job_name}-{i}"));
        let containers = pod_spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(pod_spec.containers.iter_mut());
        for c in containers {
            let env = c.env.get_or_insert_with(Vec::new);
            if !env.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
                env.push(EnvVar {
                    name: COMPLETION_INDEX_ENV.into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(&job_name, index)),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![controller_ref(job)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn job() -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "ns", "uid": "u1"},
            "spec": {"template": {"metadata": {"labels": {"app": "pi"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "perl"}]}}}
        }))
        .expect("job")
    }

    #[test]
    fn a_new_pod_is_owned_tracked_and_named_after_its_job() {
        let p = new_pod(&job(), None);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("ns"));
        assert!(has_finalizer(&p));
        let owner = controller_of(&p).expect("controller ref");
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Job", "u1"));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert_eq!(index(&p), None);
    }

    #[test]
    fn an_indexed_pod_carries_its_index_everywhere() {
        let p = new_pod(&job(), Some(3));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-3-"));
        assert_eq!(index(&p), Some(3));
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(COMPLETION_INDEX))
                .map(String::as_str),
            Some("3")
        );
        let spec = p.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("pi-3"));
        let env = spec.containers[0].env.as_ref().expect("env");
        assert_eq!(env[0].name, "JOB_COMPLETION_INDEX");
    }

    #[test]
    fn long_job_names_are_cut_for_generated_names() {
        let name = "a".repeat(70);
        assert_eq!(generate_name(&name, Some(12)).len(), 58);
        assert!(generate_name(&name, Some(12)).ends_with("-12-"));
    }

    #[test]
    fn deleted_pods_count_as_failed_unless_only_failed_ones_are_replaced() {
        let gone = pod(
            json!({"metadata": {"name": "a", "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": "Running"}}),
        );
        assert!(failed(&gone, false));
        assert!(!failed(&gone, true));
        assert!(terminating(&gone) && !active(&gone));
        let done = pod(
            json!({"metadata": {"name": "b", "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": "Succeeded"}}),
        );
        assert!(!failed(&done, false));
        let dead = pod(json!({"metadata": {"name": "c"}, "status": {"phase": "Failed"}}));
        assert!(failed(&dead, true));
    }

    #[test]
    fn the_cheapest_pods_are_removed_first() {
        let unscheduled = pod(json!({"metadata": {"name": "u"}, "status": {"phase": "Pending"}}));
        let pending = pod(
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Pending"}}),
        );
        let ready_new = pod(
            json!({"metadata": {"name": "rn"}, "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2024-01-02T00:00:00Z"}]}}),
        );
        let ready_old = pod(
            json!({"metadata": {"name": "ro"}, "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2024-01-01T00:00:00Z"}]}}),
        );
        let mut pods = [ready_old, ready_new, pending, unscheduled];
        pods.sort_by(removal_order);
        let names: Vec<&str> = pods.iter().map(name).collect();
        assert_eq!(names, ["u", "p", "rn", "ro"]);
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "pi"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]}))
        .expect("selector");
        let labels = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selects(&sel, &labels(&[("app", "pi"), ("tier", "a")])));
        assert!(!selects(&sel, &labels(&[("app", "pi"), ("tier", "c")])));
        assert!(!selects(
            &sel,
            &labels(&[("app", "pi"), ("tier", "a"), ("canary", "1")])
        ));
        assert!(!selects(&sel, &labels(&[("tier", "a")])));
    }

    #[test]
    fn a_pod_finished_when_its_last_container_did() {
        let p = pod(
            json!({"metadata": {"name": "a", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": "Failed", "containerStatuses": [
                {"name": "x", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1, "finishedAt": "2024-01-01T00:00:05Z"}}},
                {"name": "y", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1, "finishedAt": "2024-01-01T00:00:09Z"}}}]}}),
        );
        assert_eq!(finished_at(&p).map(|t| t.timestamp() % 60), Some(9));
        let bare = pod(
            json!({"metadata": {"name": "b", "creationTimestamp": "2024-01-01T00:00:03Z"},
            "status": {"phase": "Failed"}}),
        );
        assert_eq!(finished_at(&bare).map(|t| t.timestamp() % 60), Some(3));
    }
}
