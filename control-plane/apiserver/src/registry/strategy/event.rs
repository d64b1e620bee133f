//! Events (core/v1, and the events.k8s.io/v1 view of them): printed like
//! upstream's printEvent, on the stored (core) form.
use serde_json::Value;

use super::Strategy;
use crate::registry::table::{Column, age, name, s};

pub struct Event;

pub static EVENT: Event = Event;

impl Strategy for Event {
    fn columns(&self) -> Vec<Column> {
        event_columns()
    }
}

/// The time a timestamp field says, as its age; "" when unset.
fn since(v: &Value) -> String {
    if v.as_str().is_some_and(|t| !t.is_empty()) {
        s(&age(v))
    } else {
        String::new()
    }
}

/// Upstream's printEvent: the last and first time seen (from the series
/// or the deprecated counters, falling back to eventTime), and the count
/// (1 for a singleton in the new API).
fn event_last_seen(o: &Value) -> Value {
    let first = event_first_seen(o);
    if !o["series"].is_null() {
        return Value::from(since(&o["series"]["lastObservedTime"]));
    }
    let last = since(&o["lastTimestamp"]);
    Value::from(if last.is_empty() { s(&first) } else { last })
}

fn event_first_seen(o: &Value) -> Value {
    let first = since(&o["firstTimestamp"]);
    Value::from(if first.is_empty() {
        since(&o["eventTime"])
    } else {
        first
    })
}

fn event_columns() -> Vec<Column> {
    let col = |name, priority, cell| Column {
        name,
        priority,
        cell,
    };
    vec![
        col("Last Seen", 0, event_last_seen),
        col("Type", 0, |o| Value::from(s(&o["type"]))),
        col("Reason", 0, |o| Value::from(s(&o["reason"]))),
        col("Object", 0, |o| {
            let (kind, name) = (
                s(&o["involvedObject"]["kind"]).to_lowercase(),
                s(&o["involvedObject"]["name"]),
            );
            Value::from(if name.is_empty() {
                kind
            } else {
                format!("{kind}/{name}")
            })
        }),
        col("Subobject", 1, |o| {
            Value::from(s(&o["involvedObject"]["fieldPath"]))
        }),
        col("Source", 1, |o| {
            // formatEventSource: component, host, or the new API's
            // reporting controller and instance.
            let (component, host) = (s(&o["source"]["component"]), s(&o["source"]["host"]));
            let (component, host) = if component.is_empty() {
                (s(&o["reportingComponent"]), s(&o["reportingInstance"]))
            } else {
                (component, host)
            };
            Value::from(if host.is_empty() {
                component
            } else {
                format!("{component}, {host}")
            })
        }),
        col("Message", 0, |o| {
            Value::from(s(&o["message"]).trim().to_string())
        }),
        col("First Seen", 1, event_first_seen),
        col("Count", 1, |o| {
            let n = match o["series"]["count"].as_i64() {
                Some(n) => n,
                None => o["count"].as_i64().filter(|n| *n != 0).unwrap_or(1),
            };
            Value::from(n)
        }),
        col("Name", 1, name),
    ]
}
