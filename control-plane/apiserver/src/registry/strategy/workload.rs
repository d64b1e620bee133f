//! What every kind that owns pods through a selector and a template
//! shares (Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs):
//! the replica count, a selector that is set, matches the template and
//! never changes, and the template's pod spec.
use serde_json::{Value, json};

use super::{Causes, fields::required, pod::validate_pod_spec};

pub fn validate(obj: &Value, old: Option<&Value>, c: &mut Causes) {
    let spec = &obj["spec"];
    if let Some(n) = spec["replicas"].as_i64()
        && n < 0
    {
        c.push((
            "spec.replicas".into(),
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
    let sel = &spec["selector"];
    let empty = sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && sel["matchExpressions"]
            .as_array()
            .is_none_or(|m| m.is_empty());
    if empty {
        required(c, "spec.selector");
    } else {
        let selector = crate::selector::Selector::labels(&crate::selector::to_string(sel));
        let template = json!({"metadata": {"labels": spec["template"]["metadata"]["labels"]}});
        match selector {
            Ok(s) if s.matches(&template) => {}
            Ok(_) => c.push((
                "spec.template.metadata.labels".into(),
                format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    spec["template"]["metadata"]["labels"]
                ),
            )),
            Err(e) => c.push(("spec.selector".into(), format!("Invalid value: {e}"))),
        }
    }
    if let Some(old) = old
        && old["spec"]["selector"] != *sel
    {
        c.push((
            "spec.selector".into(),
            format!("Invalid value: {sel}: field is immutable"),
        ));
    }
    validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", c);
}
