//! OpenAPI documents, generated from the resource table, carrying what
//! clients read from them:
//!
//! - v3, per group-version: every path and operation with its
//!   `x-kubernetes-group-version-kind`, and the `fieldValidation` query
//!   parameter inline on writes. kubectl (≥ 1.26) reads exactly this to
//!   decide that the server validates fields, then sends
//!   `fieldValidation=Strict` instead of validating client-side.
//!   Strategic merge patch is deliberately not listed in the patch
//!   operations' request bodies: kubectl then computes its patches from
//!   the type information compiled into it, which is complete, instead of
//!   from schemas that would need every patch extension to be right.
//! - v2: an empty protobuf document. kubectl < 1.26 only reads v2 (as
//!   protobuf); with no schema for a kind it skips client-side checks,
//!   and the server's own decoding and validation still apply.
use std::hash::{Hash as _, Hasher as _};

use axum::{
    extract::Path,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    http::status::{ApiError, Reason},
    registry::{self, Resource, Sub},
};

/// The group-version path segments (`api/v1`, `apis/apps/v1`) served.
fn group_versions() -> Vec<(String, &'static str, &'static str)> {
    let mut out = vec![("api/v1".to_string(), "", "v1")];
    for (g, v) in registry::groups() {
        out.push((format!("apis/{g}/{v}"), g, v));
    }
    out
}

/// The schema name upstream gives a kind: `io.k8s.api.apps.v1.Deployment`.
fn schema_name(r: &Resource) -> String {
    let pkg = if r.group.is_empty() {
        "core"
    } else {
        r.group.split('.').next().unwrap_or(r.group)
    };
    format!("io.k8s.api.{pkg}.{}.{}", r.version, r.kind)
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

fn param(name: &str, location: &str) -> Value {
    let mut p =
        json!({"name": name, "in": location, "schema": {"type": "string", "uniqueItems": true}});
    if location == "path" {
        p["required"] = json!(true);
    }
    p
}

fn operation(action: &str, id: String, gvk: &Value, schema: &str, write: bool) -> Value {
    let reference = json!({"$ref": format!("#/components/schemas/{schema}")});
    let mut op = json!({
        "operationId": id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
    });
    if write {
        op["parameters"] = json!([
            param("dryRun", "query"),
            param("fieldManager", "query"),
            param("fieldValidation", "query"),
        ]);
        op["requestBody"] = match action {
            "patch" => json!({"required": true, "content": {
                "application/json-patch+json": {"schema": {"type": "object"}},
                "application/merge-patch+json": {"schema": {"type": "object"}},
            }}),
            _ => json!({"required": true, "content": {"application/json": {"schema": reference}}}),
        };
    }
    op
}

/// The OpenAPI v3 document of one group-version, or None if not served.
pub fn v3_document(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&Resource> = registry::RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let base = if group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in rs {
        let name = schema_name(r);
        let kind = gvk(r.group, r.version, r.kind);
        schemas.insert(
            name.clone(),
            json!({
                "description": format!("{} ({}).", r.kind, r.api_version()),
                "type": "object",
                "x-kubernetes-group-version-kind": [kind.clone()],
                "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                },
            }),
        );
        let coll = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let id = |verb: &str| format!("{verb}{}", r.kind);
        paths.insert(
            coll.clone(),
            json!({
                "get": operation("list", id("list"), &kind, &name, false),
                "post": operation("post", id("create"), &kind, &name, true),
                "delete": operation("deletecollection", id("deleteCollection"), &kind, &name, false),
            }),
        );
        let item = format!("{coll}/{{name}}");
        paths.insert(
            item.clone(),
            json!({
                "get": operation("get", id("read"), &kind, &name, false),
                "put": operation("put", id("replace"), &kind, &name, true),
                "patch": operation("patch", id("patch"), &kind, &name, true),
                "delete": operation("delete", id("delete"), &kind, &name, false),
            }),
        );
        for sub in r.subresources {
            let path = format!("{item}/{}", sub.name());
            let entry = match sub {
                Sub::Status => json!({
                    "get": operation("get", id("read") + "Status", &kind, &name, false),
                    "put": operation("put", id("replace") + "Status", &kind, &name, true),
                    "patch": operation("patch", id("patch") + "Status", &kind, &name, true),
                }),
                Sub::Scale => {
                    let scale = gvk("autoscaling", "v1", "Scale");
                    let s = "io.k8s.api.autoscaling.v1.Scale";
                    json!({
                        "get": operation("get", id("read") + "Scale", &scale, s, false),
                        "put": operation("put", id("replace") + "Scale", &scale, s, true),
                        "patch": operation("patch", id("patch") + "Scale", &scale, s, true),
                    })
                }
                Sub::Binding => {
                    let b = gvk("", "v1", "Binding");
                    json!({"post": operation("post", id("create") + "Binding", &b, "io.k8s.api.core.v1.Binding", true)})
                }
            };
            paths.insert(path, entry);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::discovery::KUBE_MAJOR, crate::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The index and every group-version's document, serialized. They follow
/// from the static resource table, so they are built once, not per request.
struct Served {
    index: Vec<u8>,
    /// "api/v1", "apis/apps/v1", ... -> document.
    docs: std::collections::HashMap<String, Vec<u8>>,
}

fn served() -> &'static Served {
    static SERVED: std::sync::OnceLock<Served> = std::sync::OnceLock::new();
    SERVED.get_or_init(|| {
        let mut docs = std::collections::HashMap::new();
        for (seg, g, v) in group_versions() {
            let doc = v3_document(g, v)
                .unwrap_or_default()
                .to_string()
                .into_bytes();
            docs.insert(seg, doc);
        }
        Served {
            index: v3_index(&docs).to_string().into_bytes(),
            docs,
        }
    })
}

/// GET /openapi/v3: where each group-version's document is. The hash
/// changes whenever the document does, so clients may cache by it.
fn v3_index(docs: &std::collections::HashMap<String, Vec<u8>>) -> Value {
    let mut paths = serde_json::Map::new();
    for (seg, doc) in docs {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        doc.hash(&mut h);
        paths.insert(
            seg.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{seg}?hash={:016X}", h.finish())}),
        );
    }
    json!({"paths": paths})
}

fn json_bytes(bytes: &'static [u8]) -> Response {
    ([("content-type", "application/json")], bytes).into_response()
}

pub async fn v3_root() -> Response {
    json_bytes(&served().index)
}

/// GET /openapi/v3/api/v1 and /openapi/v3/apis/<group>/<version>.
pub async fn v3_group_version(Path(rest): Path<String>) -> Response {
    match served().docs.get(rest.trim_matches('/')) {
        Some(d) => json_bytes(d),
        None => ApiError::new(
            Reason::NotFound,
            format!("no OpenAPI v3 document for {rest:?}"),
        )
        .into_response(),
    }
}

/// GET /openapi/v2: an empty gnostic `Document` (zero protobuf bytes).
pub async fn v2() -> Response {
    (
        [("content-type", "application/octet-stream")],
        Vec::<u8>::new(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kubectl's QueryParamVerifierV3 looks for: a patch operation
    /// whose (single-object) GVK is the kind, with fieldValidation inline.
    #[test]
    fn every_kind_advertises_field_validation_on_patch() {
        for r in registry::RESOURCES {
            let doc = v3_document(r.group, r.version).expect("served");
            let want = gvk(r.group, r.version, r.kind);
            let found = doc["paths"].as_object().expect("paths").values().any(|p| {
                p["patch"]["x-kubernetes-group-version-kind"] == want
                    && p["patch"]["parameters"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|x| x["name"] == "fieldValidation" && x["in"] == "query")
                    })
            });
            assert!(found, "{}", r.kind);
            let schema = &doc["components"]["schemas"][schema_name(r)];
            assert_eq!(schema["x-kubernetes-group-version-kind"][0], want);
        }
        let index: Value = serde_json::from_slice(&served().index).expect("index JSON");
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .is_some_and(|u| u.starts_with("/openapi/v3/apis/apps/v1?hash="))
        );
        assert!(v3_document("nope", "v1").is_none());
    }
}
