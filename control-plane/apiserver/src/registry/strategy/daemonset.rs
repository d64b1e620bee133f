//! DaemonSets (apps/v1): a rolling update of one pod at a time by
//! default, and the workload rules.
use serde_json::{Value, json};

use super::{Causes, Strategy, fields::set_default, pod::default_pod_spec, workload};
use crate::registry::table::{Column, count};

pub struct DaemonSet;

pub static DAEMON_SET: DaemonSet = DaemonSet;

impl Strategy for DaemonSet {
    fn default(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        set_default(spec, "revisionHistoryLimit", json!(10));
        set_default(
            spec,
            "updateStrategy",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
        );
        default_pod_spec(&mut spec["template"]["spec"]);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        workload::validate(obj, old, &mut c);
        c
    }

    fn extra_columns(&self) -> Vec<Column> {
        vec![
            Column {
                name: "Desired",
                priority: 0,
                cell: |o| Value::from(count(&o["status"]["desiredNumberScheduled"])),
            },
            Column {
                name: "Ready",
                priority: 0,
                cell: |o| Value::from(count(&o["status"]["numberReady"])),
            },
        ]
    }
}
