//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;
//! v=v1`), what `kubectl get` asks for: the columns upstream prints for
//! the kinds people look at most, NAME and AGE for the rest. `-o wide`
//! shows the priority-1 columns.
use serde_json::{Value, json};

use crate::registry::Resource;

/// Whether the client asked for a Table (kubectl get without -o json/yaml).
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

/// One column: its header, its priority (1: only with `-o wide`) and how
/// a cell is read from the object.
pub struct Column {
    pub name: &'static str,
    pub priority: u8,
    pub cell: fn(&Value) -> Value,
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn or_none(v: String) -> Value {
    Value::from(if v.is_empty() { "<none>".into() } else { v })
}

pub(crate) fn count(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// Upstream's HumanDuration for the AGE column.
pub fn age(created: &Value) -> Value {
    let Some(t) = created
        .as_str()
        .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
    else {
        return Value::from("<unknown>");
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    Value::from(human(secs))
}

pub(crate) fn human(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 0 => "<invalid>".into(),
        s if s < 120 => format!("{s}s"),
        _ if m < 10 => match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        },
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        },
        _ if h < 24 * 365 * 2 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

pub(crate) fn name(o: &Value) -> Value {
    o["metadata"]["name"].clone()
}

pub(crate) fn age_of(o: &Value) -> Value {
    age(&o["metadata"]["creationTimestamp"])
}

pub(crate) fn map_len(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

pub(crate) fn labels(sel: &Value) -> String {
    sel.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub(crate) fn containers(o: &Value, field: &str) -> String {
    o["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| s(&c[field]))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// NAME, then `extra`, then AGE: how most kinds print.
pub fn framed(extra: Vec<Column>) -> Vec<Column> {
    let mut cols = vec![Column {
        name: "Name",
        priority: 0,
        cell: name,
    }];
    cols.extend(extra);
    cols.push(Column {
        name: "Age",
        priority: 0,
        cell: age_of,
    });
    cols
}

/// A meta.k8s.io/v1 Table of `objects`; rows carry the objects' metadata
/// (`includeObject=Metadata`, the default), the whole object
/// (`includeObject=Object`) or nothing (`None`).
pub fn table(r: &Resource, objects: &[Value], revision: i64, include: Option<&str>) -> Value {
    // A view prints like the resource it shows (upstream prints both
    // Event APIs with one printer, on the stored form).
    let cols = r.strategy.columns();
    let defs: Vec<Value> = cols
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": if c.name == "Count" { "integer" } else { "string" },
                "format": if c.name == "Name" { "name" } else { "" },
                "description": "", "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let stored = r.view.map(|v| (v.to_stored)(o.clone()));
            let printed = stored.as_ref().unwrap_or(o);
            let cells: Vec<Value> = cols.iter().map(|c| (c.cell)(printed)).collect();
            let object = match include {
                Some("None") => Value::Null,
                Some("Object") => o.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                }),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": revision.to_string()},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn kubectl_accept_headers_are_recognised() {
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
        assert!(!wanted("application/json, */*"));
    }

    #[test]
    fn services_print_like_upstream() {
        let r = find("", "v1", "services").expect("services");
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                     "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let t = table(r, &[svc], 7, None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("defs")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Selector",
                "Age"
            ]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[5], "app=web");
        assert!(
            cells[6].as_str().is_some_and(|a| a.ends_with('y')),
            "{}",
            cells[6]
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn events_print_like_upstream() {
        let r = find("", "v1", "events").expect("events");
        let ev = json!({"metadata": {"name": "web.1"},
            "involvedObject": {"kind": "Pod", "name": "web"},
            "type": "Normal", "reason": "Tested", "message": " it works ",
            "reportingComponent": "sluice.dev/test", "reportingInstance": "t-1",
            "eventTime": "2020-01-01T00:00:00.000000Z",
            "series": {"count": 2, "lastObservedTime": "2020-01-01T00:00:05.000000Z"}});
        let t = table(r, std::slice::from_ref(&ev), 1, None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "Last Seen",
                "Type",
                "Reason",
                "Object",
                "Subobject",
                "Source",
                "Message",
                "First Seen",
                "Count",
                "Name"
            ]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[3], "pod/web");
        assert_eq!(cells[5], "sluice.dev/test, t-1");
        assert_eq!(cells[6], "it works");
        assert_eq!(cells[8], 2, "the series count");
        assert!(
            cells[0].as_str().is_some_and(|a| a.ends_with('y')),
            "{cells}"
        );
        // A singleton counts 1; the events.k8s.io view prints the same.
        let mut single = ev;
        single["series"] = Value::Null;
        let view = find("events.k8s.io", "v1", "events").expect("the view");
        let shown = crate::registry::events::from_core(single);
        let t = table(view, &[shown], 1, None);
        assert_eq!(t["rows"][0]["cells"][8], 1);
        assert_eq!(t["rows"][0]["cells"][3], "pod/web");
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (130, "2m10s"),
            (900, "15m"),
            (4 * 3600 + 120, "4h2m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
            (-5, "<invalid>"),
        ] {
            assert_eq!(human(secs), want, "{secs}");
        }
    }

    fn column_names(t: &Value) -> Vec<&str> {
        t["columnDefinitions"]
            .as_array()
            .expect("defs")
            .iter()
            .filter(|c| c["priority"] == 0)
            .filter_map(|c| c["name"].as_str())
            .collect()
    }

    #[test]
    fn jobs_print_like_upstream() {
        let r = find("batch", "v1", "jobs").expect("jobs");
        let job = json!({"metadata": {"name": "pi", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"completions": 3, "parallelism": 2},
            "status": {"succeeded": 3, "startTime": "2020-01-01T00:00:00Z",
                "completionTime": "2020-01-01T00:02:10Z",
                "conditions": [{"type": "Complete", "status": "True"}]}});
        let t = table(r, &[job], 7, None);
        assert_eq!(
            column_names(&t),
            ["Name", "Status", "Completions", "Duration", "Age"]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "Complete");
        assert_eq!(cells[2], "3/3");
        assert_eq!(cells[3], "2m10s");
        let running = json!({"metadata": {"name": "w"}, "spec": {"parallelism": 4}, "status": {}});
        let t = table(r, &[running], 7, None);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "Running");
        assert_eq!(cells[2], "0/1 of 4");
        assert_eq!(cells[3], "");
    }

    #[test]
    fn cron_jobs_print_like_upstream() {
        let r = find("batch", "v1", "cronjobs").expect("cronjobs");
        let cj = json!({"metadata": {"name": "tick"},
            "spec": {"schedule": "*/5 * * * *", "suspend": false},
            "status": {"active": [{"name": "tick-1"}]}});
        let t = table(r, &[cj], 7, None);
        assert_eq!(
            column_names(&t),
            [
                "Name",
                "Schedule",
                "Timezone",
                "Suspend",
                "Active",
                "Last Schedule",
                "Age"
            ]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "*/5 * * * *");
        assert_eq!(cells[2], "<none>");
        assert_eq!(cells[3], "False");
        assert_eq!(cells[4], 1);
        assert_eq!(cells[5], "<none>");
    }
}
