//! Label selectors (pods' `LabelSelector`) and node selector terms (node
//! affinity), with upstream's edge cases: a nil selector matches nothing,
//! an empty one everything; an empty node selector term matches no node;
//! an invalid requirement makes its selector or term match nothing.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, labels: Option<&Labels>) -> bool {
        let v = labels.and_then(|l| l.get(&self.key));
        match (&self.op, v) {
            (Op::In(vals), Some(v)) => vals.contains(v),
            (Op::In(_), None) => false,
            (Op::NotIn(vals), Some(v)) => !vals.contains(v),
            (Op::NotIn(_), None) => true,
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
        }
    }
}

/// A parsed pod label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
    nothing: bool,
}

impl Selector {
    pub fn everything() -> Self {
        Self {
            reqs: Vec::new(),
            nothing: false,
        }
    }

    pub fn nothing() -> Self {
        Self {
            reqs: Vec::new(),
            nothing: true,
        }
    }

    /// Upstream's `LabelSelectorAsSelector`, except that nil means
    /// nothing (as every scheduler use of it wants).
    pub fn from_label_selector(sel: Option<&LabelSelector>) -> Self {
        let Some(sel) = sel else {
            return Self::nothing();
        };
        let mut s = Self::everything();
        for (k, v) in sel.match_labels.iter().flatten() {
            s.require_in(k, v);
        }
        for e in sel.match_expressions.iter().flatten() {
            let vals = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" if !vals.is_empty() => Op::In(vals),
                "NotIn" if !vals.is_empty() => Op::NotIn(vals),
                "Exists" if vals.is_empty() => Op::Exists,
                "DoesNotExist" if vals.is_empty() => Op::DoesNotExist,
                _ => return Self::nothing(),
            };
            s.reqs.push(Requirement {
                key: e.key.clone(),
                op,
            });
        }
        s
    }

    /// Adds `key In (value)` (matchLabelKeys).
    pub fn require_in(&mut self, key: &str, value: &str) {
        self.reqs.push(Requirement {
            key: key.into(),
            op: Op::In(vec![value.into()]),
        });
    }

    /// Adds `key NotIn (value)` (mismatchLabelKeys).
    pub fn require_not_in(&mut self, key: &str, value: &str) {
        self.reqs.push(Requirement {
            key: key.into(),
            op: Op::NotIn(vec![value.into()]),
        });
    }

    pub fn matches(&self, labels: Option<&Labels>) -> bool {
        !self.nothing && self.reqs.iter().all(|r| r.matches(labels))
    }

    pub fn is_nothing(&self) -> bool {
        self.nothing
    }
}

/// One node selector requirement on labels (all six operators).
fn node_requirement_matches(r: &NodeSelectorRequirement, labels: Option<&Labels>) -> bool {
    let vals = r.values.as_deref().unwrap_or_default();
    let v = labels.and_then(|l| l.get(&r.key));
    match r.operator.as_str() {
        "In" if !vals.is_empty() => v.is_some_and(|v| vals.contains(v)),
        "NotIn" if !vals.is_empty() => v.is_none_or(|v| !vals.contains(v)),
        "Exists" if vals.is_empty() => v.is_some(),
        "DoesNotExist" if vals.is_empty() => v.is_none(),
        op @ ("Gt" | "Lt") if vals.len() == 1 => {
            let (Ok(want), Some(Ok(have))) = (vals[0].parse::<i64>(), v.map(|v| v.parse::<i64>()))
            else {
                return false;
            };
            if op == "Gt" { have > want } else { have < want }
        }
        _ => false,
    }
}

/// A `matchFields` requirement: only `metadata.name`, In/NotIn, one value.
fn node_field_matches(r: &NodeSelectorRequirement, node_name: &str) -> bool {
    let vals = r.values.as_deref().unwrap_or_default();
    if r.key != "metadata.name" || vals.len() != 1 {
        return false;
    }
    match r.operator.as_str() {
        "In" => vals[0] == node_name,
        "NotIn" => vals[0] != node_name,
        _ => false,
    }
}

/// A node selector term: its expressions and fields ANDed; an empty term
/// matches nothing.
pub fn node_term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    let name = node.metadata.name.as_deref().unwrap_or_default();
    exprs.iter().all(|r| node_requirement_matches(r, labels))
        && fields.iter().all(|r| node_field_matches(r, name))
}

/// `spec.nodeSelector` and the required node affinity terms (ORed) both
/// hold for `node`.
pub fn pod_matches_node_selector_and_affinity(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    if let Some(sel) = spec.node_selector.as_ref() {
        let labels = node.metadata.labels.as_ref();
        if !sel
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            return false;
        }
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
        Some(ns) => ns
            .node_selector_terms
            .iter()
            .any(|t| node_term_matches(t, node)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NodeBuilder, labels};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn req(key: &str, op: &str, vals: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(vals.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn nil_selector_matches_nothing_and_empty_matches_everything() {
        let l = labels(&[("app", "web")]);
        assert!(!Selector::from_label_selector(None).matches(Some(&l)));
        assert!(Selector::from_label_selector(Some(&LabelSelector::default())).matches(Some(&l)));
    }

    #[test]
    fn selector_expressions_all_must_hold() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        let s = Selector::from_label_selector(Some(&sel));
        assert!(
            s.matches(Some(&labels(&[("app", "web")]))),
            "NotIn holds on a missing label"
        );
        assert!(!s.matches(Some(&labels(&[("app", "web"), ("tier", "db")]))));
        assert!(!s.matches(Some(&labels(&[("app", "api")]))));
    }

    #[test]
    fn invalid_selector_operator_matches_nothing() {
        let sel = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Gt".into(),
                values: Some(vec!["1".into()]),
            }]),
            ..Default::default()
        };
        assert!(!Selector::from_label_selector(Some(&sel)).matches(Some(&labels(&[("a", "2")]))));
    }

    #[test]
    fn node_requirement_operators() {
        let l = labels(&[("zone", "a"), ("cores", "8")]);
        let m = |r| node_requirement_matches(&r, Some(&l));
        assert!(m(req("zone", "In", &["a", "b"])));
        assert!(!m(req("zone", "NotIn", &["a"])));
        assert!(m(req("gpu", "NotIn", &["x"])));
        assert!(m(req("zone", "Exists", &[])));
        assert!(m(req("gpu", "DoesNotExist", &[])));
        assert!(m(req("cores", "Gt", &["4"])));
        assert!(!m(req("cores", "Lt", &["4"])));
        assert!(
            !m(req("zone", "Gt", &["4"])),
            "a non-integer label never compares"
        );
        assert!(
            !m(req("gpu", "Lt", &["4"])),
            "a missing label never compares"
        );
        assert!(!m(req("zone", "In", &[])), "In without values is invalid");
    }

    #[test]
    fn empty_node_term_matches_no_node() {
        let node = NodeBuilder::new("n1").build();
        assert!(!node_term_matches(&NodeSelectorTerm::default(), &node));
    }

    #[test]
    fn match_fields_select_by_node_name() {
        let node = NodeBuilder::new("n1").build();
        let term = |op| NodeSelectorTerm {
            match_fields: Some(vec![req("metadata.name", op, &["n1"])]),
            ..Default::default()
        };
        assert!(node_term_matches(&term("In"), &node));
        assert!(!node_term_matches(&term("NotIn"), &node));
    }
}
