//! PriorityClasses (scheduling.k8s.io/v1), as upstream's
//! pkg/apis/scheduling/validation, pkg/registry/scheduling/priorityclass
//! and the Priority admission plugin (plugin/pkg/admission/priority)
//! treat them: user classes up to [`HIGHEST_USER_DEFINABLE`], the
//! `system-` names reserved for the two built-in classes (created at
//! startup, never deleted), at most one global default, and a Pod's
//! `spec.priority` (and `preemptionPolicy`) resolved from its class on
//! create, which the scheduler orders and preempts by.
use async_trait::async_trait;
use k8s_openapi::api::scheduling::v1 as scheduling;
use serde_json::{Value, json};
use sluice_store::ListRequest;

use super::{Causes, Strategy, fields::supported};
use crate::{
    handlers::Api,
    http::status::{ApiError, Reason},
    registry::{
        self, Resource,
        table::{Column, s},
    },
};

pub struct PriorityClass;

pub static PRIORITY_CLASS: PriorityClass = PriorityClass;

/// The highest value a user's class may have (upstream's
/// HighestUserDefinablePriority); above it are the system classes.
pub const HIGHEST_USER_DEFINABLE: i32 = 1_000_000_000;

const SYSTEM_PREFIX: &str = "system-";

/// What a pod preempts for unless its class says otherwise.
const PREEMPT_LOWER: &str = "PreemptLowerPriority";

/// Upstream's SystemPriorityClasses: name, value, description.
const SYSTEM: [(&str, i32, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// The class as its k8s-openapi type (the object was decoded through it
/// before any rule runs, so this only fails on a broken invariant).
fn typed(obj: &Value) -> Option<scheduling::PriorityClass> {
    serde_json::from_value(obj.clone()).ok()
}

/// Upstream's IsKnownSystemPriorityClass: why a `system-` class is not
/// one of the built-ins as they are defined, if it is not.
fn system_problem(pc: &scheduling::PriorityClass) -> Option<String> {
    let name = pc.metadata.name.as_deref().unwrap_or_default();
    let Some((_, value, _)) = SYSTEM.iter().find(|(n, _, _)| *n == name) else {
        return Some(format!("{name} is not a known system priority class"));
    };
    if pc.value != *value {
        return Some(format!("value of {name} PriorityClass must be {value}"));
    }
    if pc.global_default == Some(true) {
        return Some(format!(
            "globalDefault of {name} PriorityClass must be false"
        ));
    }
    None
}

#[async_trait]
impl Strategy for PriorityClass {
    fn default(&self, obj: &mut Value) {
        if obj["preemptionPolicy"].is_null() {
            obj["preemptionPolicy"] = json!(PREEMPT_LOWER);
        }
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        let Some(pc) = typed(obj) else {
            c.push(("value".into(), "Required value".into()));
            return c;
        };
        let name = pc.metadata.name.as_deref().unwrap_or_default();
        if name.starts_with(SYSTEM_PREFIX) {
            if let Some(why) = system_problem(&pc) {
                c.push((
                    "metadata.name".into(),
                    format!(
                        "Forbidden: priority class names with '{SYSTEM_PREFIX}' prefix are reserved for system use only. error: {why}"
                    ),
                ));
            }
        } else if pc.value > HIGHEST_USER_DEFINABLE {
            c.push((
                "value".into(),
                format!(
                    "Forbidden: maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE}"
                ),
            ));
        }
        supported(
            &mut c,
            "preemptionPolicy".into(),
            &obj["preemptionPolicy"],
            &[PREEMPT_LOWER, "Never"],
        );
        if let Some(old) = old {
            if obj["value"] != old["value"] {
                c.push((
                    "value".into(),
                    "Forbidden: may not be changed in an update.".into(),
                ));
            }
            if obj["preemptionPolicy"] != old["preemptionPolicy"] {
                c.push((
                    "preemptionPolicy".into(),
                    format!(
                        "Invalid value: {}: field is immutable",
                        obj["preemptionPolicy"]
                    ),
                ));
            }
        }
        c
    }

    /// Upstream's Priority admission on PriorityClass writes: at most one
    /// class is the global default.
    async fn admit(
        &self,
        api: &Api,
        r: &Resource,
        obj: &mut Value,
        _old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if obj["globalDefault"] != true {
            return Ok(());
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let others = classes(api, r).await?;
        if let Some(other) = others
            .iter()
            .find(|c| c["globalDefault"] == true && c["metadata"]["name"] != name)
        {
            let other = other["metadata"]["name"].as_str().unwrap_or_default();
            return Err(ApiError::invalid(
                r,
                name,
                vec![(
                    "globalDefault".into(),
                    format!(
                        "Invalid value: true: PriorityClass {other} is already marked as default. Only one default can exist"
                    ),
                )],
            ));
        }
        Ok(())
    }

    fn check_delete(&self, name: &str) -> Result<(), ApiError> {
        if SYSTEM.iter().any(|(n, _, _)| *n == name) {
            return Err(ApiError::new(
                Reason::Forbidden,
                format!(
                    "priorityclasses.scheduling.k8s.io \"{name}\" is forbidden: this is a system priority class and cannot be deleted"
                ),
            ));
        }
        Ok(())
    }

    fn builtins(&self) -> Vec<Value> {
        SYSTEM
            .iter()
            .map(|(name, value, description)| {
                json!({
                    "metadata": {"name": name},
                    "value": value, "globalDefault": false,
                    "description": description, "preemptionPolicy": PREEMPT_LOWER,
                })
            })
            .collect()
    }

    /// Upstream's printer: NAME VALUE GLOBAL-DEFAULT AGE PREEMPTIONPOLICY.
    fn columns(&self) -> Vec<Column> {
        let mut cols = crate::registry::table::framed(vec![
            Column {
                name: "Value",
                priority: 0,
                cell: |o| o["value"].clone(),
            },
            Column {
                name: "Global-Default",
                priority: 0,
                cell: |o| Value::from(o["globalDefault"] == true),
            },
        ]);
        cols.push(Column {
            name: "PreemptionPolicy",
            priority: 0,
            cell: |o| Value::from(s(&o["preemptionPolicy"])),
        });
        cols
    }
}

/// Every stored PriorityClass.
async fn classes(api: &Api, r: &Resource) -> Result<Vec<Value>, ApiError> {
    let page = api
        .store
        .list(ListRequest {
            prefix: &r.prefix(None),
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::store(r, "", e))?;
    page.kvs
        .iter()
        .map(|kv| {
            r.parse_stored(&kv.key, &kv.value)
                .map_err(ApiError::corrupt)
        })
        .collect()
}

/// The class a pod names, or the global default for a pod that names
/// none (the lowest-valued one if several claim it, as upstream picks).
async fn class_for(api: &Api, pod: &Value, pod_name: &str) -> Result<Option<Value>, ApiError> {
    let Some(r) = registry::find("scheduling.k8s.io", "v1", "priorityclasses") else {
        return Ok(None);
    };
    match pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        Some(name) => match api.store.get(&r.key(None, name)).await {
            Ok(Some(kv)) => Ok(Some(
                r.parse_stored(&kv.key, &kv.value)
                    .map_err(ApiError::corrupt)?,
            )),
            Ok(None) => Err(ApiError::new(
                Reason::Forbidden,
                format!(
                    "pods \"{pod_name}\" is forbidden: no PriorityClass with name {name} was found"
                ),
            )),
            Err(e) => Err(ApiError::store(r, name, e)),
        },
        None => Ok(classes(api, r)
            .await?
            .into_iter()
            .filter(|c| c["globalDefault"] == true)
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0))),
    }
}

/// Upstream's Priority admission on Pod create: `spec.priority` and
/// `spec.preemptionPolicy` come from the pod's PriorityClass (or the
/// global default, else 0); a pod that sets them otherwise, or names a
/// class that does not exist, is refused (403, as upstream).
pub async fn admit_pod(api: &Api, obj: &mut Value) -> Result<(), ApiError> {
    let pod_name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let forbidden = |why: String| {
        ApiError::new(
            Reason::Forbidden,
            format!("pods \"{pod_name}\" is forbidden: {why}"),
        )
    };
    let class = class_for(api, obj, &pod_name).await?;
    let (class_name, value, policy) = match &class {
        Some(c) => (
            c["metadata"]["name"].clone(),
            c["value"].as_i64().unwrap_or(0),
            c["preemptionPolicy"]
                .as_str()
                .unwrap_or(PREEMPT_LOWER)
                .to_string(),
        ),
        None => (Value::Null, 0, PREEMPT_LOWER.to_string()),
    };
    let spec = &mut obj["spec"];
    if let Some(given) = spec["priority"].as_i64()
        && given != value
    {
        return Err(forbidden(format!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    if let Some(given) = spec["preemptionPolicy"].as_str()
        && given != policy
    {
        return Err(forbidden(format!(
            "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
        )));
    }
    if !class_name.is_null() {
        spec["priorityClassName"] = class_name;
    }
    spec["priority"] = json!(value);
    spec["preemptionPolicy"] = json!(policy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(obj: &Value, old: Option<&Value>) -> Vec<String> {
        let mut obj = obj.clone();
        PRIORITY_CLASS.default(&mut obj);
        PRIORITY_CLASS
            .validate(&obj, old)
            .into_iter()
            .map(|x| x.0)
            .collect()
    }

    fn class(name: &str, value: i64) -> Value {
        json!({"metadata": {"name": name}, "value": value})
    }

    #[test]
    fn user_classes_stay_at_or_below_one_billion() {
        assert!(fields(&class("high", 1_000_000_000), None).is_empty());
        assert_eq!(fields(&class("higher", 1_000_000_001), None), ["value"]);
        assert!(fields(&class("low", -5), None).is_empty());
    }

    #[test]
    fn system_names_are_reserved_for_the_built_ins() {
        for builtin in PRIORITY_CLASS.builtins() {
            assert!(fields(&builtin, None).is_empty(), "{builtin}");
        }
        assert_eq!(fields(&class("system-mine", 10), None), ["metadata.name"]);
        assert_eq!(
            fields(&class("system-node-critical", 10), None),
            ["metadata.name"]
        );
    }

    #[test]
    fn value_and_preemption_policy_are_immutable() {
        let old = {
            let mut o = class("c", 10);
            PRIORITY_CLASS.default(&mut o);
            o
        };
        assert!(fields(&old, Some(&old)).is_empty());
        assert_eq!(fields(&class("c", 11), Some(&old)), ["value"]);
        let mut never = class("c", 10);
        never["preemptionPolicy"] = json!("Never");
        assert_eq!(fields(&never, Some(&old)), ["preemptionPolicy"]);
    }

    #[test]
    fn the_built_ins_cannot_be_deleted() {
        assert!(
            PRIORITY_CLASS
                .check_delete("system-cluster-critical")
                .is_err()
        );
        assert!(PRIORITY_CLASS.check_delete("mine").is_ok());
    }
}
