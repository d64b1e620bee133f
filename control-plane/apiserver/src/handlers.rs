//! The Kubernetes REST surface over the store: discovery, and for every
//! registered resource get/list/watch/create/update/patch/delete with
//! upstream paths, query parameters and status codes, one file per verb.
//! Generic: what differs per kind is the resource's strategy
//! (registry/strategy). Errors are `Status` objects.
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
    registry::{self, Resource, Sub, strategy},
    selector::Selector,
};

mod bind;
mod create;
pub mod delete;
mod get;
mod list;
mod patch;
mod update;
mod watch;

pub use create::ensure_builtins;

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
        (Method::GET, None, _) if watch => watch::watch_list(api, &t, q, shape(headers)).await,
        (Method::GET, None, _) => list::list(api, &t, q, shape(headers)).await,
        (Method::GET, Some(name), None | Some(Sub::Status)) => {
            get::get(api, &t, name, shape(headers), q).await
        }
        (Method::GET, Some(name), Some(Sub::Scale)) => {
            let kv = current(api, &t, name).await?;
            Ok(axum::Json(update::scale_view(&served(t.resource, &kv)?)).into_response())
        }
        (Method::POST, None, _) => create::create(api, &t, &body, fv).await,
        (Method::POST, Some(name), Some(Sub::Binding)) => bind::bind(api, &t, name, &body).await,
        (Method::PUT, Some(name), sub @ (None | Some(Sub::Status | Sub::Scale))) => {
            update::update(api, &t, name, sub, &body, fv).await
        }
        (Method::PATCH, Some(name), sub @ (None | Some(Sub::Status | Sub::Scale))) => {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            patch::patch(api, &t, name, sub, ct, &body, fv).await
        }
        (Method::DELETE, Some(name), None) => {
            let opts = delete_options(&body, q)?;
            delete::delete(api, &t, name, &opts).await
        }
        (Method::DELETE, None, _) => {
            let opts = delete_options(&body, q)?;
            delete::delete_collection(api, &t, q, &opts).await
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
    api: &Api,
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

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An object left the store: what it held is free again.
async fn forget(api: &Api, r: &Resource, obj: &Value) {
    let owner = format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    );
    r.strategy.release(api, &owner, obj, None).await;
}

/// "ns/name", how allocations name their owner.
fn owner(t: &Target, name: &str) -> String {
    format!("{}/{name}", t.namespace.as_deref().unwrap_or_default())
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

/// The resourceVersion an update or patch carries, if any.
fn precondition(obj: &Value) -> Result<Option<i64>, ApiError> {
    parse_rv(obj["metadata"]["resourceVersion"].as_str())
}

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
}
