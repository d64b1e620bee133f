//! NodeResourcesBalancedAllocation: prefers the node whose cpu and memory
//! would be used in the most similar proportions once the pod is there
//! (`(1 - std deviation of the fractions) * 100`).
use std::sync::Arc;

use crate::framework::{CycleData, MAX_NODE_SCORE, NodeInfo, PodInfo, Prepared, Score};

pub struct BalancedAllocation;

/// The score of the fractions `requested / allocatable` (each capped at 1).
pub fn balanced_score(pairs: &[(i64, i64)]) -> i64 {
    let fractions: Vec<f64> = pairs
        .iter()
        .filter(|(_, cap)| *cap > 0)
        .map(|(req, cap)| (*req as f64 / *cap as f64).min(1.0))
        .collect();
    let std = match fractions.len() {
        0 | 1 => 0.0,
        2 => ((fractions[0] - fractions[1]) / 2.0).abs(),
        n => {
            let mean = fractions.iter().sum::<f64>() / n as f64;
            (fractions
                .iter()
                .map(|f| (f - mean) * (f - mean))
                .sum::<f64>()
                / n as f64)
                .sqrt()
        }
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

impl Score for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    /// A pod requesting neither cpu nor memory is skipped (upstream: else
    /// best-effort pods all pile onto the most balanced node).
    fn pre_score(&self, pod: &PodInfo, _: &[Arc<NodeInfo>], _: &[Arc<NodeInfo>]) -> Prepared {
        if pod.requests.milli_cpu == 0 && pod.requests.memory == 0 {
            return Prepared::Skip;
        }
        Prepared::Ready(None)
    }

    fn score(&self, _: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> i64 {
        balanced_score(&[
            (
                node.requested.milli_cpu + pod.requests.milli_cpu,
                node.allocatable.milli_cpu,
            ),
            (
                node.requested.memory + pod.requests.memory,
                node.allocatable.memory,
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NodeBuilder, PodBuilder, container, node_info};

    #[test]
    fn equal_fractions_score_100() {
        assert_eq!(balanced_score(&[(2, 4), (4, 8)]), 100);
    }

    #[test]
    fn unequal_fractions_score_lower() {
        // cpu 1/4 = 0.25, memory 6/8 = 0.75: std 0.25 -> 75.
        assert_eq!(balanced_score(&[(1, 4), (6, 8)]), 75);
        assert_eq!(balanced_score(&[(8, 4), (0, 8)]), 50, "fractions cap at 1");
    }

    #[test]
    fn the_node_that_balances_the_pod_wins() {
        // The pod is cpu-heavy: the memory-heavy node balances it.
        let pod = PodBuilder::new("p").container(container("2", "1Gi")).info();
        let cpu_heavy = node_info(
            NodeBuilder::new("a").cpu("4").memory("8Gi").build(),
            vec![
                PodBuilder::new("x")
                    .node("a")
                    .container(container("2", "0"))
                    .build(),
            ],
        );
        let mem_heavy = node_info(
            NodeBuilder::new("b").cpu("4").memory("8Gi").build(),
            vec![
                PodBuilder::new("y")
                    .node("b")
                    .container(container("0", "4Gi"))
                    .build(),
            ],
        );
        assert!(
            BalancedAllocation.score(None, &pod, &mem_heavy)
                > BalancedAllocation.score(None, &pod, &cpu_heavy)
        );
    }

    #[test]
    fn best_effort_pods_are_not_scored() {
        let n = vec![Arc::new(node_info(NodeBuilder::new("a").build(), vec![]))];
        assert!(matches!(
            BalancedAllocation.pre_score(&PodBuilder::new("p").info(), &n, &n),
            Prepared::Skip
        ));
    }
}
