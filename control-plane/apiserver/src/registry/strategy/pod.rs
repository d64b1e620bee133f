//! Pods (core/v1): phase Pending on create, upstream's pod defaults and
//! DefaultTolerationSeconds, container and port validation, graceful
//! deletion, and the Priority admission plugin. The pod-spec rules are
//! shared by every kind with a pod template.
use async_trait::async_trait;
use serde_json::{Value, json};

use super::{
    Causes, Strategy,
    fields::{port_range, protocol, required, set_default},
};
use crate::{
    handlers::{Api, delete::Grace},
    http::status::ApiError,
    registry::{
        Resource,
        table::{Column, count, or_none, s},
    },
};

pub struct Pod;

pub static POD: Pod = Pod;

#[async_trait]
impl Strategy for Pod {
    fn initial_status(&self) -> Value {
        json!({"phase": "Pending"})
    }

    fn default(&self, obj: &mut Value) {
        default_pod_spec(&mut obj["spec"]);
        default_toleration_seconds(&mut obj["spec"]);
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        validate_pod_spec(&obj["spec"], "spec", &mut c);
        c
    }

    /// Upstream's graceful deletion (CheckGracefulDelete): the grace
    /// period a delete grants. The one asked for, else the pod's
    /// terminationGracePeriodSeconds, but 0 when never scheduled or
    /// already finished (nothing runs to stop).
    /// Upstream's Priority admission plugin, on create.
    async fn admit(
        &self,
        api: &Api,
        _r: &Resource,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if old.is_none() {
            super::priorityclass::admit_pod(api, obj).await?;
        }
        Ok(())
    }

    fn deletion_grace(&self) -> Option<Grace> {
        Some(deletion_grace as Grace)
    }

    fn extra_columns(&self) -> Vec<Column> {
        columns()
    }
}

pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        let Some(cs) = spec[list].as_array_mut() else {
            continue;
        };
        for c in cs.iter_mut().filter(|c| c.is_object()) {
            let image = c["image"].as_str().unwrap_or_default();
            // Upstream: `:latest` or no tag means always pull.
            let tag = image.rsplit('/').next().unwrap_or_default();
            let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
            set_default(
                c,
                "imagePullPolicy",
                json!(if latest { "Always" } else { "IfNotPresent" }),
            );
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "resources", json!({}));
            for p in c["ports"].as_array_mut().into_iter().flatten() {
                set_default(p, "protocol", json!("TCP"));
            }
        }
    }
}

/// How long a pod stays bound to a node that went not-ready or
/// unreachable before the node lifecycle controller evicts it (upstream's
/// DefaultTolerationSeconds admission plugin, `--default-not-ready-
/// toleration-seconds` and `--default-unreachable-toleration-seconds`).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// Upstream's DefaultTolerationSeconds: every pod tolerates the not-ready
/// and unreachable NoExecute taints for [`DEFAULT_TOLERATION_SECONDS`]
/// unless it already says how it tolerates them (a toleration with that
/// key or no key, and effect NoExecute or none).
pub fn default_toleration_seconds(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    let tolerates = |spec: &Value, key: &str| {
        spec["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| {
                t["key"].as_str().is_none_or(|k| k.is_empty() || k == key)
                    && t["effect"]
                        .as_str()
                        .is_none_or(|e| e.is_empty() || e == "NoExecute")
            })
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if tolerates(spec, key) {
            continue;
        }
        let t = json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                       "tolerationSeconds": DEFAULT_TOLERATION_SECONDS});
        match spec["tolerations"].as_array_mut() {
            Some(ts) => ts.push(t),
            None => spec["tolerations"] = json!([t]),
        }
    }
}

fn deletion_grace(pod: &Value, asked: Option<i64>) -> i64 {
    let unscheduled = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Failed" | "Succeeded")
    );
    if unscheduled || finished {
        return 0;
    }
    asked
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(0)
}

/// Upstream's pod spec validation, for the fields sluice acts on; `at`
/// is the spec's path (`spec`, `spec.template.spec`, ...).
pub fn validate_pod_spec(spec: &Value, at: &str, c: &mut Causes) {
    let containers = spec["containers"].as_array().filter(|a| !a.is_empty());
    let Some(containers) = containers else {
        required(c, &format!("{at}.containers"));
        return;
    };
    let mut names = Vec::new();
    for (list, items) in [
        ("initContainers", spec["initContainers"].as_array()),
        ("containers", Some(containers)),
    ] {
        for (i, ct) in items.into_iter().flatten().enumerate() {
            let f = format!("{at}.{list}[{i}]");
            match ct["name"].as_str().unwrap_or_default() {
                "" => required(c, &format!("{f}.name")),
                n if names.contains(&n) => {
                    c.push((format!("{f}.name"), format!("Duplicate value: {n:?}")))
                }
                n => names.push(n),
            }
            if ct["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                required(c, &format!("{f}.image"));
            }
            for (j, p) in ct["ports"].as_array().into_iter().flatten().enumerate() {
                let pf = format!("{f}.ports[{j}]");
                port_range(c, format!("{pf}.containerPort"), &p["containerPort"], 1);
                if !p["hostPort"].is_null() {
                    port_range(c, format!("{pf}.hostPort"), &p["hostPort"], 0);
                }
                protocol(c, format!("{pf}.protocol"), &p["protocol"]);
            }
        }
    }
}

fn columns() -> Vec<Column> {
    vec![
        Column {
            name: "Ready",
            priority: 0,
            cell: |o| {
                let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                let ready = o["status"]["containerStatuses"]
                    .as_array()
                    .map_or(0, |c| c.iter().filter(|c| c["ready"] == true).count());
                Value::from(format!("{ready}/{total}"))
            },
        },
        Column {
            name: "Status",
            priority: 0,
            cell: |o| {
                let reason = s(&o["status"]["reason"]);
                if !o["metadata"]["deletionTimestamp"].is_null() {
                    Value::from("Terminating")
                } else if !reason.is_empty() {
                    Value::from(reason)
                } else {
                    or_none(s(&o["status"]["phase"]))
                }
            },
        },
        Column {
            name: "Restarts",
            priority: 0,
            cell: |o| {
                Value::from(o["status"]["containerStatuses"].as_array().map_or(0, |c| {
                    c.iter().map(|c| count(&c["restartCount"])).sum::<i64>()
                }))
            },
        },
        Column {
            name: "IP",
            priority: 1,
            cell: |o| or_none(s(&o["status"]["podIP"])),
        },
        Column {
            name: "Node",
            priority: 1,
            cell: |o| or_none(s(&o["spec"]["nodeName"])),
        },
    ]
}
