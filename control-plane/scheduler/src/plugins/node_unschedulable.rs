//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only
//! pods that tolerate `node.kubernetes.io/unschedulable:NoSchedule`.
use k8s_openapi::api::core::v1::Taint;

use super::taint_toleration::tolerated;
use crate::framework::{Filter, FilterResult, NodeInfo, PodInfo, Rejection};

pub const REASON: &str = "node(s) were unschedulable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(
        &self,
        _: Option<&crate::framework::CycleData>,
        pod: &PodInfo,
        node: &NodeInfo,
    ) -> FilterResult {
        let cordoned = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let taint = Taint {
            key: TAINT_UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if cordoned && !tolerated(pod.tolerations(), &taint) {
            return Err(Rejection::unresolvable(REASON));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        framework::Code,
        testing::{NodeBuilder, PodBuilder, node_info},
    };

    #[test]
    fn a_cordoned_node_rejects_pods() {
        let node = node_info(NodeBuilder::new("n").unschedulable().build(), vec![]);
        let r = NodeUnschedulable
            .filter(None, &PodBuilder::new("p").info(), &node)
            .unwrap_err();
        assert_eq!(r.reasons, vec!["node(s) were unschedulable".to_string()]);
        assert_eq!(r.code, Code::UnschedulableAndUnresolvable);
    }

    #[test]
    fn a_pod_tolerating_the_unschedulable_taint_goes_on_a_cordoned_node() {
        let node = node_info(NodeBuilder::new("n").unschedulable().build(), vec![]);
        let pod = PodBuilder::new("p")
            .toleration(TAINT_UNSCHEDULABLE, "Exists", "", "NoSchedule")
            .info();
        assert_eq!(NodeUnschedulable.filter(None, &pod, &node), Ok(()));
    }

    #[test]
    fn an_uncordoned_node_accepts_pods() {
        let node = node_info(NodeBuilder::new("n").build(), vec![]);
        assert_eq!(
            NodeUnschedulable.filter(None, &PodBuilder::new("p").info(), &node),
            Ok(())
        );
    }
}
