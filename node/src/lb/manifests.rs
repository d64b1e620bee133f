//! The `--manifests DIR` source: upstream Kubernetes Service and
//! EndpointSlice YAML (multi-document files), read whole on every change.
//!
//! Reading is strict where a typo would silently change behaviour: unknown
//! fields are errors (kubectl's `--validate=strict` view), reported with
//! the file and object and the object skipped. A YAML syntax error skips
//! the rest of that file only. Other kinds are ignored, so a directory of
//! full application manifests works.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::de::DeserializeOwned;

use super::model::{ObjectError, Snapshot, Sourced};

/// Files considered: `*.yaml`, `*.yml`, `*.json`, not hidden (editors' swap
/// and temp files start with a dot), in name order.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext_ok = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if ext_ok && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every manifest file in `dir` into one snapshot.
pub fn read_dir(dir: &Path) -> std::io::Result<Snapshot> {
    let mut snap = Snapshot::default();
    for file in manifest_files(dir)? {
        let origin: Arc<str> = file.display().to_string().into();
        match std::fs::read_to_string(&file) {
            Ok(text) => parse_into(&origin, &text, &mut snap),
            Err(e) => snap.errors.push(ObjectError {
                origin,
                object: String::new(),
                message: format!("read: {e}"),
            }),
        }
    }
    Ok(snap)
}

fn object_name(v: &serde_yaml::Value, kind: &str) -> String {
    let meta = v.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string()
    };
    let ns = field("namespace");
    format!(
        "{kind} {}/{}",
        if ns.is_empty() { "default" } else { &ns },
        field("name")
    )
}

/// Parses one file's documents, appending objects and errors to `snap`.
pub fn parse_into(origin: &Arc<str>, text: &str, snap: &mut Snapshot) {
    use serde::Deserialize as _;
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                snap.errors.push(ObjectError {
                    origin: origin.clone(),
                    object: String::new(),
                    message: format!("invalid YAML in document {}: {e}", i + 1),
                });
                return;
            }
        };
        if value.is_null() {
            continue; // empty document (e.g. a trailing `---`)
        }
        let api = value.get("apiVersion").and_then(|v| v.as_str());
        let kind = value.get("kind").and_then(|v| v.as_str());
        match (api, kind) {
            (Some("v1"), Some("Service")) => {
                if let Some(obj) = strict::<Service>(origin, value, "Service", snap) {
                    snap.services.push(Sourced {
                        origin: origin.clone(),
                        obj,
                    });
                }
            }
            (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => {
                if let Some(obj) = strict::<EndpointSlice>(origin, value, "EndpointSlice", snap) {
                    snap.slices.push(Sourced {
                        origin: origin.clone(),
                        obj,
                    });
                }
            }
            (_, Some(_)) => {} // another kind: not ours
            (_, None) => snap.errors.push(ObjectError {
                origin: origin.clone(),
                object: format!("document {}", i + 1),
                message: "missing kind".into(),
            }),
        }
    }
}

/// Deserializes with unknown fields reported as errors.
fn strict<T: DeserializeOwned>(
    origin: &Arc<str>,
    value: serde_yaml::Value,
    kind: &str,
    snap: &mut Snapshot,
) -> Option<T> {
    let object = object_name(&value, kind);
    let mut unknown = Vec::new();
    let res: Result<T, _> = serde_ignored::deserialize(value, |path| {
        // serde_ignored marks Option layers as `?`; users think in field paths.
        unknown.push(path.to_string().replace(".?", "").replace("?.", ""))
    });
    match res {
        Err(e) => {
            snap.errors.push(ObjectError {
                origin: origin.clone(),
                object,
                message: e.to_string(),
            });
            None
        }
        Ok(_) if !unknown.is_empty() => {
            snap.errors.push(ObjectError {
                origin: origin.clone(),
                object,
                message: format!("unknown field(s): {}", unknown.join(", ")),
            });
            None
        }
        Ok(obj) => Some(obj),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        parse_into(&Arc::from("f.yaml"), text, &mut s);
        s
    }

    #[test]
    fn multi_document_with_other_kinds() {
        let s = parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n",
        );
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.services.len(), 1);
    }

    #[test]
    fn unknown_field_is_named_and_the_object_skipped() {
        let s = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns1}\nspec: {ports: [{port: 80}], clusterIp: 10.0.0.1}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 81}]}\n",
        );
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.errors.len(), 1);
        let e = s.errors[0].to_string();
        assert!(
            e.starts_with("f.yaml: Service ns1/a: unknown field(s): spec.clusterIp"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_and_invalid_yaml() {
        let s = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n",
        );
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(s.errors[0].to_string().contains("Service default/a"));
        let s = parse("apiVersion: v1\nkind: Service\nmetadata: {name: [a\n");
        assert_eq!(s.errors.len(), 1);
        assert!(
            s.errors[0].message.contains("invalid YAML"),
            "{}",
            s.errors[0]
        );
    }
}
