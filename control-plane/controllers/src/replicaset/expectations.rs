//! Upstream's `ControllerExpectations`, tracked by Pod uid: after a
//! ReplicaSet creates or deletes Pods, its next reconcile may run before
//! the Pod cache has seen them, and would create (or delete) again. Until
//! every Pod it created is in the cache and every Pod it deleted is gone
//! or terminating, the ReplicaSet only updates its status. An expectation
//! older than five minutes (a missed watch event) is given up, as upstream.
//!
//! Satisfaction is decided by looking the Pods up in the cache, so it
//! cannot miss an event that arrived before the expectation was recorded;
//! [`Expectations::observe`] additionally clears a Pod seen deleted before
//! the cache was checked.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upstream's `ExpectationsTimeout`.
pub const TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// What the Pod cache holds under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub uid: String,
    pub terminating: bool,
}

#[derive(Debug)]
struct Pending {
    /// uid -> name
    creates: HashMap<String, String>,
    deletes: HashMap<String, String>,
    since: Instant,
}

/// Keyed by the ReplicaSet's `namespace/name`.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Pending>) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    fn entry<'m>(
        map: &'m mut HashMap<String, Pending>,
        key: &str,
        now: Instant,
    ) -> &'m mut Pending {
        let p = map.entry(key.to_string()).or_insert_with(|| Pending {
            creates: HashMap::new(),
            deletes: HashMap::new(),
            since: now,
        });
        p.since = now;
        p
    }

    /// Pods this ReplicaSet just created (uid, name).
    pub fn expect_creations(
        &self,
        key: &str,
        pods: impl IntoIterator<Item = (String, String)>,
        now: Instant,
    ) {
        self.with(|m| Self::entry(m, key, now).creates.extend(pods));
    }

    /// Pods this ReplicaSet is about to delete (uid, name).
    pub fn expect_deletions(
        &self,
        key: &str,
        pods: impl IntoIterator<Item = (String, String)>,
        now: Instant,
    ) {
        self.with(|m| Self::entry(m, key, now).deletes.extend(pods));
    }

    /// A delete that failed will never be observed.
    pub fn deletion_failed(&self, key: &str, uid: &str) {
        self.with(|m| {
            if let Some(p) = m.get_mut(key) {
                p.deletes.remove(uid);
            }
        });
    }

    /// A watch event for a Pod controlled by `key`: a Pod seen at all is
    /// no longer an expected creation; one seen deleted or terminating is
    /// no longer an expected deletion.
    pub fn observe(&self, key: &str, uid: &str, gone_or_terminating: bool) {
        self.with(|m| {
            if let Some(p) = m.get_mut(key) {
                p.creates.remove(uid);
                if gone_or_terminating {
                    p.deletes.remove(uid);
                }
            }
        });
    }

    /// True when the ReplicaSet may act on what the cache shows: nothing
    /// expected is outstanding according to `lookup` (the cache, by Pod
    /// name), or the expectation timed out.
    pub fn satisfied(
        &self,
        key: &str,
        now: Instant,
        lookup: impl Fn(&str) -> Option<Cached>,
    ) -> bool {
        self.with(|m| {
            let Some(p) = m.get_mut(key) else {
                return true;
            };
            p.creates
                .retain(|uid, name| lookup(name).is_none_or(|c| &c.uid != uid));
            p.deletes
                .retain(|uid, name| lookup(name).is_some_and(|c| &c.uid == uid && !c.terminating));
            let done = p.creates.is_empty() && p.deletes.is_empty();
            if done || now.duration_since(p.since) > TIMEOUT {
                m.remove(key);
                return true;
            }
            false
        })
    }

    /// The ReplicaSet is gone.
    pub fn forget(&self, key: &str) {
        self.with(|m| {
            m.remove(key);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cache(entries: &[(&str, &str, bool)]) -> HashMap<String, Cached> {
        entries
            .iter()
            .map(|(name, uid, terminating)| {
                (
                    name.to_string(),
                    Cached {
                        uid: uid.to_string(),
                        terminating: *terminating,
                    },
                )
            })
            .collect()
    }

    fn pair(uid: &str, name: &str) -> (String, String) {
        (uid.into(), name.into())
    }

    #[test]
    fn nothing_expected_is_satisfied() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs", Instant::now(), |_| None));
    }

    #[test]
    fn creations_are_outstanding_until_the_cache_holds_them() {
        let e = Expectations::default();
        let now = Instant::now();
        e.expect_creations("ns/rs", [pair("u1", "a"), pair("u2", "b")], now);
        let one = cache(&[("a", "u1", false)]);
        assert!(!e.satisfied("ns/rs", now, |n| one.get(n).cloned()));
        let both = cache(&[("a", "u1", false), ("b", "u2", false)]);
        assert!(e.satisfied("ns/rs", now, |n| both.get(n).cloned()));
        assert!(
            e.satisfied("ns/rs", now, |_| None),
            "cleared once satisfied"
        );
    }

    #[test]
    fn a_namesake_with_another_uid_is_not_the_created_pod() {
        let e = Expectations::default();
        let now = Instant::now();
        e.expect_creations("ns/rs", [pair("u1", "a")], now);
        let other = cache(&[("a", "old", false)]);
        assert!(!e.satisfied("ns/rs", now, |n| other.get(n).cloned()));
    }

    #[test]
    fn deletions_are_outstanding_until_gone_or_terminating() {
        let e = Expectations::default();
        let now = Instant::now();
        e.expect_deletions("ns/rs", [pair("u1", "a"), pair("u2", "b")], now);
        let live = cache(&[("a", "u1", false), ("b", "u2", false)]);
        assert!(!e.satisfied("ns/rs", now, |n| live.get(n).cloned()));
        let later = cache(&[("a", "u1", true)]);
        assert!(e.satisfied("ns/rs", now, |n| later.get(n).cloned()));
    }

    #[test]
    fn a_failed_delete_is_not_waited_for() {
        let e = Expectations::default();
        let now = Instant::now();
        e.expect_deletions("ns/rs", [pair("u1", "a")], now);
        e.deletion_failed("ns/rs", "u1");
        let live = cache(&[("a", "u1", false)]);
        assert!(e.satisfied("ns/rs", now, |n| live.get(n).cloned()));
    }

    #[test]
    fn a_pod_created_and_deleted_before_the_cache_was_checked_is_observed() {
        let e = Expectations::default();
        let now = Instant::now();
        e.expect_creations("ns/rs", [pair("u1", "a")], now);
        e.observe("ns/rs", "u1", true);
        assert!(e.satisfied("ns/rs", now, |_| None));
    }

    #[test]
    fn expectations_time_out_after_five_minutes() {
        let e = Expectations::default();
        let now = Instant::now();
        e.expect_creations("ns/rs", [pair("u1", "a")], now);
        assert!(!e.satisfied("ns/rs", now + TIMEOUT, |_| None));
        assert!(e.satisfied("ns/rs", now + TIMEOUT + Duration::from_secs(1), |_| None));
    }

    #[test]
    fn expectations_are_per_replica_set() {
        let e = Expectations::default();
        let now = Instant::now();
        e.expect_creations("ns/a", [pair("u1", "a")], now);
        assert!(e.satisfied("ns/b", now, |_| None));
        assert!(!e.satisfied("ns/a", now, |_| None));
        e.forget("ns/a");
        assert!(e.satisfied("ns/a", now, |_| None));
    }
}
