//! NodeAffinity: `spec.nodeSelector` and the required node affinity terms
//! (ORed, each term's expressions and fields ANDed) decide where a pod may
//! go (filter); the preferred terms' weights rank the nodes (score).
use std::sync::Arc;

use k8s_openapi::api::core::v1::PreferredSchedulingTerm;

use crate::{
    framework::{
        CycleData, Filter, FilterResult, NodeInfo, PodInfo, Prepared, Rejection, Score, data,
        default_normalize,
    },
    labels::{node_term_matches, pod_matches_node_selector_and_affinity},
};

pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

pub struct NodeAffinity;

impl Filter for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(&self, _: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> FilterResult {
        if pod_matches_node_selector_and_affinity(&pod.pod, &node.node) {
            Ok(())
        } else {
            Err(Rejection::unresolvable(REASON))
        }
    }
}

struct Preferred(Vec<PreferredSchedulingTerm>);

impl Score for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn pre_score(&self, pod: &PodInfo, _: &[Arc<NodeInfo>], _: &[Arc<NodeInfo>]) -> Prepared {
        let terms: Vec<PreferredSchedulingTerm> = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.weight != 0)
            .collect();
        if terms.is_empty() {
            return Prepared::Skip;
        }
        Prepared::Ready(Some(Box::new(Preferred(terms))))
    }

    /// The sum of the weights of the preferred terms the node matches.
    fn score(&self, state: Option<&CycleData>, _: &PodInfo, node: &NodeInfo) -> i64 {
        data::<Preferred>(state)
            .into_iter()
            .flat_map(|p| &p.0)
            .filter(|t| node_term_matches(&t.preference, &node.node))
            .map(|t| i64::from(t.weight))
            .sum()
    }

    fn normalize(&self, _: Option<&CycleData>, _: &[Arc<NodeInfo>], scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        framework::Code,
        testing::{NodeBuilder, PodBuilder, node_info, node_req, term},
    };

    fn zoned(name: &str, zone: &str) -> NodeInfo {
        node_info(
            NodeBuilder::new(name)
                .zone(zone)
                .label("disk", "ssd")
                .build(),
            vec![],
        )
    }

    #[test]
    fn node_selector_must_match_every_label() {
        let pod = PodBuilder::new("p")
            .node_selector("topology.kubernetes.io/zone", "a")
            .node_selector("disk", "ssd")
            .info();
        assert_eq!(NodeAffinity.filter(None, &pod, &zoned("n1", "a")), Ok(()));
        let r = NodeAffinity
            .filter(None, &pod, &zoned("n2", "b"))
            .unwrap_err();
        assert_eq!(
            r.reasons,
            vec!["node(s) didn't match Pod's node affinity/selector".to_string()]
        );
        assert_eq!(r.code, Code::UnschedulableAndUnresolvable);
    }

    #[test]
    fn required_terms_are_ored_and_their_expressions_anded() {
        let pod = PodBuilder::new("p")
            .required_node_terms(vec![
                term(vec![
                    node_req("topology.kubernetes.io/zone", "In", &["a"]),
                    node_req("disk", "NotIn", &["ssd"]),
                ]),
                term(vec![node_req("topology.kubernetes.io/zone", "In", &["b"])]),
            ])
            .info();
        assert!(
            NodeAffinity.filter(None, &pod, &zoned("n1", "a")).is_err(),
            "first term: disk is ssd"
        );
        assert_eq!(
            NodeAffinity.filter(None, &pod, &zoned("n2", "b")),
            Ok(()),
            "second term"
        );
        assert!(NodeAffinity.filter(None, &pod, &zoned("n3", "c")).is_err());
    }

    #[test]
    fn selector_and_affinity_must_both_hold() {
        let pod = PodBuilder::new("p")
            .node_selector("disk", "hdd")
            .required_node_terms(vec![term(vec![node_req(
                "topology.kubernetes.io/zone",
                "In",
                &["a"],
            )])])
            .info();
        assert!(NodeAffinity.filter(None, &pod, &zoned("n1", "a")).is_err());
    }

    #[test]
    fn preferred_terms_rank_by_weight() {
        let nodes: Vec<Arc<NodeInfo>> = vec![
            Arc::new(zoned("a", "a")),
            Arc::new(zoned("b", "b")),
            Arc::new(zoned("c", "c")),
        ];
        let pod = PodBuilder::new("p")
            .preferred_node_term(
                80,
                term(vec![node_req("topology.kubernetes.io/zone", "In", &["a"])]),
            )
            .preferred_node_term(
                20,
                term(vec![node_req(
                    "topology.kubernetes.io/zone",
                    "In",
                    &["a", "b"],
                )]),
            )
            .info();
        let Prepared::Ready(state) = NodeAffinity.pre_score(&pod, &nodes, &nodes) else {
            panic!("skipped")
        };
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| NodeAffinity.score(state.as_ref(), &pod, n))
            .collect();
        assert_eq!(scores, vec![100, 20, 0]);
        NodeAffinity.normalize(state.as_ref(), &nodes, &mut scores);
        assert_eq!(scores, vec![100, 20, 0]);
    }

    #[test]
    fn no_preferred_terms_skips_scoring() {
        let nodes = vec![Arc::new(zoned("a", "a"))];
        assert!(matches!(
            NodeAffinity.pre_score(&PodBuilder::new("p").info(), &nodes, &nodes),
            Prepared::Skip
        ));
    }
}
