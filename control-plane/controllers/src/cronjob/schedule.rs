//! A CronJob's schedule: standard five-field cron (numbers, `*`, `?`,
//! ranges, steps, lists, month and weekday names) or a descriptor such as
//! `@hourly`, in a time zone. croner evaluates it (Vixie-cron day
//! semantics: day-of-month and day-of-week are ORed unless one is `*`);
//! the API server has already refused what upstream's parser refuses.
use std::str::FromStr as _;

use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use k8s_openapi::chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("unparseable schedule: {schedule:?}: {reason}")]
    Unparseable { schedule: String, reason: String },
    #[error("invalid timeZone: {0:?}")]
    UnknownTimeZone(String),
}

#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    /// None: UTC (upstream: the controller manager's local zone).
    tz: Option<chrono_tz::Tz>,
}

impl Schedule {
    /// `schedule` may still carry a legacy `TZ=`/`CRON_TZ=` prefix (stored
    /// before upstream forbade it); `time_zone` wins over none.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let mut pattern = schedule.trim();
        let mut zone = time_zone.map(str::to_string);
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = pattern.strip_prefix(prefix) {
                let (z, p) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                zone.get_or_insert_with(|| z.to_string());
                pattern = p.trim();
            }
        }
        let tz = match zone {
            None => None,
            Some(z) => {
                Some(chrono_tz::Tz::from_str(&z).map_err(|_| ScheduleError::UnknownTimeZone(z))?)
            }
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .sloppy_ranges(true)
            .build()
            .parse(pattern)
            .map_err(|e| ScheduleError::Unparseable {
                schedule: schedule.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Schedule { cron, tz })
    }

    /// The first scheduled time strictly after `t`; None if the schedule
    /// never fires (say the 31st of February).
    pub fn next(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.tz {
            None => self.cron.find_next_occurrence(&t, false).ok(),
            Some(tz) => self
                .cron
                .find_next_occurrence(&t.with_timezone(&tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// `t` as the zone's RFC 3339 time (the scheduled-timestamp annotation).
    pub fn local_rfc3339(&self, t: DateTime<Utc>) -> String {
        use k8s_openapi::chrono::SecondsFormat;
        match self.tz {
            None => t.to_rfc3339_opts(SecondsFormat::Secs, true),
            Some(tz) => t
                .with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn next(schedule: &str, tz: Option<&str>, from: &str) -> String {
        let s = Schedule::parse(schedule, tz).expect("parses");
        s.next(t(from)).expect("fires").to_rfc3339()
    }

    #[test]
    fn standard_cron_syntax_fires_when_cron_would() {
        let from = "2024-01-01T10:07:30+00:00";
        assert_eq!(next("* * * * *", None, from), "2024-01-01T10:08:00+00:00");
        assert_eq!(next("*/5 * * * *", None, from), "2024-01-01T10:10:00+00:00");
        assert_eq!(
            next("0 9-17 * * *", None, from),
            "2024-01-01T11:00:00+00:00"
        );
        assert_eq!(next("@hourly", None, from), "2024-01-01T11:00:00+00:00");
        assert_eq!(next("@daily", None, from), "2024-01-02T00:00:00+00:00");
        // 2024-01-01 is a Monday.
        assert_eq!(next("0 0 * * SAT", None, from), "2024-01-06T00:00:00+00:00");
        assert_eq!(next("0 0 1 feb *", None, from), "2024-02-01T00:00:00+00:00");
        assert_eq!(
            next("5/20 * * * *", None, from),
            "2024-01-01T10:25:00+00:00"
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_are_either_unless_one_is_a_star() {
        // The 15th or any Saturday, whichever comes first.
        let from = "2024-01-01T00:00:00+00:00";
        assert_eq!(
            next("0 0 15 * SAT", None, from),
            "2024-01-06T00:00:00+00:00"
        );
        assert_eq!(next("0 0 * * SAT", None, from), "2024-01-06T00:00:00+00:00");
        assert_eq!(next("0 0 15 * *", None, from), "2024-01-15T00:00:00+00:00");
    }

    #[test]
    fn the_next_time_is_strictly_later() {
        let at = "2024-01-01T10:05:00+00:00";
        assert_eq!(next("*/5 * * * *", None, at), "2024-01-01T10:10:00+00:00");
    }

    #[test]
    fn a_time_zone_moves_the_schedule() {
        // 09:00 in Berlin (UTC+1 in winter) is 08:00 UTC.
        let from = "2024-01-01T00:00:00+00:00";
        assert_eq!(
            next("0 9 * * *", Some("Europe/Berlin"), from),
            "2024-01-01T08:00:00+00:00"
        );
        assert_eq!(
            next("TZ=Europe/Berlin 0 9 * * *", None, from),
            "2024-01-01T08:00:00+00:00"
        );
        let s = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).expect("parses");
        assert_eq!(
            s.local_rfc3339(t("2024-01-01T08:00:00Z")),
            "2024-01-01T09:00:00+01:00"
        );
        assert_eq!(
            Schedule::parse("* * * * *", None)
                .expect("parses")
                .local_rfc3339(t("2024-01-01T08:00:00Z")),
            "2024-01-01T08:00:00Z"
        );
    }

    #[test]
    fn bad_schedules_and_zones_are_named() {
        assert!(matches!(
            Schedule::parse("61 * * * *", None),
            Err(ScheduleError::Unparseable { .. })
        ));
        assert_eq!(
            Schedule::parse("* * * * *", Some("Mars/Olympus")).err(),
            Some(ScheduleError::UnknownTimeZone("Mars/Olympus".into()))
        );
    }

    #[test]
    fn an_impossible_date_never_fires() {
        let s = Schedule::parse("0 0 30 2 *", None).expect("parses");
        assert_eq!(s.next(t("2024-01-01T00:00:00Z")), None);
    }
}
