//! A keyed work queue with upstream client-go's semantics (workqueue's
//! dirty/processing sets plus its per-item exponential rate limiter).
//!
//! Why not kube-runtime's `applier`: it only reconciles objects still in
//! its store, and some controllers here must act on a key whose object is
//! gone (the Endpoints of a deleted Service). The guarantees the
//! controllers rely on:
//! - a key is never processed by two workers at once;
//! - a key added while it is being processed is processed again after
//!   [`WorkQueue::done`], so no change is lost;
//! - a key added several times before a worker takes it is processed once.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Upstream's `DefaultControllerRateLimiter` starts at 5 ms and doubles per
/// failure; the cap is lower than upstream's 1000 s because keys are never
/// dropped here (upstream drops them after 15 retries and waits for the
/// next event).
const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(60);

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    wake: Notify,
}

struct State<K> {
    ready: VecDeque<K>,
    dirty: HashSet<K>,
    processing: HashSet<K>,
    /// (due, sequence) -> key; the sequence keeps equal due times apart.
    waiting: BTreeMap<(Instant, u64), K>,
    seq: u64,
    failures: HashMap<K, u32>,
}

impl<K: Clone + Eq + Hash> Default for WorkQueue<K> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                waiting: BTreeMap::new(),
                seq: 0,
                failures: HashMap::new(),
            }),
            wake: Notify::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // A panic while holding this lock cannot leave the sets
        // inconsistent in a way that matters more than losing the queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: K) {
        if self.lock().add(key) {
            self.wake.notify_one();
        }
    }

    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let mut st = self.lock();
        let seq = st.seq;
        st.seq += 1;
        st.waiting.insert((Instant::now() + delay, seq), key);
        drop(st);
        // A sleeping worker may be waiting for a later deadline.
        self.wake.notify_one();
    }

    /// Requeues `key` after its next backoff step (5 ms doubling to 60 s).
    pub fn add_rate_limited(&self, key: K) {
        let delay = {
            let mut st = self.lock();
            let n = st.failures.entry(key.clone()).or_insert(0);
            let delay = BASE_DELAY
                .checked_mul(1u32.checked_shl(*n).unwrap_or(u32::MAX))
                .unwrap_or(MAX_DELAY)
                .min(MAX_DELAY);
            *n = n.saturating_add(1);
            delay
        };
        self.add_after(key, delay);
    }

    /// Resets `key`'s backoff after a successful sync.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Waits for the next key to process; the caller must call
    /// [`WorkQueue::done`] with it afterwards.
    pub async fn get(&self) -> K {
        loop {
            let next_due = {
                let mut st = self.lock();
                st.promote_due(Instant::now());
                if let Some(key) = st.ready.pop_front() {
                    st.dirty.remove(&key);
                    st.processing.insert(key.clone());
                    return key;
                }
                st.waiting.keys().next().map(|(due, _)| *due)
            };
            match next_due {
                Some(due) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    pub fn done(&self, key: &K) {
        let mut st = self.lock();
        st.processing.remove(key);
        if st.dirty.contains(key) {
            st.ready.push_back(key.clone());
            drop(st);
            self.wake.notify_one();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().ready.len()
    }
}

impl<K: Clone + Eq + Hash> State<K> {
    /// True when a worker should be woken.
    fn add(&mut self, key: K) -> bool {
        if !self.dirty.insert(key.clone()) {
            return false;
        }
        if self.processing.contains(&key) {
            // Requeued by done().
            return false;
        }
        self.ready.push_back(key);
        true
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.add(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_added_twice_before_it_is_taken_is_processed_once() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("a");
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await, "a");
        q.done(&"a");
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn a_key_added_while_processing_is_processed_again_after_done_and_not_before() {
        let q = WorkQueue::default();
        q.add("a");
        let k = q.get().await;
        q.add("a");
        assert_eq!(
            q.len(),
            0,
            "never handed to a second worker while processing"
        );
        q.done(&k);
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_holds_the_key_until_its_delay_has_passed() {
        let q = WorkQueue::default();
        q.add_after("late", Duration::from_secs(5));
        q.add("now");
        assert_eq!(q.get().await, "now");
        let start = Instant::now();
        assert_eq!(q.get().await, "late");
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_retries_back_off_exponentially_until_forgotten() {
        let q = WorkQueue::default();
        let mut delays = Vec::new();
        for _ in 0..4 {
            let start = Instant::now();
            q.add_rate_limited("k");
            let k = q.get().await;
            delays.push(start.elapsed());
            q.done(&k);
        }
        assert_eq!(
            delays,
            [5, 10, 20, 40].map(Duration::from_millis).to_vec(),
            "5 ms doubling per failure"
        );
        q.forget(&"k");
        let start = Instant::now();
        q.add_rate_limited("k");
        q.get().await;
        assert_eq!(start.elapsed(), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_is_capped() {
        let q = WorkQueue::default();
        for _ in 0..40 {
            q.add_rate_limited("k");
            let k = q.get().await;
            q.done(&k);
        }
        let start = Instant::now();
        q.add_rate_limited("k");
        q.get().await;
        assert_eq!(start.elapsed(), MAX_DELAY);
    }
}
