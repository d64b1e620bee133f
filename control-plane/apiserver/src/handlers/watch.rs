//! WATCH: the watch cache's events for one resource, filtered, as
//! newline-separated JSON events (objects, Tables or metadata).
use super::*;

/// A watch event around an object's already-serialized JSON.
fn watch_line_raw(kind: &str, json: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(json.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn watch_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// How often a watcher that allows bookmarks gets one while quiet.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// WATCH, served from the watch cache. With a label or field selector, an
/// object that stops matching is sent as DELETED and one that starts
/// matching as ADDED, as upstream does.
pub(super) async fn watch_list(
    api: &Shared,
    t: &Target,
    q: &HashMap<String, String>,
    shape: Shape,
) -> Result<Response, ApiError> {
    let r = t.resource;
    let filter = Filter::from_query(q)?;
    let ns = t.namespace.clone();
    let wanted = move |c: &Cached| {
        ns.as_deref()
            .is_none_or(|ns| c.summary["metadata"]["namespace"].as_str() == Some(ns))
            && filter.matches_cached(c)
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    // No resourceVersion (or "0"): the current state as ADDED events first.
    let after = resource_version(q)?.filter(|v| *v != 0);
    let (backlog, _, live) = api
        .cache
        .watch(r, after)
        .await
        .map_err(|e| ApiError::cache(r, e))?;
    let (kind, api_version) = (r.kind, r.api_version());
    let mut last_bookmark = tokio::time::Instant::now();
    // With server-side printing each event carries a one-row Table; only
    // the first one defines the columns, as upstream sends them.
    let include = q.get("includeObject").cloned();
    let mut header_sent = false;
    let mut event = move |kind: &str, obj: &Cached| -> Bytes {
        match shape {
            Shape::Object => return watch_line_raw(kind, &obj.json),
            Shape::Metadata => return watch_line(kind, &metadata_only(&obj.value())),
            Shape::Table => {}
        }
        let mut t = crate::registry::table::table(r, &[obj.value()], 0, include.as_deref());
        t["metadata"] = json!({});
        if header_sent {
            t["columnDefinitions"] = json!([]);
        }
        header_sent = true;
        watch_line(kind, &t)
    };
    let to_line = move |ev: &crate::cache::Event| -> Option<Bytes> {
        use crate::cache::Change;
        match &ev.change {
            Change::Put { obj, prev } => {
                let (now, before) = (wanted(obj), prev.as_deref().is_some_and(&wanted));
                match (before, now) {
                    (false, true) => Some(event("ADDED", obj)),
                    (true, true) => Some(event("MODIFIED", obj)),
                    // Upstream sends the last matching state, at this revision.
                    (true, false) => prev
                        .as_deref()
                        .map(|p| event("DELETED", &crate::cache::deleted(p, ev.rev))),
                    (false, false) => None,
                }
            }
            Change::Delete { obj } if wanted(obj) => Some(event("DELETED", obj)),
            Change::Delete { .. } => None,
            Change::Bookmark if bookmarks && last_bookmark.elapsed() >= BOOKMARK_EVERY => {
                last_bookmark = tokio::time::Instant::now();
                Some(watch_line(
                    "BOOKMARK",
                    &json!({"kind": kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": ev.rev.to_string()}}),
                ))
            }
            Change::Bookmark => None,
        }
    };
    // Counted as an open watch until the stream is dropped.
    let guard = api.metrics.watch_opened(r.plural);
    let stream = futures::stream::unfold(
        (backlog.into_iter(), live, to_line, false, guard),
        |(mut backlog, mut live, mut to_line, done, guard)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(ev) = backlog.next() {
                    if let Some(line) = to_line(&ev) {
                        return Some((line, (backlog, live, to_line, false, guard)));
                    }
                    continue;
                }
                match live.recv().await {
                    Ok(ev) => {
                        if let Some(line) = to_line(&ev) {
                            return Some((line, (backlog, live, to_line, false, guard)));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let e = ApiError::new(
                            Reason::Expired,
                            format!("the watcher fell {n} events behind and was cut off; re-list"),
                        );
                        return Some((
                            watch_line("ERROR", &e.status()),
                            (backlog, live, to_line, true, guard),
                        ));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    let stream = stream
        .take_until(tokio::time::sleep(timeout))
        .map(Ok::<_, std::convert::Infallible>);
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
