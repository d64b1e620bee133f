//! TaintToleration: a node's NoSchedule and NoExecute taints keep off the
//! pods that do not tolerate them (filter); fewer untolerated
//! PreferNoSchedule taints rank a node higher (score).
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::framework::{
    CycleData, Filter, FilterResult, NodeInfo, PodInfo, Prepared, Rejection, Score, data,
    default_normalize,
};

pub struct TaintToleration;

/// Upstream's `ToleratesTaint`: an empty effect matches every effect, an
/// empty key (with Exists) every key; Equal compares the values.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty())
        && k != taint.key
    {
        return false;
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first NoSchedule/NoExecute taint of `taints` not tolerated.
pub fn untolerated_hard_taint<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerated(tolerations, t))
}

/// The filter's reason for `taint`, as upstream words it.
pub fn reason(taint: &Taint) -> String {
    format!(
        "node(s) had untolerated taint {{{}: {}}}",
        taint.key,
        taint.value.as_deref().unwrap_or("")
    )
}

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, _: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> FilterResult {
        match untolerated_hard_taint(node.taints(), pod.tolerations()) {
            Some(t) => Err(Rejection::unresolvable(reason(t))),
            None => Ok(()),
        }
    }
}

/// The pod's tolerations that can tolerate a PreferNoSchedule taint.
struct Prefer(Vec<Toleration>);

impl Score for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn pre_score(&self, pod: &PodInfo, _: &[Arc<NodeInfo>], _: &[Arc<NodeInfo>]) -> Prepared {
        let prefer = pod
            .tolerations()
            .iter()
            .filter(|t| {
                matches!(
                    t.effect.as_deref(),
                    None | Some("") | Some("PreferNoSchedule")
                )
            })
            .cloned()
            .collect();
        Prepared::Ready(Some(Box::new(Prefer(prefer))))
    }

    /// The number of untolerated PreferNoSchedule taints (lower is better).
    fn score(&self, state: Option<&CycleData>, _: &PodInfo, node: &NodeInfo) -> i64 {
        let tolerations = data::<Prefer>(state)
            .map(|p| p.0.as_slice())
            .unwrap_or_default();
        node.taints()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(tolerations, t))
            .count() as i64
    }

    fn normalize(&self, _: Option<&CycleData>, _: &[Arc<NodeInfo>], scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        framework::Code,
        testing::{NodeBuilder, PodBuilder, node_info},
    };

    fn taint(k: &str, v: &str, e: &str) -> Taint {
        Taint {
            key: k.into(),
            value: Some(v.into()),
            effect: e.into(),
            time_added: None,
        }
    }

    fn tol(k: &str, op: &str, v: &str, e: &str) -> Toleration {
        let s = |x: &str| (!x.is_empty()).then(|| x.to_string());
        Toleration {
            key: s(k),
            operator: s(op),
            value: s(v),
            effect: s(e),
            toleration_seconds: None,
        }
    }

    #[test]
    fn toleration_matching_rules() {
        let t = taint("k", "v", "NoSchedule");
        assert!(tolerates(&tol("k", "Equal", "v", "NoSchedule"), &t));
        assert!(
            tolerates(&tol("k", "", "v", ""), &t),
            "default operator Equal, any effect"
        );
        assert!(
            !tolerates(&tol("k", "Equal", "w", "NoSchedule"), &t),
            "other value"
        );
        assert!(
            tolerates(&tol("k", "Exists", "", "NoSchedule"), &t),
            "Exists ignores the value"
        );
        assert!(
            !tolerates(&tol("k", "Exists", "", "NoExecute"), &t),
            "other effect"
        );
        assert!(
            tolerates(&tol("", "Exists", "", ""), &t),
            "empty key with Exists tolerates all"
        );
        assert!(!tolerates(&tol("j", "Exists", "", ""), &t), "other key");
    }

    #[test]
    fn an_untolerated_noschedule_taint_rejects_with_its_key_and_value() {
        let node = node_info(
            NodeBuilder::new("n")
                .taint("dedicated", "gpu", "NoSchedule")
                .build(),
            vec![],
        );
        let r = TaintToleration
            .filter(None, &PodBuilder::new("p").info(), &node)
            .unwrap_err();
        assert_eq!(
            r.reasons,
            vec!["node(s) had untolerated taint {dedicated: gpu}".to_string()]
        );
        assert_eq!(r.code, Code::UnschedulableAndUnresolvable);
    }

    #[test]
    fn noexecute_taints_reject_too_but_prefernoschedule_do_not() {
        let ne = node_info(
            NodeBuilder::new("n").taint("k", "v", "NoExecute").build(),
            vec![],
        );
        assert!(
            TaintToleration
                .filter(None, &PodBuilder::new("p").info(), &ne)
                .is_err()
        );
        let pns = node_info(
            NodeBuilder::new("n")
                .taint("k", "v", "PreferNoSchedule")
                .build(),
            vec![],
        );
        assert_eq!(
            TaintToleration.filter(None, &PodBuilder::new("p").info(), &pns),
            Ok(())
        );
    }

    #[test]
    fn a_tolerated_taint_admits_the_pod() {
        let node = node_info(
            NodeBuilder::new("n")
                .taint("dedicated", "gpu", "NoSchedule")
                .build(),
            vec![],
        );
        let pod = PodBuilder::new("p")
            .toleration("dedicated", "Equal", "gpu", "NoSchedule")
            .info();
        assert_eq!(TaintToleration.filter(None, &pod, &node), Ok(()));
    }

    #[test]
    fn fewer_untolerated_prefer_taints_score_higher() {
        let nodes: Vec<Arc<NodeInfo>> = [
            NodeBuilder::new("clean").build(),
            NodeBuilder::new("one")
                .taint("a", "1", "PreferNoSchedule")
                .build(),
            NodeBuilder::new("two")
                .taint("a", "1", "PreferNoSchedule")
                .taint("b", "2", "PreferNoSchedule")
                .build(),
            NodeBuilder::new("tolerated")
                .taint("c", "3", "PreferNoSchedule")
                .build(),
        ]
        .into_iter()
        .map(|n| Arc::new(node_info(n, vec![])))
        .collect();
        let pod = PodBuilder::new("p")
            .toleration("c", "Exists", "", "PreferNoSchedule")
            .info();
        let Prepared::Ready(state) = TaintToleration.pre_score(&pod, &nodes, &nodes) else {
            panic!("skipped")
        };
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| TaintToleration.score(state.as_ref(), &pod, n))
            .collect();
        assert_eq!(scores, vec![0, 1, 2, 0]);
        TaintToleration.normalize(state.as_ref(), &nodes, &mut scores);
        assert_eq!(scores, vec![100, 50, 0, 100]);
    }
}
