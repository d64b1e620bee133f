//! The Job controller's decisions, upstream's syncJob without the I/O, in
//! the three steps that surround its writes:
//!
//! 1. [`plan`]: count what the pods show, decide whether the Job is done
//!    (and how), and which pods to create or delete.
//! 2. [`track`] (after the creates and deletes): the status to write
//!    before any finalizer goes, listing each newly finished pod by uid in
//!    `status.uncountedTerminatedPods`, and the pods whose tracking
//!    finalizer may now be removed.
//! 3. [`finish`] (after the finalizers went): the uids whose finalizer is
//!    gone move from the uncounted lists into `succeeded`/`failed`, and a
//!    Job with nothing left uncounted or terminating gets its terminal
//!    condition.
//!
//! Because a pod is listed before its finalizer goes and counted only
//! after, a finished pod deleted by anyone at any moment is counted
//! exactly once.
use std::{
    collections::{BTreeSet, HashSet},
    time::Duration,
};

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    chrono::{DateTime, Utc},
};

use super::{backoff::Record, indexes::Intervals, pods};

/// Upstream's caps per sync: the uncounted lists stay small (about 20 kB)
/// and one big Job does not starve the others.
pub const MAX_UNCOUNTED: usize = 500;
pub const MAX_CREATE_DELETE: usize = 500;

pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const FAILURE_TARGET: &str = "FailureTarget";
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
pub const SUSPENDED: &str = "Suspended";

/// What the controller sees of one Job.
pub struct Observed<'a> {
    pub job: &'a Job,
    /// The pods the Job controls.
    pub pods: Vec<&'a Pod>,
    pub now: DateTime<Utc>,
    pub backoff: &'a Record,
}

/// What the Job does to its pods this sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manage {
    /// The Job is being deleted: its pods are the garbage collector's.
    Skip,
    /// The Job is finishing: delete every active pod (by name), keeping
    /// their finalizers until they are counted.
    Finish(Vec<String>),
    /// Delete these pods (suspended, too many, duplicate indexes), their
    /// finalizer removed first.
    Remove(Vec<String>),
    /// Create one pod per entry (`Some(index)` for an Indexed Job). Empty:
    /// nothing to do, or still backing off after failures.
    Create(Vec<Option<i32>>),
}

pub struct Plan {
    pub manage: Manage,
    /// The backoff record to keep once the status is written.
    pub backoff: Record,
    /// When to look again although nothing changes (deadline, backoff).
    pub requeue_after: Option<Duration>,
    status: JobStatus,
    finished: Option<JobCondition>,
    succeeded: i32,
    active: i32,
    ready: i32,
    terminating: i32,
    prev_indexes: Intervals,
    indexes: Intervals,
}

/// What the creates and deletes of [`Plan::manage`] achieved.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Pods created.
    pub created: i32,
    /// Names of pods deleted (or found gone).
    pub deleted: Vec<String>,
}

/// An event on the Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

impl Note {
    fn normal(reason: &str, message: &str) -> Self {
        Note {
            warning: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

pub struct Track {
    /// The status to write before removing finalizers, if `flush`.
    pub status: JobStatus,
    pub flush: bool,
    /// `(name, uid)` of the pods whose tracking finalizer goes now.
    pub remove_finalizers: Vec<(String, String)>,
    pub notes: Vec<Note>,
    finished: Option<JobCondition>,
    with_finalizer: BTreeSet<String>,
    reached_max: bool,
    terminating: i32,
}

pub struct Finish {
    pub status: JobStatus,
    /// Whether `status` differs from what [`Track`] wrote.
    pub write: bool,
    pub notes: Vec<Note>,
}

fn spec_of(job: &Job) -> k8s_openapi::api::batch::v1::JobSpec {
    job.spec.clone().unwrap_or_default()
}

fn indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

/// Only failed pods are replaced (and only they count as failed): pods
/// being deleted are waited for.
fn only_replace_failed(job: &Job) -> bool {
    job.spec.as_ref().is_some_and(|s| {
        s.pod_failure_policy.is_some() || s.pod_replacement_policy.as_deref() == Some("Failed")
    })
}

pub fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Complete or Failed: nothing more will happen to this Job.
pub fn finished(job: &Job) -> Option<&JobCondition> {
    let status = job.status.as_ref()?;
    condition(status, COMPLETE).or_else(|| condition(status, FAILED))
}

fn new_condition(type_: &str, reason: &str, message: &str, now: DateTime<Utc>) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn retyped(c: &JobCondition, type_: &str, now: DateTime<Utc>) -> JobCondition {
    new_condition(
        type_,
        c.reason.as_deref().unwrap_or(""),
        c.message.as_deref().unwrap_or(""),
        now,
    )
}

/// Upstream's ensureJobConditionStatus: sets a condition of `type_` to
/// `status`; a False one is never added, only set. Returns whether it
/// changed anything.
fn ensure_condition(
    s: &mut JobStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> bool {
    let list = s.conditions.get_or_insert_with(Vec::new);
    let mut fresh = new_condition(type_, reason, message, now);
    fresh.status = status.into();
    if let Some(c) = list.iter_mut().find(|c| c.type_ == type_) {
        let same = c.status == status
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message);
        if !same {
            *c = fresh;
        }
        return !same;
    }
    if status != "False" {
        list.push(fresh);
        return true;
    }
    false
}

/// Zero is written as absent, as upstream's `omitempty` counters are.
fn counter(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// Restarts of OnFailure pods still running count against backoffLimit.
fn past_backoff_limit_on_failure(job: &Job, pods: &[&Pod], limit: i32) -> bool {
    let on_failure = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    if !on_failure {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(pods::phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

fn names(pods: &[&Pod]) -> Vec<String> {
    pods.iter().map(|p| pods::name(p).to_string()).collect()
}

/// Upstream's activePodsForRemoval: at least `at_least` pods, cheapest
/// first; for an Indexed Job also every pod without a valid index and all
/// but the best pod of each index.
fn for_removal<'a>(job: &Job, active: &[&'a Pod], at_least: usize) -> Vec<&'a Pod> {
    let mut rm: Vec<&Pod> = Vec::new();
    let mut left: Vec<&Pod> = Vec::new();
    if indexed(job) {
        let completions = spec_of(job).completions.unwrap_or(0);
        let mut by_index: std::collections::BTreeMap<i32, Vec<&Pod>> = Default::default();
        for p in active {
            match pods::index(p).filter(|i| *i < completions) {
                Some(i) => by_index.entry(i).or_default().push(p),
                None => rm.push(p),
            }
        }
        for (_, mut same) in by_index {
            same.sort_by(|a, b| pods::removal_order(a, b));
            if let Some(keep) = same.pop() {
                left.push(keep);
            }
            rm.extend(same);
        }
    } else {
        left = active.to_vec();
    }
    if rm.len() < at_least {
        left.sort_by(|a, b| pods::removal_order(a, b));
        let more = (at_least - rm.len()).min(left.len());
        rm.extend(left.into_iter().take(more));
    }
    rm
}

pub fn plan(o: &Observed) -> Plan {
    let job = o.job;
    let spec = spec_of(job);
    let mut status = job.status.clone().unwrap_or_default();
    let uncounted = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default)
        .clone();
    let unc_succeeded: HashSet<&str> = uncounted
        .succeeded
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let unc_failed: HashSet<&str> = uncounted
        .failed
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let is_indexed = indexed(job);
    let completions = spec.completions;
    let only_failed = only_replace_failed(job);
    let suspended = spec.suspend == Some(true);

    let active_pods: Vec<&Pod> = o.pods.iter().copied().filter(|p| pods::active(p)).collect();
    let active = active_pods.len() as i32;
    let ready = active_pods.iter().filter(|p| pods::ready(p)).count() as i32;
    let terminating = o.pods.iter().filter(|p| pods::terminating(p)).count() as i32;
    let countable = |p: &&Pod| {
        pods::has_finalizer(p)
            && (!is_indexed || pods::index(p).is_some_and(|i| i < completions.unwrap_or(0)))
    };
    let new_succeeded: Vec<&Pod> = o
        .pods
        .iter()
        .copied()
        .filter(countable)
        .filter(|p| !unc_succeeded.contains(pods::uid(p)) && pods::phase(p) == "Succeeded")
        .collect();
    let new_failed: Vec<&Pod> = o
        .pods
        .iter()
        .copied()
        .filter(countable)
        .filter(|p| !unc_failed.contains(pods::uid(p)) && pods::failed(p, only_failed))
        .collect();
    let mut succeeded =
        status.succeeded.unwrap_or(0) + new_succeeded.len() as i32 + unc_succeeded.len() as i32;
    let failed = status.failed.unwrap_or(0) + new_failed.len() as i32 + unc_failed.len() as i32;

    if status.start_time.is_none() && !suspended {
        status.start_time = Some(Time(o.now));
    }
    let backoff = o.backoff.after(&new_succeeded, &new_failed);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let mut requeue_after: Option<Duration> = None;

    let mut finished = condition(&status, SUCCESS_CRITERIA_MET).cloned();
    if finished.is_none()
        && let Some(target) = condition(&status, FAILURE_TARGET)
    {
        finished = Some(retyped(target, FAILED, o.now));
    }
    if finished.is_none() {
        let started = status.start_time.as_ref().map(|t| t.0);
        let deadline = spec
            .active_deadline_seconds
            .zip(started)
            .filter(|_| !suspended)
            .map(|(secs, start)| start + k8s_openapi::chrono::Duration::seconds(secs));
        if failed > backoff_limit || past_backoff_limit_on_failure(job, &o.pods, backoff_limit) {
            finished = Some(new_condition(
                FAILURE_TARGET,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                o.now,
            ));
        } else if deadline.is_some_and(|d| o.now >= d) {
            finished = Some(new_condition(
                FAILURE_TARGET,
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                o.now,
            ));
        } else if let Some(d) = deadline {
            requeue_after = Some((d - o.now).to_std().unwrap_or(Duration::ZERO));
        }
    }

    let (mut prev_indexes, mut indexes) = (Intervals::default(), Intervals::default());
    if is_indexed {
        let c = completions.unwrap_or(0);
        prev_indexes = Intervals::parse(status.completed_indexes.as_deref().unwrap_or(""), c);
        indexes = prev_indexes.with(
            o.pods
                .iter()
                .filter(|p| pods::phase(p) == "Succeeded" && pods::has_finalizer(p))
                .filter_map(|p| pods::index(p))
                .filter(|i| *i < c),
        );
        succeeded = indexes.total();
    }

    let manage = if finished.is_some() {
        Manage::Finish(names(&active_pods))
    } else if job.metadata.deletion_timestamp.is_some() {
        Manage::Skip
    } else if suspended {
        Manage::Remove(names(&for_removal(job, &active_pods, active_pods.len())))
    } else {
        let parallelism = spec.parallelism.unwrap_or(1);
        let want = match completions {
            None if succeeded > 0 => active,
            None => parallelism,
            Some(c) => (c - succeeded).clamp(0, parallelism.max(0)),
        };
        let at_least = (active - want).max(0) as usize;
        let mut remove = for_removal(job, &active_pods, at_least);
        remove.truncate(MAX_CREATE_DELETE);
        if !remove.is_empty() {
            Manage::Remove(names(&remove))
        } else {
            let waiting = if only_failed { terminating } else { 0 };
            let diff = (want - waiting - active).max(0) as usize;
            let wait = backoff.remaining(o.now);
            if diff > 0 && !wait.is_zero() {
                let wait = wait.max(Duration::from_secs(1));
                requeue_after = Some(requeue_after.map_or(wait, |r| r.min(wait)));
                Manage::Create(Vec::new())
            } else {
                let diff = diff.min(MAX_CREATE_DELETE);
                if is_indexed {
                    let mut taken = indexes.with(active_pods.iter().filter_map(|p| pods::index(p)));
                    if only_failed {
                        taken = taken.with(
                            o.pods
                                .iter()
                                .filter(|p| pods::terminating(p))
                                .filter_map(|p| pods::index(p)),
                        );
                    }
                    let pending = taken.first_missing(diff, completions.unwrap_or(0));
                    Manage::Create(pending.into_iter().map(Some).collect())
                } else {
                    Manage::Create(vec![None; diff])
                }
            }
        }
    };
    Plan {
        manage,
        backoff,
        requeue_after,
        status,
        finished,
        succeeded,
        active,
        ready,
        terminating,
        prev_indexes,
        indexes,
    }
}

pub fn track(o: &Observed, plan: Plan, outcome: &Outcome) -> Track {
    let job = o.job;
    let spec = spec_of(job);
    let is_indexed = indexed(job);
    let completions = spec.completions;
    let only_failed = only_replace_failed(job);
    let Plan {
        manage,
        mut status,
        mut finished,
        succeeded,
        mut active,
        mut ready,
        mut terminating,
        prev_indexes,
        indexes,
        ..
    } = plan;
    let deleted: HashSet<&str> = outcome.deleted.iter().map(String::as_str).collect();
    let deleted_ready = o
        .pods
        .iter()
        .filter(|p| deleted.contains(pods::name(p)) && pods::ready(p))
        .count() as i32;
    let deleted_n = deleted.len() as i32;
    let mut notes = Vec::new();
    let mut flush = false;
    match &manage {
        Manage::Finish(_) => {
            if deleted_n != active {
                // Not all gone yet: finish on a later sync.
                finished = None;
            }
            active -= deleted_n;
            terminating += deleted_n;
            ready -= deleted_ready;
        }
        Manage::Remove(_) => {
            active -= deleted_n;
            terminating += deleted_n;
            ready -= deleted_ready;
        }
        Manage::Create(_) => active += outcome.created,
        Manage::Skip => {}
    }
    if !matches!(manage, Manage::Finish(_)) {
        let complete = match completions {
            None => succeeded > 0 && active == 0,
            Some(c) => succeeded >= c && active == 0,
        };
        if complete {
            finished = Some(new_condition(
                SUCCESS_CRITERIA_MET,
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                o.now,
            ));
        } else if manage != Manage::Skip {
            if spec.suspend == Some(true) {
                if ensure_condition(
                    &mut status,
                    SUSPENDED,
                    "True",
                    "JobSuspended",
                    "Job suspended",
                    o.now,
                ) {
                    flush = true;
                    notes.push(Note::normal("Suspended", "Job suspended"));
                }
            } else if ensure_condition(
                &mut status,
                SUSPENDED,
                "False",
                "JobResumed",
                "Job resumed",
                o.now,
            ) {
                flush = true;
                notes.push(Note::normal("Resumed", "Job resumed"));
                // activeDeadlineSeconds counts time continuously active.
                status.start_time = Some(Time(o.now));
            }
        }
    }
    let was = job.status.clone().unwrap_or_default();
    flush |= active != was.active.unwrap_or(0)
        || Some(ready) != was.ready
        || Some(terminating) != was.terminating;
    status.active = counter(active);
    status.ready = Some(ready);
    status.terminating = Some(terminating);

    // trackJobStatusAndRemoveFinalizers.
    let with_finalizer: BTreeSet<String> = o
        .pods
        .iter()
        .filter(|p| pods::has_finalizer(p))
        .map(|p| pods::uid(p).to_string())
        .collect();
    flush |= count_uncounted(&mut status, &with_finalizer);
    let orig = job
        .status
        .as_ref()
        .and_then(|s| s.uncounted_terminated_pods.clone())
        .unwrap_or_default();
    let orig_succeeded: HashSet<&str> = orig
        .succeeded
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let orig_failed: HashSet<&str> = orig.failed.iter().flatten().map(String::as_str).collect();
    let mut sorted = o.pods.clone();
    if is_indexed {
        sorted.sort_by_key(|p| pods::index(p).unwrap_or(-1));
    }
    let mut remove = Vec::new();
    let mut new_indexes = Vec::new();
    let mut reached_max = false;
    let failing = finished
        .as_ref()
        .is_some_and(|c| c.type_ != SUCCESS_CRITERIA_MET);
    let c = completions.unwrap_or(0);
    let uncounted = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    for p in sorted {
        if !pods::has_finalizer(p) {
            continue;
        }
        let considered_failed = pods::failed(p, only_failed);
        let removable = job.metadata.deletion_timestamp.is_some()
            || finished.is_some()
            || pods::phase(p) == "Succeeded"
            || considered_failed;
        if !removable {
            continue;
        }
        let uid = pods::uid(p).to_string();
        remove.push((pods::name(p).to_string(), uid.clone()));
        if pods::phase(p) == "Succeeded" && !orig_failed.contains(uid.as_str()) {
            if is_indexed {
                if let Some(ix) = pods::index(p).filter(|i| *i < c && !prev_indexes.has(*i)) {
                    new_indexes.push(ix);
                    flush = true;
                }
            } else if !orig_succeeded.contains(uid.as_str()) {
                flush = true;
                uncounted.succeeded.get_or_insert_with(Vec::new).push(uid);
            }
        } else if considered_failed || failing {
            let valid = !is_indexed || pods::index(p).is_some_and(|i| i < c);
            if !orig_failed.contains(uid.as_str()) && valid {
                flush = true;
                uncounted.failed.get_or_insert_with(Vec::new).push(uid);
            }
        }
        let listed = new_indexes.len()
            + uncounted.succeeded.as_ref().map_or(0, Vec::len)
            + uncounted.failed.as_ref().map_or(0, Vec::len);
        if listed >= MAX_UNCOUNTED {
            reached_max = true;
            break;
        }
    }
    if is_indexed {
        let all = indexes.with(new_indexes);
        let s = all.to_string();
        flush |= status.completed_indexes.as_deref().unwrap_or("") != s;
        status.succeeded = counter(all.total());
        status.completed_indexes = Some(s);
    }
    if let Some(cond) = finished.take() {
        finished = Some(match cond.type_.as_str() {
            FAILURE_TARGET => {
                status
                    .conditions
                    .get_or_insert_with(Vec::new)
                    .push(cond.clone());
                flush = true;
                retyped(&cond, FAILED, o.now)
            }
            SUCCESS_CRITERIA_MET => {
                if condition(&status, SUCCESS_CRITERIA_MET).is_none() {
                    status
                        .conditions
                        .get_or_insert_with(Vec::new)
                        .push(cond.clone());
                    flush = true;
                }
                retyped(&cond, COMPLETE, o.now)
            }
            _ => cond,
        });
    }
    Track {
        status,
        flush,
        remove_finalizers: remove,
        notes,
        finished,
        with_finalizer,
        reached_max,
        terminating,
    }
}

/// Upstream's cleanUncountedPodsWithoutFinalizers: uncounted uids whose
/// pod has no finalizer any more (or is gone) move into the counters.
fn count_uncounted(status: &mut JobStatus, with_finalizer: &BTreeSet<String>) -> bool {
    let Some(unc) = status.uncounted_terminated_pods.as_mut() else {
        return false;
    };
    let mut moved = (0, 0);
    for (list, n) in [
        (&mut unc.succeeded, &mut moved.0),
        (&mut unc.failed, &mut moved.1),
    ] {
        if let Some(l) = list.as_mut() {
            let before = l.len();
            l.retain(|u| with_finalizer.contains(u));
            *n = (before - l.len()) as i32;
            if l.is_empty() {
                *list = None;
            }
        }
    }
    status.succeeded = counter(status.succeeded.unwrap_or(0) + moved.0);
    status.failed = counter(status.failed.unwrap_or(0) + moved.1);
    moved != (0, 0)
}

/// Step 3: `removed` are the uids whose finalizer is now gone.
pub fn finish(o: &Observed, track: Track, removed: &HashSet<String>) -> Finish {
    let Track {
        mut status,
        finished,
        mut with_finalizer,
        reached_max,
        terminating,
        ..
    } = track;
    with_finalizer.retain(|u| !removed.contains(u));
    let mut write = count_uncounted(&mut status, &with_finalizer);
    let mut notes = Vec::new();
    let nothing_uncounted = status.uncounted_terminated_pods.as_ref().is_none_or(|u| {
        u.succeeded.as_ref().is_none_or(Vec::is_empty)
            && u.failed.as_ref().is_none_or(Vec::is_empty)
    });
    if let Some(cond) = finished.filter(|_| !reached_max && nothing_uncounted && terminating == 0) {
        let reason = cond.reason.clone().unwrap_or_default();
        let message = cond.message.clone().unwrap_or_default();
        ensure_condition(&mut status, &cond.type_, "True", &reason, &message, o.now);
        write = true;
        if cond.type_ == COMPLETE {
            status.completion_time = cond.last_transition_time.clone();
            let completions = o.job.spec.as_ref().and_then(|s| s.completions);
            if completions.is_some_and(|c| status.succeeded.unwrap_or(0) > c) {
                notes.push(Note {
                    warning: true,
                    reason: "TooManySucceededPods".into(),
                    message: "Too many succeeded pods running after completion count reached"
                        .into(),
                });
            }
            notes.push(Note::normal("Completed", "Job completed"));
        } else {
            notes.push(Note {
                warning: true,
                reason,
                message,
            });
        }
    }
    Finish {
        status,
        write,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const T0: &str = "2024-01-01T00:00:00Z";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(T0)
            .expect("t0")
            .with_timezone(&Utc)
            + k8s_openapi::chrono::Duration::seconds(secs)
    }

    fn job(spec: Value, status: Value) -> Job {
        let mut s = json!({"parallelism": 1, "completions": 1, "backoffLimit": 6,
            "completionMode": "NonIndexed", "suspend": false,
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j1"}},
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}});
        for (k, v) in spec.as_object().expect("spec").clone() {
            s[k] = v;
        }
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "ns", "uid": "j1"},
            "spec": s, "status": status,
        }))
        .expect("job")
    }

    /// A pod of the Job: `phase`, tracked by the finalizer unless `counted`.
    fn pod(name: &str, phase: &str, extra: Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "namespace": "ns",
                "creationTimestamp": T0, "finalizers": [pods::TRACKING_FINALIZER],
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi",
                    "uid": "j1", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": phase},
        });
        if phase == "Running" {
            v["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        }
        merge(&mut v, extra);
        serde_json::from_value(v).expect("pod")
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn counted() -> Value {
        json!({"metadata": {"finalizers": []}})
    }

    fn indexed(i: i32) -> Value {
        json!({"metadata": {"annotations": {pods::COMPLETION_INDEX: i.to_string()}}})
    }

    /// One whole sync where every create, delete and finalizer removal
    /// succeeds.
    struct Round {
        plan_manage: Manage,
        requeue: Option<Duration>,
        tracked: JobStatus,
        flushed: bool,
        removed: Vec<String>,
        status: JobStatus,
        notes: Vec<Note>,
        backoff: Record,
    }

    fn round(job: &Job, pods: &[Pod], now: DateTime<Utc>, backoff: &Record) -> Round {
        let o = Observed {
            job,
            pods: pods.iter().collect(),
            now,
            backoff,
        };
        let p = plan(&o);
        let (plan_manage, requeue, backoff) =
            (p.manage.clone(), p.requeue_after, p.backoff.clone());
        let outcome = match &plan_manage {
            Manage::Create(v) => Outcome {
                created: v.len() as i32,
                deleted: vec![],
            },
            Manage::Finish(n) | Manage::Remove(n) => Outcome {
                created: 0,
                deleted: n.clone(),
            },
            Manage::Skip => Outcome::default(),
        };
        let t = track(&o, p, &outcome);
        let (tracked, flushed) = (t.status.clone(), t.flush);
        let removed: Vec<String> = t.remove_finalizers.iter().map(|(_, u)| u.clone()).collect();
        let mut notes = t.notes.clone();
        let f = finish(&o, t, &removed.iter().cloned().collect());
        notes.extend(f.notes);
        Round {
            plan_manage,
            requeue,
            tracked,
            flushed,
            removed,
            status: f.status,
            notes,
            backoff,
        }
    }

    fn with_status(j: &Job, status: &JobStatus) -> Job {
        let mut j = j.clone();
        j.status = Some(status.clone());
        j
    }

    fn types(s: &JobStatus) -> Vec<String> {
        s.conditions
            .iter()
            .flatten()
            .map(|c| format!("{}={}", c.type_, c.status))
            .collect()
    }

    fn uncounted(s: &JobStatus) -> (Vec<String>, Vec<String>) {
        let u = s.uncounted_terminated_pods.clone().unwrap_or_default();
        (
            u.succeeded.unwrap_or_default(),
            u.failed.unwrap_or_default(),
        )
    }

    #[test]
    fn active_pods_are_parallelism_bounded_by_the_completions_left() {
        let j = job(json!({"completions": 3, "parallelism": 2}), json!({}));
        let r = round(&j, &[], at(0), &Record::default());
        assert_eq!(r.plan_manage, Manage::Create(vec![None, None]));
        assert_eq!(r.status.active, Some(2));
        // Two succeeded already: one completion left, one pod.
        let j = job(
            json!({"completions": 3, "parallelism": 2}),
            json!({"succeeded": 2}),
        );
        let r = round(&j, &[], at(0), &Record::default());
        assert_eq!(r.plan_manage, Manage::Create(vec![None]));
        // One running counts against both.
        let j = job(
            json!({"completions": 3, "parallelism": 2}),
            json!({"succeeded": 1}),
        );
        let r = round(
            &j,
            &[pod("a", "Running", json!({}))],
            at(0),
            &Record::default(),
        );
        assert_eq!(r.plan_manage, Manage::Create(vec![None]));
    }

    #[test]
    fn surplus_pods_are_removed_cheapest_first() {
        let j = job(json!({"completions": 5, "parallelism": 1}), json!({}));
        let running = pod("running", "Running", json!({}));
        let pending = pod("pending", "Pending", json!({}));
        let r = round(&j, &[running, pending], at(0), &Record::default());
        assert_eq!(r.plan_manage, Manage::Remove(vec!["pending".into()]));
        assert_eq!(r.status.active, Some(1));
        assert_eq!(r.status.terminating, Some(1));
    }

    #[test]
    fn a_start_time_is_set_unless_suspended() {
        let j = job(json!({}), json!({}));
        let r = round(&j, &[], at(7), &Record::default());
        assert_eq!(r.status.start_time.map(|t| t.0), Some(at(7)));
        let j = job(json!({"suspend": true}), json!({}));
        assert!(
            round(&j, &[], at(7), &Record::default())
                .status
                .start_time
                .is_none()
        );
    }

    #[test]
    fn a_finished_pod_is_listed_uncounted_before_its_finalizer_goes_then_counted() {
        let j = job(
            json!({"completions": 2, "parallelism": 2}),
            json!({"startTime": T0}),
        );
        let done = pod("a", "Succeeded", json!({}));
        let r = round(
            &j,
            &[done, pod("b", "Running", json!({}))],
            at(1),
            &Record::default(),
        );
        assert!(r.flushed);
        assert_eq!(uncounted(&r.tracked).0, ["uid-a"], "listed before removal");
        assert_eq!(r.tracked.succeeded, None, "not yet counted");
        assert_eq!(r.removed, ["uid-a"]);
        assert_eq!(r.status.succeeded, Some(1));
        assert_eq!(uncounted(&r.status), (vec![], vec![]));
    }

    #[test]
    fn a_pod_whose_finalizer_stayed_is_not_counted_yet() {
        let j = job(json!({}), json!({"startTime": T0}));
        let o_pods = [pod("a", "Succeeded", json!({}))];
        let o = Observed {
            job: &j,
            pods: o_pods.iter().collect(),
            now: at(1),
            backoff: &Record::default(),
        };
        let p = plan(&o);
        let t = track(&o, p, &Outcome::default());
        let f = finish(&o, t, &HashSet::new());
        assert_eq!(f.status.succeeded, None);
        assert_eq!(uncounted(&f.status).0, ["uid-a"]);
        assert!(types(&f.status).iter().all(|t| !t.starts_with("Complete")));
    }

    #[test]
    fn an_uncounted_pod_deleted_by_anyone_is_counted_exactly_once() {
        // Listed as uncounted, then the pod vanished (someone deleted it
        // after its finalizer went): counted now...
        let j = job(
            json!({"completions": 3, "parallelism": 1}),
            json!({"startTime": T0, "uncountedTerminatedPods": {"succeeded": ["uid-a"]}}),
        );
        let r = round(&j, &[], at(1), &Record::default());
        assert_eq!(r.status.succeeded, Some(1));
        assert_eq!(uncounted(&r.status).0, Vec::<String>::new());
        // ...and never again, whether it reappears counted or not at all.
        let again = with_status(&j, &r.status);
        let r2 = round(
            &again,
            &[pod("a", "Succeeded", counted())],
            at(2),
            &Record::default(),
        );
        assert_eq!(r2.status.succeeded, Some(1));
        let r3 = round(&again, &[], at(2), &Record::default());
        assert_eq!(r3.status.succeeded, Some(1));
    }

    #[test]
    fn enough_successes_complete_the_job_through_success_criteria_met() {
        let j = job(
            json!({"completions": 2, "parallelism": 2}),
            json!({"startTime": T0, "succeeded": 1}),
        );
        let r = round(
            &j,
            &[pod("b", "Succeeded", json!({}))],
            at(5),
            &Record::default(),
        );
        assert_eq!(types(&r.tracked), ["SuccessCriteriaMet=True"]);
        assert_eq!(
            types(&r.status),
            ["SuccessCriteriaMet=True", "Complete=True"]
        );
        assert_eq!(r.status.completion_time.as_ref().map(|t| t.0), Some(at(5)));
        assert_eq!(r.status.succeeded, Some(2));
        assert!(
            r.notes
                .iter()
                .any(|n| n.reason == "Completed" && !n.warning)
        );
        let done = with_status(&j, &r.status);
        assert!(finished(&done).is_some_and(|c| c.type_ == COMPLETE));
    }

    #[test]
    fn without_completions_any_success_ends_the_job_once_nothing_runs() {
        let j = job(
            json!({"completions": null, "parallelism": 2}),
            json!({"startTime": T0}),
        );
        let pods = [
            pod("a", "Succeeded", json!({})),
            pod("b", "Running", json!({})),
        ];
        let r = round(&j, &pods, at(1), &Record::default());
        assert_eq!(
            r.plan_manage,
            Manage::Create(vec![]),
            "no replacement once one succeeded"
        );
        assert!(types(&r.status).is_empty());
        let r = round(
            &with_status(&j, &r.status),
            &[pod("b", "Succeeded", json!({}))],
            at(2),
            &Record::default(),
        );
        assert!(types(&r.status).contains(&"Complete=True".to_string()));
        assert_eq!(r.status.succeeded, Some(2));
    }

    #[test]
    fn failures_past_the_backoff_limit_fail_the_job_after_its_pods_are_gone() {
        let j = job(
            json!({"completions": 2, "parallelism": 2, "backoffLimit": 1}),
            json!({"startTime": T0, "failed": 1}),
        );
        let pods = [
            pod("a", "Failed", json!({})),
            pod("b", "Running", json!({})),
        ];
        let r = round(&j, &pods, at(1), &Record::default());
        assert_eq!(r.plan_manage, Manage::Finish(vec!["b".into()]));
        assert_eq!(types(&r.status), ["FailureTarget=True"]);
        let c = &r.status.conditions.as_ref().expect("conditions")[0];
        assert_eq!(c.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(r.status.failed, Some(3), "the active pod counts as failed");
        assert_eq!(r.status.terminating, Some(1));
        // Its pods gone, the Job fails.
        let r = round(&with_status(&j, &r.status), &[], at(2), &Record::default());
        assert_eq!(types(&r.status), ["FailureTarget=True", "Failed=True"]);
        assert!(
            r.notes
                .iter()
                .any(|n| n.warning && n.reason == "BackoffLimitExceeded")
        );
        assert!(r.status.completion_time.is_none());
    }

    #[test]
    fn a_job_at_its_backoff_limit_still_runs() {
        let j = job(json!({"backoffLimit": 1}), json!({"startTime": T0}));
        let r = round(
            &j,
            &[pod("a", "Failed", json!({}))],
            at(100),
            &Record::default(),
        );
        assert!(types(&r.status).is_empty());
        assert_eq!(r.status.failed, Some(1));
    }

    #[test]
    fn restarts_of_on_failure_pods_count_toward_the_backoff_limit() {
        let mut j = job(json!({"backoffLimit": 2}), json!({"startTime": T0}));
        if let Some(s) = j.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            s.restart_policy = Some("OnFailure".into());
        }
        let restarting = pod(
            "a",
            "Running",
            json!({"status": {"containerStatuses": [
            {"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 2}]}}),
        );
        let r = round(&j, &[restarting], at(1), &Record::default());
        assert!(matches!(r.plan_manage, Manage::Finish(_)));
        assert_eq!(types(&r.status), ["FailureTarget=True"]);
    }

    #[test]
    fn failed_pods_are_replaced_after_an_exponential_backoff() {
        let j = job(json!({}), json!({"startTime": T0}));
        let failed = pod(
            "a",
            "Failed",
            json!({"metadata": {"creationTimestamp": "2024-01-01T00:00:10Z"}}),
        );
        let r = round(&j, &[failed], at(12), &Record::default());
        assert_eq!(r.plan_manage, Manage::Create(vec![]), "still backing off");
        assert_eq!(r.requeue, Some(Duration::from_secs(8)));
        assert_eq!(r.backoff.failures_after_last_success, 1);
        // 10 s after the failure, a new pod (the failed one is counted by now).
        let j2 = with_status(&j, &r.status);
        let r = round(&j2, &[], at(20), &r.backoff);
        assert_eq!(r.plan_manage, Manage::Create(vec![None]));
    }

    #[test]
    fn an_active_deadline_fails_the_job_and_is_waited_for() {
        let j = job(
            json!({"activeDeadlineSeconds": 30}),
            json!({"startTime": T0}),
        );
        let r = round(
            &j,
            &[pod("a", "Running", json!({}))],
            at(10),
            &Record::default(),
        );
        assert_eq!(r.requeue, Some(Duration::from_secs(20)));
        assert!(types(&r.status).is_empty());
        let r = round(
            &j,
            &[pod("a", "Running", json!({}))],
            at(30),
            &Record::default(),
        );
        assert_eq!(r.plan_manage, Manage::Finish(vec!["a".into()]));
        let c = &r.status.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (c.type_.as_str(), c.reason.as_deref()),
            ("FailureTarget", Some("DeadlineExceeded"))
        );
    }

    #[test]
    fn suspending_deletes_the_active_pods_and_resuming_restarts_the_clock() {
        let j = job(
            json!({"suspend": true, "parallelism": 2, "completions": 2}),
            json!({"startTime": T0}),
        );
        let pods = [
            pod("a", "Running", json!({})),
            pod("b", "Pending", json!({})),
        ];
        let r = round(&j, &pods, at(5), &Record::default());
        assert_eq!(r.plan_manage, Manage::Remove(vec!["b".into(), "a".into()]));
        assert_eq!(types(&r.status), ["Suspended=True"]);
        assert!(r.notes.iter().any(|n| n.reason == "Suspended"));
        assert_eq!(r.status.active, None);
        let resumed = job(json!({"parallelism": 2, "completions": 2}), json!({}));
        let r = round(
            &with_status(&resumed, &r.status),
            &[],
            at(50),
            &Record::default(),
        );
        assert_eq!(types(&r.status), ["Suspended=False"]);
        assert!(r.notes.iter().any(|n| n.reason == "Resumed"));
        assert_eq!(r.status.start_time.map(|t| t.0), Some(at(50)));
        assert_eq!(r.plan_manage, Manage::Create(vec![None, None]));
    }

    #[test]
    fn indexed_jobs_create_the_lowest_missing_indexes() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 4, "parallelism": 2}),
            json!({}),
        );
        let r = round(&j, &[], at(0), &Record::default());
        assert_eq!(r.plan_manage, Manage::Create(vec![Some(0), Some(1)]));
        let j = job(
            json!({"completionMode": "Indexed", "completions": 4, "parallelism": 2}),
            json!({"startTime": T0, "completedIndexes": "0", "succeeded": 1}),
        );
        let pods = [pod("b", "Running", indexed(1))];
        let r = round(&j, &pods, at(1), &Record::default());
        assert_eq!(r.plan_manage, Manage::Create(vec![Some(2)]));
    }

    #[test]
    fn indexed_successes_are_recorded_as_compressed_ranges() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 6, "parallelism": 6}),
            json!({"startTime": T0, "completedIndexes": "0,1", "succeeded": 2}),
        );
        let pods = [
            pod("c", "Succeeded", indexed(2)),
            pod("f", "Succeeded", indexed(5)),
            pod("g", "Succeeded", indexed(9)),
            pod("d", "Running", indexed(3)),
            pod("e", "Running", indexed(4)),
        ];
        let r = round(&j, &pods, at(1), &Record::default());
        assert_eq!(r.status.completed_indexes.as_deref(), Some("0-2,5"));
        assert_eq!(r.status.succeeded, Some(4));
        assert!(
            r.removed.contains(&"uid-g".to_string()),
            "out of range: released, not counted"
        );
    }

    #[test]
    fn duplicate_indexes_keep_one_pod() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 2, "parallelism": 2}),
            json!({"startTime": T0}),
        );
        let pods = [
            pod("a", "Running", indexed(0)),
            pod("b", "Pending", indexed(0)),
            pod("c", "Running", json!({})),
            pod("d", "Running", indexed(1)),
        ];
        let r = round(&j, &pods, at(1), &Record::default());
        let Manage::Remove(mut gone) = r.plan_manage else {
            panic!("expected removals, got {:?}", r.plan_manage)
        };
        gone.sort();
        assert_eq!(gone, ["b", "c"]);
    }

    #[test]
    fn a_deleted_running_pod_counts_as_failed_and_is_replaced() {
        let j = job(json!({}), json!({"startTime": T0}));
        let deleted = pod(
            "a",
            "Running",
            json!({"metadata": {"deletionTimestamp": T0}}),
        );
        let r = round(
            &j,
            std::slice::from_ref(&deleted),
            at(1),
            &Record::default(),
        );
        assert_eq!(r.status.failed, Some(1));
        assert_eq!(r.status.terminating, Some(1));
        assert!(
            matches!(r.plan_manage, Manage::Create(ref v) if v.is_empty()),
            "backing off"
        );
        // With podReplacementPolicy Failed it is waited for, not counted.
        let j = job(
            json!({"podReplacementPolicy": "Failed"}),
            json!({"startTime": T0}),
        );
        let r = round(&j, &[deleted], at(100), &Record::default());
        assert_eq!(r.status.failed, None);
        assert_eq!(r.plan_manage, Manage::Create(vec![]));
        assert!(r.removed.is_empty());
    }

    #[test]
    fn a_job_being_deleted_creates_nothing_and_lets_its_pods_go() {
        let mut j = job(
            json!({"parallelism": 3, "completions": 3}),
            json!({"startTime": T0}),
        );
        j.metadata.deletion_timestamp = Some(Time(at(0)));
        let r = round(
            &j,
            &[pod("a", "Running", json!({}))],
            at(1),
            &Record::default(),
        );
        assert_eq!(r.plan_manage, Manage::Skip);
        assert_eq!(r.removed, ["uid-a"]);
    }

    #[test]
    fn nothing_changed_writes_nothing() {
        let j = job(
            json!({"completions": 2, "parallelism": 1}),
            json!({"startTime": T0, "active": 1, "ready": 1, "terminating": 0,
                   "uncountedTerminatedPods": {}}),
        );
        let r = round(
            &j,
            &[pod("a", "Running", json!({}))],
            at(1),
            &Record::default(),
        );
        assert_eq!(r.plan_manage, Manage::Create(vec![]));
        assert!(!r.flushed);
        assert!(r.removed.is_empty());
    }
}
