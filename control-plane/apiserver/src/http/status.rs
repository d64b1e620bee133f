//! Errors answered as Kubernetes `Status` objects: one place that knows
//! each failure's HTTP code and reason.
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use sluice_store::StoreError;

use crate::{
    alloc::AllocError,
    cache::CacheError,
    registry::{Corrupt, Resource},
};

/// An error answered as a `Status`.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) code: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn not_found(r: &Resource, name: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(r)),
        );
        e.details = Some(json!({"name": name, "group": r.group, "kind": r.plural}));
        e
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 422 with the offending field paths, as upstream's validation does.
    pub(crate) fn invalid(r: &Resource, name: &str, causes: Vec<(String, String)>) -> Self {
        let msg = causes
            .iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} \"{name}\" is invalid: {msg}", r.kind),
        );
        e.details = Some(json!({
            "name": name, "group": r.group, "kind": r.kind,
            "causes": causes.iter().map(|(f, m)| json!({"field": f, "message": m, "reason": "FieldValueInvalid"})).collect::<Vec<_>>(),
        }));
        e
    }

    pub(crate) fn store(r: &Resource, name: &str, e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::not_found(r, name),
            StoreError::AlreadyExists(_) => {
                let mut e = Self::new(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", qualified(r)),
                );
                e.details = Some(json!({"name": name, "group": r.group, "kind": r.plural}));
                e
            }
            StoreError::Conflict { .. } => Self::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    qualified(r)
                ),
            ),
            StoreError::Compacted {
                requested,
                compacted,
            } => Self::new(
                StatusCode::GONE,
                "Expired",
                format!("too old resource version: {requested} ({compacted})"),
            ),
            StoreError::ValueTooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                e.to_string(),
            ),
            StoreError::FutureRevision { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!("Too large resource version: {e}"),
            ),
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                other.to_string(),
            ),
        }
    }

    pub(crate) fn cache(r: &Resource, e: CacheError) -> Self {
        match e {
            CacheError::Gone { requested, oldest } => Self::new(
                StatusCode::GONE,
                "Expired",
                format!("too old resource version: {requested} ({oldest})"),
            ),
            CacheError::TooNew { requested, current } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            CacheError::Store(e) => Self::store(r, "", e),
        }
    }

    /// A stored object that cannot be served: 500 naming the key, as
    /// upstream answers an undecodable object (never served as `null`).
    pub(crate) fn corrupt(c: Corrupt) -> Self {
        tracing::error!(key = %c.key, reason = %c.reason, "corrupt stored object");
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            c.to_string(),
        );
        e.details = Some(
            json!({"causes": [{"reason": "StoredObjectCorrupt", "field": c.key, "message": c.reason}]}),
        );
        e
    }

    /// The random source failed: 500, never a predictable uid or name.
    pub(crate) fn random(what: String, e: getrandom::Error) -> Self {
        tracing::error!(error = %e, "random source failed: {what}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("{what}: the random source failed: {e}"),
        )
    }

    pub(crate) fn alloc(r: &Resource, name: &str, e: AllocError) -> Self {
        match e {
            AllocError::Invalid(field, msg) => Self::invalid(r, name, vec![(field, msg)]),
            AllocError::Full(msg) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", msg)
            }
            AllocError::Random(e) => {
                Self::random(format!("allocating for {} \"{name}\"", qualified(r)), e)
            }
            AllocError::Store(e) => Self::store(r, name, e),
        }
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, axum::Json(self.status())).into_response()
    }
}

pub(crate) fn qualified(r: &Resource) -> String {
    if r.group.is_empty() {
        r.plural.to_string()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}
