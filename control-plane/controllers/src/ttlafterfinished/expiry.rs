//! When a finished Job's time is up (upstream's needsCleanup,
//! jobFinishTime and timeLeft).
use std::time::Duration;

use k8s_openapi::{
    api::batch::v1::Job,
    chrono::{DateTime, Utc},
};

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not finished, no TTL, or already being deleted.
    Keep,
    /// Delete it after this long.
    Wait(Duration),
    Delete,
}

/// When the Job finished: the transition time of its Complete or Failed
/// condition.
fn finished_at(job: &Job) -> Option<DateTime<Utc>> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

pub fn decide(job: &Job, now: DateTime<Utc>) -> Decision {
    let ttl = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished);
    let (Some(ttl), Some(done)) = (ttl, finished_at(job)) else {
        return Decision::Keep;
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Decision::Keep;
    }
    let expires = done + k8s_openapi::chrono::Duration::seconds(i64::from(ttl));
    match (expires - now).to_std() {
        Ok(left) if !left.is_zero() => Decision::Wait(left),
        _ => Decision::Delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .expect("t0")
            .with_timezone(&Utc)
            + k8s_openapi::chrono::Duration::seconds(secs)
    }

    fn job(ttl: Option<i32>, condition: Option<(&str, &str)>) -> Job {
        let conditions: Vec<_> = condition
            .into_iter()
            .map(|(t, s)| json!({"type": t, "status": s, "lastTransitionTime": "2024-01-01T00:00:00Z"}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns"},
            "spec": {"ttlSecondsAfterFinished": ttl, "template": {}},
            "status": {"conditions": conditions},
        }))
        .expect("job")
    }

    #[test]
    fn a_finished_job_is_deleted_ttl_seconds_after_it_finished() {
        let j = job(Some(30), Some(("Complete", "True")));
        assert_eq!(decide(&j, at(10)), Decision::Wait(Duration::from_secs(20)));
        assert_eq!(decide(&j, at(30)), Decision::Delete);
        assert_eq!(decide(&j, at(99)), Decision::Delete);
        let failed = job(Some(0), Some(("Failed", "True")));
        assert_eq!(decide(&failed, at(0)), Decision::Delete);
    }

    #[test]
    fn unfinished_jobs_and_jobs_without_ttl_are_kept() {
        assert_eq!(
            decide(&job(None, Some(("Complete", "True"))), at(1000)),
            Decision::Keep
        );
        assert_eq!(decide(&job(Some(1), None), at(1000)), Decision::Keep);
        assert_eq!(
            decide(&job(Some(1), Some(("Complete", "False"))), at(1000)),
            Decision::Keep
        );
        assert_eq!(
            decide(
                &job(Some(1), Some(("SuccessCriteriaMet", "True"))),
                at(1000)
            ),
            Decision::Keep
        );
        let mut deleting = job(Some(1), Some(("Complete", "True")));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(0)));
        assert_eq!(decide(&deleting, at(1000)), Decision::Keep);
    }
}
