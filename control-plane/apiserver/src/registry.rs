//! The served resources: one line each. Objects are checked against their
//! k8s-openapi type (the shape), stored as JSON, and served back as JSON.
use k8s_openapi::api;
use serde_json::Value;

use crate::http::decode::{Decoded, typed};
use strategy::Strategy;

pub mod events;
pub mod strategy;
pub mod table;

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
    /// Discovery categories (`all`: what `kubectl get all` lists).
    pub categories: &'static [&'static str],
    /// Set when this resource is another one's objects seen through a
    /// conversion (upstream stores one object per event and serves it in
    /// two groups).
    pub view: Option<&'static View>,
    /// The kind's rules: defaults, validation, hooks, columns.
    pub strategy: &'static dyn Strategy,
}

/// Where a view's objects live and how they convert.
pub struct View {
    /// The stored resource: group ("" for core), version, kind, plural.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// Stored form (with its apiVersion and kind) to this view's.
    pub from_stored: fn(Value) -> Value,
    /// This view's form to the stored one.
    pub to_stored: fn(Value) -> Value,
}

impl View {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
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
        let (group, plural) = match self.view {
            Some(v) => (v.group, v.plural),
            None => (self.group, self.plural),
        };
        let g = if group.is_empty() { "core" } else { group };
        match ns {
            Some(ns) if self.namespaced => format!("/registry/{g}/{plural}/{ns}/"),
            _ => format!("/registry/{g}/{plural}/"),
        }
    }

    /// The bytes to store for `obj` (a view's objects are stored in the
    /// viewed resource's form).
    pub fn encode(&self, obj: &Value) -> Result<Vec<u8>, serde_json::Error> {
        match self.view {
            Some(v) => {
                let mut stored = (v.to_stored)(obj.clone());
                stored["apiVersion"] = serde_json::json!(v.api_version());
                stored["kind"] = serde_json::json!(v.kind);
                if let Some(m) = stored["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                serde_json::to_vec(&stored)
            }
            None => serde_json::to_vec(obj),
        }
    }

    /// `obj` as it reads back after [`Self::encode`] (what a write answers).
    pub fn normalize(&self, obj: Value) -> Value {
        match self.view {
            Some(v) => (v.from_stored)((v.to_stored)(obj)),
            None => obj,
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
        let (kind, api_version) = match self.view {
            Some(v) => (v.kind.to_string(), v.api_version()),
            None => (self.kind.to_string(), self.api_version()),
        };
        for (field, want) in [("kind", kind), ("apiVersion", api_version)] {
            match v.get(field) {
                None => {}
                Some(Value::String(got)) if *got == want => {}
                Some(got) => return Err(corrupt(format!("{field} {got} is not {want:?}"))),
            }
        }
        Ok(match self.view {
            Some(view) => (view.from_stored)(v),
            None => v,
        })
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
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $namespaced:expr, [$($short:expr),*], [$($cat:expr),*], $strategy:expr, $ty:ty $(, $sub:ident)*) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            namespaced: $namespaced,
            short_names: &[$($short),*],
            decode: typed::<$ty>,
            subresources: &[$(Sub::$sub),*],
            categories: &[$($cat),*],
            view: None,
            strategy: $strategy,
        }
    };
}

/// events.k8s.io/v1 Events: the core/v1 Events, converted.
static EVENTS_VIEW: View = View {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    from_stored: events::from_core,
    to_stored: events::to_core,
};

pub static RESOURCES: &[Resource] = &[
    resource!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        ["ns"],
        [],
        &strategy::namespace::NAMESPACE,
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
        ["all"],
        &strategy::pod::POD,
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
        ["all"],
        &strategy::service::SERVICE,
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
        [],
        &strategy::PLAIN,
        api::core::v1::Endpoints
    ),
    resource!(
        "",
        "v1",
        "Node",
        "nodes",
        false,
        ["no"],
        [],
        &strategy::node::NODE,
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
        [],
        &strategy::configmap::CONFIG_MAP,
        api::core::v1::ConfigMap
    ),
    resource!(
        "",
        "v1",
        "Secret",
        "secrets",
        true,
        [],
        [],
        &strategy::secret::SECRET,
        api::core::v1::Secret
    ),
    resource!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        ["sa"],
        [],
        &strategy::PLAIN,
        api::core::v1::ServiceAccount
    ),
    resource!(
        "",
        "v1",
        "Event",
        "events",
        true,
        ["ev"],
        [],
        &strategy::event::EVENT,
        api::core::v1::Event
    ),
    resource!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        ["deploy"],
        ["all"],
        &strategy::deployment::DEPLOYMENT,
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
        ["all"],
        &strategy::replicaset::REPLICA_SET,
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
        ["all"],
        &strategy::statefulset::STATEFUL_SET,
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
        ["all"],
        &strategy::daemonset::DAEMON_SET,
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
        [],
        &strategy::endpointslice::ENDPOINT_SLICE,
        api::discovery::v1::EndpointSlice
    ),
    resource!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        [],
        [],
        &strategy::PLAIN,
        api::coordination::v1::Lease
    ),
    resource!(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        ["hpa"],
        ["all"],
        &strategy::PLAIN,
        api::autoscaling::v2::HorizontalPodAutoscaler,
        Status
    ),
    Resource {
        view: Some(&EVENTS_VIEW),
        ..resource!(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            ["ev"],
            [],
            &strategy::event::EVENT,
            api::events::v1::Event
        )
    },
    resource!(
        "batch",
        "v1",
        "Job",
        "jobs",
        true,
        [],
        ["all"],
        &strategy::job::JOB,
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
        ["all"],
        &strategy::cronjob::CRON_JOB,
        api::batch::v1::CronJob,
        Status
    ),
    resource!(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        false,
        ["pc"],
        [],
        &strategy::priorityclass::PRIORITY_CLASS,
        api::scheduling::v1::PriorityClass
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
    fn the_events_view_reads_and_writes_core_events() {
        let core = find("", "v1", "events").expect("core events");
        let view = find("events.k8s.io", "v1", "events").expect("events.k8s.io events");
        assert_eq!(view.prefix(Some("ns")), core.prefix(Some("ns")));
        let stored = serde_json::json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "ns"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "message": "m"});
        let bytes = serde_json::to_vec(&stored).expect("json");
        let key = core.key(Some("ns"), "e");
        let shown = view
            .parse_stored(&key, &bytes)
            .expect("a core event reads through the view");
        assert_eq!(shown["note"], "m");
        assert_eq!(shown["regarding"]["name"], "p");
        let back: Value =
            serde_json::from_slice(&view.encode(&shown).expect("encode")).expect("json");
        assert_eq!(back, stored, "the view writes the core form");
        assert_eq!(core.parse_stored(&key, &bytes).expect("core"), stored);
    }

    #[test]
    fn kubectl_get_all_lists_the_workload_kinds() {
        let all: Vec<&str> = RESOURCES
            .iter()
            .filter(|r| r.categories.contains(&"all"))
            .map(|r| r.plural)
            .collect();
        assert_eq!(
            all,
            [
                "pods",
                "services",
                "deployments",
                "replicasets",
                "statefulsets",
                "daemonsets",
                "horizontalpodautoscalers",
                "jobs",
                "cronjobs"
            ]
        );
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
