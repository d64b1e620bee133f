//! Strategic merge patch (what `kubectl apply` sends for built-in types):
//! a JSON merge patch whose lists of objects merge element by element on a
//! per-field merge key (containers by `name`, container ports by
//! `containerPort`, ...) instead of being replaced, plus the directives
//! `$patch` (replace/delete/merge), `$setElementOrder/<field>`,
//! `$retainKeys` and `$deleteFromPrimitiveList/<field>`.
//!
//! The merge keys are upstream's `patchMergeKey` tags for the fields of the
//! served resources; a list with no entry here is replaced whole, as
//! upstream does for lists without `patchStrategy: merge`.
use serde_json::{Map, Value};

/// (field, parent field or "" for any parent) -> merge key. A primitive
/// list that merges as a set has the key "".
const MERGE_KEYS: &[(&str, &str, &str)] = &[
    ("containers", "", "name"),
    ("initContainers", "", "name"),
    ("ephemeralContainers", "", "name"),
    ("env", "", "name"),
    ("volumes", "", "name"),
    ("volumeMounts", "", "mountPath"),
    ("volumeDevices", "", "devicePath"),
    ("imagePullSecrets", "", "name"),
    ("hostAliases", "", "ip"),
    ("topologySpreadConstraints", "", "topologyKey"),
    ("conditions", "", "type"),
    ("ownerReferences", "", "uid"),
    ("finalizers", "", ""),
    // Ports: containerPort inside a container, port in a Service spec.
    ("ports", "containers", "containerPort"),
    ("ports", "initContainers", "containerPort"),
    ("ports", "ephemeralContainers", "containerPort"),
    ("ports", "spec", "port"),
];

#[derive(Debug, PartialEq, Eq)]
pub struct PatchError(pub String);

fn merge_key(field: &str, parent: &str) -> Option<&'static str> {
    MERGE_KEYS
        .iter()
        .find(|(f, p, _)| *f == field && (p.is_empty() || *p == parent))
        .map(|(_, _, k)| *k)
}

/// Applies `patch` to `original` (both JSON objects).
pub fn apply(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    match merge_object(original, patch, "")? {
        Some(v) => Ok(v),
        None => Err(PatchError("the patch deletes the whole object".into())),
    }
}

/// Merges patch object `p` into `o`; None means `$patch: delete`.
fn merge_object(o: &Value, p: &Value, parent: &str) -> Result<Option<Value>, PatchError> {
    let Some(pm) = p.as_object() else {
        return Ok(Some(p.clone()));
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => return Ok(Some(Value::Object(strip(pm)))),
        Some("merge") | None => {}
        Some(other) => return Err(PatchError(format!("unknown $patch directive {other:?}"))),
    }
    let mut out: Map<String, Value> = o.as_object().cloned().unwrap_or_default();
    if let Some(keep) = pm.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or_else(|| PatchError("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders = Vec::new();
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), pv.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let doomed = pv.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(items)) = out.get_mut(field) {
                items.retain(|i| !doomed.contains(i));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match (out.get(k), pv) {
            (Some(ov @ Value::Object(_)), Value::Object(_)) => merge_object(ov, pv, k)?,
            (Some(Value::Array(ol)), Value::Array(pl)) => Some(merge_list(ol, pl, k, parent)?),
            (None, Value::Array(pl)) => Some(merge_list(&[], pl, k, parent)?),
            (None, Value::Object(_)) => merge_object(&Value::Null, pv, k)?,
            _ => Some(pv.clone()),
        };
        match merged {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                out.remove(k);
            }
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(items)), Some(key)) =
            (out.get_mut(&field), merge_key(&field, parent))
        {
            reorder(items, &order, key);
        }
    }
    Ok(Some(Value::Object(out)))
}

fn strip(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn merge_list(o: &[Value], p: &[Value], field: &str, parent: &str) -> Result<Value, PatchError> {
    let Some(key) = merge_key(field, parent) else {
        // No merge strategy: the patch's list replaces the original.
        return Ok(Value::Array(
            p.iter()
                .map(|v| v.as_object().map_or(v.clone(), |m| Value::Object(strip(m))))
                .collect(),
        ));
    };
    let mut out: Vec<Value> = o.to_vec();
    if key.is_empty() {
        // A set of primitives: union, in original order then new ones.
        for v in p {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    for item in p {
        if item.get("$patch").and_then(Value::as_str) == Some("replace") {
            return Ok(Value::Array(
                p.iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect(),
            ));
        }
        let id = item.get(key).ok_or_else(|| {
            PatchError(format!("an element of {field} lacks its merge key {key:?}"))
        })?;
        let at = out.iter().position(|x| x.get(key) == Some(id));
        match (
            at,
            merge_object(at.map_or(&Value::Null, |i| &out[i]), item, field)?,
        ) {
            (Some(i), Some(v)) => out[i] = v,
            (Some(i), None) => {
                out.remove(i);
            }
            (None, Some(v)) => out.push(v),
            (None, None) => {}
        }
    }
    Ok(Value::Array(out))
}

/// Orders `items` as `order` lists their keys; unlisted items keep their
/// relative order after the listed ones.
fn reorder(items: &mut Vec<Value>, order: &Value, key: &str) {
    let Some(order) = order.as_array() else {
        return;
    };
    let mut rest = std::mem::take(items);
    for o in order {
        if let Some(id) = o.get(key)
            && let Some(i) = rest.iter().position(|x| x.get(key) == Some(id))
        {
            items.push(rest.remove(i));
        }
    }
    items.extend(rest);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deploy(containers: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn containers_merge_by_name_so_a_sidecar_survives() {
        let o = deploy(json!([
            {"name": "web", "image": "v1"},
            {"name": "sidecar", "image": "s1"}
        ]));
        let p = deploy(json!([{"name": "web", "image": "v2"}]));
        let got = apply(&o, &p).expect("patch");
        assert_eq!(
            got["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "v2"}, {"name": "sidecar", "image": "s1"}])
        );
    }

    #[test]
    fn directives_delete_replace_order_and_primitive_lists() {
        let o = json!({
            "metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                     "ports": [{"port": 80, "name": "http"}]}
        });
        let p = json!({
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "labels": {"y": null}},
            "spec": {
                "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                "containers": [{"name": "b", "$patch": "delete"}],
                "ports": [{"port": 80, "name": "web"}, {"port": 443}]
            }
        });
        let got = apply(&o, &p).expect("patch");
        assert_eq!(got["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(got["metadata"]["labels"], json!({"x": "1"}));
        assert_eq!(
            got["spec"]["containers"],
            json!([{"name": "c"}, {"name": "a"}])
        );
        assert_eq!(
            got["spec"]["ports"],
            json!([{"port": 80, "name": "web"}, {"port": 443}])
        );
        let r = apply(
            &o,
            &json!({"metadata": {"labels": {"$patch": "replace", "z": "3"}}}),
        )
        .expect("replace");
        assert_eq!(r["metadata"]["labels"], json!({"z": "3"}));
    }

    #[test]
    fn unkeyed_lists_are_replaced_and_bad_elements_named() {
        let o = json!({"spec": {"args": ["a", "b"]}});
        let got = apply(&o, &json!({"spec": {"args": ["c"]}})).expect("patch");
        assert_eq!(got["spec"]["args"], json!(["c"]));
        let err =
            apply(&deploy(json!([])), &deploy(json!([{"image": "x"}]))).expect_err("no merge key");
        assert!(
            err.0.contains("containers") && err.0.contains("name"),
            "{}",
            err.0
        );
    }
}
