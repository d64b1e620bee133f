//! StatefulSets (apps/v1): upstream's defaults (OrderedReady, a rolling
//! update from partition 0, PVCs retained) and the workload rules.
use serde_json::{Value, json};

use super::{Causes, Strategy, fields::set_default, pod::default_pod_spec, workload};
use crate::registry::table::Column;

pub struct StatefulSet;

pub static STATEFUL_SET: StatefulSet = StatefulSet;

impl Strategy for StatefulSet {
    fn default(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        set_default(spec, "replicas", json!(1));
        set_default(spec, "podManagementPolicy", json!("OrderedReady"));
        set_default(spec, "revisionHistoryLimit", json!(10));
        set_default(
            spec,
            "updateStrategy",
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
        );
        set_default(
            spec,
            "persistentVolumeClaimRetentionPolicy",
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        );
        default_pod_spec(&mut spec["template"]["spec"]);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        workload::validate(obj, old, &mut c);
        c
    }

    fn extra_columns(&self) -> Vec<Column> {
        super::replicaset::desired_ready()
    }
}
