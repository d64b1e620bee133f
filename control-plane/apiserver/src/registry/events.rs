//! events.k8s.io/v1 Events are the core/v1 Events seen through other
//! field names: upstream stores one object and converts
//! (pkg/apis/events/v1/conversion.go), so an event a controller posts
//! through events.k8s.io is what `kubectl get events` and `kubectl
//! describe` (both core/v1) show, and the other way round.
use serde_json::{Map, Value};

/// (core/v1 field, events.k8s.io/v1 field); fields of the same name in
/// both (metadata, reason, type, eventTime, series, action, related,
/// reportingInstance) pass as they are.
const RENAMED: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

const SHARED: &[&str] = &[
    "metadata",
    "reason",
    "type",
    "eventTime",
    "series",
    "action",
    "related",
    "reportingInstance",
];

fn convert(obj: Value, api_version: &str, to_events: bool) -> Value {
    let Value::Object(mut from) = obj else {
        return obj;
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::from(api_version));
    out.insert("kind".into(), Value::from("Event"));
    for f in SHARED {
        if let Some(v) = from.remove(*f) {
            out.insert((*f).into(), v);
        }
    }
    for (core, events) in RENAMED {
        let (src, dst) = if to_events {
            (core, events)
        } else {
            (events, core)
        };
        if let Some(v) = from.remove(*src) {
            out.insert((*dst).into(), v);
        }
    }
    out.retain(|_, v| !v.is_null());
    Value::Object(out)
}

/// A stored core/v1 Event as events.k8s.io/v1 shows it.
pub fn from_core(obj: Value) -> Value {
    convert(obj, "events.k8s.io/v1", true)
}

/// An events.k8s.io/v1 Event as it is stored (core/v1).
pub fn to_core(obj: Value) -> Value {
    convert(obj, "v1", false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What kube-rs's Recorder posts, then PATCHes with a series.
    fn posted() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.17a", "namespace": "default"},
            "eventTime": "2030-01-01T00:00:00.000000Z",
            "series": {"count": 2, "lastObservedTime": "2030-01-01T00:00:05.000000Z"},
            "reportingController": "sluice.dev/test", "reportingInstance": "test-1",
            "action": "Testing", "reason": "Tested", "type": "Normal",
            "regarding": {"kind": "Pod", "name": "web", "namespace": "default", "uid": "u1", "apiVersion": "v1"},
            "related": {"kind": "Node", "name": "n1"},
            "note": "it works",
            "deprecatedSource": {"component": "test"},
            "deprecatedFirstTimestamp": "2030-01-01T00:00:00Z",
            "deprecatedLastTimestamp": "2030-01-01T00:00:05Z",
            "deprecatedCount": 2,
        })
    }

    #[test]
    fn every_field_has_its_core_name() {
        let core = to_core(posted());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["message"], "it works");
        assert_eq!(core["involvedObject"]["uid"], "u1");
        assert_eq!(core["reportingComponent"], "sluice.dev/test");
        assert_eq!(core["reportingInstance"], "test-1");
        assert_eq!(core["source"]["component"], "test");
        assert_eq!(core["firstTimestamp"], "2030-01-01T00:00:00Z");
        assert_eq!(core["lastTimestamp"], "2030-01-01T00:00:05Z");
        assert_eq!(core["count"], 2);
        assert_eq!(core["series"]["count"], 2);
        assert_eq!(core["related"]["name"], "n1");
        assert_eq!(core["eventTime"], "2030-01-01T00:00:00.000000Z");
        for gone in [
            "note",
            "regarding",
            "reportingController",
            "deprecatedCount",
        ] {
            assert!(core.get(gone).is_none(), "{gone} left in {core}");
        }
        // Both core readers deserialize it.
        serde_json::from_value::<k8s_openapi::api::core::v1::Event>(core.clone())
            .expect("a core/v1 Event");
        assert_eq!(from_core(core), posted(), "the round trip loses nothing");
    }

    #[test]
    fn a_core_event_reads_as_events_k8s_io() {
        let core = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "x", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web"},
            "message": "hello", "reason": "Hi", "count": 3, "source": {"component": "kubelet"}});
        let ev = from_core(core);
        assert_eq!(ev["apiVersion"], "events.k8s.io/v1");
        assert_eq!(ev["note"], "hello");
        assert_eq!(ev["regarding"]["name"], "web");
        assert_eq!(ev["deprecatedCount"], 3);
        assert_eq!(ev["deprecatedSource"]["component"], "kubelet");
        serde_json::from_value::<k8s_openapi::api::events::v1::Event>(ev)
            .expect("an events.k8s.io/v1 Event");
    }
}
