//! NodePorts: two pods cannot claim the same host port and protocol on
//! overlapping host IPs (0.0.0.0 overlaps every IP).
use crate::framework::{
    ClusterEvent, CycleData, Filter, FilterResult, NodeInfo, PodInfo, Rejection,
};

pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

pub struct NodePorts;

impl Filter for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(&self, _: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> FilterResult {
        let clash = pod
            .host_ports
            .iter()
            .any(|want| node.used_ports.iter().any(|used| want.conflicts(used)));
        if clash {
            Err(Rejection::unschedulable(REASON))
        } else {
            Ok(())
        }
    }

    fn requeue_on(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::NodeAdded, ClusterEvent::AssignedPodDeleted]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        framework::Code,
        testing::{NodeBuilder, PodBuilder, node_info},
    };

    fn node_with(port: i32, proto: &str, ip: &str) -> NodeInfo {
        node_info(
            NodeBuilder::new("n").build(),
            vec![
                PodBuilder::new("old")
                    .node("n")
                    .host_port(port, proto, ip)
                    .build(),
            ],
        )
    }

    #[test]
    fn the_same_port_and_protocol_conflict() {
        let pod = PodBuilder::new("p").host_port(8080, "TCP", "").info();
        let r = NodePorts
            .filter(None, &pod, &node_with(8080, "", ""))
            .unwrap_err();
        assert_eq!(
            r.reasons,
            vec!["node(s) didn't have free ports for the requested pod ports".to_string()]
        );
        assert_eq!(r.code, Code::Unschedulable);
    }

    #[test]
    fn another_protocol_or_port_does_not_conflict() {
        let pod = PodBuilder::new("p").host_port(8080, "UDP", "").info();
        assert_eq!(
            NodePorts.filter(None, &pod, &node_with(8080, "TCP", "")),
            Ok(())
        );
        let pod = PodBuilder::new("p").host_port(8081, "TCP", "").info();
        assert_eq!(
            NodePorts.filter(None, &pod, &node_with(8080, "TCP", "")),
            Ok(())
        );
    }

    #[test]
    fn distinct_host_ips_do_not_conflict_but_the_wildcard_does() {
        let pod = PodBuilder::new("p").host_port(80, "TCP", "10.0.0.1").info();
        assert_eq!(
            NodePorts.filter(None, &pod, &node_with(80, "TCP", "10.0.0.2")),
            Ok(())
        );
        assert!(
            NodePorts
                .filter(None, &pod, &node_with(80, "TCP", "0.0.0.0"))
                .is_err()
        );
        assert!(
            NodePorts
                .filter(None, &pod, &node_with(80, "TCP", "10.0.0.1"))
                .is_err()
        );
    }
}
