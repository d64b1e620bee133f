//! NodeResourcesFit: a pod's requests (cpu, memory, ephemeral-storage,
//! extended resources, one pod slot) must fit in the node's allocatable
//! minus what the pods already there request (filter); LeastAllocated
//! prefers the emptier node (score).
use std::sync::Arc;

use crate::framework::{
    ClusterEvent, Code, CycleData, Filter, FilterResult, MAX_NODE_SCORE, NodeInfo, PodInfo,
    Rejection, Score,
};

pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

pub struct NodeResourcesFit;

/// One resource the node is short of; `unresolvable` when the request
/// exceeds the node's whole allocatable (evicting pods cannot help).
#[derive(Debug, PartialEq, Eq)]
pub struct Insufficient {
    pub reason: String,
    pub unresolvable: bool,
}

/// Upstream's `fitsRequest`: every resource the node is short of, in the
/// order pods, cpu, memory, ephemeral-storage, extended.
pub fn insufficient(pod: &PodInfo, node: &NodeInfo) -> Vec<Insufficient> {
    let mut out = Vec::new();
    if node.pods.len() as i64 + 1 > node.allocatable.pods {
        out.push(Insufficient {
            reason: REASON_TOO_MANY_PODS.into(),
            unresolvable: false,
        });
    }
    let want = &pod.requests;
    if want.is_zero() {
        return out;
    }
    let (alloc, used) = (&node.allocatable, &node.requested);
    let mut check = |name: &str, want: i64, alloc: i64, used: i64| {
        if want > 0 && want > alloc - used {
            out.push(Insufficient {
                reason: format!("Insufficient {name}"),
                unresolvable: want > alloc,
            });
        }
    };
    check("cpu", want.milli_cpu, alloc.milli_cpu, used.milli_cpu);
    check("memory", want.memory, alloc.memory, used.memory);
    check(
        "ephemeral-storage",
        want.ephemeral_storage,
        alloc.ephemeral_storage,
        used.ephemeral_storage,
    );
    for (name, w) in &want.scalar {
        let a = alloc.scalar.get(name).copied().unwrap_or(0);
        let u = used.scalar.get(name).copied().unwrap_or(0);
        check(name, *w, a, u);
    }
    out
}

impl Filter for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, _: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> FilterResult {
        let short = insufficient(pod, node);
        if short.is_empty() {
            return Ok(());
        }
        let code = if short.iter().any(|s| s.unresolvable) {
            Code::UnschedulableAndUnresolvable
        } else {
            Code::Unschedulable
        };
        Err(Rejection {
            code,
            reasons: short.into_iter().map(|s| s.reason).collect(),
            plugin: "",
        })
    }

    fn requeue_on(&self) -> &'static [ClusterEvent] {
        &[
            ClusterEvent::NodeAdded,
            ClusterEvent::NodeUpdated,
            ClusterEvent::AssignedPodDeleted,
        ]
    }
}

/// `(capacity - requested) * 100 / capacity`, 0 when over capacity.
pub fn least_requested_score(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

impl Score for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    /// LeastAllocated over cpu and memory (weight 1 each), counting
    /// requests with the non-zero defaults.
    fn score(&self, _: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let pairs = [
            (
                node.non_zero_requested.milli_cpu + pod.non_zero_requests.milli_cpu,
                node.allocatable.milli_cpu,
            ),
            (
                node.non_zero_requested.memory + pod.non_zero_requests.memory,
                node.allocatable.memory,
            ),
        ];
        let (mut sum, mut weights) = (0, 0);
        for (req, cap) in pairs {
            if cap == 0 {
                continue;
            }
            sum += least_requested_score(req, cap);
            weights += 1;
        }
        if weights == 0 { 0 } else { sum / weights }
    }

    fn normalize(&self, _: Option<&CycleData>, _: &[Arc<NodeInfo>], _: &mut [i64]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NodeBuilder, PodBuilder, container, node_info};

    fn node_using(cpu: &str, mem: &str, used: Vec<(&str, &str)>) -> NodeInfo {
        let pods = used
            .into_iter()
            .enumerate()
            .map(|(i, (c, m))| {
                PodBuilder::new(&format!("old{i}"))
                    .node("n")
                    .container(container(c, m))
                    .build()
            })
            .collect();
        node_info(NodeBuilder::new("n").cpu(cpu).memory(mem).build(), pods)
    }

    fn reasons(pod: PodInfo, node: &NodeInfo) -> Vec<String> {
        NodeResourcesFit
            .filter(None, &pod, node)
            .err()
            .map(|r| r.reasons)
            .unwrap_or_default()
    }

    #[test]
    fn requests_that_fit_in_what_is_left_pass() {
        let node = node_using("4", "8Gi", vec![("3", "4Gi")]);
        let pod = PodBuilder::new("p").container(container("1", "4Gi")).info();
        assert_eq!(NodeResourcesFit.filter(None, &pod, &node), Ok(()));
    }

    #[test]
    fn cpu_beyond_what_is_left_is_insufficient_cpu() {
        let node = node_using("4", "8Gi", vec![("3", "1Gi")]);
        let pod = PodBuilder::new("p")
            .container(container("1500m", "1Gi"))
            .info();
        let r = NodeResourcesFit.filter(None, &pod, &node).unwrap_err();
        assert_eq!(r.reasons, vec!["Insufficient cpu".to_string()]);
        assert_eq!(
            r.code,
            Code::Unschedulable,
            "evicting the 3-cpu pod would help"
        );
    }

    #[test]
    fn every_short_resource_is_named() {
        let node = node_using("1", "1Gi", vec![]);
        let pod = PodBuilder::new("p").container(container("2", "2Gi")).info();
        let r = NodeResourcesFit.filter(None, &pod, &node).unwrap_err();
        assert_eq!(
            r.reasons,
            vec![
                "Insufficient cpu".to_string(),
                "Insufficient memory".to_string()
            ]
        );
        assert_eq!(
            r.code,
            Code::UnschedulableAndUnresolvable,
            "more than the whole node"
        );
    }

    #[test]
    fn init_containers_and_overhead_count() {
        let node = node_using("2", "8Gi", vec![]);
        let pod = PodBuilder::new("p")
            .container(container("1", ""))
            .init_container(container("2500m", ""))
            .info();
        assert_eq!(reasons(pod, &node), vec!["Insufficient cpu".to_string()]);
        let pod = PodBuilder::new("p")
            .container(container("1900m", ""))
            .overhead("200m", "0")
            .info();
        assert_eq!(reasons(pod, &node), vec!["Insufficient cpu".to_string()]);
    }

    #[test]
    fn ephemeral_storage_and_extended_resources_count() {
        let node = node_info(
            NodeBuilder::new("n")
                .resource("example.com/gpu", "1")
                .build(),
            vec![],
        );
        let mut c = container("", "");
        let reqs = c.resources.as_mut().unwrap().requests.as_mut().unwrap();
        reqs.insert(
            "example.com/gpu".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
        );
        reqs.insert(
            "ephemeral-storage".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("200Gi".into()),
        );
        let pod = PodBuilder::new("p").container(c).info();
        assert_eq!(
            reasons(pod, &node),
            vec![
                "Insufficient ephemeral-storage".to_string(),
                "Insufficient example.com/gpu".to_string()
            ]
        );
    }

    #[test]
    fn a_full_node_has_too_many_pods() {
        let node = node_info(
            NodeBuilder::new("n").pods("1").build(),
            vec![PodBuilder::new("old").node("n").build()],
        );
        assert_eq!(
            reasons(PodBuilder::new("p").info(), &node),
            vec!["Too many pods".to_string()]
        );
    }

    #[test]
    fn a_pod_without_requests_fits_a_full_node_except_for_pod_count() {
        let node = node_using("1", "1Gi", vec![("1", "1Gi")]);
        assert_eq!(
            NodeResourcesFit.filter(None, &PodBuilder::new("p").info(), &node),
            Ok(())
        );
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let empty = node_using("4", "8Gi", vec![]);
        let half = node_using("4", "8Gi", vec![("2", "4Gi")]);
        let pod = PodBuilder::new("p").container(container("1", "2Gi")).info();
        // empty: cpu (4-1)/4 = 75, mem (8-2)/8 = 75; half: 25, 25.
        assert_eq!(NodeResourcesFit.score(None, &pod, &empty), 75);
        assert_eq!(NodeResourcesFit.score(None, &pod, &half), 25);
    }

    #[test]
    fn least_allocated_counts_missing_requests_as_defaults() {
        let node = node_using("1", "1000Mi", vec![]);
        let pod = PodBuilder::new("p").container(container("", "")).info();
        // cpu (1000-100)/1000 = 90; memory (1000-200)/1000 = 80; mean 85.
        assert_eq!(NodeResourcesFit.score(None, &pod, &node), 85);
    }
}
