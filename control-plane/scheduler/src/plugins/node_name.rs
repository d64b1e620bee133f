//! NodeName: a pod that names its node (`spec.nodeName`) fits only there.
use crate::framework::{Filter, FilterResult, NodeInfo, PodInfo, Rejection};

pub const REASON: &str = "node(s) didn't match the requested node name";

pub struct NodeName;

impl Filter for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }

    fn filter(
        &self,
        _: Option<&crate::framework::CycleData>,
        pod: &PodInfo,
        node: &NodeInfo,
    ) -> FilterResult {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if !n.is_empty() && n != node.name() => Err(Rejection::unresolvable(REASON)),
            _ => Ok(()),
        }
    }

    fn requeue_on(&self) -> &'static [crate::framework::ClusterEvent] {
        &[crate::framework::ClusterEvent::NodeAdded]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NodeBuilder, PodBuilder, node_info};

    #[test]
    fn only_the_named_node_fits() {
        let pod = PodBuilder::new("p").node("n1").info();
        let n1 = node_info(NodeBuilder::new("n1").build(), vec![]);
        let n2 = node_info(NodeBuilder::new("n2").build(), vec![]);
        assert_eq!(NodeName.filter(None, &pod, &n1), Ok(()));
        let r = NodeName.filter(None, &pod, &n2).unwrap_err();
        assert_eq!(
            r.reasons,
            vec!["node(s) didn't match the requested node name".to_string()]
        );
    }

    #[test]
    fn a_pod_naming_no_node_fits_anywhere() {
        let n = node_info(NodeBuilder::new("n1").build(), vec![]);
        assert_eq!(
            NodeName.filter(None, &PodBuilder::new("p").info(), &n),
            Ok(())
        );
    }
}
