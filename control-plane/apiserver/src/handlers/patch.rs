//! PATCH in the three formats kubectl uses, re-applied while concurrent
//! writes win the race.
use super::update::{merge_part, scale_view, write_update};
use super::*;

/// PATCH in the three formats kubectl uses; server-side apply is refused
/// with 415 rather than half-done. Like upstream, a patch without a
/// resourceVersion precondition is re-applied when a concurrent write
/// wins the race.
pub(super) async fn patch(
    api: &Shared,
    t: &Target,
    name: &str,
    sub: Option<Sub>,
    content_type: &str,
    body: &[u8],
    fv: FieldValidation,
) -> Result<Response, ApiError> {
    let r = t.resource;
    let media = content_type.split(';').next().unwrap_or("").trim();
    let unsupported = |what: String| ApiError::new(Reason::UnsupportedMediaType, what);
    let patch_doc: Value = match media {
        "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed patch: {e}")))?,
        "application/apply-patch+yaml" => {
            return Err(unsupported(
                "server-side apply is not supported by sluice-server yet; use client-side `kubectl apply`".into(),
            ));
        }
        other => {
            return Err(unsupported(format!(
                "the body of the request was in an unknown format {other:?}: accepted media types are application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
            )));
        }
    };
    let duplicate = if fv == FieldValidation::Ignore {
        Vec::new()
    } else {
        crate::http::decode::duplicate_fields(body)
    };
    let key = r.key(t.namespace.as_deref(), name);
    // Like upstream's GuaranteedUpdate: retry while others win the race.
    for _ in 0..64 {
        let cur = current(api, t, name).await?;
        let old = served(r, &cur)?;
        let mut doc = if sub == Some(Sub::Scale) {
            scale_view(&old)
        } else {
            old.clone()
        };
        let unprocessable = |e: String| ApiError::new(Reason::Invalid, e);
        match media {
            "application/json-patch+json" => {
                let ops: json_patch::Patch = serde_json::from_value(patch_doc.clone())
                    .map_err(|e| ApiError::bad_request(format!("malformed JSON patch: {e}")))?;
                json_patch::patch(&mut doc, &ops).map_err(|e| unprocessable(e.to_string()))?;
            }
            "application/merge-patch+json" => json_patch::merge(&mut doc, &patch_doc),
            _ => {
                doc = crate::patch::strategic::apply(&doc, &patch_doc)
                    .map_err(|e| unprocessable(e.0))?;
            }
        }
        // Pinned only if the patch itself names a resourceVersion (the
        // patched document always carries the current one).
        let pinned = match media {
            "application/json-patch+json" => patch_doc
                .as_array()
                .into_iter()
                .flatten()
                .any(|op| op["path"] == "/metadata/resourceVersion")
                .then(|| precondition(&doc))
                .transpose()?
                .flatten(),
            _ => precondition(&patch_doc)?,
        };
        let doc = merge_part(r, sub, &old, doc)?;
        let d = (r.decode)(&doc).map_err(|e| {
            unprocessable(format!(
                "{} \"{name}\" is invalid after the patch: {e}",
                r.kind
            ))
        })?;
        let warnings = fv.judge(&d.unknown, &duplicate, String::new)?;
        let doc = d.object;
        let expected = pinned.unwrap_or(cur.mod_revision);
        match write_update(api, t, name, doc, expected, &cur).await {
            Err(e) if e.reason == Reason::Conflict && pinned.is_none() => continue,
            Err(e) => return Err(e),
            Ok((obj, _)) if sub == Some(Sub::Scale) => {
                return Ok(respond(StatusCode::OK, scale_view(&obj), &warnings));
            }
            Ok((obj, _)) => return Ok(respond(StatusCode::OK, obj, &warnings)),
        }
    }
    Err(ApiError::store(
        r,
        name,
        StoreError::Conflict {
            key,
            expected: 0,
            current: None,
        },
    ))
}
