//! Deployments (apps/v1): upstream's defaults (one replica, a 25%/25%
//! rolling update), the workload rules, and upstream's
//! ValidateDeploymentSpec for the rest of the spec: the strategy (its
//! surge and unavailability as counts or percentages), the durations and
//! the history limit.
use serde_json::{Value, json};

use super::{
    Causes, Strategy,
    fields::{nonnegative, set_default},
    pod::default_pod_spec,
    workload,
};
use crate::registry::table::{Column, containers, count, labels, or_none};

pub struct Deployment;

pub static DEPLOYMENT: Deployment = Deployment;

impl Strategy for Deployment {
    fn default(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        set_default(spec, "replicas", json!(1));
        set_default(spec, "revisionHistoryLimit", json!(10));
        set_default(spec, "progressDeadlineSeconds", json!(600));
        set_default(spec, "strategy", json!({}));
        set_default(&mut spec["strategy"], "type", json!("RollingUpdate"));
        if spec["strategy"]["type"] == "RollingUpdate" {
            set_default(&mut spec["strategy"], "rollingUpdate", json!({}));
            let ru = &mut spec["strategy"]["rollingUpdate"];
            set_default(ru, "maxUnavailable", json!("25%"));
            set_default(ru, "maxSurge", json!("25%"));
        }
        default_pod_spec(&mut spec["template"]["spec"]);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        workload::validate(obj, old, &mut c);
        validate_spec(&obj["spec"], &mut c);
        c
    }

    fn extra_columns(&self) -> Vec<Column> {
        vec![
            Column {
                name: "Ready",
                priority: 0,
                cell: |o| {
                    Value::from(format!(
                        "{}/{}",
                        count(&o["status"]["readyReplicas"]),
                        count(&o["spec"]["replicas"])
                    ))
                },
            },
            Column {
                name: "Up-to-date",
                priority: 0,
                cell: |o| Value::from(count(&o["status"]["updatedReplicas"])),
            },
            Column {
                name: "Available",
                priority: 0,
                cell: |o| Value::from(count(&o["status"]["availableReplicas"])),
            },
            Column {
                name: "Containers",
                priority: 1,
                cell: |o| Value::from(containers(o, "name")),
            },
            Column {
                name: "Images",
                priority: 1,
                cell: |o| Value::from(containers(o, "image")),
            },
            Column {
                name: "Selector",
                priority: 1,
                cell: |o| or_none(labels(&o["spec"]["selector"]["matchLabels"])),
            },
        ]
    }
}

/// The rest of upstream's ValidateDeploymentSpec (replicas, selector and
/// template are the workload rules).
fn validate_spec(spec: &Value, c: &mut Causes) {
    validate_strategy(&spec["strategy"], c);
    for f in [
        "minReadySeconds",
        "revisionHistoryLimit",
        "progressDeadlineSeconds",
    ] {
        nonnegative(c, spec, "spec", f);
    }
    if let Some(deadline) = spec["progressDeadlineSeconds"].as_i64()
        && deadline <= spec["minReadySeconds"].as_i64().unwrap_or(0)
    {
        c.push((
            "spec.progressDeadlineSeconds".into(),
            format!("Invalid value: {deadline}: must be greater than minReadySeconds"),
        ));
    }
}

/// Upstream's ValidateDeploymentStrategy: Recreate takes no rolling
/// update parameters; RollingUpdate's are checked.
fn validate_strategy(strategy: &Value, c: &mut Causes) {
    let at = "spec.strategy";
    match strategy["type"].as_str().unwrap_or_default() {
        "Recreate" => {
            if !strategy["rollingUpdate"].is_null() {
                c.push((
                    format!("{at}.rollingUpdate"),
                    "Forbidden: may not be specified when strategy `type` is 'Recreate'".into(),
                ));
            }
        }
        "RollingUpdate" => match &strategy["rollingUpdate"] {
            Value::Null => c.push((
                format!("{at}.rollingUpdate"),
                "Required value: this should be defaulted and never be nil".into(),
            )),
            ru => validate_rolling_update(ru, &format!("{at}.rollingUpdate"), c),
        },
        other => c.push((
            format!("{at}.type"),
            format!(
                "Unsupported value: {other:?}: supported values: \"Recreate\", \"RollingUpdate\""
            ),
        )),
    }
}

/// Upstream's ValidateRollingUpdateDeployment: maxUnavailable and
/// maxSurge are each a count (>= 0) or a percentage; they are not both
/// zero (the rollout could never move), and at most 100% may be
/// unavailable.
fn validate_rolling_update(ru: &Value, at: &str, c: &mut Causes) {
    let (unavailable, surge) = (&ru["maxUnavailable"], &ru["maxSurge"]);
    int_or_percent(unavailable, &format!("{at}.maxUnavailable"), c);
    int_or_percent(surge, &format!("{at}.maxSurge"), c);
    if amount(unavailable) == 0 && amount(surge) == 0 {
        c.push((
            format!("{at}.maxUnavailable"),
            format!("Invalid value: {unavailable}: may not be 0 when `maxSurge` is 0"),
        ));
    }
    if let Value::String(s) = unavailable
        && percent(s).is_some_and(|p| p > 100)
    {
        c.push((
            format!("{at}.maxUnavailable"),
            format!("Invalid value: {unavailable}: must not be greater than 100%"),
        ));
    }
}

/// `N%` as N, for a string upstream's percent rule accepts (`[0-9]+%`).
fn percent(s: &str) -> Option<u64> {
    let digits = s.strip_suffix('%')?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // Too many digits to count is still a (huge) percentage.
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// Upstream's ValidatePositiveIntOrPercent: a count that is not negative,
/// or a percent string (unset is left to the defaults).
fn int_or_percent(v: &Value, field: &str, c: &mut Causes) {
    match v {
        Value::String(s) if percent(s).is_none() => c.push((
            field.into(),
            format!(
                "Invalid value: {v}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"
            ),
        )),
        Value::Number(n) if n.as_i64().is_none_or(|n| n < 0) => c.push((
            field.into(),
            format!("Invalid value: {v}: must be greater than or equal to 0"),
        )),
        _ => {}
    }
}

/// The count or percentage a value says (upstream's
/// getIntOrPercentValue: 0 for what is not one).
fn amount(v: &Value) -> u64 {
    match v {
        Value::String(s) => percent(s).unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The causes' fields for a valid Deployment whose strategy is
    /// `strategy`, after defaulting.
    fn strategy_fields(strategy: Value) -> Vec<String> {
        let mut d = json!({"metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "a"}}, "strategy": strategy,
            "template": {"metadata": {"labels": {"app": "a"}},
                         "spec": {"containers": [{"name": "c", "image": "img:1"}]}}}});
        DEPLOYMENT.default(&mut d);
        DEPLOYMENT
            .validate(&d, None)
            .into_iter()
            .map(|x| x.0)
            .collect()
    }

    fn rolling(surge: Value, unavailable: Value) -> Value {
        json!({"type": "RollingUpdate",
               "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
    }

    #[test]
    fn surge_and_unavailability_are_counts_or_percentages() {
        assert!(strategy_fields(json!({})).is_empty());
        assert!(strategy_fields(rolling(json!(2), json!("10%"))).is_empty());
        assert!(strategy_fields(rolling(json!("0%"), json!(1))).is_empty());
        assert_eq!(
            strategy_fields(rolling(json!("lots"), json!(1))),
            ["spec.strategy.rollingUpdate.maxSurge"]
        );
        assert_eq!(
            strategy_fields(rolling(json!(1), json!(-1))),
            ["spec.strategy.rollingUpdate.maxUnavailable"]
        );
        assert_eq!(
            strategy_fields(rolling(json!(1), json!("10"))),
            ["spec.strategy.rollingUpdate.maxUnavailable"]
        );
    }

    #[test]
    fn a_rollout_must_be_able_to_move_and_keep_something() {
        assert_eq!(
            strategy_fields(rolling(json!(0), json!("0%"))),
            ["spec.strategy.rollingUpdate.maxUnavailable"]
        );
        assert_eq!(
            strategy_fields(rolling(json!(1), json!("101%"))),
            ["spec.strategy.rollingUpdate.maxUnavailable"]
        );
        assert!(strategy_fields(rolling(json!(0), json!("100%"))).is_empty());
    }

    #[test]
    fn recreate_takes_no_rolling_update_parameters() {
        assert!(strategy_fields(json!({"type": "Recreate"})).is_empty());
        assert_eq!(
            strategy_fields(json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}})),
            ["spec.strategy.rollingUpdate"]
        );
        assert_eq!(
            strategy_fields(json!({"type": "Sideways"})),
            ["spec.strategy.type"]
        );
    }

    #[test]
    fn the_progress_deadline_outlasts_min_ready() {
        let mut d = json!({"metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "a"}}, "minReadySeconds": 600,
            "template": {"metadata": {"labels": {"app": "a"}},
                         "spec": {"containers": [{"name": "c", "image": "img:1"}]}}}});
        DEPLOYMENT.default(&mut d);
        let fields: Vec<String> = DEPLOYMENT
            .validate(&d, None)
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(fields, ["spec.progressDeadlineSeconds"]);
    }
}
