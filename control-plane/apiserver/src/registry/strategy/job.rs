//! Jobs (batch/v1), as upstream's pkg/registry/batch/job and
//! pkg/apis/batch (v1 defaults, validation) treat them: a selector
//! generated from the Job's uid on create, upstream's defaults, the spec
//! rules a CronJob's job template shares, and what may change on update.
use serde_json::{Value, json};

use super::{
    Causes, Strategy,
    fields::{map_is_empty, nonnegative, set_default, supported},
    pod::default_pod_spec,
    workload,
};
use crate::registry::{
    Resource,
    table::{Column, containers, count, human, labels, or_none},
};

pub struct Job;

pub static JOB: Job = Job;

impl Strategy for Job {
    fn prepare_create(&self, _r: &Resource, obj: &mut Value) {
        obj["status"] = json!({});
        generate_job_selector(obj);
    }

    fn default(&self, obj: &mut Value) {
        default_job(obj);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        validate_job(obj, old, &mut c);
        c
    }

    fn extra_columns(&self) -> Vec<Column> {
        vec![
            Column {
                name: "Status",
                priority: 0,
                cell: |o| Value::from(job_status(o)),
            },
            Column {
                name: "Completions",
                priority: 0,
                cell: |o| {
                    let done = count(&o["status"]["succeeded"]);
                    let parallelism = count(&o["spec"]["parallelism"]);
                    Value::from(match o["spec"]["completions"].as_i64() {
                        Some(n) => format!("{done}/{n}"),
                        None if parallelism > 1 => format!("{done}/1 of {parallelism}"),
                        None => format!("{done}/1"),
                    })
                },
            },
            Column {
                name: "Duration",
                priority: 0,
                cell: |o| {
                    let at = |f: &str| {
                        o["status"][f]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map(|t| t.with_timezone(&chrono::Utc))
                    };
                    Value::from(match at("startTime") {
                        None => String::new(),
                        Some(start) => {
                            let end = at("completionTime").unwrap_or_else(chrono::Utc::now);
                            human((end - start).num_seconds())
                        }
                    })
                },
            },
            Column {
                name: "Containers",
                priority: 1,
                cell: |o| Value::from(containers(o, "name")),
            },
            Column {
                name: "Images",
                priority: 1,
                cell: |o| Value::from(containers(o, "image")),
            },
            Column {
                name: "Selector",
                priority: 1,
                cell: |o| or_none(labels(&o["spec"]["selector"]["matchLabels"])),
            },
        ]
    }
}

/// The labels a Job's generated selector rests on: its name and its uid,
/// each under the legacy and the prefixed key (upstream sets both).
const JOB_NAME_LABELS: [&str; 2] = ["job-name", "batch.kubernetes.io/job-name"];
const JOB_UID_LABELS: [&str; 2] = ["controller-uid", "batch.kubernetes.io/controller-uid"];

/// The largest completions or parallelism of an Indexed Job (upstream's
/// bound keeps `status.completedIndexes` small).
const MAX_INDEXED: i64 = 100_000;

/// Upstream's generateSelector, on create: unless the user manages the
/// selector (`manualSelector: true`), the Job's pods carry its name and
/// uid and are selected by the uid alone, so no two Jobs ever claim each
/// other's pods.
fn generate_job_selector(obj: &mut Value) {
    // Upstream defaults (labels from the template as the user wrote it)
    // before it generates.
    default_job_labels(obj);
    let (name, uid) = (
        obj["metadata"]["name"].clone(),
        obj["metadata"]["uid"].clone(),
    );
    let spec = &mut obj["spec"];
    if !spec.is_object() || spec["manualSelector"] == true {
        return;
    }
    let labels = &mut spec["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for k in JOB_NAME_LABELS {
        set_default(labels, k, name.clone());
    }
    for k in JOB_UID_LABELS {
        set_default(labels, k, uid.clone());
    }
    let matched = &mut spec["selector"]["matchLabels"];
    if !matched.is_object() {
        *matched = json!({});
    }
    set_default(matched, JOB_UID_LABELS[1], uid);
}

/// A Job without labels of its own takes its pod template's.
fn default_job_labels(obj: &mut Value) {
    let template = &obj["spec"]["template"]["metadata"]["labels"];
    if map_is_empty(&obj["metadata"]["labels"]) && !map_is_empty(template) {
        obj["metadata"]["labels"] = template.clone();
    }
}

/// Upstream's SetDefaults_Job: a Job with neither completions nor
/// parallelism runs one pod to one completion; completions alone unset
/// means "until any pod succeeds".
fn default_job(obj: &mut Value) {
    default_job_labels(obj);
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    set_default(spec, "parallelism", json!(1));
    let backoff = if spec["backoffLimitPerIndex"].is_null() {
        6
    } else {
        i64::from(i32::MAX)
    };
    set_default(spec, "backoffLimit", json!(backoff));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let replacement = if spec["podFailurePolicy"].is_null() {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    set_default(spec, "podReplacementPolicy", json!(replacement));
    default_pod_spec(&mut spec["template"]["spec"]);
}

/// What a Job and a CronJob's job template share (upstream's
/// validateJobSpec), the pod spec aside.
pub fn job_spec(spec: &Value, at: &str, c: &mut Causes) {
    for f in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        nonnegative(c, spec, at, f);
    }
    supported(
        c,
        format!("{at}.completionMode"),
        &spec["completionMode"],
        &["NonIndexed", "Indexed"],
    );
    if spec["completionMode"] == "Indexed" {
        if spec["completions"].is_null() {
            c.push((
                format!("{at}.completions"),
                "Required value: when completion mode is Indexed".into(),
            ));
        }
        for f in ["completions", "parallelism"] {
            if let Some(n) = spec[f].as_i64()
                && n > MAX_INDEXED
            {
                c.push((
                    format!("{at}.{f}"),
                    format!(
                        "Invalid value: {n}: must be less than or equal to {MAX_INDEXED} when completion mode is Indexed"
                    ),
                ));
            }
        }
    }
    supported(
        c,
        format!("{at}.podReplacementPolicy"),
        &spec["podReplacementPolicy"],
        &["TerminatingOrFailed", "Failed"],
    );
    let restart = &spec["template"]["spec"]["restartPolicy"];
    if !matches!(restart.as_str(), Some("OnFailure" | "Never")) {
        c.push((
            format!("{at}.template.spec.restartPolicy"),
            format!(
                "Unsupported value: {:?}: supported values: \"OnFailure\", \"Never\"",
                restart.as_str().unwrap_or_default()
            ),
        ));
    }
}

/// `labels[key]` of a pod template must be `want` (upstream's
/// ValidateHasLabel).
fn has_label(c: &mut Causes, labels: &Value, key: &str, want: &Value) {
    let field = format!("spec.template.metadata.labels[{key}]");
    let want_s = want.as_str().unwrap_or_default();
    match &labels[key] {
        Value::Null => c.push((field, format!("Required value: must be '{want_s}'"))),
        got if got != want => c.push((field, format!("Invalid value: {got}: must be '{want_s}'"))),
        _ => {}
    }
}

fn validate_job(obj: &Value, old: Option<&Value>, c: &mut Causes) {
    let spec = &obj["spec"];
    job_spec(spec, "spec", c);
    // Selector present, matching the template, immutable; the pod spec.
    workload::validate(obj, old, c);
    if spec["manualSelector"] != true {
        let (name, uid) = (&obj["metadata"]["name"], &obj["metadata"]["uid"]);
        let labels = &spec["template"]["metadata"]["labels"];
        for k in JOB_NAME_LABELS {
            has_label(c, labels, k, name);
        }
        for k in JOB_UID_LABELS {
            has_label(c, labels, k, uid);
        }
        let expected: serde_json::Map<String, Value> = JOB_NAME_LABELS
            .iter()
            .map(|k| (k.to_string(), name.clone()))
            .chain(JOB_UID_LABELS.iter().map(|k| (k.to_string(), uid.clone())))
            .collect();
        let sel = crate::selector::Selector::labels(&crate::selector::to_string(&spec["selector"]));
        if let Ok(sel) = sel
            && !sel.matches(&json!({"metadata": {"labels": expected}}))
        {
            c.push((
                "spec.selector".into(),
                format!(
                    "Invalid value: {}: `selector` not auto-generated",
                    spec["selector"]
                ),
            ));
        }
    }
    let Some(old) = old else { return };
    let was = &old["spec"];
    let immutable = |c: &mut Causes, f: &str| {
        if spec[f] != was[f] {
            c.push((
                format!("spec.{f}"),
                format!("Invalid value: {}: field is immutable", spec[f]),
            ));
        }
    };
    immutable(c, "completionMode");
    // Indexed Jobs may scale while completions and parallelism stay equal
    // (upstream's elastic Indexed Jobs).
    let elastic = spec["completionMode"] == "Indexed"
        && spec["completions"] == spec["parallelism"]
        && was["completions"] == was["parallelism"];
    if !elastic {
        immutable(c, "completions");
    }
    // A suspended Job that never started may still have its scheduling
    // directives changed (upstream's mutable scheduling directives).
    let fresh = was["suspend"] == true && old["status"]["startTime"].is_null();
    let strip = |t: &Value| {
        let mut t = t.clone();
        if fresh {
            for (part, f) in [
                ("metadata", "labels"),
                ("metadata", "annotations"),
                ("spec", "nodeSelector"),
                ("spec", "tolerations"),
                ("spec", "affinity"),
                ("spec", "schedulingGates"),
            ] {
                if let Some(m) = t[part].as_object_mut() {
                    m.remove(f);
                }
            }
        }
        t
    };
    if strip(&spec["template"]) != strip(&was["template"]) {
        c.push((
            "spec.template".into(),
            "Invalid value: field is immutable".into(),
        ));
    }
}

/// A Job's STATUS column, upstream's order: finished first, then being
/// deleted, suspended, failing.
fn job_status(o: &Value) -> &'static str {
    let has = |t: &str| {
        o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if !o["metadata"]["deletionTimestamp"].is_null() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    }
}
