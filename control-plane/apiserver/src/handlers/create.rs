//! POST of a new object: identity (name, uid), the kind's strategy
//! (prepare, default, validate, admit, claim), then the write; and the
//! objects every cluster has, created at startup.
use super::*;

/// Where uids and generated names get their randomness: the OS, except
/// in tests that make it fail.
type Fill = fn(&mut [u8]) -> Result<(), getrandom::Error>;

fn random_suffix(fill: Fill) -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    fill(&mut b)?;
    Ok(b.iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect())
}

/// A random (version 4) UUID.
pub(super) fn uid(fill: Fill) -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    fill(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// The name (given, or generated from generateName) and uid of a new
/// object in namespace `ns`. A failing random source is a 500 naming the
/// key: an all-zero uid or suffix would collide with the next one.
fn new_identity(
    r: &Resource,
    ns: Option<&str>,
    meta: &serde_json::Map<String, Value>,
    fill: Fill,
) -> Result<(String, String), ApiError> {
    let name = match (
        meta.get("name").and_then(Value::as_str),
        meta.get("generateName").and_then(Value::as_str),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) if !g.is_empty() => {
            let suffix = random_suffix(fill).map_err(|e| {
                ApiError::random(format!("generating a name for {}*", r.key(ns, g)), e)
            })?;
            format!("{g}{suffix}")
        }
        _ => String::new(),
    };
    let uid = uid(fill)
        .map_err(|e| ApiError::random(format!("generating the uid of {}", r.key(ns, &name)), e))?;
    Ok((name, uid))
}

async fn require_namespace(api: &Shared, ns: &str) -> Result<(), ApiError> {
    let r = registry::namespaces();
    match api.store.get(&r.key(None, ns)).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ApiError::not_found(r, ns)),
        Err(e) => Err(ApiError::store(r, ns, e)),
    }
}

pub(super) async fn create(
    api: &Shared,
    t: &Target,
    body: &[u8],
    fv: FieldValidation,
) -> Result<Response, ApiError> {
    let r = t.resource;
    let (mut obj, warnings) = parse_body(r, body, fv)?;
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            ApiError::invalid(r, "", vec![("metadata".into(), "Required value".into())])
        })?;
    if r.namespaced {
        let ns = t.namespace.clone().unwrap_or_default();
        match meta.get("namespace").and_then(Value::as_str) {
            Some(n) if n != ns => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"
                )));
            }
            _ => {
                meta.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    let (name, uid) = new_identity(r, t.namespace.as_deref(), meta, getrandom::fill)?;
    if let Some(p) = strategy::name_problem(r, &name) {
        return Err(ApiError::invalid(
            r,
            &name,
            vec![("metadata.name".into(), p)],
        ));
    }
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(uid));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    if obj.get("spec").is_some() {
        obj["metadata"]["generation"] = json!(1);
    }
    r.strategy.prepare_create(r, &mut obj);
    r.strategy.default(&mut obj);
    r.strategy.admit(api, r, &mut obj, None).await?;
    let causes = strategy::validate(r, &obj, None);
    if !causes.is_empty() {
        return Err(ApiError::invalid(r, &name, causes));
    }
    if r.namespaced {
        require_namespace(api, t.namespace.as_deref().unwrap_or_default()).await?;
    }
    let owner = owner(t, &name);
    let claims = r.strategy.claim(api, r, &owner, &mut obj, None).await?;
    let key = r.key(t.namespace.as_deref(), &name);
    let rev = write_claimed(api, r, &name, &owner, claims, &obj, |b| {
        api.store.create(&key, b)
    })
    .await?;
    let obj = r.stamp(r.normalize(obj), rev);
    Ok(respond(StatusCode::CREATED, obj, &warnings))
}

/// The objects every cluster has (the kinds' [`strategy::Strategy::builtins`]:
/// system namespaces, system PriorityClasses), created at startup when
/// missing; existing ones are left as they are.
pub async fn ensure_builtins(store: &dyn Store) -> anyhow::Result<()> {
    for r in registry::RESOURCES.iter().filter(|r| r.view.is_none()) {
        for mut obj in r.strategy.builtins() {
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
            let key = r.key(ns.as_deref(), &name);
            let uid = uid(getrandom::fill)
                .map_err(|e| anyhow::anyhow!("the uid of {key}: random source: {e}"))?;
            obj["apiVersion"] = json!(r.api_version());
            obj["kind"] = json!(r.kind);
            obj["metadata"]["uid"] = json!(uid);
            obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            match store.create(&key, serde_json::to_vec(&obj)?).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken(_: &mut [u8]) -> Result<(), getrandom::Error> {
        Err(getrandom::Error::UNSUPPORTED)
    }

    fn meta(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().expect("an object")
    }

    /// A failing random source is a 500 naming the key, for a given name
    /// (the uid) and for generateName (the suffix), never a zero uid.
    #[test]
    fn a_failing_random_source_is_an_error_naming_the_key() {
        let cms = registry::find("", "v1", "configmaps").expect("configmaps");
        for (m, key) in [
            (json!({"name": "cfg"}), "/registry/core/configmaps/ns/cfg"),
            (
                json!({"generateName": "cfg-"}),
                "/registry/core/configmaps/ns/cfg-*",
            ),
        ] {
            let e = new_identity(cms, Some("ns"), &meta(m.clone()), broken)
                .expect_err("a failing random source must fail the create");
            assert_eq!(e.reason, Reason::InternalError, "{m}");
            assert!(e.message.contains(key), "{m}: {}", e.message);
        }
        let (name, uid) = new_identity(
            cms,
            Some("ns"),
            &meta(json!({"generateName": "cfg-"})),
            getrandom::fill,
        )
        .expect("the OS source works");
        assert!(name.starts_with("cfg-") && name.len() == 9, "{name}");
        assert_eq!(uid.len(), 36, "{uid}");
        assert_ne!(uid, "00000000-0000-4000-8000-000000000000");
    }
}
