//! Typed decoding of objects, the way upstream's decoder treats them:
//! the JSON goes through its k8s-openapi type, so a wrong type is an
//! error naming the field, fields the type does not know are dropped (and
//! reported, for `fieldValidation`), and what is stored is what the type
//! serializes to. Duplicate keys are found on the raw body, before a JSON
//! parser quietly keeps the last one.
use std::fmt::Write as _;

use serde::{
    Serialize,
    de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor},
};
use serde_json::Value;

/// A decoded object and the paths of the fields its type does not have.
pub struct Decoded {
    pub object: Value,
    pub unknown: Vec<String>,
}

/// Upstream's field-path spelling: `spec.containers[0].foo`.
fn path_string(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    fn walk(p: &Path, out: &mut String) {
        match p {
            Path::Root => {}
            Path::Seq { parent, index } => {
                walk(parent, out);
                let _ = write!(out, "[{index}]");
            }
            Path::Map { parent, key } => {
                walk(parent, out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = String::new();
    walk(p, &mut out);
    out
}

/// Decodes `v` as `T` and back.
pub fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Decoded, String> {
    let mut unknown = Vec::new();
    let t: T = serde_ignored::deserialize(v, |p| unknown.push(path_string(&p)))
        .map_err(|e| e.to_string())?;
    let object = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    Ok(Decoded { object, unknown })
}

/// Paths of keys that appear twice in one JSON object of `body`.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Walk {
        at: String::new(),
        found: &mut found,
    }
    .deserialize(&mut de);
    found
}

/// Walks any JSON value, noting repeated keys with their paths.
struct Walk<'a> {
    at: String,
    found: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let seed = Walk {
                at: format!("{}[{i}]", self.at),
                found: &mut *self.found,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = if self.at.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.at)
            };
            if !seen.insert(key) {
                self.found.push(at.clone());
            }
            map.next_value_seed(Walk {
                at,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_fields_are_dropped_and_named_with_their_paths() {
        let d = typed::<Deployment>(&json!({
            "metadata": {"name": "a", "colour": "red"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "c"}, {"name": "d", "imag": "x"}]}}},
            "extra": 1,
        }))
        .expect("decodes");
        assert_eq!(
            d.unknown,
            // serde_json's map visits keys in order.
            [
                "extra",
                "metadata.colour",
                "spec.template.spec.containers[1].imag"
            ]
        );
        assert!(d.object["metadata"].get("colour").is_none());
        assert!(d.object.get("extra").is_none());
        assert_eq!(
            d.object["spec"]["template"]["spec"]["containers"][1]["name"],
            "d"
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        let e = typed::<Deployment>(&json!({"spec": {"replicas": "two"}})).err();
        assert!(e.is_some_and(|e| e.contains("invalid type")));
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        let body = br#"{"a": 1, "spec": {"paused": true, "x": [{"k": 1, "k": 2}], "paused": false}, "a": 2}"#;
        assert_eq!(duplicate_fields(body), ["spec.x[0].k", "spec.paused", "a"]);
        assert!(duplicate_fields(br#"{"a": {"b": 1}, "c": {"b": 2}}"#).is_empty());
    }
}
