//! Which nodes a DaemonSet's Pod belongs on (upstream's
//! `NodeShouldRunDaemonPod` and `daemon/util`): the template's
//! nodeSelector and required node affinity, and the node's NoSchedule and
//! NoExecute taints against the template's tolerations plus the ones every
//! daemon Pod gets. The Pod itself is placed by the scheduler through a
//! required node affinity on `metadata.name` (upstream since 1.12), so
//! resources, ports and the like are the scheduler's business, not ours.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};

/// Where the daemon Pod of a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// A Pod should be created here if none runs.
    pub should_run: bool,
    /// A Pod already here may stay (a NoSchedule taint added later does
    /// not evict; a NoExecute one does).
    pub should_continue_running: bool,
}

const NO_SCHEDULE: &str = "NoSchedule";
const NO_EXECUTE: &str = "NoExecute";

/// Upstream's `AddOrUpdateDaemonPodTolerations`: a daemon Pod runs on a
/// node that is not ready, unreachable, under pressure or cordoned, and
/// (with hostNetwork) one whose network is not set up yet.
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut auto = vec![
        ("node.kubernetes.io/not-ready", NO_EXECUTE),
        ("node.kubernetes.io/unreachable", NO_EXECUTE),
        ("node.kubernetes.io/disk-pressure", NO_SCHEDULE),
        ("node.kubernetes.io/memory-pressure", NO_SCHEDULE),
        ("node.kubernetes.io/pid-pressure", NO_SCHEDULE),
        ("node.kubernetes.io/unschedulable", NO_SCHEDULE),
    ];
    if spec.host_network == Some(true) {
        auto.push(("node.kubernetes.io/network-unavailable", NO_SCHEDULE));
    }
    for (key, effect) in auto {
        // Replaces a user toleration of the same key and effect, as upstream.
        out.retain(|t| !(t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)));
        out.push(Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        });
    }
    out
}

/// Whether a daemon Pod with `spec` (tolerations already completed by
/// [`daemon_tolerations`]) belongs on `node`.
pub fn placement(spec: &PodSpec, node: &Node) -> Placement {
    let never = Placement {
        should_run: false,
        should_continue_running: false,
    };
    if !matches_node_selector_and_affinity(spec, node) {
        return never;
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    if untolerated(NO_EXECUTE) {
        return never;
    }
    Placement {
        should_run: !untolerated(NO_SCHEDULE),
        should_continue_running: true,
    }
}

/// Upstream's `ToleratesTaint`.
fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

fn matches_node_selector_and_affinity(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        // Terms are ORed; no term matches nothing.
        Some(r) => r.node_selector_terms.iter().any(|t| {
            term_matches(
                t,
                &labels,
                node.metadata.name.as_deref().unwrap_or_default(),
            )
        }),
    }
}

/// A term's expressions (on labels) and fields (`metadata.name` only) are
/// ANDed; an empty term matches nothing.
fn term_matches(t: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key)))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, Some(&name.to_string()))
        })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| int(v)),
                values.first().and_then(|b| int(b)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`: the Pod's
/// required node affinity becomes the one term `metadata.name In [node]`
/// (the node already passed the template's own terms), so the scheduler
/// can place it nowhere else.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        ..Default::default()
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon Pod is for: its `nodeName` once bound, else the
/// node its `metadata.name` affinity pins it to (upstream's
/// `GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref())
        .filter(|v| v.len() == 1)
        .and_then(|v| v.first())
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/hostname".into(),
                    name.into(),
                )])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: None,
        }
    }

    fn tainted(mut n: Node, key: &str, effect: &str) -> Node {
        n.spec
            .get_or_insert_with(Default::default)
            .taints
            .get_or_insert_with(Vec::new)
            .push(Taint {
                key: key.into(),
                effect: effect.into(),
                ..Default::default()
            });
        n
    }

    fn daemon_spec(spec: PodSpec) -> PodSpec {
        let tolerations = daemon_tolerations(&spec);
        PodSpec {
            tolerations: Some(tolerations),
            ..spec
        }
    }

    const RUN: Placement = Placement {
        should_run: true,
        should_continue_running: true,
    };
    const NEVER: Placement = Placement {
        should_run: false,
        should_continue_running: false,
    };

    #[test]
    fn an_untainted_node_runs_a_daemon_pod() {
        assert_eq!(placement(&daemon_spec(PodSpec::default()), &node("a")), RUN);
    }

    #[test]
    fn an_untolerated_noschedule_taint_keeps_new_pods_off_but_not_running_ones() {
        let n = tainted(node("a"), "dedicated", "NoSchedule");
        assert_eq!(
            placement(&daemon_spec(PodSpec::default()), &n),
            Placement {
                should_run: false,
                should_continue_running: true
            }
        );
    }

    #[test]
    fn an_untolerated_noexecute_taint_evicts() {
        let n = tainted(node("a"), "dedicated", "NoExecute");
        assert_eq!(placement(&daemon_spec(PodSpec::default()), &n), NEVER);
    }

    #[test]
    fn a_tolerated_taint_does_not_count() {
        let n = tainted(node("a"), "dedicated", "NoSchedule");
        let spec = daemon_spec(PodSpec {
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(placement(&spec, &n), RUN);
    }

    #[test]
    fn daemon_pods_tolerate_node_conditions_and_cordons() {
        let spec = daemon_spec(PodSpec::default());
        for (key, effect) in [
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
            ("node.kubernetes.io/disk-pressure", "NoSchedule"),
            ("node.kubernetes.io/memory-pressure", "NoSchedule"),
            ("node.kubernetes.io/pid-pressure", "NoSchedule"),
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
        ] {
            assert_eq!(
                placement(&spec, &tainted(node("a"), key, effect)),
                RUN,
                "{key}"
            );
        }
        let net = tainted(
            node("a"),
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        );
        assert!(!placement(&spec, &net).should_run, "only with hostNetwork");
        let host = daemon_spec(PodSpec {
            host_network: Some(true),
            ..Default::default()
        });
        assert_eq!(placement(&host, &net), RUN);
    }

    #[test]
    fn the_node_selector_and_required_affinity_choose_nodes() {
        let spec = daemon_spec(PodSpec {
            node_selector: Some(BTreeMap::from([(
                "kubernetes.io/hostname".into(),
                "a".into(),
            )])),
            ..Default::default()
        });
        assert_eq!(placement(&spec, &node("a")), RUN);
        assert_eq!(placement(&spec, &node("b")), NEVER);

        let mut by_name = daemon_spec(PodSpec::default());
        pin_to_node(&mut by_name, "b");
        assert_eq!(placement(&by_name, &node("a")), NEVER);
        assert_eq!(placement(&by_name, &node("b")), RUN);

        let mut not_in = daemon_spec(PodSpec::default());
        not_in.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "NotIn".into(),
                            values: Some(vec!["a".into()]),
                        }]),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(placement(&not_in, &node("a")), NEVER);
        assert_eq!(placement(&not_in, &node("b")), RUN);
    }

    #[test]
    fn a_pinned_pod_targets_its_node_until_bound() {
        let mut spec = PodSpec::default();
        pin_to_node(&mut spec, "b");
        let mut pod = Pod {
            spec: Some(spec),
            ..Default::default()
        };
        assert_eq!(target_node(&pod), Some("b"));
        pod.spec.as_mut().unwrap().node_name = Some("c".into());
        assert_eq!(target_node(&pod), Some("c"));
        assert_eq!(target_node(&Pod::default()), None);
    }

    #[test]
    fn a_user_toleration_of_an_automatic_key_is_replaced_not_doubled() {
        let spec = PodSpec {
            tolerations: Some(vec![Toleration {
                key: Some("node.kubernetes.io/unschedulable".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let t = daemon_tolerations(&spec);
        assert_eq!(
            t.iter()
                .filter(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable"))
                .count(),
            1
        );
        assert_eq!(t.len(), 6);
    }
}
