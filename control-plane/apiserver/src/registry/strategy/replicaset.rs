//! ReplicaSets (apps/v1): one replica by default and the workload rules.
use serde_json::{Value, json};

use super::{Causes, Strategy, fields::set_default, pod::default_pod_spec, workload};
use crate::registry::table::Column;

pub struct ReplicaSet;

pub static REPLICA_SET: ReplicaSet = ReplicaSet;

impl Strategy for ReplicaSet {
    fn default(&self, obj: &mut Value) {
        set_default(&mut obj["spec"], "replicas", json!(1));
        default_pod_spec(&mut obj["spec"]["template"]["spec"]);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        workload::validate(obj, old, &mut c);
        c
    }

    fn extra_columns(&self) -> Vec<Column> {
        desired_ready()
    }
}

/// DESIRED and READY, what ReplicaSets and StatefulSets print.
pub fn desired_ready() -> Vec<Column> {
    use crate::registry::table::count;
    use serde_json::Value;
    vec![
        Column {
            name: "Desired",
            priority: 0,
            cell: |o| Value::from(count(&o["spec"]["replicas"])),
        },
        Column {
            name: "Ready",
            priority: 0,
            cell: |o| Value::from(count(&o["status"]["readyReplicas"])),
        },
    ]
}
