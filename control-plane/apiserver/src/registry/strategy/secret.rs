//! Secrets (core/v1): type Opaque by default, and `stringData` merged
//! into `data` (it is write-only, never stored).
use serde_json::{Value, json};

use super::{Strategy, fields::set_default};
use crate::registry::table::{Column, map_len, s};

pub struct Secret;

pub static SECRET: Secret = Secret;

impl Strategy for Secret {
    fn default(&self, obj: &mut Value) {
        use base64::Engine as _;
        set_default(obj, "type", json!("Opaque"));
        if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
            for (k, v) in sd {
                let b = base64::engine::general_purpose::STANDARD
                    .encode(v.as_str().unwrap_or_default());
                obj["data"][k] = json!(b);
            }
        }
    }

    fn extra_columns(&self) -> Vec<Column> {
        vec![
            Column {
                name: "Type",
                priority: 0,
                cell: |o| Value::from(s(&o["type"])),
            },
            Column {
                name: "Data",
                priority: 0,
                cell: |o| Value::from(map_len(&o["data"])),
            },
        ]
    }
}
