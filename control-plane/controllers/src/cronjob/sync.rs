//! The CronJob controller's decisions (upstream's syncCronJob and
//! cleanupFinishedJobs) without I/O, for a given `now`: which Jobs are
//! done and leave the active list, which old ones go (history limits),
//! and whether a Job is due now, with the time to look again.
use std::{collections::HashSet, time::Duration};

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobStatus, Job},
        core::v1::ObjectReference,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time},
    chrono::{DateTime, Utc},
};

use super::schedule::Schedule;

/// The annotation naming the time a Job was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Upstream wakes a little after the scheduled time, so that a clock a
/// bit behind still finds the time passed.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);
/// More missed times than this are reported (a stopped controller or a
/// wrong clock), not started one by one.
const MANY_MISSED: i64 = 100;

pub struct Observed<'a> {
    pub cron_job: &'a CronJob,
    /// The Jobs it controls.
    pub jobs: Vec<&'a Job>,
    /// uids in `status.active` that a live read found gone.
    pub missing: HashSet<String>,
    pub now: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

fn note(warning: bool, reason: &str, message: String) -> Note {
    Note {
        warning,
        reason: reason.into(),
        message,
    }
}

#[derive(Debug)]
pub struct Plan {
    /// The status to write if `write`; after a create, see [`created`].
    pub status: CronJobStatus,
    pub write: bool,
    /// Finished Jobs beyond the history limits, oldest first.
    pub prune: Vec<String>,
    /// Active Jobs to delete before creating (concurrencyPolicy Replace).
    pub replace: Vec<String>,
    /// The Job due now, and the time it was scheduled for.
    pub create: Option<(Job, DateTime<Utc>)>,
    pub notes: Vec<Note>,
    /// When to look again (the next scheduled time); None: only on a change.
    pub requeue_after: Option<Duration>,
}

pub fn job_finished(j: &Job) -> Option<&str> {
    j.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn uid_of(j: &Job) -> &str {
    j.metadata.uid.as_deref().unwrap_or("")
}

fn name_of(j: &Job) -> &str {
    j.metadata.name.as_deref().unwrap_or("")
}

pub fn in_active(status: &CronJobStatus, uid: &str) -> bool {
    status
        .active
        .iter()
        .flatten()
        .any(|r| r.uid.as_deref() == Some(uid))
}

fn remove_active(status: &mut CronJobStatus, uid: &str) {
    if let Some(a) = status.active.as_mut() {
        a.retain(|r| r.uid.as_deref() != Some(uid));
    }
}

/// Upstream's job name: the scheduled time in minutes since the epoch, so
/// a time is never run twice (the name is taken).
pub fn job_name(cron_job: &str, scheduled: DateTime<Utc>) -> String {
    format!("{cron_job}-{}", scheduled.timestamp().div_euclid(60))
}

/// What [`most_recent`] finds.
struct Recent {
    /// The time counted from.
    earliest: DateTime<Utc>,
    /// The latest scheduled time not after now, if one is unmet.
    latest: Option<DateTime<Utc>>,
    missed: Missed,
}

#[derive(Debug, PartialEq, Eq)]
enum Missed {
    None,
    Few,
    Many,
}

/// Upstream's mostRecentScheduleTime: the time counted from (last
/// schedule or creation, or the starting deadline), the latest scheduled
/// time not after `now` if any is unmet, and how many were missed.
fn most_recent(
    cj: &CronJob,
    now: DateTime<Utc>,
    sched: &Schedule,
    with_deadline: bool,
) -> Result<Recent, String> {
    let created = cj
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let mut earliest = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map_or(created, |t| t.0);
    let deadline = cj.spec.as_ref().and_then(|s| s.starting_deadline_seconds);
    if with_deadline && let Some(d) = deadline {
        earliest = earliest.max(now - k8s_openapi::chrono::Duration::seconds(d));
    }
    let never = || "the schedule never fires".to_string();
    let t1 = sched.next(earliest).ok_or_else(never)?;
    if now < t1 {
        return Ok(Recent {
            earliest,
            latest: None,
            missed: Missed::None,
        });
    }
    let t2 = sched.next(t1).ok_or_else(never)?;
    if now < t2 {
        return Ok(Recent {
            earliest,
            latest: Some(t1),
            missed: Missed::None,
        });
    }
    let between = (t2 - t1).num_milliseconds().div_euclid(1000)
        + i64::from((t2 - t1).num_milliseconds().rem_euclid(1000) >= 500);
    if between < 1 {
        return Err("time difference between two schedules is less than 1 second".into());
    }
    let missed = (now - t1).num_seconds() / between + 1;
    // Jump close to now, then let the schedule walk the last steps (exact
    // for irregular schedules such as `30 6-16/4 * * 1-5`).
    let mut t = t1 + k8s_openapi::chrono::Duration::seconds((missed - 2) * between);
    let mut latest = None;
    while let Some(n) = sched.next(t).filter(|n| *n <= now) {
        latest = Some(n);
        t = n;
    }
    let kind = if missed > MANY_MISSED {
        Missed::Many
    } else {
        Missed::Few
    };
    Ok(Recent {
        earliest,
        latest,
        missed: kind,
    })
}

/// Upstream's nextScheduleTimeDuration: until the next time after the
/// last one handled, plus a little.
fn next_wake(cj: &CronJob, now: DateTime<Utc>, sched: &Schedule) -> Option<Duration> {
    let from = match most_recent(cj, now, sched, false) {
        Err(_) => now,
        Ok(Recent {
            latest: Some(t), ..
        }) => t,
        Ok(Recent {
            earliest,
            missed: Missed::None,
            ..
        }) => earliest,
        Ok(_) => now,
    };
    let next = sched.next(from)?;
    Some((next - now).to_std().unwrap_or(Duration::ZERO) + NEXT_SCHEDULE_DELTA)
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job for `scheduled` (upstream's getJobFromTemplate2).
fn job_for(cj: &CronJob, scheduled: DateTime<Utc>, sched: &Schedule) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let tm = spec.job_template.metadata.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), sched.local_rfc3339(scheduled));
    let name = cj.metadata.name.clone().unwrap_or_default();
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name,
                uid: cj.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: spec.job_template.spec,
        status: None,
    }
}

/// Finished Jobs of one kind beyond `limit`, oldest start first (no start
/// time last, ties by name).
fn oldest_beyond(mut jobs: Vec<&Job>, limit: Option<i32>) -> Vec<&Job> {
    let Some(limit) = limit else {
        return Vec::new();
    };
    let excess = jobs.len().saturating_sub(limit.max(0) as usize);
    jobs.sort_by(|a, b| {
        let start = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
        };
        (start(a).is_none(), start(a), name_of(a)).cmp(&(start(b).is_none(), start(b), name_of(b)))
    });
    jobs.truncate(excess);
    jobs
}

pub fn plan(o: &Observed) -> Plan {
    let cj = o.cron_job;
    let spec = cj.spec.clone().unwrap_or_default();
    let mut status = cj.status.clone().unwrap_or_default();
    let mut write = false;
    let mut notes = Vec::new();
    let mut plan = Plan {
        status: CronJobStatus::default(),
        write: false,
        prune: Vec::new(),
        replace: Vec::new(),
        create: None,
        notes: Vec::new(),
        requeue_after: None,
    };

    // History.
    let finished_as = |t: &str| -> Vec<&Job> {
        o.jobs
            .iter()
            .copied()
            .filter(|j| job_finished(j) == Some(t))
            .collect()
    };
    for j in oldest_beyond(finished_as("Complete"), spec.successful_jobs_history_limit)
        .into_iter()
        .chain(oldest_beyond(
            finished_as("Failed"),
            spec.failed_jobs_history_limit,
        ))
    {
        plan.prune.push(name_of(j).to_string());
        if in_active(&status, uid_of(j)) {
            remove_active(&mut status, uid_of(j));
            write = true;
        }
    }

    // The active list against the Jobs.
    let children: HashSet<&str> = o.jobs.iter().map(|j| uid_of(j)).collect();
    for j in &o.jobs {
        let found = in_active(&status, uid_of(j));
        match job_finished(j) {
            None if !found => notes.push(note(
                true,
                "UnexpectedJob",
                format!(
                    "Saw a job that the controller did not create or forgot: {}",
                    name_of(j)
                ),
            )),
            None => {}
            Some(how) => {
                if found {
                    remove_active(&mut status, uid_of(j));
                    write = true;
                    notes.push(note(
                        false,
                        "SawCompletedJob",
                        format!("Saw completed job: {}, status: {how}", name_of(j)),
                    ));
                }
                let completed = j.status.as_ref().and_then(|s| s.completion_time.as_ref());
                if let Some(t) = completed.filter(|_| how == "Complete")
                    && status
                        .last_successful_time
                        .as_ref()
                        .is_none_or(|l| t.0 > l.0)
                {
                    status.last_successful_time = Some(t.clone());
                    write = true;
                }
            }
        }
    }
    let gone: Vec<ObjectReference> = status
        .active
        .iter()
        .flatten()
        .filter(|r| {
            let uid = r.uid.as_deref().unwrap_or("");
            !children.contains(uid) && o.missing.contains(uid)
        })
        .cloned()
        .collect();
    for r in gone {
        notes.push(note(
            false,
            "MissingJob",
            format!(
                "Active job went missing: {}",
                r.name.as_deref().unwrap_or("")
            ),
        ));
        remove_active(&mut status, r.uid.as_deref().unwrap_or(""));
        write = true;
    }

    let finish = |mut plan: Plan, status: CronJobStatus, write: bool, notes: Vec<Note>| {
        plan.status = status;
        plan.write = write;
        plan.notes = notes;
        plan
    };
    if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
        return finish(plan, status, write, notes);
    }
    let sched = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            let reason = match e {
                super::schedule::ScheduleError::UnknownTimeZone(_) => "UnknownTimeZone",
                _ => "UnparseableSchedule",
            };
            notes.push(note(true, reason, e.to_string()));
            return finish(plan, status, write, notes);
        }
    };
    let mut with_status = cj.clone();
    with_status.status = Some(status.clone());
    let cj = &with_status;
    plan.requeue_after = next_wake(cj, o.now, &sched);
    let scheduled = match most_recent(cj, o.now, &sched, true) {
        Err(e) => {
            notes.push(note(
                true,
                "InvalidSchedule",
                format!("invalid schedule: {} : {e}", spec.schedule),
            ));
            plan.requeue_after = None;
            return finish(plan, status, write, notes);
        }
        Ok(Recent { latest, missed, .. }) => {
            if missed == Missed::Many {
                notes.push(note(
                    true,
                    "TooManyMissedTimes",
                    "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
                ));
            }
            latest
        }
    };
    let Some(scheduled) = scheduled.filter(|t| *t <= o.now) else {
        return finish(plan, status, write, notes);
    };
    let too_late = spec
        .starting_deadline_seconds
        .is_some_and(|d| scheduled + k8s_openapi::chrono::Duration::seconds(d) < o.now);
    if too_late {
        notes.push(note(
            true,
            "MissSchedule",
            format!(
                "Missed scheduled time to start a job: {}",
                scheduled.format("%a, %d %b %Y %H:%M:%S %z")
            ),
        ));
        return finish(plan, status, write, notes);
    }
    let name = job_name(cj.metadata.name.as_deref().unwrap_or(""), scheduled);
    let processed = status
        .active
        .iter()
        .flatten()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
        || status
            .last_schedule_time
            .as_ref()
            .is_some_and(|t| t.0 == scheduled);
    if processed {
        return finish(plan, status, write, notes);
    }
    let active: Vec<String> = status
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.name.clone())
        .collect();
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            notes.push(note(
                false,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            ));
            return finish(plan, status, write, notes);
        }
        Some("Replace") if !active.is_empty() => {
            plan.replace = active;
            status.active = Some(Vec::new());
            write = true;
        }
        _ => {}
    }
    plan.create = Some((job_for(cj, scheduled, &sched), scheduled));
    finish(plan, status, write, notes)
}

/// The status once `job` (created now, or found already created for
/// this time) runs for `scheduled`.
pub fn created(status: &mut CronJobStatus, job: &Job, scheduled: DateTime<Utc>) {
    if !in_active(status, uid_of(job)) {
        status
            .active
            .get_or_insert_with(Vec::new)
            .push(job_ref(job));
    }
    status.last_schedule_time = Some(Time(scheduled));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2024-01-01T{s}Z"))
            .expect("time")
            .with_timezone(&Utc)
    }

    fn cron_job(spec: Value, status: Value) -> CronJob {
        let mut s = json!({"schedule": "* * * * *", "concurrencyPolicy": "Allow", "suspend": false,
            "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1,
            "jobTemplate": {"metadata": {"labels": {"app": "tick"}},
                "spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                    "containers": [{"name": "c", "image": "busybox"}]}}}}});
        for (k, v) in spec.as_object().expect("spec").clone() {
            s[k] = v;
        }
        serde_json::from_value(json!({
            "metadata": {"name": "tick", "namespace": "ns", "uid": "cj1",
                "creationTimestamp": "2024-01-01T00:00:30Z"},
            "spec": s, "status": status,
        }))
        .expect("cronjob")
    }

    fn job(name: &str, started: Option<&str>, finished: Option<&str>) -> Job {
        let conditions: Vec<Value> = finished
            .into_iter()
            .map(|f| json!({"type": f, "status": "True"}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"template": {}},
            "status": {"startTime": started.map(|s| format!("2024-01-01T{s}Z")),
                "completionTime": finished.filter(|f| *f == "Complete").and(started).map(|s| format!("2024-01-01T{s}Z")),
                "conditions": conditions},
        }))
        .expect("job")
    }

    fn active(names: &[&str]) -> Value {
        json!(names
            .iter()
            .map(|n| json!({"kind": "Job", "name": n, "namespace": "ns", "uid": format!("uid-{n}")}))
            .collect::<Vec<_>>())
    }

    fn plan_at(cj: &CronJob, jobs: &[Job], now: &str) -> Plan {
        plan(&Observed {
            cron_job: cj,
            jobs: jobs.iter().collect(),
            missing: HashSet::new(),
            now: t(now),
        })
    }

    fn reasons(p: &Plan) -> Vec<&str> {
        p.notes.iter().map(|n| n.reason.as_str()).collect()
    }

    #[test]
    fn a_job_is_created_when_its_time_comes_named_for_the_minute() {
        let p = plan_at(&cron_job(json!({}), json!({})), &[], "00:01:05");
        let (job, at) = p.create.expect("a job is due");
        assert_eq!(at, t("00:01:00"));
        assert_eq!(job.metadata.name.as_deref(), Some("tick-28401121"));
        let annotations = job.metadata.annotations.expect("annotations");
        assert_eq!(annotations[SCHEDULED_TIMESTAMP], "2024-01-01T00:01:00Z");
        assert_eq!(job.metadata.labels.expect("labels")["app"], "tick");
        let owner = &job.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("CronJob", "cj1")
        );
        assert_eq!(owner.controller, Some(true));
        assert!(job.spec.is_some());
        // It wakes just after the next minute.
        assert_eq!(p.requeue_after, Some(Duration::from_millis(55_100)));
    }

    #[test]
    fn nothing_is_due_before_the_first_time_and_it_wakes_then() {
        let p = plan_at(&cron_job(json!({}), json!({})), &[], "00:00:50");
        assert!(p.create.is_none());
        assert_eq!(p.requeue_after, Some(Duration::from_millis(10_100)));
        assert!(!p.write);
    }

    #[test]
    fn a_time_already_run_is_not_run_again() {
        let cj = cron_job(
            json!({}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z"}),
        );
        let p = plan_at(&cj, &[], "00:01:30");
        assert!(p.create.is_none());
        assert_eq!(p.requeue_after, Some(Duration::from_millis(30_100)));
        // Also when the status write was lost but the Job is active.
        let cj = cron_job(json!({}), json!({"active": active(&["tick-28401121"])}));
        let running = job("tick-28401121", Some("00:01:00"), None);
        assert!(plan_at(&cj, &[running], "00:01:30").create.is_none());
    }

    #[test]
    fn a_created_job_becomes_active_and_the_last_schedule() {
        let mut status = CronJobStatus::default();
        let mut j = job("tick-28401121", None, None);
        j.metadata.resource_version = Some("42".into());
        created(&mut status, &j, t("00:01:00"));
        created(&mut status, &j, t("00:01:00"));
        let a = status.active.expect("active");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].uid.as_deref(), Some("uid-tick-28401121"));
        assert_eq!(a[0].kind.as_deref(), Some("Job"));
        assert_eq!(status.last_schedule_time.map(|t| t.0), Some(t("00:01:00")));
    }

    #[test]
    fn forbid_skips_a_time_while_a_job_runs() {
        let cj = cron_job(
            json!({"concurrencyPolicy": "Forbid"}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z", "active": active(&["tick-28401121"])}),
        );
        let running = job("tick-28401121", Some("00:01:00"), None);
        let p = plan_at(&cj, &[running], "00:02:01");
        assert!(p.create.is_none());
        assert_eq!(reasons(&p), ["JobAlreadyActive"]);
        assert_eq!(p.requeue_after, Some(Duration::from_millis(59_100)));
    }

    #[test]
    fn replace_deletes_the_running_job_first() {
        let cj = cron_job(
            json!({"concurrencyPolicy": "Replace"}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z", "active": active(&["tick-28401121"])}),
        );
        let running = job("tick-28401121", Some("00:01:00"), None);
        let p = plan_at(&cj, &[running], "00:02:01");
        assert_eq!(p.replace, ["tick-28401121"]);
        assert!(p.status.active.as_ref().is_some_and(Vec::is_empty));
        assert_eq!(p.create.map(|c| c.1), Some(t("00:02:00")));
    }

    #[test]
    fn allow_runs_jobs_side_by_side() {
        let cj = cron_job(
            json!({}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z", "active": active(&["tick-28401121"])}),
        );
        let running = job("tick-28401121", Some("00:01:00"), None);
        let p = plan_at(&cj, &[running], "00:02:01");
        assert!(p.replace.is_empty());
        assert_eq!(p.create.map(|c| c.1), Some(t("00:02:00")));
    }

    #[test]
    fn only_the_latest_missed_time_runs_and_older_than_the_deadline_none() {
        let cj = cron_job(
            json!({}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z"}),
        );
        let p = plan_at(&cj, &[], "00:05:30");
        assert_eq!(p.create.map(|c| c.1), Some(t("00:05:00")));
        // With a 10 s starting deadline the 00:05 start is already too old.
        let cj = cron_job(
            json!({"startingDeadlineSeconds": 10}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z"}),
        );
        let p = plan_at(&cj, &[], "00:05:30");
        assert!(p.create.is_none());
        assert_eq!(p.requeue_after, Some(Duration::from_millis(30_100)));
        // Within a 45 s deadline it still runs.
        let cj = cron_job(
            json!({"startingDeadlineSeconds": 45}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z"}),
        );
        assert_eq!(
            plan_at(&cj, &[], "00:05:30").create.map(|c| c.1),
            Some(t("00:05:00"))
        );
    }

    #[test]
    fn more_than_a_hundred_missed_times_are_reported() {
        let cj = cron_job(json!({}), json!({}));
        let p = plan_at(&cj, &[], "03:00:30");
        assert_eq!(reasons(&p), ["TooManyMissedTimes"]);
        assert_eq!(p.create.map(|c| c.1), Some(t("03:00:00")));
        let p = plan_at(&cj, &[], "01:00:30");
        assert!(reasons(&p).is_empty());
    }

    #[test]
    fn suspended_or_deleted_cron_jobs_start_nothing_and_do_not_wake() {
        let cj = cron_job(json!({"suspend": true}), json!({}));
        let p = plan_at(&cj, &[], "00:05:00");
        assert!(p.create.is_none() && p.requeue_after.is_none());
        let mut cj = cron_job(json!({}), json!({}));
        cj.metadata.deletion_timestamp = Some(Time(t("00:00:40")));
        let p = plan_at(&cj, &[], "00:05:00");
        assert!(p.create.is_none() && p.requeue_after.is_none());
    }

    #[test]
    fn a_finished_job_leaves_the_active_list() {
        let cj = cron_job(
            json!({}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z", "active": active(&["tick-28401121"])}),
        );
        let done = job("tick-28401121", Some("00:01:10"), Some("Complete"));
        let p = plan_at(&cj, &[done], "00:01:30");
        assert!(p.write);
        assert!(p.status.active.as_ref().is_some_and(Vec::is_empty));
        assert_eq!(reasons(&p), ["SawCompletedJob"]);
        assert_eq!(
            p.status.last_successful_time.map(|t| t.0),
            Some(t("00:01:10"))
        );
        let failed = job("tick-28401121", Some("00:01:10"), Some("Failed"));
        let p = plan_at(&cj, &[failed], "00:01:30");
        assert!(p.status.last_successful_time.is_none());
    }

    #[test]
    fn history_limits_prune_the_oldest_finished_jobs() {
        let cj = cron_job(
            json!({"successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1}),
            json!({"lastScheduleTime": "2024-01-01T00:05:00Z"}),
        );
        let jobs = [
            job("ok-3", Some("00:03:00"), Some("Complete")),
            job("ok-1", Some("00:01:00"), Some("Complete")),
            job("ok-4", Some("00:04:00"), Some("Complete")),
            job("ok-2", Some("00:02:00"), Some("Complete")),
            job("bad-1", Some("00:01:00"), Some("Failed")),
            job("bad-2", Some("00:02:00"), Some("Failed")),
            job("running", Some("00:05:00"), None),
        ];
        let p = plan_at(&cj, &jobs, "00:05:10");
        assert_eq!(p.prune, ["ok-1", "ok-2", "bad-1"]);
    }

    #[test]
    fn an_active_job_gone_from_the_cluster_leaves_the_list() {
        let cj = cron_job(
            json!({}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z",
            "active": active(&["tick-28401121"])}),
        );
        let p = plan(&Observed {
            cron_job: &cj,
            jobs: vec![],
            missing: HashSet::from(["uid-tick-28401121".to_string()]),
            now: t("00:01:30"),
        });
        assert!(p.status.active.as_ref().is_some_and(Vec::is_empty));
        assert_eq!(reasons(&p), ["MissingJob"]);
        // Merely not cached yet: it stays.
        let p = plan_at(&cj, &[], "00:01:30");
        assert_eq!(p.status.active.map(|a| a.len()), Some(1));
    }

    #[test]
    fn a_running_job_not_in_the_list_is_reported() {
        let cj = cron_job(
            json!({}),
            json!({"lastScheduleTime": "2024-01-01T00:01:00Z"}),
        );
        let stray = job("tick-999", Some("00:01:00"), None);
        assert_eq!(
            reasons(&plan_at(&cj, &[stray], "00:01:30")),
            ["UnexpectedJob"]
        );
    }

    #[test]
    fn the_time_zone_decides_when_and_is_written_on_the_job() {
        let cj = cron_job(
            json!({"schedule": "0 9 * * *", "timeZone": "Europe/Berlin"}),
            json!({}),
        );
        assert!(plan_at(&cj, &[], "07:59:00").create.is_none());
        let (job, at) = plan_at(&cj, &[], "08:00:05")
            .create
            .expect("due at 09:00 Berlin");
        assert_eq!(at, t("08:00:00"));
        assert_eq!(
            job.metadata.annotations.expect("annotations")[SCHEDULED_TIMESTAMP],
            "2024-01-01T09:00:00+01:00"
        );
    }

    #[test]
    fn an_unparseable_schedule_is_an_event_not_a_loop() {
        let cj = cron_job(json!({"schedule": "61 * * * *"}), json!({}));
        let p = plan_at(&cj, &[], "00:05:00");
        assert_eq!(reasons(&p), ["UnparseableSchedule"]);
        assert!(p.create.is_none() && p.requeue_after.is_none());
    }
}
