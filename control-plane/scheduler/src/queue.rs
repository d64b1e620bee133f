//! The scheduling queue, as upstream's: an active queue ordered by priority
//! then creation time; per-pod exponential backoff (1 s doubling to 10 s)
//! after each failed attempt; an unschedulable pool whose pods go back when
//! a cluster event may help the filters that rejected them, or after
//! 60 s in any case. Pure: the caller passes the clock.
use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::framework::PodInfo;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a pod waits in the unschedulable pool with no event for it.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(60);

/// `INITIAL_BACKOFF` doubled per attempt after the first, capped.
pub fn backoff(attempts: u32) -> Duration {
    let mut d = INITIAL_BACKOFF;
    for _ in 1..attempts {
        if d >= MAX_BACKOFF {
            break;
        }
        d *= 2;
    }
    d.min(MAX_BACKOFF)
}

/// A pod the queue hands out, with its scheduling history.
#[derive(Clone, Debug)]
pub struct QueuedPod {
    pub info: Arc<PodInfo>,
    /// Scheduling attempts so far (this one included once popped).
    pub attempts: u32,
    pub last_failure: Option<Instant>,
    /// The filters that rejected it last; empty means any event may help.
    pub rejected_by: Vec<&'static str>,
    /// The scheduling cycle that popped it.
    pub cycle: u64,
}

impl QueuedPod {
    fn backoff_done(&self, now: Instant) -> bool {
        self.last_failure
            .is_none_or(|t| now >= t + backoff(self.attempts))
    }
}

/// Priority first (higher first), then age (older first), then arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Order(Reverse<i32>, i64, u32, u64);

#[derive(Debug)]
enum Place {
    Active(Order),
    Backoff,
    Unschedulable(Instant),
    /// Being scheduled; `deleted` if the pod went meanwhile.
    InFlight {
        deleted: bool,
    },
}

#[derive(Debug)]
struct Entry {
    pod: QueuedPod,
    place: Place,
}

#[derive(Debug, Default)]
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: BTreeMap<Order, String>,
    seq: u64,
    scheduling_cycle: u64,
    /// The cycle at the last cluster event: a pod popped before it that
    /// fails may have missed the event, so it backs off instead of waiting
    /// in the unschedulable pool.
    move_request_cycle: u64,
}

/// Whether an update to a waiting pod can change where it fits.
fn relevant_change(old: &PodInfo, new: &PodInfo) -> bool {
    old.pod.spec != new.pod.spec || old.pod.metadata.labels != new.pod.metadata.labels
}

impl SchedulingQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn order(&mut self, info: &PodInfo) -> Order {
        self.seq += 1;
        let created = info.pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        Order(
            Reverse(info.priority),
            created.map_or(i64::MAX, |t| t.timestamp()),
            created.map_or(0, |t| t.timestamp_subsec_nanos()),
            self.seq,
        )
    }

    fn activate(&mut self, key: &str) {
        let Some(info) = self.entries.get(key).map(|e| e.pod.info.clone()) else {
            return;
        };
        let o = self.order(&info);
        self.active.insert(o, key.to_string());
        if let Some(e) = self.entries.get_mut(key) {
            e.place = Place::Active(o);
        }
    }

    /// Sends a waiting pod to active if its backoff is over, else backoff.
    fn requeue(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if e.pod.backoff_done(now) {
            self.activate(key);
        } else {
            e.place = Place::Backoff;
        }
    }

    /// A pending pod as the watcher sees it: new ones go to the active
    /// queue; a known one is updated in place, and one waiting after a
    /// failure is retried if the change can matter.
    pub fn add(&mut self, info: Arc<PodInfo>, now: Instant) {
        let key = info.key.clone();
        let Some(e) = self.entries.get_mut(&key) else {
            self.entries.insert(
                key.clone(),
                Entry {
                    pod: QueuedPod {
                        info,
                        attempts: 0,
                        last_failure: None,
                        rejected_by: Vec::new(),
                        cycle: 0,
                    },
                    place: Place::Backoff,
                },
            );
            self.activate(&key);
            return;
        };
        let changed = relevant_change(&e.pod.info, &info);
        let reorder = e.pod.info.priority != info.priority;
        e.pod.info = info;
        match e.place {
            Place::Active(o) if reorder => {
                self.active.remove(&o);
                self.activate(&key);
            }
            Place::Backoff | Place::Unschedulable(_) if changed => self.requeue(&key, now),
            _ => {}
        }
    }

    /// The pod is gone, bound elsewhere, or no longer ours.
    pub fn delete(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        match e.place {
            Place::InFlight { .. } => e.place = Place::InFlight { deleted: true },
            Place::Active(o) => {
                self.active.remove(&o);
                self.entries.remove(key);
            }
            _ => {
                self.entries.remove(key);
            }
        }
    }

    /// The next pod to schedule, if any is active.
    pub fn pop(&mut self) -> Option<QueuedPod> {
        let (_, key) = self.active.pop_first()?;
        let e = self.entries.get_mut(&key)?;
        self.scheduling_cycle += 1;
        e.pod.attempts += 1;
        e.pod.cycle = self.scheduling_cycle;
        e.place = Place::InFlight { deleted: false };
        Some(e.pod.clone())
    }

    /// The popped pod was assumed onto a node: the queue is done with it.
    pub fn done(&mut self, key: &str) {
        if matches!(
            self.entries.get(key),
            Some(Entry {
                place: Place::InFlight { .. },
                ..
            })
        ) {
            self.entries.remove(key);
        }
    }

    /// The popped pod did not fit (`rejected_by` the named filters): it
    /// waits in the unschedulable pool, or backs off if a cluster event
    /// came while it was being scheduled.
    pub fn unschedulable(&mut self, key: &str, rejected_by: Vec<&'static str>, now: Instant) {
        self.failed(key, rejected_by, now, true);
    }

    /// The popped pod hit an error (e.g. its binding failed): it backs off.
    pub fn error(&mut self, key: &str, now: Instant) {
        self.failed(key, Vec::new(), now, false);
    }

    /// A pod whose bind failed after `done`: back into the queue, backing
    /// off as after any failed attempt.
    pub fn retry_after_bind_error(&mut self, pod: QueuedPod, now: Instant) {
        let key = pod.info.key.clone();
        if self.entries.contains_key(&key) {
            return;
        }
        self.entries.insert(
            key.clone(),
            Entry {
                pod: QueuedPod {
                    last_failure: Some(now),
                    rejected_by: Vec::new(),
                    ..pod
                },
                place: Place::Backoff,
            },
        );
    }

    fn failed(
        &mut self,
        key: &str,
        rejected_by: Vec<&'static str>,
        now: Instant,
        unschedulable: bool,
    ) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        let Place::InFlight { deleted } = e.place else {
            return;
        };
        if deleted {
            self.entries.remove(key);
            return;
        }
        e.pod.last_failure = Some(now);
        e.pod.rejected_by = rejected_by;
        e.place = if unschedulable && self.move_request_cycle < e.pod.cycle {
            Place::Unschedulable(now)
        } else {
            Place::Backoff
        };
    }

    /// A cluster event: the unschedulable pods it may help (rejected by
    /// one of `helps`, or by nothing in particular) go back; returns how
    /// many.
    pub fn cluster_event(&mut self, helps: &[&'static str], now: Instant) -> usize {
        self.move_request_cycle = self.scheduling_cycle;
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                matches!(e.place, Place::Unschedulable(_))
                    && (e.pod.rejected_by.is_empty()
                        || e.pod.rejected_by.iter().any(|p| helps.contains(p)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.requeue(k, now);
        }
        keys.len()
    }

    /// Backed-off pods whose time is up go active; pods unschedulable for
    /// longer than [`MAX_UNSCHEDULABLE`] go back too.
    pub fn flush(&mut self, now: Instant) {
        let due: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| match e.place {
                Place::Backoff => e.pod.backoff_done(now),
                Place::Unschedulable(since) => now >= since + MAX_UNSCHEDULABLE,
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            self.requeue(k, now);
        }
    }

    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::PodBuilder;

    fn info(name: &str, priority: i32, created: i64) -> Arc<PodInfo> {
        Arc::new(
            PodBuilder::new(name)
                .priority(priority)
                .created_at(created)
                .info(),
        )
    }

    fn names(q: &mut SchedulingQueue) -> Vec<String> {
        std::iter::from_fn(|| q.pop())
            .map(|p| p.info.name.clone())
            .collect()
    }

    #[test]
    fn higher_priority_first_then_older_first() {
        let now = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("low-old", 0, 1), now);
        q.add(info("high-new", 100, 9), now);
        q.add(info("low-new", 0, 5), now);
        q.add(info("high-old", 100, 2), now);
        assert_eq!(
            names(&mut q),
            vec!["high-old", "high-new", "low-old", "low-new"]
        );
    }

    #[test]
    fn a_priority_change_reorders_an_active_pod() {
        let now = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("a", 0, 1), now);
        q.add(info("b", 0, 2), now);
        q.add(info("b", 10, 2), now);
        assert_eq!(names(&mut q), vec!["b", "a"]);
    }

    #[test]
    fn backoff_doubles_from_one_second_to_ten() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn an_unschedulable_pod_waits_for_an_event_that_may_help_it() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("p", 0, 1), t0);
        let p = q.pop().unwrap();
        q.unschedulable(&p.info.key, vec!["NodeResourcesFit"], t0);
        q.flush(t0 + Duration::from_secs(5));
        assert!(q.pop().is_none(), "no event, long before the 60 s flush");
        assert_eq!(
            q.cluster_event(&["TaintToleration"], t0 + Duration::from_secs(5)),
            0
        );
        assert!(q.pop().is_none(), "an event for another filter");
        assert_eq!(
            q.cluster_event(&["NodeResourcesFit"], t0 + Duration::from_secs(5)),
            1
        );
        assert_eq!(q.pop().map(|p| p.attempts), Some(2));
    }

    #[test]
    fn a_requeued_pod_still_serves_its_backoff() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("p", 0, 1), t0);
        let p = q.pop().unwrap();
        q.unschedulable(&p.info.key, vec![], t0);
        q.cluster_event(&[], t0 + Duration::from_millis(500));
        assert!(q.pop().is_none(), "1 s backoff not over");
        q.flush(t0 + Duration::from_millis(999));
        assert!(q.pop().is_none());
        q.flush(t0 + Duration::from_secs(1));
        assert!(q.pop().is_some());
    }

    #[test]
    fn an_event_during_the_attempt_sends_the_pod_to_backoff_not_the_pool() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("p", 0, 1), t0);
        let p = q.pop().unwrap();
        q.cluster_event(&["NodeResourcesFit"], t0);
        q.unschedulable(&p.info.key, vec!["NodeResourcesFit"], t0);
        q.flush(t0 + Duration::from_secs(1));
        assert!(
            q.pop().is_some(),
            "retried after its backoff without another event"
        );
    }

    #[test]
    fn the_pool_is_flushed_after_sixty_seconds() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("p", 0, 1), t0);
        let p = q.pop().unwrap();
        q.unschedulable(&p.info.key, vec!["NodeAffinity"], t0);
        q.flush(t0 + Duration::from_secs(59));
        assert!(q.pop().is_none());
        q.flush(t0 + Duration::from_secs(60));
        assert!(q.pop().is_some());
    }

    #[test]
    fn a_pod_deleted_while_scheduled_is_dropped_when_it_fails() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("p", 0, 1), t0);
        let p = q.pop().unwrap();
        q.delete(&p.info.key);
        q.unschedulable(&p.info.key, vec![], t0);
        assert!(q.is_empty());
    }

    #[test]
    fn a_spec_change_retries_an_unschedulable_pod_but_a_status_change_does_not() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("p", 0, 1), t0);
        let p = q.pop().unwrap();
        q.unschedulable(&p.info.key, vec!["NodeAffinity"], t0);
        let later = t0 + Duration::from_secs(2);
        let status_only = PodBuilder::from(p.info.pod.clone()).nominated("n1").info();
        q.add(Arc::new(status_only), later);
        assert!(q.pop().is_none());
        let relabelled = PodBuilder::from(p.info.pod.clone()).label("x", "y").info();
        q.add(Arc::new(relabelled), later);
        assert!(q.pop().is_some());
    }

    #[test]
    fn done_pods_leave_the_queue_and_errors_back_off() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("a", 0, 1), t0);
        q.add(info("b", 0, 2), t0);
        let a = q.pop().unwrap();
        q.done(&a.info.key);
        assert!(!q.contains(&a.info.key));
        let b = q.pop().unwrap();
        q.error(&b.info.key, t0);
        assert!(q.pop().is_none());
        q.flush(t0 + Duration::from_secs(1));
        assert_eq!(q.pop().map(|p| p.info.name.clone()), Some("b".into()));
    }

    #[test]
    fn a_failed_bind_requeues_with_backoff() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(info("a", 0, 1), t0);
        let a = q.pop().unwrap();
        q.done(&a.info.key);
        q.retry_after_bind_error(a, t0);
        assert!(q.pop().is_none());
        q.flush(t0 + Duration::from_secs(1));
        assert!(q.pop().is_some());
    }
}
