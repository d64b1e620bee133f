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

/// Why a request failed, as Kubernetes' `Status.reason` names it
/// (metav1.StatusReason): each reason has one HTTP code, kept here only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("BadRequest")]
    BadRequest,
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Forbidden")]
    Forbidden,
    #[error("NotFound")]
    NotFound,
    #[error("MethodNotAllowed")]
    MethodNotAllowed,
    #[error("AlreadyExists")]
    AlreadyExists,
    #[error("Conflict")]
    Conflict,
    /// A resourceVersion older than what is kept (410 Gone).
    #[error("Expired")]
    Expired,
    #[error("RequestEntityTooLarge")]
    RequestEntityTooLarge,
    #[error("UnsupportedMediaType")]
    UnsupportedMediaType,
    /// Validation failed: 422 with the field causes.
    #[error("Invalid")]
    Invalid,
    #[error("InternalError")]
    InternalError,
    /// A resourceVersion the server has not reached yet (504).
    #[error("Timeout")]
    Timeout,
}

impl Reason {
    pub fn code(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::AlreadyExists | Self::Conflict => StatusCode::CONFLICT,
            Self::Expired => StatusCode::GONE,
            Self::RequestEntityTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// An error answered as a `Status`.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ApiError {
    pub(crate) reason: Reason,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
}

impl ApiError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn not_found(r: &Resource, name: &str) -> Self {
        let mut e = Self::new(
            Reason::NotFound,
            format!("{} \"{name}\" not found", qualified(r)),
        );
        e.details = Some(json!({"name": name, "group": r.group, "kind": r.plural}));
        e
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Reason::BadRequest, message)
    }

    /// 422 with the offending field paths, as upstream's validation does.
    pub(crate) fn invalid(r: &Resource, name: &str, causes: Vec<(String, String)>) -> Self {
        let msg = causes
            .iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut e = Self::new(
            Reason::Invalid,
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
                    Reason::AlreadyExists,
                    format!("{} \"{name}\" already exists", qualified(r)),
                );
                e.details = Some(json!({"name": name, "group": r.group, "kind": r.plural}));
                e
            }
            StoreError::Conflict { .. } => Self::new(
                Reason::Conflict,
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    qualified(r)
                ),
            ),
            StoreError::Compacted {
                requested,
                compacted,
            } => Self::new(
                Reason::Expired,
                format!("too old resource version: {requested} ({compacted})"),
            ),
            StoreError::ValueTooLarge { .. } => {
                Self::new(Reason::RequestEntityTooLarge, e.to_string())
            }
            StoreError::FutureRevision { .. } => {
                Self::new(Reason::Timeout, format!("Too large resource version: {e}"))
            }
            other => Self::new(Reason::InternalError, other.to_string()),
        }
    }

    pub(crate) fn cache(r: &Resource, e: CacheError) -> Self {
        match e {
            CacheError::Gone { requested, oldest } => Self::new(
                Reason::Expired,
                format!("too old resource version: {requested} ({oldest})"),
            ),
            CacheError::TooNew { requested, current } => Self::new(
                Reason::Timeout,
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            CacheError::Store(e) => Self::store(r, "", e),
        }
    }

    /// A stored object that cannot be served: 500 naming the key, as
    /// upstream answers an undecodable object (never served as `null`).
    pub(crate) fn corrupt(c: Corrupt) -> Self {
        tracing::error!(key = %c.key, reason = %c.reason, "corrupt stored object");
        let mut e = Self::new(Reason::InternalError, c.to_string());
        e.details = Some(
            json!({"causes": [{"reason": "StoredObjectCorrupt", "field": c.key, "message": c.reason}]}),
        );
        e
    }

    /// The random source failed: 500, never a predictable uid or name.
    pub(crate) fn random(what: String, e: getrandom::Error) -> Self {
        tracing::error!(error = %e, "random source failed: {what}");
        Self::new(
            Reason::InternalError,
            format!("{what}: the random source failed: {e}"),
        )
    }

    pub(crate) fn alloc(r: &Resource, name: &str, e: AllocError) -> Self {
        match e {
            AllocError::Invalid(field, msg) => Self::invalid(r, name, vec![(field, msg)]),
            AllocError::Full(msg) => Self::new(Reason::InternalError, msg),
            AllocError::Random(e) => {
                Self::random(format!("allocating for {} \"{name}\"", qualified(r)), e)
            }
            AllocError::Store(e) => Self::store(r, name, e),
        }
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason.to_string(),
            "code": self.reason.code().as_u16(),
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.reason.code(), axum::Json(self.status())).into_response()
    }
}

pub(crate) fn qualified(r: &Resource) -> String {
    if r.group.is_empty() {
        r.plural.to_string()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}
