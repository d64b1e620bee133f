//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! client-go's typed clients send (so `kubectl create deployment|configmap|
//! secret|service|namespace|job`). A body is turned into the JSON a JSON
//! client would have sent, and from there takes the JSON path (kind check,
//! typed decode, field validation) unchanged, so there is one decoder.
//!
//! The wire form is upstream's (k8s.io/apimachinery/pkg/runtime/serializer/
//! protobuf): the magic `k8s\0`, then a `runtime.Unknown` whose typeMeta
//! names the kind and whose `raw` is the object's own message. The object
//! is decoded generically against the upstream `generated.proto` files
//! (vendored under `proto/`, compiled into a descriptor pool by build.rs),
//! so there is no per-kind code here. The walker writes what Go's JSON
//! encoder writes for the struct the protobuf decodes into: upstream's
//! special types in their JSON forms (see [`special`]), int64 as a JSON
//! number (not proto3 JSON's string), bytes in base64, and a scalar's zero
//! value only where Go would write it. Go puts every non-nil field on the
//! wire, so a zero there is either a non-pointer's "unset" (left out, so
//! defaulting still applies) or a pointer's value (`replicas: 0`, kept);
//! `proto/go-fields.txt`, generated from the Go types, names the latter.
use std::{collections::HashSet, sync::LazyLock};

use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage as _, Value,
};
use serde_json::{Map, Value as Json};

/// The media type of upstream's protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// What starts every protobuf body (upstream's `protoEncodingPrefix`).
const MAGIC: &[u8] = b"k8s\0";

const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";
const META_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// Why a protobuf body cannot be read; each is a 400 naming what failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtobufError {
    #[error("the protobuf body does not start with the \"k8s\\x00\" prefix")]
    NoMagic,
    #[error("the protobuf body's runtime.Unknown envelope is malformed: {0}")]
    Envelope(String),
    #[error("the protobuf body's typeMeta names no {0}")]
    MissingTypeMeta(&'static str),
    #[error("the protobuf body's contentEncoding {0:?} is not supported")]
    ContentEncoding(String),
    #[error(
        "the protobuf body's kind {kind:?} of apiVersion {api_version:?} is unknown to sluice-server"
    )]
    UnknownKind { api_version: String, kind: String },
    #[error("the protobuf body is not a valid {kind}: {reason}")]
    Object { kind: String, reason: String },
    #[error("the protobuf descriptors built into sluice-server are unusable: {0}")]
    Pool(String),
}

/// The upstream types' descriptors, compiled by build.rs from `proto/`.
static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/kubernetes.fds"))[..])
        .map_err(|e| e.to_string())
});

/// `package.Message.field` of the fields whose zero value Go's JSON
/// encoder writes: pointers and fields without `omitempty`.
static ZERO_KEPT: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../proto/go-fields.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Whether Go writes this field when its value is the zero one.
fn zero_kept(message: &str, field: &str) -> bool {
    ZERO_KEPT.contains(format!("{message}.{field}").as_str())
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::I32(n) | Value::EnumNumber(n) => *n == 0,
        Value::I64(n) => *n == 0,
        Value::U32(n) => *n == 0,
        Value::U64(n) => *n == 0,
        Value::F32(n) => *n == 0.0,
        Value::F64(n) => *n == 0.0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::Message(_) | Value::List(_) | Value::Map(_) => false,
    }
}

fn pool() -> Result<&'static DescriptorPool, ProtobufError> {
    POOL.as_ref().map_err(|e| ProtobufError::Pool(e.clone()))
}

/// A protobuf body as the JSON object a JSON client would have sent, with
/// the envelope's apiVersion and kind.
pub fn to_json(body: &[u8]) -> Result<Json, ProtobufError> {
    let data = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let pool = pool()?;
    let unknown = pool
        .get_message_by_name(UNKNOWN)
        .ok_or_else(|| ProtobufError::Pool(format!("{UNKNOWN} is missing")))?;
    let env = DynamicMessage::decode(unknown, data)
        .map_err(|e| ProtobufError::Envelope(e.to_string()))?;
    let text = |m: &DynamicMessage, f: &str| match m.get_field_by_name(f).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let type_meta = match env.get_field_by_name("typeMeta").as_deref() {
        Some(Value::Message(m)) => m.clone(),
        _ => return Err(ProtobufError::MissingTypeMeta("apiVersion")),
    };
    let (api_version, kind) = (text(&type_meta, "apiVersion"), text(&type_meta, "kind"));
    if api_version.is_empty() {
        return Err(ProtobufError::MissingTypeMeta("apiVersion"));
    }
    if kind.is_empty() {
        return Err(ProtobufError::MissingTypeMeta("kind"));
    }
    let encoding = text(&env, "contentEncoding");
    if !encoding.is_empty() {
        return Err(ProtobufError::ContentEncoding(encoding));
    }
    let desc =
        message_for(pool, &api_version, &kind).ok_or_else(|| ProtobufError::UnknownKind {
            api_version: api_version.clone(),
            kind: kind.clone(),
        })?;
    let raw = match env.get_field_by_name("raw").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let bad = |reason: String| ProtobufError::Object {
        kind: kind.clone(),
        reason,
    };
    let object = DynamicMessage::decode(desc, raw).map_err(|e| bad(e.to_string()))?;
    let mut out = match message(&object).map_err(bad)? {
        Some(Json::Object(m)) => m,
        _ => Map::new(),
    };
    out.insert("apiVersion".into(), Json::String(api_version));
    out.insert("kind".into(), Json::String(kind));
    Ok(Json::Object(out))
}

/// The message a typeMeta names: the kind in its group version's package
/// (`apps/v1` is `k8s.io.api.apps.v1`, the core group `k8s.io.api.core.v1`),
/// or, like upstream's `AddToGroupVersion`, one of the meta/v1 option
/// kinds every group version carries (`DeleteOptions`).
fn message_for(pool: &DescriptorPool, api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if !ident(version) || !ident(kind) {
        return None;
    }
    let package = match group {
        "" => format!("k8s.io.api.core.{version}"),
        "meta.k8s.io" => format!("k8s.io.apimachinery.pkg.apis.meta.{version}"),
        g => format!(
            "k8s.io.api.{}.{version}",
            g.split('.').next().filter(|s| ident(s))?
        ),
    };
    pool.get_message_by_name(&format!("{package}.{kind}"))
        .or_else(|| {
            kind.ends_with("Options")
                .then(|| pool.get_message_by_name(&format!("{META_V1}.{kind}")))
                .flatten()
        })
}

/// A message as Go's JSON encoder writes its struct; `None` where Go
/// writes nothing (a zero `Time`, an empty `RawExtension`).
fn message(m: &DynamicMessage) -> Result<Option<Json>, String> {
    if let Some(v) = special(m)? {
        return Ok(v);
    }
    let name = m.descriptor().full_name().to_string();
    let mut out = Map::new();
    for (field, value) in m.fields() {
        if is_zero(value) && !zero_kept(&name, field.name()) {
            continue;
        }
        if let Some(v) = field_value(value)? {
            out.insert(field.name().to_string(), v);
        }
    }
    Ok(Some(Json::Object(out)))
}

/// One field's value; `None` leaves the field out.
fn field_value(v: &Value) -> Result<Option<Json>, String> {
    Ok(match v {
        Value::List(items) => Some(Json::Array(
            items.iter().map(element).collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Map(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(map_key(k), element(v)?);
            }
            Some(Json::Object(out))
        }
        Value::Message(m) => message(m)?,
        scalar => Some(element(scalar)?),
    })
}

/// A list element or map value: always written, empty or not (an empty
/// string in a ConfigMap's data is data).
fn element(v: &Value) -> Result<Json, String> {
    Ok(match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(n) => Json::from(*n),
        Value::I64(n) => Json::from(*n),
        Value::U32(n) => Json::from(*n),
        Value::U64(n) => Json::from(*n),
        Value::F32(n) => Json::from(f64::from(*n)),
        Value::F64(n) => Json::from(*n),
        Value::EnumNumber(n) => Json::from(*n),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Message(m) => message(m)?.unwrap_or(Json::Null),
        Value::List(_) | Value::Map(_) => field_value(v)?.unwrap_or(Json::Null),
    })
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// Upstream's types whose JSON is not their message's shape (each has
/// its own MarshalJSON in Go). `Ok(None)`: not one of them; `Ok(Some(None))`:
/// one whose value Go writes as null, so the field is left out.
fn special(m: &DynamicMessage) -> Result<Option<Option<Json>>, String> {
    let int = |f: &str| match m.get_field_by_name(f).as_deref() {
        Some(Value::I64(n)) => *n,
        Some(Value::I32(n)) => i64::from(*n),
        _ => 0,
    };
    let text = |f: &str| match m.get_field_by_name(f).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let bytes = |f: &str| match m.get_field_by_name(f).as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    Ok(Some(match m.descriptor().full_name() {
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => Some(if int("type") == 1 {
            Json::String(text("strVal"))
        } else {
            Json::from(int("intVal"))
        }),
        "k8s.io.apimachinery.pkg.api.resource.Quantity"
        | "k8s.io.apimachinery.pkg.api.resource.QuantityValue" => {
            Some(Json::String(text("string")))
        }
        // Upstream's Time keeps whole seconds only (its Unmarshal drops
        // the nanos); the zero time is an empty message and Go's null.
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => {
            time(int("seconds"), 0, "%Y-%m-%dT%H:%M:%SZ")?
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            time(int("seconds"), int("nanos"), "%Y-%m-%dT%H:%M:%S%.6fZ")?
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            Some(Json::String(go_duration(int("duration"))))
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Verbs" => {
            match m.get_field_by_name("items").as_deref() {
                Some(v @ Value::List(_)) => field_value(v)?,
                _ => Some(Json::Array(Vec::new())),
            }
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => embedded(&bytes("raw"))?,
        _ => return Ok(None),
    }))
}

/// A timestamp in RFC 3339 (UTC); the zero one (an empty message) is null.
fn time(seconds: i64, nanos: i64, format: &str) -> Result<Option<Json>, String> {
    if seconds == 0 && nanos == 0 {
        return Ok(None);
    }
    let nanos =
        u32::try_from(nanos).map_err(|_| format!("timestamp nanos {nanos} out of range"))?;
    chrono::DateTime::from_timestamp(seconds, nanos)
        .map(|t| Some(Json::String(t.format(format).to_string())))
        .ok_or_else(|| format!("timestamp {seconds}s out of range"))
}

/// The bytes of a `RawExtension` (or `FieldsV1`): JSON as it is, or an
/// object in the protobuf encoding itself; empty is null.
fn embedded(raw: &[u8]) -> Result<Option<Json>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.starts_with(MAGIC) {
        return to_json(raw)
            .map(Some)
            .map_err(|e| format!("embedded object: {e}"));
    }
    serde_json::from_slice(raw)
        .map(Some)
        .map_err(|e| format!("embedded object is neither JSON nor protobuf: {e}"))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
pub(crate) fn go_duration(ns: i64) -> String {
    /// `v / 10^prec` and the fraction's digits (`.25`, trailing zeros and
    /// the point left out when zero).
    fn frac(v: u64, prec: u32) -> (u64, String) {
        let unit = 10u64.pow(prec);
        let f = v % unit;
        if f == 0 {
            return (v / unit, String::new());
        }
        let digits = format!("{f:0width$}", width = prec as usize);
        (v / unit, format!(".{}", digits.trim_end_matches('0')))
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let body = if u == 0 {
        "0s".to_string()
    } else if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        let (i, f) = frac(u, 3);
        format!("{i}{f}µs")
    } else if u < 1_000_000_000 {
        let (i, f) = frac(u, 6);
        format!("{i}{f}ms")
    } else {
        let (secs, f) = frac(u, 9);
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            format!("{h}h{m}m{s}{f}s")
        } else if secs >= 60 {
            format!("{m}m{s}{f}s")
        } else {
            format!("{s}{f}s")
        }
    };
    if neg { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests;
