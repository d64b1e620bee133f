//! Field helpers the kinds' rules share: defaulting one field, and the
//! messages upstream's field errors carry.
use serde_json::Value;

use super::Causes;

pub fn set_default(obj: &mut Value, field: &str, v: Value) {
    if obj.get(field).is_none_or(Value::is_null) {
        obj[field] = v;
    }
}

pub fn map_is_empty(v: &Value) -> bool {
    v.as_object().is_none_or(|m| m.is_empty())
}

pub fn required(c: &mut Causes, field: &str) {
    c.push((field.into(), "Required value".into()));
}

pub fn port_range(c: &mut Causes, field: String, v: &Value, min: i64) {
    match v.as_i64() {
        Some(p) if (min..=65535).contains(&p) => {}
        _ => c.push((
            field,
            format!("Invalid value: {v}: must be between {min} and 65535, inclusive"),
        )),
    }
}

/// An IANA service name (what a named port may be).
pub fn port_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && n.chars().any(|c| c.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

pub fn protocol(c: &mut Causes, field: String, v: &Value) {
    match v.as_str() {
        None | Some("TCP" | "UDP" | "SCTP") => {}
        Some(p) => c.push((
            field,
            format!("Unsupported value: {p:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
        )),
    }
}

pub fn nonnegative(c: &mut Causes, spec: &Value, at: &str, field: &str) {
    if let Some(n) = spec[field].as_i64()
        && n < 0
    {
        c.push((
            format!("{at}.{field}"),
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
}

pub fn supported(c: &mut Causes, field: String, v: &Value, allowed: &[&str]) {
    if let Some(s) = v.as_str()
        && !allowed.contains(&s)
    {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        c.push((
            field,
            format!(
                "Unsupported value: {s:?}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
}
