//! GET of one object (also through its status and scale doors), as the
//! object, a Table or metadata only.
use super::*;

pub(super) async fn get(
    api: &Shared,
    t: &Target,
    name: &str,
    shape: Shape,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let kv = current(api, t, name).await?;
    let obj = served(t.resource, &kv)?;
    if shape == Shape::Metadata {
        return Ok(axum::Json(metadata_only(&obj)).into_response());
    }
    if shape == Shape::Table {
        let include = q.get("includeObject").map(String::as_str);
        let t = crate::registry::table::table(t.resource, &[obj], kv.mod_revision, include);
        return Ok(axum::Json(t).into_response());
    }
    Ok(axum::Json(obj).into_response())
}
