//! The served resources: one line each. Objects are checked against their
//! k8s-openapi type (the shape), stored as JSON, and served back as JSON.
use k8s_openapi::api;
use serde_json::Value;

use crate::decode::{Decoded, typed};

pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Decodes the object through its k8s-openapi type; the error names
    /// what failed.
    pub decode: fn(&Value) -> Result<Decoded, String>,
    /// Subresources served under `<name>/<subresource>`.
    pub subresources: &'static [Sub],
}

/// A subresource: a narrower door onto part of an object, so that the
/// writer of one part (a controller writing status, an autoscaler writing
/// replicas, the scheduler binding a pod) cannot clobber the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    /// `status`: writes change only `.status`; writes to the object itself
    /// leave `.status` alone.
    Status,
    /// `scale`: an autoscaling/v1 Scale view of `.spec.replicas`.
    Scale,
    /// `binding` (pods): sets `.spec.nodeName` once.
    Binding,
}

impl Sub {
    pub fn name(self) -> &'static str {
        match self {
            Sub::Status => "status",
            Sub::Scale => "scale",
            Sub::Binding => "binding",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Sub::Status, Sub::Scale, Sub::Binding]
            .into_iter()
            .find(|x| x.name() == s)
    }
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn singular(&self) -> String {
        self.kind.to_lowercase()
    }

    /// The store prefix of every object of this resource, or of those in
    /// namespace `ns`.
    pub fn prefix(&self, ns: Option<&str>) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match ns {
            Some(ns) if self.namespaced => format!("/registry/{g}/{}/{ns}/", self.plural),
            _ => format!("/registry/{g}/{}/", self.plural),
        }
    }

    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(ns))
    }

    /// An object as clients see it: typed, with the store revision of its
    /// last write as resourceVersion.
    pub fn stamp(&self, mut obj: Value, rev: i64) -> Value {
        obj["apiVersion"] = serde_json::json!(self.api_version());
        obj["kind"] = serde_json::json!(self.kind);
        obj["metadata"]["resourceVersion"] = serde_json::json!(rev.to_string());
        obj
    }

    pub fn has(&self, sub: Sub) -> bool {
        self.subresources.contains(&sub)
    }

    /// The bytes stored under `key` as an object of this kind. Everything
    /// the server writes passes; anything else (a write from outside the
    /// server, damage) is refused here rather than served as `null` or
    /// written back without its identity.
    pub fn parse_stored(&self, key: &str, bytes: &[u8]) -> Result<Value, Corrupt> {
        let corrupt = |reason: String| Corrupt {
            key: key.to_string(),
            reason,
        };
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON ({e})")))?;
        if !v.is_object() {
            return Err(corrupt(format!("not a JSON object but {}", kind_of(&v))));
        }
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(corrupt("no metadata.name".into()));
        }
        if !key.ends_with(&format!("/{name}")) {
            return Err(corrupt(format!("metadata.name {name:?} is not the key's")));
        }
        for (field, want) in [
            ("kind", self.kind.to_string()),
            ("apiVersion", self.api_version()),
        ] {
            match v.get(field) {
                None => {}
                Some(Value::String(got)) if *got == want => {}
                Some(got) => return Err(corrupt(format!("{field} {got} is not {want:?}"))),
            }
        }
        Ok(v)
    }
}

/// A stored object that is not one of its key's kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the object stored under {} is corrupt: {}",
            self.key, self.reason
        )
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

macro_rules! resource {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $namespaced:expr, [$($short:expr),*], $ty:ty $(, $sub:ident)*) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            namespaced: $namespaced,
            short_names: &[$($short),*],
            decode: typed::<$ty>,
            subresources: &[$(Sub::$sub),*],
        }
    };
}

pub static RESOURCES: &[Resource] = &[
    resource!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        ["ns"],
        api::core::v1::Namespace,
        Status
    ),
    resource!(
        "",
        "v1",
        "Pod",
        "pods",
        true,
        ["po"],
        api::core::v1::Pod,
        Status,
        Binding
    ),
    resource!(
        "",
        "v1",
        "Service",
        "services",
        true,
        ["svc"],
        api::core::v1::Service,
        Status
    ),
    resource!(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        true,
        ["ep"],
        api::core::v1::Endpoints
    ),
    resource!(
        "",
        "v1",
        "Node",
        "nodes",
        false,
        ["no"],
        api::core::v1::Node,
        Status
    ),
    resource!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        ["cm"],
        api::core::v1::ConfigMap
    ),
    resource!(
        "",
        "v1",
        "Secret",
        "secrets",
        true,
        [],
        api::core::v1::Secret
    ),
    resource!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        ["sa"],
        api::core::v1::ServiceAccount
    ),
    resource!(
        "",
        "v1",
        "Event",
        "events",
        true,
        ["ev"],
        api::core::v1::Event
    ),
    resource!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        ["deploy"],
        api::apps::v1::Deployment,
        Status,
        Scale
    ),
    resource!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        ["rs"],
        api::apps::v1::ReplicaSet,
        Status,
        Scale
    ),
    resource!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        ["sts"],
        api::apps::v1::StatefulSet,
        Status,
        Scale
    ),
    resource!(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        true,
        ["ds"],
        api::apps::v1::DaemonSet,
        Status
    ),
    resource!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
        [],
        api::discovery::v1::EndpointSlice
    ),
    resource!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        [],
        api::coordination::v1::Lease
    ),
    resource!(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        ["hpa"],
        api::autoscaling::v2::HorizontalPodAutoscaler,
        Status
    ),
    resource!(
        "batch",
        "v1",
        "Job",
        "jobs",
        true,
        [],
        api::batch::v1::Job,
        Status
    ),
    resource!(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        true,
        ["cj"],
        api::batch::v1::CronJob,
        Status
    ),
];

/// The resource served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn namespaces() -> &'static Resource {
    &RESOURCES[0]
}

/// Core Services (what allocation repair reads).
pub fn services() -> Option<&'static Resource> {
    find("", "v1", "services")
}

/// Groups other than core, each with its one version, in table order.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.iter().any(|(g, _)| *g == r.group) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_by_group_resource_namespace() {
        let cm = find("", "v1", "configmaps").expect("configmaps");
        assert_eq!(cm.key(Some("ns1"), "a"), "/registry/core/configmaps/ns1/a");
        assert_eq!(cm.prefix(None), "/registry/core/configmaps/");
        let ns = namespaces();
        assert_eq!(
            ns.key(Some("ignored"), "kube-system"),
            "/registry/core/namespaces/kube-system"
        );
        assert!(find("apps", "v1", "deployments").is_some());
        assert!(groups().contains(&("discovery.k8s.io", "v1")));
    }

    #[test]
    fn typed_decode_names_the_bad_field() {
        let cm = find("", "v1", "configmaps").expect("configmaps");
        assert!(
            (cm.decode)(&serde_json::json!({"metadata": {"name": "a"}, "data": {"k": "v"}}))
                .is_ok()
        );
        let err = (cm.decode)(&serde_json::json!({"metadata": {"name": "a"}, "data": {"k": 5}}))
            .err()
            .expect("a number where a string belongs");
        assert!(err.contains("invalid type"), "{err}");
    }
}
