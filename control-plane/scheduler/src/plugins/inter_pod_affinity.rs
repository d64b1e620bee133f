//! InterPodAffinity: required pod affinity (the node's topology domain
//! must already hold a matching pod) and anti-affinity (it must hold none),
//! both ways: an existing pod's required anti-affinity also keeps the
//! incoming pod out of its domain (filter). Preferred terms of both pods
//! rank the domains (score).
use std::{collections::HashMap, sync::Arc};

use crate::framework::{
    AffinityTerm, ClusterEvent, CycleData, Filter, FilterResult, MAX_NODE_SCORE, NodeInfo, PodInfo,
    Prepared, Rejection, Score, data,
};

pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";

pub struct InterPodAffinity;

/// (topology key, value) -> count.
type Counts = HashMap<(String, String), i64>;

fn bump(counts: &mut Counts, node: &NodeInfo, key: &str, by: i64) {
    if let Some(v) = node.label(key) {
        *counts.entry((key.to_string(), v.to_string())).or_default() += by;
    }
}

struct FilterState {
    /// Domains an existing pod's required anti-affinity closes to the
    /// incoming pod.
    existing_anti: Counts,
    /// Existing pods matching all of the incoming pod's affinity terms.
    affinity: Counts,
    /// Existing pods matching each of its anti-affinity terms.
    anti: Counts,
}

impl Filter for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_filter(&self, pod: &PodInfo, nodes: &[Arc<NodeInfo>]) -> Option<CycleData> {
        let own_terms = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
        let mut s = FilterState {
            existing_anti: Counts::new(),
            affinity: Counts::new(),
            anti: Counts::new(),
        };
        for node in nodes {
            if node.pods_with_required_anti_affinity > 0 {
                for existing in node
                    .pods
                    .iter()
                    .filter(|p| !p.required_anti_affinity.is_empty())
                {
                    for t in existing
                        .required_anti_affinity
                        .iter()
                        .filter(|t| t.matches(pod))
                    {
                        bump(&mut s.existing_anti, node, &t.topology_key, 1);
                    }
                }
            }
            if !own_terms {
                continue;
            }
            for existing in &node.pods {
                if !pod.required_affinity.is_empty()
                    && pod.required_affinity.iter().all(|t| t.matches(existing))
                {
                    for t in &pod.required_affinity {
                        bump(&mut s.affinity, node, &t.topology_key, 1);
                    }
                }
                for t in pod
                    .required_anti_affinity
                    .iter()
                    .filter(|t| t.matches(existing))
                {
                    bump(&mut s.anti, node, &t.topology_key, 1);
                }
            }
        }
        if s.existing_anti.is_empty() && !own_terms {
            return None;
        }
        Some(Box::new(s))
    }

    fn filter(&self, state: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> FilterResult {
        let Some(s) = data::<FilterState>(state) else {
            return Ok(());
        };
        let count = |m: &Counts, k: &str, v: &str| {
            m.get(&(k.to_string(), v.to_string())).copied().unwrap_or(0)
        };
        if !s.existing_anti.is_empty()
            && node
                .labels()
                .into_iter()
                .flatten()
                .any(|(k, v)| count(&s.existing_anti, k, v) > 0)
        {
            return Err(Rejection::unschedulable(REASON_EXISTING_ANTI_AFFINITY));
        }
        if !pod.required_affinity.is_empty() {
            let mut pods_exist = true;
            for t in &pod.required_affinity {
                let Some(v) = node.label(&t.topology_key) else {
                    return Err(Rejection::unresolvable(REASON_AFFINITY));
                };
                if count(&s.affinity, &t.topology_key, v) <= 0 {
                    pods_exist = false;
                }
            }
            // The first pod of a group with affinity to itself: if no pod
            // anywhere matches and it matches its own terms, let it start
            // the group.
            let first_of_group =
                s.affinity.is_empty() && pod.required_affinity.iter().all(|t| t.matches(pod));
            if !pods_exist && !first_of_group {
                return Err(Rejection::unresolvable(REASON_AFFINITY));
            }
        }
        for t in &pod.required_anti_affinity {
            if let Some(v) = node.label(&t.topology_key)
                && count(&s.anti, &t.topology_key, v) > 0
            {
                return Err(Rejection::unschedulable(REASON_ANTI_AFFINITY));
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

/// Upstream's `HardPodAffinityWeight` default: an existing pod's required
/// affinity to the incoming pod counts like a preferred term of weight 1.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// topology key -> value -> score.
struct ScoreState(HashMap<String, HashMap<String, i64>>);

impl ScoreState {
    fn add(&mut self, terms: &[(i32, AffinityTerm)], target: &PodInfo, node: &NodeInfo, sign: i64) {
        for (w, t) in terms {
            self.add_term(t, i64::from(*w) * sign, target, node);
        }
    }

    fn add_term(&mut self, t: &AffinityTerm, weight: i64, target: &PodInfo, node: &NodeInfo) {
        if t.matches(target)
            && let Some(v) = node.label(&t.topology_key)
        {
            *self
                .0
                .entry(t.topology_key.clone())
                .or_default()
                .entry(v.to_string())
                .or_default() += weight;
        }
    }
}

impl Score for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_score(&self, pod: &PodInfo, all: &[Arc<NodeInfo>], _: &[Arc<NodeInfo>]) -> Prepared {
        let own = !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        let mut s = ScoreState(HashMap::new());
        for node in all {
            if !own && node.pods_with_affinity == 0 {
                continue;
            }
            for existing in &node.pods {
                if !own && !existing.has_affinity() {
                    continue;
                }
                s.add(&pod.preferred_affinity, existing, node, 1);
                s.add(&pod.preferred_anti_affinity, existing, node, -1);
                for t in &existing.required_affinity {
                    s.add_term(t, HARD_POD_AFFINITY_WEIGHT, pod, node);
                }
                s.add(&existing.preferred_affinity, pod, node, 1);
                s.add(&existing.preferred_anti_affinity, pod, node, -1);
            }
        }
        if s.0.is_empty() {
            return Prepared::Skip;
        }
        Prepared::Ready(Some(Box::new(s)))
    }

    fn score(&self, state: Option<&CycleData>, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(s) = data::<ScoreState>(state) else {
            return 0;
        };
        s.0.iter()
            .filter_map(|(k, vals)| node.label(k).and_then(|v| vals.get(v)))
            .sum()
    }

    /// Min-max scaling to 0..=100 (all equal: 0).
    fn normalize(&self, _: Option<&CycleData>, _: &[Arc<NodeInfo>], scores: &mut [i64]) {
        let (Some(min), Some(max)) = (scores.iter().copied().min(), scores.iter().copied().max())
        else {
            return;
        };
        for s in scores.iter_mut() {
            *s = if max > min {
                (MAX_NODE_SCORE as f64 * ((*s - min) as f64 / (max - min) as f64)) as i64
            } else {
                0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        framework::{Code, LABEL_HOSTNAME, LABEL_ZONE},
        testing::{NodeBuilder, PodBuilder, pod_term, snapshot},
    };
    use k8s_openapi::api::core::v1::Pod;

    /// n0, n1 in zone a; n2 in zone b.
    fn cluster(pods: Vec<Pod>) -> Vec<Arc<NodeInfo>> {
        let nodes = vec![
            NodeBuilder::new("n0").zone("a").build(),
            NodeBuilder::new("n1").zone("a").build(),
            NodeBuilder::new("n2").zone("b").build(),
        ];
        snapshot(nodes, pods).nodes
    }

    fn run(pod: &PodInfo, nodes: &[Arc<NodeInfo>]) -> Vec<Result<(), Rejection>> {
        let st = InterPodAffinity.pre_filter(pod, nodes);
        nodes
            .iter()
            .map(|n| InterPodAffinity.filter(st.as_ref(), pod, n))
            .collect()
    }

    fn ok(rs: &[Result<(), Rejection>]) -> Vec<bool> {
        rs.iter().map(Result::is_ok).collect()
    }

    #[test]
    fn required_affinity_needs_a_matching_pod_in_the_domain() {
        let nodes = cluster(vec![
            PodBuilder::new("db").node("n0").label("app", "db").build(),
        ]);
        let pod = PodBuilder::new("web")
            .pod_affinity(pod_term(&[("app", "db")], LABEL_ZONE))
            .info();
        let rs = run(&pod, &nodes);
        assert_eq!(ok(&rs), vec![true, true, false], "zone a holds the db");
        let r = rs[2].clone().unwrap_err();
        assert_eq!(
            r.reasons,
            vec!["node(s) didn't match pod affinity rules".to_string()]
        );
        assert_eq!(r.code, Code::UnschedulableAndUnresolvable);
    }

    #[test]
    fn the_first_pod_of_a_self_affine_group_may_go_anywhere() {
        let nodes = cluster(vec![]);
        let pod = PodBuilder::new("web")
            .label("app", "web")
            .pod_affinity(pod_term(&[("app", "web")], LABEL_ZONE))
            .info();
        assert_eq!(ok(&run(&pod, &nodes)), vec![true, true, true]);
        let stranger = PodBuilder::new("x")
            .pod_affinity(pod_term(&[("app", "web")], LABEL_ZONE))
            .info();
        assert_eq!(ok(&run(&stranger, &nodes)), vec![false, false, false]);
    }

    #[test]
    fn required_anti_affinity_keeps_out_of_domains_with_a_matching_pod() {
        let nodes = cluster(vec![
            PodBuilder::new("web1")
                .node("n0")
                .label("app", "web")
                .build(),
        ]);
        let pod = PodBuilder::new("web2")
            .label("app", "web")
            .pod_anti_affinity(pod_term(&[("app", "web")], LABEL_HOSTNAME))
            .info();
        let rs = run(&pod, &nodes);
        assert_eq!(ok(&rs), vec![false, true, true]);
        let r = rs[0].clone().unwrap_err();
        assert_eq!(
            r.reasons,
            vec!["node(s) didn't match pod anti-affinity rules".to_string()]
        );
        assert_eq!(r.code, Code::Unschedulable);
    }

    #[test]
    fn an_existing_pods_anti_affinity_keeps_the_incoming_pod_out() {
        let loner = PodBuilder::new("loner")
            .node("n0")
            .pod_anti_affinity(pod_term(&[("app", "web")], LABEL_ZONE))
            .build();
        let nodes = cluster(vec![loner]);
        let rs = run(&PodBuilder::new("web").label("app", "web").info(), &nodes);
        assert_eq!(ok(&rs), vec![false, false, true]);
        assert_eq!(
            rs[0].clone().unwrap_err().reasons,
            vec!["node(s) didn't satisfy existing pods anti-affinity rules".to_string()]
        );
        // A pod the term does not select is unaffected.
        assert_eq!(
            ok(&run(
                &PodBuilder::new("db").label("app", "db").info(),
                &nodes
            )),
            vec![true; 3]
        );
    }

    #[test]
    fn terms_look_only_at_their_namespaces() {
        let nodes = cluster(vec![
            PodBuilder::new("web1")
                .namespace("other")
                .node("n0")
                .label("app", "web")
                .build(),
        ]);
        let pod = PodBuilder::new("web2")
            .label("app", "web")
            .pod_anti_affinity(pod_term(&[("app", "web")], LABEL_HOSTNAME))
            .info();
        assert_eq!(
            ok(&run(&pod, &nodes)),
            vec![true; 3],
            "default namespace only"
        );
    }

    #[test]
    fn preferred_terms_rank_domains() {
        let nodes = cluster(vec![
            PodBuilder::new("cache")
                .node("n2")
                .label("app", "cache")
                .build(),
            PodBuilder::new("noisy")
                .node("n0")
                .label("app", "noisy")
                .build(),
        ]);
        let pod = PodBuilder::new("web")
            .preferred_pod_affinity(50, pod_term(&[("app", "cache")], LABEL_ZONE))
            .preferred_pod_anti_affinity(50, pod_term(&[("app", "noisy")], LABEL_HOSTNAME))
            .info();
        let Prepared::Ready(st) = InterPodAffinity.pre_score(&pod, &nodes, &nodes) else {
            panic!("skipped")
        };
        let mut s: Vec<i64> = nodes
            .iter()
            .map(|n| InterPodAffinity.score(st.as_ref(), &pod, n))
            .collect();
        assert_eq!(s, vec![-50, 0, 50]);
        InterPodAffinity.normalize(st.as_ref(), &nodes, &mut s);
        assert_eq!(s, vec![0, 50, 100]);
    }

    #[test]
    fn existing_pods_preferences_toward_the_incoming_pod_count() {
        let fan = PodBuilder::new("fan")
            .node("n1")
            .preferred_pod_affinity(10, pod_term(&[("app", "web")], LABEL_HOSTNAME))
            .build();
        let nodes = cluster(vec![fan]);
        let pod = PodBuilder::new("web").label("app", "web").info();
        let Prepared::Ready(st) = InterPodAffinity.pre_score(&pod, &nodes, &nodes) else {
            panic!("skipped")
        };
        let s: Vec<i64> = nodes
            .iter()
            .map(|n| InterPodAffinity.score(st.as_ref(), &pod, n))
            .collect();
        assert_eq!(s, vec![0, 10, 0]);
    }
}
