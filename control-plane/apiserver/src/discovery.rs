//! Discovery: /version and the APIResourceLists kubectl reads to map
//! kinds to resources.
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::registry::{Resource, Sub};

/// Kubernetes version reported by /version (kubectl's skew check).
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

/// GET /version: the Kubernetes version served, and this build's facts
/// as `build.rs` found them (`unknown` where it could not).
pub async fn version() -> Response {
    axum::Json(json!({
        "major": KUBE_MAJOR, "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0-sluice"),
        "gitCommit": env!("SLUICE_GIT_COMMIT"),
        "gitTreeState": env!("SLUICE_GIT_TREE_STATE"),
        "buildDate": env!("SLUICE_BUILD_DATE"),
        "goVersion": env!("SLUICE_RUSTC"), "compiler": "rustc",
        "platform": env!("SLUICE_PLATFORM"),
    }))
    .into_response()
}

pub(crate) fn resource_list(group_version: &str, rs: Vec<&Resource>) -> Response {
    let verbs = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let mut out = Vec::new();
    for r in rs {
        let mut e = json!({
            "name": r.plural, "singularName": r.singular(), "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs, "shortNames": r.short_names,
        });
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for sub in r.subresources {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, sub.name()), "singularName": "",
                "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"],
            });
            match sub {
                Sub::Status => {}
                Sub::Scale => {
                    e["group"] = json!("autoscaling");
                    e["version"] = json!("v1");
                    e["kind"] = json!("Scale");
                }
                Sub::Binding => {
                    e["kind"] = json!("Binding");
                    e["verbs"] = json!(["create"]);
                }
            }
            out.push(e);
        }
    }
    axum::Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": out,
    }))
    .into_response()
}
