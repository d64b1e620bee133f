//! `metav1.LabelSelector` evaluated against labels, as upstream's
//! `LabelSelectorAsSelector` + `Matches`: matchLabels and matchExpressions
//! are ANDed; an empty selector selects everything.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{key}: {op:?} is not a valid label selector operator")]
    UnknownOperator { key: String, op: String },
    #[error("{key}: operator {op} needs at least one value")]
    ValuesRequired { key: String, op: String },
    #[error("{key}: operator {op} takes no values")]
    ValuesForbidden { key: String, op: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed selector; invalid operators are refused once, at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    pub fn new(ls: &LabelSelector) -> Result<Self, SelectorError> {
        let mut reqs: Vec<Requirement> = ls
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        for e in ls.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let (key, op) = (e.key.clone(), e.operator.clone());
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::ValuesRequired { key, op });
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::ValuesForbidden { key, op });
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                _ => return Err(SelectorError::UnknownOperator { key, op }),
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// An empty selector: upstream warns about it ("SelectingAll") rather
    /// than letting a controller claim every Pod in the namespace.
    pub fn selects_everything(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k));
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// The matchLabels part as a `labelSelector` query (`a=b,c=d`): enough to
/// narrow a LIST on any server; the caller still filters with
/// [`Selector::matches`].
pub fn match_labels_query(ls: &LabelSelector) -> String {
    ls.match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::new(&LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        })
        .unwrap()
    }

    #[test]
    fn match_labels_must_all_be_present_and_equal() {
        let s = sel(&[("app", "web"), ("tier", "fe")], vec![]);
        assert!(s.matches(Some(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")]))));
        assert!(!s.matches(Some(&labels(&[("app", "web")]))));
        assert!(!s.matches(Some(&labels(&[("app", "web"), ("tier", "be")]))));
        assert!(!s.matches(None));
    }

    #[test]
    fn expressions_follow_upstream_operators() {
        let l = labels(&[("env", "prod")]);
        assert!(sel(&[], vec![expr("env", "In", &["prod", "dev"])]).matches(Some(&l)));
        assert!(!sel(&[], vec![expr("env", "In", &["dev"])]).matches(Some(&l)));
        assert!(!sel(&[], vec![expr("env", "NotIn", &["prod"])]).matches(Some(&l)));
        assert!(sel(&[], vec![expr("env", "NotIn", &["dev"])]).matches(Some(&l)));
        assert!(
            sel(&[], vec![expr("zone", "NotIn", &["a"])]).matches(Some(&l)),
            "NotIn matches a missing key"
        );
        assert!(sel(&[], vec![expr("env", "Exists", &[])]).matches(Some(&l)));
        assert!(!sel(&[], vec![expr("zone", "Exists", &[])]).matches(Some(&l)));
        assert!(sel(&[], vec![expr("zone", "DoesNotExist", &[])]).matches(Some(&l)));
        assert!(!sel(&[], vec![expr("env", "DoesNotExist", &[])]).matches(Some(&l)));
    }

    #[test]
    fn an_empty_selector_selects_everything() {
        let s = sel(&[], vec![]);
        assert!(s.selects_everything());
        assert!(s.matches(None));
        assert!(!sel(&[("a", "b")], vec![]).selects_everything());
    }

    #[test]
    fn bad_operators_and_values_are_refused() {
        let bad = |e| {
            Selector::new(&LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            })
        };
        assert!(matches!(
            bad(expr("k", "Gt", &["1"])),
            Err(SelectorError::UnknownOperator { .. })
        ));
        assert!(matches!(
            bad(expr("k", "In", &[])),
            Err(SelectorError::ValuesRequired { .. })
        ));
        assert!(matches!(
            bad(expr("k", "Exists", &["v"])),
            Err(SelectorError::ValuesForbidden { .. })
        ));
    }

    #[test]
    fn the_query_carries_match_labels() {
        let ls = LabelSelector {
            match_labels: Some(labels(&[("b", "2"), ("a", "1")])),
            match_expressions: Some(vec![expr("c", "Exists", &[])]),
        };
        assert_eq!(match_labels_query(&ls), "a=1,b=2");
    }
}
