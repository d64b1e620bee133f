//! The served resources: one line each. Objects are checked against their
//! k8s-openapi type (the shape), stored as JSON, and served back as JSON.
use k8s_openapi::api;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Decodes the object as its typed struct; the error names what failed.
    pub check: fn(&Value) -> Result<(), String>,
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
}

fn typed<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
    serde_json::from_value::<T>(v.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

macro_rules! resource {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $namespaced:expr, [$($short:expr),*], $ty:ty) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            namespaced: $namespaced,
            short_names: &[$($short),*],
            check: typed::<$ty>,
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
        api::core::v1::Namespace
    ),
    resource!("", "v1", "Pod", "pods", true, ["po"], api::core::v1::Pod),
    resource!(
        "",
        "v1",
        "Service",
        "services",
        true,
        ["svc"],
        api::core::v1::Service
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
        api::core::v1::Node
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
        api::apps::v1::Deployment
    ),
    resource!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        ["rs"],
        api::apps::v1::ReplicaSet
    ),
    resource!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        ["sts"],
        api::apps::v1::StatefulSet
    ),
    resource!(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        true,
        ["ds"],
        api::apps::v1::DaemonSet
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
        api::autoscaling::v2::HorizontalPodAutoscaler
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
    fn typed_check_names_the_bad_field() {
        let cm = find("", "v1", "configmaps").expect("configmaps");
        assert!(
            (cm.check)(&serde_json::json!({"metadata": {"name": "a"}, "data": {"k": "v"}})).is_ok()
        );
        let err = (cm.check)(&serde_json::json!({"metadata": {"name": "a"}, "data": {"k": 5}}))
            .expect_err("a number where a string belongs");
        assert!(err.contains("invalid type"), "{err}");
    }
}
