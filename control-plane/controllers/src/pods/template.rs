//! Pod templates: the Pod a controller stamps from one (upstream's
//! `GetPodFromTemplate`), the `pod-template-hash` a Deployment gives each
//! ReplicaSet, and template equality that ignores that hash (upstream's
//! `EqualIgnoreHash`, which is how a Deployment finds the ReplicaSet that
//! already runs its template, e.g. after `kubectl rollout undo`).
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::Value;

/// The label (and selector term) that keeps one Deployment's ReplicaSets
/// from selecting each other's Pods.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The `generateName` of Pods a controller named `owner` creates.
pub fn generate_name(owner: &str) -> String {
    format!("{owner}-")
}

/// A Pod from `template`, controlled by `owner` (labels, annotations and
/// finalizers of the template, its spec, `generateName` `<owner>-`).
pub fn pod_from_template(template: &PodTemplateSpec, owner: OwnerReference) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(&owner.name)),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// A stable hash of `template` (and of the collision count, which a
/// Deployment bumps when a name it wants is taken by a different
/// template): 32-bit FNV-1a over the template's canonical JSON, encoded
/// with upstream's `SafeEncodeString` alphabet (no vowels, no 0/1/3).
/// Upstream hashes Go's struct dump instead, so the values differ from a
/// real cluster's; nothing compares them across implementations.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h = Fnv32a::new();
    let v = serde_json::to_value(template).unwrap_or(Value::Null);
    write_canonical(&v, &mut h);
    if let Some(c) = collision_count {
        // Upstream: the count as 4 little-endian bytes in an 8-byte buffer.
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&(c as u32).to_le_bytes());
        h.write(&b);
    }
    safe_encode(&h.0.to_string())
}

/// Same template, the `pod-template-hash` label aside. Like upstream's
/// semantic equality, an absent field, null, `{}` and `[]` are equal.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    comparable(a) == comparable(b)
}

fn comparable(t: &PodTemplateSpec) -> Value {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(POD_TEMPLATE_HASH_LABEL);
    }
    let mut v = serde_json::to_value(&t).unwrap_or(Value::Null);
    prune_empty(&mut v);
    v
}

/// Removes nulls, empty objects and empty lists, bottom up.
fn prune_empty(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                prune_empty(x);
            }
            m.retain(|_, x| !is_empty(x));
        }
        Value::Array(a) => a.iter_mut().for_each(prune_empty),
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// JSON with object keys sorted, whatever map serde_json was built with.
fn write_canonical(v: &Value, h: &mut Fnv32a) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            h.write(b"{");
            for k in keys {
                h.write(Value::String(k.clone()).to_string().as_bytes());
                h.write(b":");
                write_canonical(&m[k.as_str()], h);
                h.write(b",");
            }
            h.write(b"}");
        }
        Value::Array(a) => {
            h.write(b"[");
            for x in a {
                write_canonical(x, h);
                h.write(b",");
            }
            h.write(b"]");
        }
        other => h.write(other.to_string().as_bytes()),
    }
}

struct Fnv32a(u32);

impl Fnv32a {
    fn new() -> Self {
        Self(0x811c_9dc5)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u32::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }
}

/// Upstream's `rand.SafeEncodeString`: each byte mapped into an alphabet
/// without vowels or look-alike digits, so a hash never spells a word.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, PodSpec};

    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_hash_is_stable_and_follows_the_template() {
        let a = compute_hash(&template("nginx:1"), None);
        assert_eq!(a, compute_hash(&template("nginx:1"), None));
        assert_ne!(a, compute_hash(&template("nginx:2"), None));
        assert!(
            a.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        assert!(!a.is_empty() && a.len() <= 10);
    }

    #[test]
    fn a_collision_count_changes_the_hash() {
        let t = template("nginx:1");
        let none = compute_hash(&t, None);
        let zero = compute_hash(&t, Some(0));
        let one = compute_hash(&t, Some(1));
        assert_ne!(zero, one);
        assert_ne!(none, one);
    }

    #[test]
    fn the_hash_ignores_map_order() {
        let mut a = template("x");
        let mut b = template("x");
        a.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
        ]));
        b.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
        ]));
        assert_eq!(compute_hash(&a, None), compute_hash(&b, None));
    }

    #[test]
    fn equality_ignores_the_hash_label_and_empty_fields() {
        let a = template("nginx:1");
        let mut b = template("nginx:1");
        b.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH_LABEL.into(), "abc".into());
        b.metadata.as_mut().unwrap().annotations = Some(BTreeMap::new());
        b.spec.as_mut().unwrap().volumes = Some(vec![]);
        assert!(equal_ignore_hash(&a, &b));
        assert!(!equal_ignore_hash(&a, &template("nginx:2")));
        let mut c = template("nginx:1");
        c.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "fe".into());
        assert!(!equal_ignore_hash(&a, &c), "other labels count");
    }

    #[test]
    fn a_pod_from_a_template_is_controlled_by_its_owner() {
        let mut t = template("nginx:1");
        t.metadata.as_mut().unwrap().annotations =
            Some(BTreeMap::from([("note".into(), "x".into())]));
        t.metadata.as_mut().unwrap().finalizers = Some(vec!["f".into()]);
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web-abc".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let p = pod_from_template(&t, owner.clone());
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.name, None);
        assert_eq!(p.metadata.labels, t.metadata.as_ref().unwrap().labels);
        assert_eq!(
            p.metadata.annotations,
            t.metadata.as_ref().unwrap().annotations
        );
        assert_eq!(p.metadata.finalizers, Some(vec!["f".into()]));
        assert_eq!(p.metadata.owner_references, Some(vec![owner]));
        assert_eq!(p.spec, t.spec);
    }
}
