//! PUT of an object, its status or its scale, and the one write path
//! every update, patch and bind goes through.
use super::*;

/// PUT of the object, its status or its scale.
pub(super) async fn update(
    api: &Shared,
    t: &Target,
    name: &str,
    sub: Option<Sub>,
    body: &[u8],
    fv: FieldValidation,
) -> Result<Response, ApiError> {
    let r = t.resource;
    let (obj, warnings) = if sub == Some(Sub::Scale) {
        (parse_scale(body)?, Vec::new())
    } else {
        parse_body(r, body, fv)?
    };
    let given = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if given != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    let cur = current(api, t, name).await?;
    let old = served(r, &cur)?;
    let expected = precondition(&obj)?.unwrap_or(cur.mod_revision);
    let obj = merge_part(r, sub, &old, obj)?;
    let (obj, _) = write_update(api, t, name, obj, expected, &cur).await?;
    let obj = if sub == Some(Sub::Scale) {
        scale_view(&obj)
    } else {
        obj
    };
    Ok(respond(StatusCode::OK, obj, &warnings))
}

/// The object a write through `sub` leaves: the main door cannot change
/// status (where a status subresource exists), the status door changes
/// only status, the scale door only `.spec.replicas`. The written part's
/// resourceVersion comes along as the precondition.
pub(super) fn merge_part(
    r: &Resource,
    sub: Option<Sub>,
    old: &Value,
    mut new: Value,
) -> Result<Value, ApiError> {
    match sub {
        None => {
            if r.has(Sub::Status) {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            Ok(new)
        }
        Some(Sub::Status) => {
            let mut out = old.clone();
            out["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            out["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
            Ok(out)
        }
        Some(Sub::Scale) => {
            let replicas = match &new["spec"]["replicas"] {
                Value::Null => 0,
                v => v
                    .as_i64()
                    .filter(|n| (0..=i32::MAX as i64).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            r,
                            old["metadata"]["name"].as_str().unwrap_or_default(),
                            vec![(
                                "spec.replicas".into(),
                                format!("Invalid value: {v}: must be greater than or equal to 0"),
                            )],
                        )
                    })?,
            };
            let mut out = old.clone();
            out["spec"]["replicas"] = json!(replicas);
            out["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
            Ok(out)
        }
        Some(Sub::Binding) => Err(ApiError::new(
            Reason::MethodNotAllowed,
            "binding only accepts POST",
        )),
    }
}

/// A Scale (autoscaling/v1) body for the scale subresource.
fn parse_scale(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed Scale body: {e}")))?;
    if let Some(k) = v.get("kind").and_then(Value::as_str)
        && k != "Scale"
    {
        return Err(ApiError::bad_request(format!(
            "kind {k:?} sent to a scale subresource"
        )));
    }
    serde_json::from_value::<k8s_openapi::api::autoscaling::v1::Scale>(v.clone())
        .map_err(|e| ApiError::bad_request(format!("Scale is malformed: {e}")))?;
    Ok(v)
}

/// The autoscaling/v1 Scale view of a replicated object.
pub(super) fn scale_view(obj: &Value) -> Value {
    let m = &obj["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": crate::selector::to_string(&obj["spec"]["selector"]),
        },
    })
}

/// Stores `obj` over `cur` if the key is still at `expected`: identity
/// fields stay the server's, generation moves when the spec does.
pub(super) async fn write_update(
    api: &Shared,
    t: &Target,
    name: &str,
    mut obj: Value,
    expected: i64,
    cur: &sluice_store::KeyValue,
) -> Result<(Value, i64), ApiError> {
    let r = t.resource;
    let old = stored(r, cur)?;
    for f in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        obj["metadata"][f] = old["metadata"][f].clone();
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.retain(|_, v| !v.is_null());
    }
    r.strategy.prepare_update(&mut obj, &old);
    r.strategy.default(&mut obj);
    // The spec is compared as it will be stored: the old one was
    // defaulted when it was written, so an undefaulted copy of the same
    // spec (a status write, a client's full PUT) must not count as a
    // change, or every status write bumps the generation.
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
    if obj.get("spec").is_some() {
        let bumped = if obj.get("spec") != old.get("spec") {
            generation + 1
        } else {
            generation.max(1)
        };
        obj["metadata"]["generation"] = json!(bumped);
    }
    r.strategy.admit(api, r, &mut obj, Some(&old)).await?;
    let causes = strategy::validate(r, &obj, Some(&old));
    if !causes.is_empty() {
        return Err(ApiError::invalid(r, name, causes));
    }
    let owner = owner(t, name);
    let claims = r
        .strategy
        .claim(api, r, &owner, &mut obj, Some(&old))
        .await?;
    let key = r.key(t.namespace.as_deref(), name);
    let rev = write_claimed(api, r, name, &owner, claims, &obj, |b| {
        api.store.update(&key, b, expected)
    })
    .await?;
    r.strategy.release(api, &owner, &old, Some(&obj)).await;
    let obj = r.stamp(r.normalize(obj), rev);
    // The last finalizer of an object being deleted (with no grace period
    // left) went: the delete completes now (upstream's
    // shouldDeleteDuringUpdate; a pod still in its grace period waits
    // for its kubelet).
    let no_finalizers = |o: &Value| {
        o["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())
    };
    let finalized = !old["metadata"]["deletionTimestamp"].is_null()
        && old["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0
        && !no_finalizers(&old)
        && no_finalizers(&obj);
    if finalized {
        match api.store.delete(&key, Some(rev)).await {
            Ok(_) => forget(api, r, &obj).await,
            Err(StoreError::NotFound(_)) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(ApiError::store(r, name, e)),
        }
    }
    Ok((obj, rev))
}
