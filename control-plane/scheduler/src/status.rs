//! What a user sees of a decision: on failure the pod's `PodScheduled`
//! condition (False, reason Unschedulable, upstream's message counting each
//! reason over the nodes) patched through pods/status, and a
//! `FailedScheduling` Warning event; on success a `Scheduled` event.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::Pod,
    chrono::{SecondsFormat, Utc},
};
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::{Value, json};

use crate::{events::EventSink, framework::FitError};

/// Upstream's `ErrNoNodesAvailable`.
pub const NO_NODES: &str = "no nodes available to schedule pods";

/// Upstream's `FitError.Error()`: "0/3 nodes are available: 1 node(s) had
/// untolerated taint {k: v}, 2 Insufficient cpu." - each reason counted
/// over the nodes, sorted as strings - then what preemption said.
pub fn fit_error_message(e: &FitError) -> String {
    if e.num_all_nodes == 0 {
        return NO_NODES.to_string();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in e.statuses.values() {
        for reason in &r.reasons {
            *counts.entry(reason).or_default() += 1;
        }
    }
    let mut histogram: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    histogram.sort();
    let mut msg = format!("0/{} nodes are available:", e.num_all_nodes);
    if !histogram.is_empty() {
        msg.push_str(&format!(" {}.", histogram.join(", ")));
    }
    if let Some(p) = e.post_filter_msg.as_deref().filter(|p| !p.is_empty()) {
        msg.push(' ');
        msg.push_str(p);
    }
    msg
}

/// How a failed attempt changes the pod's nominated node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nomination {
    Keep,
    Set(String),
    Clear,
}

/// The pods/status strategic merge patch that records the failure, or
/// None when the pod already says exactly that (upstream skips the write).
pub fn unschedulable_patch(
    pod: &Pod,
    message: &str,
    nomination: &Nomination,
    now: &str,
) -> Option<Value> {
    let status = pod.status.as_ref();
    let current = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let unchanged = current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    });
    let nominated = status
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty());
    let nominate = match nomination {
        Nomination::Keep => None,
        Nomination::Set(n) if nominated != Some(n.as_str()) => Some(json!(n)),
        Nomination::Clear if nominated.is_some() => Some(Value::Null),
        _ => None,
    };
    if unchanged && nominate.is_none() {
        return None;
    }
    // The transition time moves only when the status does.
    let transition = match current {
        Some(c) if c.status == "False" => c
            .last_transition_time
            .as_ref()
            .map(|t| t.0.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_else(|| now.to_string()),
        _ => now.to_string(),
    };
    let mut patch = json!({"status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    }]}});
    if let Some(n) = nominate {
        patch["status"]["nominatedNodeName"] = n;
    }
    Some(patch)
}

/// Records a failed attempt on the pod (condition, nominated node, event).
pub async fn record_unschedulable(
    pods: &Api<Pod>,
    events: &EventSink,
    pod: &Pod,
    message: &str,
    nomination: &Nomination,
) {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    if let Some(patch) = unschedulable_patch(pod, message, nomination, &now) {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        if let Err(e) = pods
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            tracing::debug!(error = %e, pod = name, "could not record the PodScheduled condition");
        }
    }
    events.emit(
        pod.object_ref(&()),
        EventType::Warning,
        "FailedScheduling",
        "Scheduling",
        message.to_string(),
        None,
    );
}

/// Upstream's success event text.
pub fn scheduled_message(pod: &Pod, node: &str) -> String {
    format!(
        "Successfully assigned {}/{} to {node}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{framework::Rejection, testing::PodBuilder};
    use k8s_openapi::api::core::v1::PodCondition;

    fn fit(statuses: &[(&str, Rejection)], all: usize) -> FitError {
        FitError {
            num_all_nodes: all,
            statuses: statuses
                .iter()
                .map(|(n, r)| (n.to_string(), r.clone()))
                .collect(),
            post_filter_msg: None,
        }
    }

    #[test]
    fn reasons_are_counted_per_node_and_sorted() {
        let taint = Rejection::unresolvable("node(s) had untolerated taint {k: v}");
        let cpu = Rejection::unschedulable("Insufficient cpu");
        let e = fit(&[("a", cpu.clone()), ("b", taint), ("c", cpu)], 3);
        assert_eq!(
            fit_error_message(&e),
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
        );
    }

    #[test]
    fn a_node_short_of_several_resources_counts_each() {
        let both = Rejection {
            reasons: vec!["Insufficient cpu".into(), "Insufficient memory".into()],
            ..Rejection::unschedulable("")
        };
        let e = fit(
            &[
                ("a", both),
                ("b", Rejection::unschedulable("Insufficient memory")),
            ],
            2,
        );
        assert_eq!(
            fit_error_message(&e),
            "0/2 nodes are available: 1 Insufficient cpu, 2 Insufficient memory."
        );
    }

    #[test]
    fn the_preemption_message_follows() {
        let mut e = fit(&[("a", Rejection::unschedulable("Insufficient cpu"))], 1);
        e.post_filter_msg = Some(
            "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
                .into(),
        );
        assert_eq!(
            fit_error_message(&e),
            "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn no_nodes_at_all_says_so() {
        assert_eq!(
            fit_error_message(&FitError::default()),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn the_patch_sets_the_condition_and_nominated_node() {
        let pod = PodBuilder::new("p").build();
        let p = unschedulable_patch(
            &pod,
            "msg",
            &Nomination::Set("n1".into()),
            "2024-01-01T00:00:00Z",
        )
        .unwrap();
        assert_eq!(
            p,
            json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "msg", "lastProbeTime": null, "lastTransitionTime": "2024-01-01T00:00:00Z",
            }], "nominatedNodeName": "n1"}})
        );
    }

    #[test]
    fn an_unchanged_condition_is_not_rewritten_but_a_new_message_is_with_the_old_transition_time() {
        let mut pod = PodBuilder::new("p").build();
        pod.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("msg".into()),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2023-01-01T00:00:00Z".parse().unwrap(),
            )),
            ..Default::default()
        }]);
        assert_eq!(
            unschedulable_patch(&pod, "msg", &Nomination::Keep, "now"),
            None
        );
        let p = unschedulable_patch(&pod, "other", &Nomination::Keep, "now").unwrap();
        assert_eq!(
            p["status"]["conditions"][0]["lastTransitionTime"],
            "2023-01-01T00:00:00Z"
        );
        assert_eq!(p["status"]["conditions"][0]["message"], "other");
    }

    #[test]
    fn clearing_a_nomination_writes_null() {
        let pod = PodBuilder::new("p").nominated("n1").build();
        let p = unschedulable_patch(&pod, "msg", &Nomination::Clear, "now").unwrap();
        assert_eq!(p["status"]["nominatedNodeName"], Value::Null);
        assert!(
            p["status"]
                .as_object()
                .unwrap()
                .contains_key("nominatedNodeName")
        );
    }

    #[test]
    fn success_names_the_pod_and_node() {
        let pod = PodBuilder::new("web").namespace("shop").build();
        assert_eq!(
            scheduled_message(&pod, "n1"),
            "Successfully assigned shop/web to n1"
        );
    }
}
