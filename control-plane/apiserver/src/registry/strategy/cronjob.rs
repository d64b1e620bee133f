//! CronJobs (batch/v1): upstream's defaults, the schedule in upstream's
//! grammar, the time zone, and a job template whose selector the Job
//! will generate.
use serde_json::{Value, json};

use super::{
    Causes, Strategy,
    fields::{nonnegative, required, set_default, supported},
    job::job_spec,
    pod::{default_pod_spec, validate_pod_spec},
};
use crate::registry::table::{Column, age, containers, labels, or_none, s};

pub struct CronJob;

pub static CRON_JOB: CronJob = CronJob;

impl Strategy for CronJob {
    fn default(&self, obj: &mut Value) {
        default_cron_job(obj);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        validate_cron_job(obj, old, &mut c);
        c
    }

    fn extra_columns(&self) -> Vec<Column> {
        vec![
            Column {
                name: "Schedule",
                priority: 0,
                cell: |o| Value::from(s(&o["spec"]["schedule"])),
            },
            Column {
                name: "Timezone",
                priority: 0,
                cell: |o| or_none(s(&o["spec"]["timeZone"])),
            },
            Column {
                name: "Suspend",
                priority: 0,
                cell: |o| {
                    Value::from(match o["spec"]["suspend"].as_bool() {
                        None => "<unset>",
                        Some(true) => "True",
                        Some(false) => "False",
                    })
                },
            },
            Column {
                name: "Active",
                priority: 0,
                cell: |o| Value::from(o["status"]["active"].as_array().map_or(0, Vec::len)),
            },
            Column {
                name: "Last Schedule",
                priority: 0,
                cell: |o| match &o["status"]["lastScheduleTime"] {
                    Value::Null => Value::from("<none>"),
                    t => age(t),
                },
            },
            Column {
                name: "Containers",
                priority: 1,
                cell: |o| Value::from(containers(&o["spec"]["jobTemplate"], "name")),
            },
            Column {
                name: "Images",
                priority: 1,
                cell: |o| Value::from(containers(&o["spec"]["jobTemplate"], "image")),
            },
            Column {
                name: "Selector",
                priority: 1,
                cell: |o| {
                    or_none(labels(
                        &o["spec"]["jobTemplate"]["spec"]["selector"]["matchLabels"],
                    ))
                },
            },
        ]
    }
}

/// Upstream's SetDefaults_CronJob. The job template's own fields stay
/// unset: each Job is defaulted when it is created.
fn default_cron_job(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    set_default(spec, "concurrencyPolicy", json!("Allow"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "successfulJobsHistoryLimit", json!(3));
    set_default(spec, "failedJobsHistoryLimit", json!(1));
    default_pod_spec(&mut spec["jobTemplate"]["spec"]["template"]["spec"]);
}

/// A CronJob's Job is named `<name>-<minutes since the epoch>`: 11
/// characters more must still make a DNS-1035 label.
const MAX_CRON_JOB_NAME: usize = 52;

fn validate_cron_job(obj: &Value, old: Option<&Value>, c: &mut Causes) {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if old.is_none() && name.len() > MAX_CRON_JOB_NAME {
        c.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: must be no more than {MAX_CRON_JOB_NAME} characters"),
        ));
    }
    let spec = &obj["spec"];
    let tz = &spec["timeZone"];
    match spec["schedule"].as_str().unwrap_or_default() {
        "" => required(c, "spec.schedule"),
        s => {
            let problem = if s.contains("TZ") {
                Some(
                    if tz.is_null() {
                        "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
                    } else {
                        "cannot use both timeZone field and TZ or CRON_TZ in schedule"
                    }
                    .to_string(),
                )
            } else {
                schedule_problem(s)
            };
            if let Some(p) = problem {
                c.push(("spec.schedule".into(), format!("Invalid value: {s:?}: {p}")));
            }
        }
    }
    if let Some(z) = tz.as_str() {
        let problem = if z.is_empty() {
            Some("timeZone must be nil or non-empty string".to_string())
        } else if z.eq_ignore_ascii_case("local") {
            Some("timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones".to_string())
        } else if z.parse::<chrono_tz::Tz>().is_err() {
            Some(format!("unknown time zone {z}"))
        } else {
            None
        };
        if let Some(p) = problem {
            c.push(("spec.timeZone".into(), format!("Invalid value: {z:?}: {p}")));
        }
    }
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        nonnegative(c, spec, "spec", f);
    }
    supported(
        c,
        "spec.concurrencyPolicy".into(),
        &spec["concurrencyPolicy"],
        &["Allow", "Forbid", "Replace"],
    );
    let template = &spec["jobTemplate"]["spec"];
    job_spec(template, "spec.jobTemplate.spec", c);
    validate_pod_spec(
        &template["template"]["spec"],
        "spec.jobTemplate.spec.template.spec",
        c,
    );
    if !template["selector"].is_null() {
        c.push((
            "spec.jobTemplate.spec.selector".into(),
            format!(
                "Invalid value: {}: `selector` will be auto-generated",
                template["selector"]
            ),
        ));
    }
    if template["manualSelector"] == true {
        c.push((
            "spec.jobTemplate.spec.manualSelector".into(),
            "Unsupported value: true: supported values: \"nil\", \"false\"".into(),
        ));
    }
}

/// Why `schedule` is not one the CronJob controller can run, in
/// upstream's grammar (robfig/cron's ParseStandard: five fields of
/// numbers, `*`, `?`, ranges, steps, lists, month and weekday names, or
/// a `@hourly`-style descriptor). croner computes the times (the
/// controller uses it the same way); it also knows `L`, `W`, `#` and
/// seconds, which upstream refuses, so the grammar is checked here first.
pub(crate) fn schedule_problem(schedule: &str) -> Option<String> {
    const DESCRIPTORS: [&str; 7] = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let s = schedule.trim();
    if s.starts_with('@') {
        if !DESCRIPTORS.contains(&s.to_ascii_lowercase().as_str()) {
            return Some(format!("unrecognized descriptor: {s}"));
        }
    } else {
        let fields: Vec<&str> = s.split_whitespace().collect();
        if fields.len() != 5 {
            return Some(format!(
                "expected exactly 5 fields, found {}: {s}",
                fields.len()
            ));
        }
        for (i, field) in fields.iter().enumerate() {
            for atom in field.split([',', '-', '/']) {
                let lower = atom.to_ascii_lowercase();
                let ok = matches!(atom, "*" | "?")
                    || (!atom.is_empty() && atom.chars().all(|ch| ch.is_ascii_digit()))
                    || (i == 3 && MONTHS.contains(&lower.as_str()))
                    || (i == 4 && DAYS.contains(&lower.as_str()));
                if !ok {
                    return Some(format!(
                        "failed to parse {field:?}: {atom:?} is not allowed"
                    ));
                }
            }
        }
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .sloppy_ranges(true)
        .build()
        .parse(s)
        .err()
        .map(|e| e.to_string())
}
