//! What the server knows about one kind, as upstream's registry strategies
//! hold it (pkg/registry/<group>/<kind>/strategy.go): what a create or an
//! update prepares, the defaults, the validation, the hooks that reach
//! other state (allocation, admission), the graceful-delete rule and the
//! table columns. The handlers only call these; a kind with nothing
//! special uses [`PLAIN`], and a new kind is one file here plus one line
//! in the registry's table.
//!
//! Objects are JSON here, already checked against their k8s-openapi type
//! by the resource's decode; the rules read the fields they judge.
use async_trait::async_trait;
use serde_json::{Value, json};

use crate::{
    alloc::Claims,
    handlers::{Api, delete::Grace},
    http::status::ApiError,
    registry::{Resource, Sub, table::Column},
};

pub mod configmap;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod event;
pub mod fields;
pub mod job;
pub mod namespace;
pub mod node;
pub mod pod;
pub mod priorityclass;
pub mod replicaset;
pub mod secret;
pub mod service;
pub mod statefulset;
pub mod workload;

#[cfg(test)]
mod tests;

/// `(field path, message)` pairs, upstream's `field.ErrorList` as text.
pub type Causes = Vec<(String, String)>;

/// Which of upstream's name rules a kind's `metadata.name` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain (most kinds).
    Subdomain,
    /// DNS-1123 label (namespaces).
    Label,
    /// DNS-1035 label: a label that starts with a letter (services).
    Dns1035,
}

/// One kind's rules. Every method has the behaviour of a kind with
/// nothing special, so a strategy states only what differs.
#[async_trait]
pub trait Strategy: Send + Sync {
    /// Upstream's PrepareForCreate: server-owned state a client cannot
    /// set. The status of a kind with a status subresource starts at
    /// [`Strategy::initial_status`].
    fn prepare_create(&self, r: &Resource, obj: &mut Value) {
        if r.has(Sub::Status) {
            obj["status"] = self.initial_status();
        }
    }

    /// The status a new object starts with (where the kind has a status
    /// subresource).
    fn initial_status(&self) -> Value {
        json!({})
    }

    /// Upstream's PrepareForUpdate: what the new object inherits from or
    /// loses against the stored one before it is defaulted.
    fn prepare_update(&self, _new: &mut Value, _old: &Value) {}

    /// Fills unset fields with upstream's defaults.
    fn default(&self, _obj: &mut Value) {}

    /// The kind's own validation of a defaulted object (`old` on update);
    /// metadata rules every kind shares run anyway ([`validate`]).
    fn validate(&self, _obj: &Value, _old: Option<&Value>) -> Causes {
        Causes::new()
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Upstream's admission plugins for this kind: checks and changes
    /// that read other objects (a PriorityClass for a Pod). Runs after
    /// validation, before the write; `old` is the stored object on update.
    async fn admit(
        &self,
        _api: &Api,
        _r: &Resource,
        _obj: &mut Value,
        _old: Option<&Value>,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// Takes what the object needs from shared pools (a Service's
    /// ClusterIP and NodePorts) under `owner` ("ns/name"); the handler
    /// releases the claims if the write is refused.
    async fn claim(
        &self,
        _api: &Api,
        _r: &Resource,
        _owner: &str,
        _obj: &mut Value,
        _old: Option<&Value>,
    ) -> Result<Claims, ApiError> {
        Ok(Claims::default())
    }

    /// Frees what `gone` held and `kept` (the object now stored, None
    /// once deleted) no longer does.
    async fn release(&self, _api: &Api, _owner: &str, _gone: &Value, _kept: Option<&Value>) {}

    /// Upstream's CheckGracefulDelete: None for kinds deleted at once.
    fn deletion_grace(&self) -> Option<Grace> {
        None
    }

    /// Refuses the delete of `name` before anything happens (namespaces
    /// every cluster keeps).
    fn check_delete(&self, _name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// Runs just before the object leaves the store (a namespace takes
    /// its contents with it).
    async fn before_remove(&self, _api: &Api, _name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// Objects every cluster has, created at startup when missing.
    fn builtins(&self) -> Vec<Value> {
        Vec::new()
    }

    /// The table columns `kubectl get` prints. Name and Age around
    /// [`Strategy::extra_columns`] unless the kind prints otherwise.
    fn columns(&self) -> Vec<Column> {
        crate::registry::table::framed(self.extra_columns())
    }

    /// Columns between Name and Age.
    fn extra_columns(&self) -> Vec<Column> {
        Vec::new()
    }
}

/// A kind with nothing special.
pub struct Plain;

impl Strategy for Plain {}

pub static PLAIN: Plain = Plain;

/// Validates a (defaulted) object of `r`: the metadata rules every kind
/// shares, then the kind's own; `old` is the stored object on update.
pub fn validate(r: &Resource, obj: &Value, old: Option<&Value>) -> Causes {
    let mut c = validate_meta(obj);
    if let Some(old) = old {
        c.extend(validate_meta_update(obj, old));
    }
    c.extend(r.strategy.validate(obj, old));
    c
}

/// Metadata rules every kind shares on update (upstream's
/// ValidateObjectMetaUpdate): an object being deleted takes no new
/// finalizers (only the server's own delete sets the garbage collector's).
pub fn validate_meta_update(new: &Value, old: &Value) -> Causes {
    let mut c = Causes::new();
    if old["metadata"]["deletionTimestamp"].is_null() {
        return c;
    }
    let names = |o: &Value| -> Vec<String> {
        o["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect()
    };
    let before = names(old);
    let added: Vec<String> = names(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if !added.is_empty() {
        c.push((
            "metadata.finalizers".into(),
            format!(
                "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
            ),
        ));
    }
    c
}

/// Metadata rules every kind shares (upstream's ValidateObjectMeta): the
/// garbage collector cannot both orphan and delete the dependents.
pub fn validate_meta(obj: &Value) -> Causes {
    let fins = &obj["metadata"]["finalizers"];
    let has = |f: &str| fins.as_array().into_iter().flatten().any(|x| x == f);
    let mut c = Causes::new();
    if has(crate::handlers::delete::ORPHAN) && has(crate::handlers::delete::FOREGROUND) {
        c.push((
            "metadata.finalizers".into(),
            format!(
                "Invalid value: {fins}: finalizer {} and {} cannot be both set",
                crate::handlers::delete::ORPHAN,
                crate::handlers::delete::FOREGROUND
            ),
        ));
    }
    c
}

/// Why `name` is not a valid name for `r`'s kind (upstream's rule for
/// the kind: most take a DNS-1123 subdomain, namespaces a DNS-1123 label,
/// services a DNS-1035 label).
pub fn name_problem(r: &Resource, name: &str) -> Option<String> {
    let rule = r.strategy.name_rule();
    let label = rule != NameRule::Subdomain;
    if name.is_empty() {
        return Some("Required value: name or generateName is required".into());
    }
    let max = if label { 63 } else { 253 };
    if name.len() > max {
        return Some(format!(
            "Invalid value: {name:?}: must be no more than {max} characters"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let first_ok = if rule == NameRule::Dns1035 {
        name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
    } else {
        alnum(name.chars().next())
    };
    if name.chars().all(ok_char) && first_ok && alnum(name.chars().last()) {
        return None;
    }
    Some(match rule {
        NameRule::Dns1035 => format!(
            "Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"
        ),
        NameRule::Label => format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ),
        NameRule::Subdomain => format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ),
    })
}
