//! PodTopologySpread: pods matching a constraint's selector may differ in
//! number between topology domains (nodes, zones) by at most `maxSkew`.
//! `DoNotSchedule` constraints filter; `ScheduleAnyway` ones score, and so
//! does upstream's system default for a pod with no constraints at all
//! (hostname maxSkew 3, zone maxSkew 5), over the pods of the same owner.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;

use super::taint_toleration::untolerated_hard_taint;
use crate::{
    framework::{
        ClusterEvent, CycleData, Filter, FilterResult, LABEL_HOSTNAME, LABEL_ZONE, MAX_NODE_SCORE,
        NodeInfo, PodInfo, Prepared, Rejection, Score, data,
    },
    labels::{Selector, pod_matches_node_selector_and_affinity},
};

pub const REASON: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

pub struct PodTopologySpread;

/// Which pods a constraint counts.
#[derive(Debug)]
enum Counted {
    Selector(Selector),
    /// The default constraints: pods with the same first owner reference.
    Owner(String),
}

#[derive(Debug)]
struct Constraint {
    max_skew: i64,
    key: String,
    counted: Counted,
    min_domains: usize,
    honor_node_affinity: bool,
    honor_node_taints: bool,
}

impl Constraint {
    fn from_spec(c: &TopologySpreadConstraint, pod: &PodInfo) -> Self {
        let mut sel = Selector::from_label_selector(c.label_selector.as_ref());
        for k in c.match_label_keys.iter().flatten() {
            if let Some(v) = pod.labels().and_then(|l| l.get(k)) {
                sel.require_in(k, v);
            }
        }
        Self {
            max_skew: i64::from(c.max_skew),
            key: c.topology_key.clone(),
            counted: Counted::Selector(sel),
            min_domains: c.min_domains.map_or(1, |m| m.max(1) as usize),
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_node_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    fn default_for(key: &str, max_skew: i64, owner: &str) -> Self {
        Self {
            max_skew,
            key: key.into(),
            counted: Counted::Owner(owner.into()),
            min_domains: 1,
            honor_node_affinity: true,
            honor_node_taints: false,
        }
    }

    /// Whether `other` is one of the pods this constraint counts for a pod
    /// in namespace `ns` (terminating pods do not count).
    fn counts(&self, other: &PodInfo, ns: &str) -> bool {
        if other.namespace != ns || other.terminating() {
            return false;
        }
        match &self.counted {
            Counted::Selector(s) => s.matches(other.labels()),
            Counted::Owner(uid) => other.owner_uid.as_deref() == Some(uid),
        }
    }

    fn count_on(&self, node: &NodeInfo, ns: &str) -> i64 {
        node.pods.iter().filter(|p| self.counts(p, ns)).count() as i64
    }

    /// The node inclusion policies: with Honor, nodes the pod could not go
    /// to (node affinity, untolerated taints) are not domains.
    fn includes(&self, pod: &PodInfo, node: &NodeInfo) -> bool {
        (!self.honor_node_affinity || pod_matches_node_selector_and_affinity(&pod.pod, &node.node))
            && (!self.honor_node_taints
                || untolerated_hard_taint(node.taints(), pod.tolerations()).is_none())
    }
}

fn constraints(pod: &PodInfo, when: &str) -> Vec<Constraint> {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.when_unsatisfiable == when)
        .map(|c| Constraint::from_spec(c, pod))
        .collect()
}

fn has_all_keys(node: &NodeInfo, cs: &[Constraint]) -> bool {
    cs.iter().all(|c| node.label(&c.key).is_some())
}

/// The filter's view: matching pods per domain and the smallest domain.
struct FilterState {
    constraints: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    min: Vec<i64>,
}

impl Filter for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn pre_filter(&self, pod: &PodInfo, nodes: &[Arc<NodeInfo>]) -> Option<CycleData> {
        let cs = constraints(pod, "DoNotSchedule");
        if cs.is_empty() {
            return None;
        }
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
        for node in nodes {
            if !has_all_keys(node, &cs) {
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                if !c.includes(pod, node) {
                    continue;
                }
                let v = node.label(&c.key).unwrap_or_default().to_string();
                *counts[i].entry(v).or_default() += c.count_on(node, &pod.namespace);
            }
        }
        let min = cs
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                if m.len() < c.min_domains {
                    0
                } else {
                    m.values().copied().min().unwrap_or(0)
                }
            })
            .collect();
        Some(Box::new(FilterState {
            constraints: cs,
            counts,
            min,
        }))
    }

    fn filter(&self, state: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> FilterResult {
        let Some(s) = data::<FilterState>(state) else {
            return Ok(());
        };
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(value) = node.label(&c.key) else {
                return Err(Rejection::unresolvable(REASON_MISSING_LABEL));
            };
            let self_match = i64::from(c.counts(pod, &pod.namespace));
            let here = s.counts[i].get(value).copied().unwrap_or(0);
            if here + self_match - s.min[i] > c.max_skew {
                return Err(Rejection::unschedulable(REASON));
            }
        }
        Ok(())
    }

    fn requeue_on(&self) -> &'static [ClusterEvent] {
        &[
            ClusterEvent::NodeAdded,
            ClusterEvent::NodeUpdated,
            ClusterEvent::AssignedPodAdded,
            ClusterEvent::AssignedPodUpdated,
            ClusterEvent::AssignedPodDeleted,
        ]
    }
}

/// The score's view (upstream's preScoreState).
struct ScoreState {
    constraints: Vec<Constraint>,
    ignored: HashSet<String>,
    /// Matching pods per domain value, for non-hostname keys.
    counts: Vec<HashMap<String, i64>>,
    weights: Vec<f64>,
}

impl Score for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn pre_score(
        &self,
        pod: &PodInfo,
        all: &[Arc<NodeInfo>],
        feasible: &[Arc<NodeInfo>],
    ) -> Prepared {
        let explicit = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .is_some_and(|v| !v.is_empty());
        let cs = if explicit {
            constraints(pod, "ScheduleAnyway")
        } else {
            match &pod.owner_uid {
                Some(uid) => vec![
                    Constraint::default_for(LABEL_HOSTNAME, 3, uid),
                    Constraint::default_for(LABEL_ZONE, 5, uid),
                ],
                None => Vec::new(),
            }
        };
        if cs.is_empty() {
            return Prepared::Skip;
        }
        // Only explicit constraints need every key on a node; nodes
        // without a zone still get hostname spreading by default.
        let require_all = explicit;
        let mut ignored = HashSet::new();
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
        for node in feasible {
            if require_all && !has_all_keys(node, &cs) {
                ignored.insert(node.name().to_string());
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                if c.key == LABEL_HOSTNAME {
                    continue;
                }
                let v = node.label(&c.key).unwrap_or_default().to_string();
                counts[i].entry(v).or_insert(0);
            }
        }
        let weights = cs
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                let size = if c.key == LABEL_HOSTNAME {
                    feasible.len() - ignored.len()
                } else {
                    m.len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        for node in all {
            if require_all && !has_all_keys(node, &cs) {
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                if c.key == LABEL_HOSTNAME || !c.includes(pod, node) {
                    continue;
                }
                let v = node.label(&c.key).unwrap_or_default();
                if let Some(n) = counts[i].get_mut(v) {
                    *n += c.count_on(node, &pod.namespace);
                }
            }
        }
        Prepared::Ready(Some(Box::new(ScoreState {
            constraints: cs,
            ignored,
            counts,
            weights,
        })))
    }

    /// The weighted number of matching pods in the node's domains (lower is
    /// better; normalize reverses it).
    fn score(&self, state: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(s) = data::<ScoreState>(state) else {
            return 0;
        };
        if s.ignored.contains(node.name()) {
            return 0;
        }
        let mut score = 0.0;
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(v) = node.label(&c.key) else {
                continue;
            };
            let cnt = if c.key == LABEL_HOSTNAME {
                c.count_on(node, &pod.namespace)
            } else {
                s.counts[i].get(v).copied().unwrap_or(0)
            };
            score += cnt as f64 * s.weights[i] + (c.max_skew - 1) as f64;
        }
        score.round() as i64
    }

    fn normalize(&self, state: Option<&CycleData>, nodes: &[Arc<NodeInfo>], scores: &mut [i64]) {
        let Some(s) = data::<ScoreState>(state) else {
            return;
        };
        let valid = |i: usize| !s.ignored.contains(nodes[i].name());
        let (mut min, mut max) = (i64::MAX, 0);
        for (i, sc) in scores.iter().enumerate() {
            if valid(i) {
                min = min.min(*sc);
                max = max.max(*sc);
            }
        }
        for (i, sc) in scores.iter_mut().enumerate() {
            *sc = if !valid(i) {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *sc) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        framework::Code,
        testing::{NodeBuilder, PodBuilder, node_info, snapshot},
    };

    /// Three zones, two nodes each; `per_node[i]` app=web pods on node i.
    fn cluster(per_node: &[usize]) -> Vec<Arc<NodeInfo>> {
        let nodes: Vec<_> = (0..6)
            .map(|i| {
                NodeBuilder::new(&format!("n{i}"))
                    .zone(&format!("z{}", i / 2))
                    .build()
            })
            .collect();
        let mut pods = Vec::new();
        for (i, n) in per_node.iter().enumerate() {
            for j in 0..*n {
                pods.push(
                    PodBuilder::new(&format!("web-{i}-{j}"))
                        .node(&format!("n{i}"))
                        .label("app", "web")
                        .build(),
                );
            }
        }
        snapshot(nodes, pods).nodes
    }

    fn feasible(pod: &PodInfo, nodes: &[Arc<NodeInfo>]) -> Vec<String> {
        let st = PodTopologySpread.pre_filter(pod, nodes);
        nodes
            .iter()
            .filter(|n| PodTopologySpread.filter(st.as_ref(), pod, n).is_ok())
            .map(|n| n.name().to_string())
            .collect()
    }

    fn web(when: &str, key: &str, skew: i32) -> PodInfo {
        PodBuilder::new("new")
            .label("app", "web")
            .spread(skew, key, when, &[("app", "web")])
            .info()
    }

    #[test]
    fn zone_spread_keeps_the_new_pod_out_of_the_fullest_zone() {
        // z0: 2 pods, z1: 1, z2: 1 -> z0 would reach skew 2.
        let nodes = cluster(&[1, 1, 1, 0, 1, 0]);
        let pod = web("DoNotSchedule", LABEL_ZONE, 1);
        assert_eq!(feasible(&pod, &nodes), vec!["n2", "n3", "n4", "n5"]);
        let st = PodTopologySpread.pre_filter(&pod, &nodes);
        let r = PodTopologySpread
            .filter(st.as_ref(), &pod, &nodes[0])
            .unwrap_err();
        assert_eq!(
            r.reasons,
            vec!["node(s) didn't match pod topology spread constraints".to_string()]
        );
        assert_eq!(r.code, Code::Unschedulable);
    }

    #[test]
    fn hostname_spread_admits_only_the_emptiest_nodes_at_skew_one() {
        let nodes = cluster(&[1, 1, 1, 0, 1, 1]);
        assert_eq!(
            feasible(&web("DoNotSchedule", LABEL_HOSTNAME, 1), &nodes),
            vec!["n3"]
        );
    }

    #[test]
    fn a_node_without_the_topology_key_is_unresolvable() {
        let nodes = vec![Arc::new(node_info(
            NodeBuilder::new("bare").build(),
            vec![],
        ))];
        let pod = web("DoNotSchedule", LABEL_ZONE, 1);
        let st = PodTopologySpread.pre_filter(&pod, &nodes);
        let r = PodTopologySpread
            .filter(st.as_ref(), &pod, &nodes[0])
            .unwrap_err();
        assert_eq!(
            r.reasons,
            vec![
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .to_string()
            ]
        );
        assert_eq!(r.code, Code::UnschedulableAndUnresolvable);
    }

    #[test]
    fn a_pod_outside_its_own_selector_does_not_count_itself() {
        let nodes = cluster(&[1, 0, 0, 0, 0, 0]);
        let pod = PodBuilder::new("other")
            .spread(0, LABEL_HOSTNAME, "DoNotSchedule", &[("app", "web")])
            .info();
        // maxSkew 0 is invalid upstream, but shows the self count: the
        // empty nodes pass only because the pod itself does not match.
        assert_eq!(feasible(&pod, &nodes), vec!["n1", "n2", "n3", "n4", "n5"]);
    }

    #[test]
    fn min_domains_counts_missing_domains_as_empty() {
        // One pod in each zone: without minDomains every zone is at the
        // global minimum; with minDomains 4 the minimum is 0, so no zone
        // may take a second pod at maxSkew 1.
        let nodes = cluster(&[1, 0, 1, 0, 1, 0]);
        assert_eq!(
            feasible(&web("DoNotSchedule", LABEL_ZONE, 1), &nodes).len(),
            6
        );
        let pod = PodBuilder::new("new")
            .label("app", "web")
            .spread(1, LABEL_ZONE, "DoNotSchedule", &[("app", "web")])
            .min_domains(4)
            .info();
        assert!(feasible(&pod, &nodes).is_empty());
    }

    #[test]
    fn nodes_excluded_by_node_affinity_are_not_domains() {
        // z0 holds 2 pods, z1 1, z2 none; the pod may only go to z0/z1, so
        // the minimum is z1's 1 (not z2's 0) and z0 takes a third pod at
        // maxSkew 2.
        let nodes = cluster(&[2, 0, 1, 0, 0, 0]);
        let pod = PodBuilder::new("new")
            .label("app", "web")
            .spread(2, LABEL_ZONE, "DoNotSchedule", &[("app", "web")])
            .required_node_terms(vec![crate::testing::term(vec![crate::testing::node_req(
                LABEL_ZONE,
                "In",
                &["z0", "z1"],
            )])])
            .info();
        assert!(feasible(&pod, &nodes).contains(&"n0".to_string()));
    }

    #[test]
    fn schedule_anyway_scores_emptier_zones_higher() {
        let nodes = cluster(&[2, 1, 1, 0, 0, 0]);
        let pod = web("ScheduleAnyway", LABEL_ZONE, 1);
        let Prepared::Ready(st) = PodTopologySpread.pre_score(&pod, &nodes, &nodes) else {
            panic!("skipped")
        };
        let mut s: Vec<i64> = nodes
            .iter()
            .map(|n| PodTopologySpread.score(st.as_ref(), &pod, n))
            .collect();
        PodTopologySpread.normalize(st.as_ref(), &nodes, &mut s);
        assert!(s[4] > s[2] && s[2] > s[0], "{s:?}");
        assert_eq!(s[4], s[5]);
        assert_eq!(s[4], MAX_NODE_SCORE);
    }

    #[test]
    fn default_spreading_prefers_nodes_with_fewer_pods_of_the_same_owner() {
        let nodes: Vec<_> = (0..3)
            .map(|i| NodeBuilder::new(&format!("n{i}")).build())
            .collect();
        let pods = vec![
            PodBuilder::new("a").node("n0").owner("rs1").build(),
            PodBuilder::new("b").node("n0").owner("rs1").build(),
            PodBuilder::new("c").node("n1").owner("rs1").build(),
            PodBuilder::new("d").node("n2").owner("other").build(),
            PodBuilder::new("e").node("n2").owner("other").build(),
        ];
        let nodes = snapshot(nodes, pods).nodes;
        let pod = PodBuilder::new("new").owner("rs1").info();
        let Prepared::Ready(st) = PodTopologySpread.pre_score(&pod, &nodes, &nodes) else {
            panic!("skipped")
        };
        let mut s: Vec<i64> = nodes
            .iter()
            .map(|n| PodTopologySpread.score(st.as_ref(), &pod, n))
            .collect();
        PodTopologySpread.normalize(st.as_ref(), &nodes, &mut s);
        assert!(s[2] > s[1] && s[1] > s[0], "{s:?}");
    }

    #[test]
    fn a_pod_without_owner_or_constraints_is_not_spread() {
        let nodes = cluster(&[0; 6]);
        assert!(matches!(
            PodTopologySpread.pre_score(&PodBuilder::new("p").info(), &nodes, &nodes),
            Prepared::Skip
        ));
    }
}
