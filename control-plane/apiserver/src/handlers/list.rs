//! LIST: served from the watch cache, paged with opaque continue tokens,
//! as objects, a Table or metadata only.
use super::*;

/// `continue` tokens: the list revision and the next key, opaque to clients.
fn encode_continue(rev: i64, next: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{rev}\n{next}"))
}

fn decode_continue(tok: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {tok:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tok)
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (rev, key) = s.split_once('\n').ok_or_else(bad)?;
    Ok((rev.parse().map_err(|_| bad())?, key.to_string()))
}

/// LIST. Served from the watch cache, except an exact older revision
/// (`resourceVersionMatch=Exact`) or a page whose revision the cache has
/// moved past, which the store reads at that revision.
pub(super) async fn list(
    api: &Shared,
    t: &Target,
    q: &HashMap<String, String>,
    shape: Shape,
) -> Result<Response, ApiError> {
    let r = t.resource;
    let prefix = r.prefix(t.namespace.as_deref());
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let filter = Filter::from_query(q)?;
    let wanted = |c: &Cached| filter.matches_cached(c);
    let rv = resource_version(q)?;
    let exact = q.get("resourceVersionMatch").is_some_and(|m| m == "Exact");
    let (at, start) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let (rev, key) = decode_continue(c)?;
            if !key.starts_with(&prefix) {
                return Err(ApiError::bad_request("continue token is for another list"));
            }
            (Some(rev), Some(key))
        }
        None if exact => match rv {
            Some(rev) if rev > 0 => (Some(rev), None),
            _ => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch=Exact needs a resourceVersion",
                ));
            }
        },
        None => (None, None),
    };
    let listing = match at {
        Some(rev) => api.cache.list(
            r,
            t.namespace.as_deref(),
            start.as_deref(),
            limit,
            Some(rev),
            &wanted,
        ),
        None => {
            api.cache
                .settle(rv)
                .await
                .map_err(|e| ApiError::cache(r, e))?;
            api.cache
                .list(r, t.namespace.as_deref(), None, limit, None, &wanted)
        }
    };
    let (revision, items, next) = match listing {
        Some(l) => match l.corrupt {
            Some(c) => return Err(ApiError::corrupt(c)),
            None => (l.revision, l.items, l.next),
        },
        None => {
            let page = api
                .store
                .list(ListRequest {
                    prefix: &prefix,
                    start: start.as_deref(),
                    limit,
                    revision: at,
                })
                .await
                .map_err(|e| ApiError::store(r, "", e))?;
            let items = page
                .kvs
                .iter()
                .map(|kv| served(r, kv))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|o| filter.matches(o))
                .map(|o| Arc::new(Cached::new(&o)))
                .collect();
            let next = if page.more {
                page.kvs.last().map(|kv| format!("{}\0", kv.key))
            } else {
                None
            };
            (page.revision, items, next)
        }
    };
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if let Some(next) = next {
        meta["continue"] = json!(encode_continue(revision, &next));
    }
    if shape == Shape::Metadata {
        let items: Vec<Value> = items.iter().map(|c| metadata_only(&c.value())).collect();
        return Ok(axum::Json(json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": meta, "items": items,
        }))
        .into_response());
    }
    if shape == Shape::Table {
        let objects: Vec<Value> = items.iter().map(|c| c.value()).collect();
        let include = q.get("includeObject").map(String::as_str);
        let mut t = crate::registry::table::table(r, &objects, revision, include);
        t["metadata"] = meta;
        return Ok(axum::Json(t).into_response());
    }
    // Written out item by item: a 10 000-pod list is not copied into one
    // big Value first.
    let mut out = serde_json::to_vec(&json!({
        "kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": meta,
    }))
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&item.json);
    }
    out.extend_from_slice(b"]}");
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(out))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_junk() {
        let t = encode_continue(42, "/registry/core/pods/ns/a\0");
        assert_eq!(
            decode_continue(&t).expect("valid"),
            (42, "/registry/core/pods/ns/a\0".to_string())
        );
        assert!(decode_continue("!!").is_err());
    }
}
