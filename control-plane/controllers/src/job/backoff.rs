//! The delay before a Job replaces failed pods (upstream's backoff
//! record): 10 s after the first failure since the last success, doubling
//! with each further one up to a cap. Kept in memory, as upstream does: a
//! restarted controller starts counting afresh.
use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Pod,
    chrono::{DateTime, Utc},
};

use super::pods;

pub const BASE: Duration = Duration::from_secs(10);
pub const CAP: Duration = Duration::from_secs(6 * 60);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub failures_after_last_success: u32,
    pub last_failure: Option<DateTime<Utc>>,
}

impl Record {
    /// The record after this sync's newly finished pods.
    pub fn after(&self, succeeded: &[&Pod], failed: &[&Pod]) -> Record {
        let mut failed_at: Vec<DateTime<Utc>> =
            failed.iter().filter_map(|p| pods::finished_at(p)).collect();
        failed_at.sort();
        let last_success = succeeded.iter().filter_map(|p| pods::finished_at(p)).max();
        match last_success {
            None if failed_at.is_empty() => self.clone(),
            None => Record {
                failures_after_last_success: self.failures_after_last_success
                    + failed_at.len() as u32,
                last_failure: failed_at.last().copied(),
            },
            Some(success) => {
                let after: Vec<_> = failed_at.into_iter().filter(|t| *t > success).collect();
                Record {
                    failures_after_last_success: after.len() as u32,
                    last_failure: after.last().copied(),
                }
            }
        }
    }

    /// How long new pods must still wait at `now`.
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        let Some(last) = self.last_failure else {
            return Duration::ZERO;
        };
        if self.failures_after_last_success == 0 {
            return Duration::ZERO;
        }
        let mut delay = BASE;
        for _ in 1..self.failures_after_last_success {
            delay = (delay * 2).min(CAP);
            if delay == CAP {
                break;
            }
        }
        let elapsed = (now - last).to_std().unwrap_or(Duration::ZERO);
        delay.saturating_sub(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2024-01-01T00:{:02}:{:02}Z", s / 60, s % 60))
            .expect("time")
            .with_timezone(&Utc)
    }

    fn finished(phase: &str, s: u32) -> Pod {
        let t = at(s).to_rfc3339();
        serde_json::from_value(json!({"metadata": {"name": "p", "creationTimestamp": t},
            "status": {"phase": phase}}))
        .expect("pod")
    }

    #[test]
    fn the_delay_starts_at_ten_seconds_and_doubles() {
        let mut r = Record::default();
        assert_eq!(r.remaining(at(0)), Duration::ZERO);
        let f = finished("Failed", 0);
        r = r.after(&[], &[&f]);
        assert_eq!(r.remaining(at(0)), Duration::from_secs(10));
        assert_eq!(r.remaining(at(4)), Duration::from_secs(6));
        assert_eq!(r.remaining(at(10)), Duration::ZERO);
        let g = finished("Failed", 20);
        r = r.after(&[], &[&g]);
        assert_eq!(r.failures_after_last_success, 2);
        assert_eq!(r.remaining(at(20)), Duration::from_secs(20));
        let h = finished("Failed", 60);
        r = r.after(&[], &[&h]);
        assert_eq!(r.remaining(at(60)), Duration::from_secs(40));
    }

    #[test]
    fn the_delay_is_capped_at_six_minutes() {
        let r = Record {
            failures_after_last_success: 30,
            last_failure: Some(at(0)),
        };
        assert_eq!(r.remaining(at(0)), CAP);
    }

    #[test]
    fn a_success_resets_the_count_to_failures_after_it() {
        let r = Record {
            failures_after_last_success: 5,
            last_failure: Some(at(0)),
        };
        let (before, ok, after) = (
            finished("Failed", 1),
            finished("Succeeded", 2),
            finished("Failed", 3),
        );
        let r2 = r.after(&[&ok], &[&before, &after]);
        assert_eq!(r2.failures_after_last_success, 1);
        assert_eq!(r2.last_failure, Some(at(3)));
        assert_eq!(r.after(&[&ok], &[]).remaining(at(3)), Duration::ZERO);
    }
}
