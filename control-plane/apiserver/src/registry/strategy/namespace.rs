//! Namespaces (core/v1): phase Active, the `kubernetes` finalizer, a
//! DNS-1123 label for a name, the namespaces every cluster keeps (created
//! at startup, never deleted), and a delete that takes the contents.
use async_trait::async_trait;
use serde_json::{Value, json};

use super::{NameRule, Strategy};
use crate::{
    handlers::Api,
    http::status::{ApiError, Reason},
    registry::table::{Column, s},
};

pub struct Namespace;

pub static NAMESPACE: Namespace = Namespace;

/// Namespaces every cluster has, created at startup when missing.
const SYSTEM: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Namespaces every cluster keeps (upstream refuses to delete them too).
const PROTECTED: [&str; 3] = ["default", "kube-system", "kube-public"];

#[async_trait]
impl Strategy for Namespace {
    fn initial_status(&self) -> Value {
        json!({"phase": "Active"})
    }

    fn default(&self, obj: &mut Value) {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn check_delete(&self, name: &str) -> Result<(), ApiError> {
        if PROTECTED.contains(&name) {
            return Err(ApiError::new(
                Reason::Forbidden,
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            ));
        }
        Ok(())
    }

    async fn before_remove(&self, api: &Api, name: &str) -> Result<(), ApiError> {
        crate::handlers::delete::delete_contents(api, name).await
    }

    fn builtins(&self) -> Vec<Value> {
        SYSTEM
            .iter()
            .map(|ns| {
                json!({
                    "metadata": {"name": ns},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
                })
            })
            .collect()
    }

    fn extra_columns(&self) -> Vec<Column> {
        vec![Column {
            name: "Status",
            priority: 0,
            cell: |o| Value::from(s(&o["status"]["phase"])),
        }]
    }
}
