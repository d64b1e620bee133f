//! The Kubernetes REST surface over the store: discovery, and for every
//! registered resource get/list/watch/create/update/delete with upstream
//! paths, query parameters and status codes. Errors are `Status` objects.
use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};
use sluice_store::{ListRequest, Store, StoreError};

use crate::{
    alloc::{Allocator, Claims},
    cache::{Cached, SUMMARY_FIELDS, WatchCache},
    discovery::resource_list,
    http::{
        protobuf,
        status::{ApiError, Reason},
    },
    registry::{self, Resource, Sub, admission},
    selector::Selector,
};

pub mod delete;

/// Request bodies above this are refused with 413 (upstream's limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub struct Api {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub cache: Arc<WatchCache>,
    pub listen: String,
    pub alloc: Allocator,
    /// Set once an allocation repair pass has completed (readiness).
    pub repair_ran: std::sync::atomic::AtomicBool,
}

pub type Shared = Arc<Api>;

/// What a request path names.
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<Sub>,
}

/// Parses the part after `/api/v1` or `/apis/<group>/<version>`.
fn target(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let nowhere = || {
        ApiError::new(
            Reason::NotFound,
            "the server could not find the requested resource",
        )
    };
    let lookup = |plural: &str| {
        registry::find(group, version, plural).ok_or_else(|| {
            ApiError::new(
                Reason::NotFound,
                format!("the server could not find the requested resource ({plural})"),
            )
        })
    };
    let t = |plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        let resource = lookup(plural)?;
        let sub = match sub {
            Some(s) => Some(
                Sub::parse(s)
                    .filter(|s| resource.has(*s))
                    .ok_or_else(nowhere)?,
            ),
            None => None,
        };
        Ok::<_, ApiError>(Target {
            resource,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            sub,
        })
    };
    let t = match rest {
        [plural] => t(plural, None, None, None)?,
        [plural, name] => t(plural, None, Some(name), None)?,
        // `namespaces/x/status` is a subresource, `namespaces/x/pods` a list.
        ["namespaces", ns, plural] if Sub::parse(plural).is_none() => {
            t(plural, Some(ns), None, None)?
        }
        [plural, name, sub] => t(plural, None, Some(name), Some(sub))?,
        ["namespaces", ns, plural, name] => t(plural, Some(ns), Some(name), None)?,
        ["namespaces", ns, plural, name, sub] => t(plural, Some(ns), Some(name), Some(sub))?,
        _ => return Err(nowhere()),
    };
    if t.resource.namespaced && t.name.is_some() && t.namespace.is_none() {
        return Err(nowhere());
    }
    if !t.resource.namespaced && t.namespace.is_some() {
        return Err(ApiError::new(
            Reason::NotFound,
            format!("{} is not namespaced", t.resource.plural),
        ));
    }
    Ok(t)
}

/// Every request under /api and /apis.
pub async fn dispatch(
    State(api): State<Shared>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let labels = crate::metrics::RequestLabels::of(&method, uri.path(), watch);
    let routed = match body {
        Ok(body) => route(&api, &method, uri.path(), &q, &headers, body).await,
        // Over the body limit (or unreadable): a Status, not axum's text.
        Err(e) => Err(ApiError::new(
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Reason::RequestEntityTooLarge
            } else {
                Reason::BadRequest
            },
            format!("reading the request body: {e} (the limit is {MAX_BODY_BYTES} bytes)"),
        )),
    };
    let resp = routed.unwrap_or_else(IntoResponse::into_response);
    api.metrics
        .observe(&labels, resp.status().as_u16(), started);
    resp
}

/// GET /metrics.
pub async fn metrics(State(api): State<Shared>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        api.metrics.render(),
    )
        .into_response()
}

async fn route(
    api: &Shared,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => {
            return Ok(axum::Json(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": api.listen}],
            }))
            .into_response());
        }
        ["api", "v1"] => {
            let core = registry::RESOURCES
                .iter()
                .filter(|r| r.group.is_empty())
                .collect();
            return Ok(resource_list("v1", core));
        }
        ["apis"] => {
            let groups: Vec<Value> = registry::groups()
                .into_iter()
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            return Ok(axum::Json(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
            .into_response());
        }
        ["apis", g, v] => {
            let rs: Vec<&Resource> = registry::RESOURCES
                .iter()
                .filter(|r| r.group == *g && r.version == *v)
                .collect();
            if rs.is_empty() {
                return Err(ApiError::new(
                    Reason::NotFound,
                    format!("no API group version {g}/{v}"),
                ));
            }
            return Ok(resource_list(&format!("{g}/{v}"), rs));
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => {
            return Err(ApiError::new(
                Reason::NotFound,
                "the server could not find the requested resource",
            ));
        }
    };
    let t = target(group, version, rest)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            Reason::RequestEntityTooLarge,
            format!(
                "the request body is {} bytes, over the {MAX_BODY_BYTES}-byte limit",
                body.len()
            ),
        ));
    }
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let fv = FieldValidation::from_query(q)?;
    // Create/update/bind bodies may come as JSON or YAML; from here on
    // they are JSON.
    let body = if matches!(*method, Method::POST | Method::PUT) {
        json_body(headers, body)?
    } else if *method == Method::DELETE && media_type(headers) == protobuf::MEDIA_TYPE {
        protobuf_body(&body)?
    } else {
        body
    };
    match (method.clone(), &t.name, t.sub) {
        (Method::GET, None, _) if watch => watch_list(api, &t, q, shape(headers)).await,
        (Method::GET, None, _) => list(api, &t, q, shape(headers)).await,
        (Method::GET, Some(name), None | Some(Sub::Status)) => {
            get(api, &t, name, shape(headers), q).await
        }
        (Method::GET, Some(name), Some(Sub::Scale)) => {
            let kv = current(api, &t, name).await?;
            Ok(axum::Json(scale_view(&served(t.resource, &kv)?)).into_response())
        }
        (Method::POST, None, _) => create(api, &t, &body, fv).await,
        (Method::POST, Some(name), Some(Sub::Binding)) => bind(api, &t, name, &body).await,
        (Method::PUT, Some(name), sub @ (None | Some(Sub::Status | Sub::Scale))) => {
            update(api, &t, name, sub, &body, fv).await
        }
        (Method::PATCH, Some(name), sub @ (None | Some(Sub::Status | Sub::Scale))) => {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            patch(api, &t, name, sub, ct, &body, fv).await
        }
        (Method::DELETE, Some(name), None) => {
            let opts = delete_options(&body, q)?;
            delete(api, &t, name, &opts).await
        }
        (Method::DELETE, None, _) => {
            let opts = delete_options(&body, q)?;
            delete_collection(api, &t, q, &opts).await
        }
        (m, _, _) => Err(ApiError::new(
            Reason::MethodNotAllowed,
            format!("{m} is not supported here"),
        )),
    }
}

/// The stored object as served.
fn served(r: &Resource, kv: &sluice_store::KeyValue) -> Result<Value, ApiError> {
    Ok(r.stamp(stored(r, kv)?, kv.mod_revision))
}

/// The stored object as stored (no resourceVersion).
fn stored(r: &Resource, kv: &sluice_store::KeyValue) -> Result<Value, ApiError> {
    r.parse_stored(&kv.key, &kv.value)
        .map_err(ApiError::corrupt)
}

/// Every object of `r` (in namespace `ns`) now.
async fn list_all(
    api: &Shared,
    r: &'static Resource,
    ns: Option<&str>,
) -> Result<sluice_store::ListResult, ApiError> {
    api.store
        .list(ListRequest {
            prefix: &r.prefix(ns),
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::store(r, "", e))
}

/// The stored object `name` of the target; 404 when absent.
async fn current(api: &Shared, t: &Target, name: &str) -> Result<sluice_store::KeyValue, ApiError> {
    let key = t.resource.key(t.namespace.as_deref(), name);
    match api.store.get(&key).await {
        Ok(Some(kv)) => Ok(kv),
        Ok(None) => Err(ApiError::not_found(t.resource, name)),
        Err(e) => Err(ApiError::store(t.resource, name, e)),
    }
}

/// Whether the client asked for server-side printing.
/// How a read is answered, from the client's Accept header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Object,
    /// Server-side printing (kubectl get).
    Table,
    /// `as=PartialObjectMetadata[List]`: metadata only (what metadata
    /// informers, like the garbage collector's, ask for).
    Metadata,
}

fn shape(headers: &HeaderMap) -> Shape {
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let first = accept.split(',').next().unwrap_or("");
    if crate::registry::table::wanted(accept) {
        Shape::Table
    } else if first.contains("as=PartialObjectMetadata") && first.contains("g=meta.k8s.io") {
        Shape::Metadata
    } else {
        Shape::Object
    }
}

/// An object as a meta.k8s.io/v1 PartialObjectMetadata.
fn metadata_only(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

async fn get(
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

/// The list/watch filter from `labelSelector` and `fieldSelector`.
#[derive(Clone, Default)]
struct Filter {
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let parse =
            |key: &str, f: fn(&str) -> Result<Selector, String>| -> Result<Selector, ApiError> {
                match q.get(key) {
                    Some(s) => f(s).map_err(|e| ApiError::bad_request(format!("{key}: {e}"))),
                    None => Ok(Selector::default()),
                }
            };
        Ok(Self {
            labels: parse("labelSelector", Selector::labels)?,
            fields: parse("fieldSelector", Selector::fields)?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// A cached object is judged on its summary unless a field selector
    /// reads beyond it.
    fn matches_cached(&self, c: &Cached) -> bool {
        if self.fields.reads_only(SUMMARY_FIELDS) {
            self.matches(&c.summary)
        } else {
            self.labels.matches(&c.summary) && self.fields.matches(&c.value())
        }
    }
}

/// A resourceVersion as given: None when absent or empty.
fn parse_rv(v: Option<&str>) -> Result<Option<i64>, ApiError> {
    match v.filter(|v| !v.is_empty()) {
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}"))),
        None => Ok(None),
    }
}

/// The `resourceVersion` query parameter.
fn resource_version(q: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    parse_rv(q.get("resourceVersion").map(String::as_str))
}

/// LIST. Served from the watch cache, except an exact older revision
/// (`resourceVersionMatch=Exact`) or a page whose revision the cache has
/// moved past, which the store reads at that revision.
async fn list(
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
async fn watch_list(
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

/// A request's Content-Type without its parameters.
fn media_type(headers: &HeaderMap) -> &str {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ct.split(';').next().unwrap_or("").trim()
}

/// A protobuf body as the JSON a JSON client would have sent.
fn protobuf_body(body: &[u8]) -> Result<Bytes, ApiError> {
    let v = protobuf::to_json(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| ApiError::bad_request(format!("protobuf body is not JSON-shaped: {e}")))
}

/// A POST/PUT body as JSON: JSON as sent (also with no or a wildcard
/// content type), YAML and protobuf converted; anything else is 415.
fn json_body(headers: &HeaderMap, body: Bytes) -> Result<Bytes, ApiError> {
    match media_type(headers) {
        "" | "*/*" | "application/json" => Ok(body),
        protobuf::MEDIA_TYPE => protobuf_body(&body),
        "application/yaml" => {
            let v: Value = serde_yaml::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("malformed YAML body: {e}")))?;
            serde_json::to_vec(&v)
                .map(Bytes::from)
                .map_err(|e| ApiError::bad_request(format!("YAML body is not JSON-shaped: {e}")))
        }
        other => Err(ApiError::new(
            Reason::UnsupportedMediaType,
            format!(
                "the body of the request was in an unknown format {other:?}: sluice-server accepts application/json, application/yaml and application/vnd.kubernetes.protobuf"
            ),
        )),
    }
}

/// What `fieldValidation` asks of fields the type does not know (and
/// duplicated ones): refuse the request, warn, or drop them silently.
/// Unknown fields are never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        match q
            .get("fieldValidation")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("warn") => Ok(Self::Warn),
            Some("strict") => Ok(Self::Strict),
            Some("ignore") => Ok(Self::Ignore),
            Some(_) => Err(ApiError::bad_request(format!(
                "fieldValidation: invalid value {:?}: must be one of Ignore, Warn, Strict",
                q["fieldValidation"]
            ))),
        }
    }

    /// Problems as upstream words them; an error for Strict, else the
    /// warnings to send back.
    fn judge(
        self,
        unknown: &[String],
        duplicate: &[String],
        context: impl FnOnce() -> String,
    ) -> Result<Vec<String>, ApiError> {
        let problems: Vec<String> = duplicate
            .iter()
            .map(|f| format!("duplicate field \"{f}\""))
            .chain(unknown.iter().map(|f| format!("unknown field \"{f}\"")))
            .collect();
        match self {
            _ if problems.is_empty() => Ok(Vec::new()),
            Self::Strict => Err(ApiError::bad_request(format!(
                "{}strict decoding error: {}",
                context(),
                problems.join(", ")
            ))),
            Self::Warn => Ok(problems),
            Self::Ignore => Ok(Vec::new()),
        }
    }
}

/// A JSON response with upstream's `Warning: 299 - "..."` headers.
fn respond(code: StatusCode, obj: Value, warnings: &[String]) -> Response {
    let mut resp = (code, axum::Json(obj)).into_response();
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

/// A create or update body: JSON of this resource's kind, decoded
/// through its type. Returns the object and the warnings to send.
fn parse_body(
    r: &Resource,
    body: &[u8],
    fv: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed {} body: {e}", r.kind)))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body must be a {} object",
            r.kind
        )));
    }
    if let Some(k) = v.get("kind").and_then(Value::as_str)
        && k != r.kind
    {
        return Err(ApiError::bad_request(format!(
            "kind {k:?} sent to the {} endpoint",
            r.plural
        )));
    }
    if let Some(av) = v.get("apiVersion").and_then(Value::as_str)
        && av != r.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "apiVersion {av:?} sent to the {} endpoint",
            r.api_version()
        )));
    }
    let handled = || {
        format!(
            "{} in version {:?} cannot be handled as a {}: ",
            r.kind, r.version, r.kind
        )
    };
    let d = (r.decode)(&v).map_err(|e| ApiError::bad_request(format!("{}{e}", handled())))?;
    let duplicate = if fv == FieldValidation::Ignore {
        Vec::new()
    } else {
        crate::http::decode::duplicate_fields(body)
    };
    let warnings = fv.judge(&d.unknown, &duplicate, handled)?;
    Ok((d.object, warnings))
}

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
fn uid(fill: Fill) -> Result<String, getrandom::Error> {
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

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn require_namespace(api: &Shared, ns: &str) -> Result<(), ApiError> {
    let r = registry::namespaces();
    match api.store.get(&r.key(None, ns)).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ApiError::not_found(r, ns)),
        Err(e) => Err(ApiError::store(r, ns, e)),
    }
}

/// "ns/name", how allocations name their owner.
fn owner(t: &Target, name: &str) -> String {
    format!("{}/{name}", t.namespace.as_deref().unwrap_or_default())
}

/// Allocates what a Service needs (nothing for other kinds).
async fn claim(
    api: &Shared,
    r: &Resource,
    owner: &str,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<Claims, ApiError> {
    if !allocates(r) {
        return Ok(Claims::default());
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.alloc
        .claim(
            api.store.as_ref(),
            owner,
            &mut obj["spec"],
            old.map(|o| &o["spec"]),
        )
        .await
        .map_err(|e| ApiError::alloc(r, &name, e))
}

/// Stores `obj` with `write`; if that fails, the allocations claimed for
/// it are released, so a refused write leaves nothing behind.
async fn write_claimed<F>(
    api: &Shared,
    r: &Resource,
    name: &str,
    owner: &str,
    claims: Claims,
    obj: &Value,
    write: impl FnOnce(Vec<u8>) -> F,
) -> Result<i64, ApiError>
where
    F: std::future::Future<Output = Result<i64, StoreError>>,
{
    let result = match r.encode(obj) {
        Ok(bytes) => write(bytes).await.map_err(|e| ApiError::store(r, name, e)),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    };
    // Only a definite refusal frees the claims; after an ambiguous error
    // the write may have happened, and the startup repair sorts it out.
    let definite = |e: &ApiError| {
        matches!(
            e.reason,
            Reason::AlreadyExists
                | Reason::Conflict
                | Reason::NotFound
                | Reason::BadRequest
                | Reason::Invalid
                | Reason::RequestEntityTooLarge
        )
    };
    if result.as_ref().err().is_some_and(definite) {
        api.alloc.release(api.store.as_ref(), owner, claims.0).await;
    }
    result
}

/// Core Services hold ClusterIPs and NodePorts.
fn allocates(r: &Resource) -> bool {
    r.group.is_empty() && r.kind == "Service"
}

/// An object left the store: what it held is free again.
async fn forget(api: &Shared, r: &Resource, obj: &Value) {
    if allocates(r) {
        let owner = format!(
            "{}/{}",
            obj["metadata"]["namespace"].as_str().unwrap_or_default(),
            obj["metadata"]["name"].as_str().unwrap_or_default()
        );
        api.alloc
            .release_dropped(api.store.as_ref(), &owner, &obj["spec"], None)
            .await;
    }
}

async fn create(
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
    if let Some(p) = admission::name_problem(r, &name) {
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
    admission::prepare_create(r, &mut obj);
    admission::default(r, &mut obj);
    let causes = admission::validate(r, &obj, None);
    if !causes.is_empty() {
        return Err(ApiError::invalid(r, &name, causes));
    }
    if r.namespaced {
        require_namespace(api, t.namespace.as_deref().unwrap_or_default()).await?;
    }
    let owner = owner(t, &name);
    let claims = claim(api, r, &owner, &mut obj, None).await?;
    let key = r.key(t.namespace.as_deref(), &name);
    let rev = write_claimed(api, r, &name, &owner, claims, &obj, |b| {
        api.store.create(&key, b)
    })
    .await?;
    let obj = r.stamp(r.normalize(obj), rev);
    Ok(respond(StatusCode::CREATED, obj, &warnings))
}

/// PUT of the object, its status or its scale.
async fn update(
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
fn merge_part(
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
fn scale_view(obj: &Value) -> Value {
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

/// POST pods/<name>/binding: the scheduler's one-time assignment of a
/// pod to a node.
async fn bind(api: &Shared, t: &Target, name: &str, body: &[u8]) -> Result<Response, ApiError> {
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

/// The resourceVersion an update or patch carries, if any.
fn precondition(obj: &Value) -> Result<Option<i64>, ApiError> {
    parse_rv(obj["metadata"]["resourceVersion"].as_str())
}

/// Stores `obj` over `cur` if the key is still at `expected`: identity
/// fields stay the server's, generation moves when the spec does.
async fn write_update(
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
    admission::drop_type_dependent(r, &mut obj, &old);
    admission::default(r, &mut obj);
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
    let causes = admission::validate(r, &obj, Some(&old));
    if !causes.is_empty() {
        return Err(ApiError::invalid(r, name, causes));
    }
    let owner = owner(t, name);
    let claims = claim(api, r, &owner, &mut obj, Some(&old)).await?;
    let key = r.key(t.namespace.as_deref(), name);
    let rev = write_claimed(api, r, name, &owner, claims, &obj, |b| {
        api.store.update(&key, b, expected)
    })
    .await?;
    if allocates(r) {
        api.alloc
            .release_dropped(api.store.as_ref(), &owner, &old["spec"], Some(&obj["spec"]))
            .await;
    }
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

/// PATCH in the three formats kubectl uses; server-side apply is refused
/// with 415 rather than half-done. Like upstream, a patch without a
/// resourceVersion precondition is re-applied when a concurrent write
/// wins the race.
async fn patch(
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

/// Namespaces every cluster keeps (upstream refuses to delete them too).
const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The DeleteOptions of a DELETE: 400 when undecodable, 422 naming the
/// field when invalid (upstream's ValidateDeleteOptions).
fn delete_options(body: &[u8], q: &HashMap<String, String>) -> Result<delete::Options, ApiError> {
    delete::Options::from_request(body, q).map_err(|e| match e {
        delete::BadOptions::Malformed(m) => ApiError::bad_request(m),
        delete::BadOptions::Invalid(causes) => {
            let msg = causes
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut e = ApiError::new(
            Reason::Invalid,
            format!("DeleteOptions.meta.k8s.io \"\" is invalid: {msg}"),
            );
            e.details = Some(json!({
                "group": "meta.k8s.io", "kind": "DeleteOptions",
                "causes": causes.iter().map(|(f, m)| json!({"field": f, "message": m, "reason": "FieldValueInvalid"})).collect::<Vec<_>>(),
            }));
            e
        }
    })
}

/// Deletes what a namespace holds (every object, at once), before the
/// namespace itself goes. Every object is read first: a corrupt one stops
/// the delete before anything goes.
async fn delete_contents(api: &Shared, ns: &str) -> Result<(), ApiError> {
    let mut contents = Vec::new();
    for res in registry::RESOURCES
        .iter()
        .filter(|x| x.namespaced && x.view.is_none())
    {
        let page = list_all(api, res, Some(ns)).await?;
        for kv in &page.kvs {
            served(res, kv)?;
        }
        contents.push((res, page.kvs));
    }
    for (res, kvs) in contents {
        for kv in kvs {
            match api.store.delete(&kv.key, None).await {
                Ok((_, gone)) => forget(api, res, &served(res, &gone)?).await,
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(ApiError::store(res, "", e)),
            }
        }
    }
    Ok(())
}

/// DELETE of one object, as upstream's registry does it ([`delete::plan`]):
/// preconditions, graceful deletion for pods, and the propagation policy
/// as the garbage collector's finalizers. An object with finalizers only
/// gets a deletionTimestamp; whoever removes the last finalizer (an update
/// or patch) completes the delete. A namespace takes its contents with it.
/// `dryRun=All` answers the same and changes nothing.
async fn delete(
    api: &Shared,
    t: &Target,
    name: &str,
    opts: &delete::Options,
) -> Result<Response, ApiError> {
    let r = t.resource;
    let is_namespace = std::ptr::eq(r, registry::namespaces());
    if is_namespace && PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::new(
            Reason::Forbidden,
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        ));
    }
    let key = r.key(t.namespace.as_deref(), name);
    // Like upstream's GuaranteedUpdate: retry while others win the race,
    // unless the client pinned a resourceVersion.
    for _ in 0..64 {
        let cur = current(api, t, name).await?;
        let obj = served(r, &cur)?;
        let rv = cur.mod_revision.to_string();
        let plan = delete::plan(
            &obj,
            &rv,
            opts,
            admission::deletion_grace(r),
            chrono::Utc::now(),
        )
        .map_err(|c| ApiError::new(Reason::Conflict, c.0))?;
        // Upstream's 202 is only for the legacy orphanDependents=false.
        let pending = if opts.orphan_dependents == Some(false) {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        match plan {
            delete::Plan::Pending => return Ok((pending, axum::Json(obj)).into_response()),
            delete::Plan::Mark(marked) => {
                let mut bare = obj.clone();
                if let Some(m) = bare["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                let unchanged = bare == marked;
                if opts.dry_run || unchanged {
                    let shown = r.stamp(marked, cur.mod_revision);
                    return Ok((pending, axum::Json(shown)).into_response());
                }
                let bytes = r
                    .encode(&marked)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                match api.store.update(&key, bytes, cur.mod_revision).await {
                    Ok(rev) => {
                        let shown = r.stamp(marked, rev);
                        return Ok((pending, axum::Json(shown)).into_response());
                    }
                    Err(StoreError::Conflict { .. }) if opts.resource_version.is_none() => {
                        continue;
                    }
                    Err(e) => return Err(ApiError::store(r, name, e)),
                }
            }
            delete::Plan::Remove => {
                if opts.dry_run {
                    return Ok(axum::Json(obj).into_response());
                }
                if is_namespace {
                    delete_contents(api, name).await?;
                }
                match api.store.delete(&key, Some(cur.mod_revision)).await {
                    Ok((rev, gone)) => {
                        let mut obj = served(r, &gone)?;
                        forget(api, r, &obj).await;
                        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
                        return Ok(axum::Json(obj).into_response());
                    }
                    Err(StoreError::Conflict { .. }) if opts.resource_version.is_none() => {
                        continue;
                    }
                    Err(e) => return Err(ApiError::store(r, name, e)),
                }
            }
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

/// DELETE of a collection: every object the selectors match, one by one.
async fn delete_collection(
    api: &Shared,
    t: &Target,
    q: &HashMap<String, String>,
    opts: &delete::Options,
) -> Result<Response, ApiError> {
    let r = t.resource;
    let filter = Filter::from_query(q)?;
    let page = list_all(api, r, t.namespace.as_deref()).await?;
    let mut items = Vec::new();
    for kv in &page.kvs {
        let obj = served(r, kv)?;
        if !filter.matches(&obj) {
            continue;
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // A cluster-wide collection delete reaches every namespace.
        let one = Target {
            resource: r,
            namespace: obj["metadata"]["namespace"].as_str().map(str::to_string),
            name: None,
            sub: None,
        };
        match delete(api, &one, &name, opts).await {
            Ok(_) => items.push(obj),
            Err(e) if e.reason == Reason::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(axum::Json(json!({
        "kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
        "metadata": {"resourceVersion": page.revision.to_string()}, "items": items,
    }))
    .into_response())
}

/// The namespaces every cluster has, created at startup when missing.
pub async fn ensure_system_namespaces(store: &dyn Store) -> anyhow::Result<()> {
    let r = registry::namespaces();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let uid = uid(getrandom::fill)
            .map_err(|e| anyhow::anyhow!("the uid of namespace {ns}: random source: {e}"))?;
        let obj = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "uid": uid, "creationTimestamp": now_rfc3339()},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        });
        match store
            .create(&r.key(None, ns), serde_json::to_vec(&obj)?)
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_objects_filter_like_whole_ones() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n", "labels": {"app": "web"}},
                         "spec": {"nodeName": "n1", "restartPolicy": "Never"}});
        let c = Cached::new(&pod);
        let q = |l: &str, f: &str| {
            let mut q = HashMap::new();
            q.insert("labelSelector".to_string(), l.to_string());
            q.insert("fieldSelector".to_string(), f.to_string());
            Filter::from_query(&q).expect("valid")
        };
        for (l, f, want) in [
            ("app=web", "spec.nodeName=n1", true),
            ("app=web", "spec.nodeName=n2", false),
            ("app!=web", "", false),
            // Beyond the summary: read from the full object.
            ("", "spec.restartPolicy=Never", true),
            ("", "spec.restartPolicy=Always", false),
        ] {
            let filter = q(l, f);
            assert_eq!(filter.matches_cached(&c), want, "{l} {f}");
            assert_eq!(filter.matches(&pod), want, "{l} {f}");
        }
    }

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

    #[test]
    fn the_accept_header_picks_the_shape() {
        let h = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert("accept", accept.parse().expect("header"));
            shape(&h)
        };
        assert_eq!(h("application/json"), Shape::Object);
        assert_eq!(
            h("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
            Shape::Table
        );
        assert_eq!(
            h("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            Shape::Metadata
        );
        assert_eq!(shape(&HeaderMap::new()), Shape::Object);
        let m = metadata_only(&json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {}}));
        assert_eq!(m["kind"], "PartialObjectMetadata");
        assert_eq!(m["metadata"]["name"], "p");
        assert!(m.get("spec").is_none());
    }

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
