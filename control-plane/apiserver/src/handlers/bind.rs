//! POST of a `binding` subresource: the scheduler's one-time assignment
//! of an object (a pod) to a node.
use super::update::write_update;
use super::*;

/// POST pods/<name>/binding: the scheduler's one-time assignment of a
/// pod to a node.
pub(super) async fn bind(
    api: &Shared,
    t: &Target,
    name: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let r = t.resource;
    let b: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed Binding body: {e}")))?;
    serde_json::from_value::<k8s_openapi::api::core::v1::Binding>(b.clone())
        .map_err(|e| ApiError::bad_request(format!("Binding is malformed: {e}")))?;
    let node = b["target"]["name"].as_str().unwrap_or_default().to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            r,
            name,
            vec![("target.name".into(), "Required value".into())],
        ));
    }
    let cur = current(api, t, name).await?;
    let old = served(r, &cur)?;
    if !old["metadata"]["deletionTimestamp"].is_null() {
        return Err(ApiError::new(
            Reason::Conflict,
            format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    match old["spec"]["nodeName"].as_str() {
        Some(n) if !n.is_empty() => {
            return Err(ApiError::new(
                Reason::Conflict,
                format!("pod {name} is already assigned to node {n:?}"),
            ));
        }
        _ => {}
    }
    let mut obj = old;
    obj["spec"]["nodeName"] = json!(node);
    let expected = precondition(&b)?.unwrap_or(cur.mod_revision);
    write_update(api, t, name, obj, expected, &cur).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})),
    )
        .into_response())
}
