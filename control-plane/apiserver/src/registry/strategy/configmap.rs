//! ConfigMaps (core/v1): printed with their number of keys.
use serde_json::Value;

use super::Strategy;
use crate::registry::table::{Column, map_len};

pub struct ConfigMap;

pub static CONFIG_MAP: ConfigMap = ConfigMap;

impl Strategy for ConfigMap {
    fn extra_columns(&self) -> Vec<Column> {
        vec![Column {
            name: "Data",
            priority: 0,
            cell: |o| Value::from(map_len(&o["data"]) + map_len(&o["binaryData"])),
        }]
    }
}
