//! What client-go calls an informer: a kube-runtime reflector keeping a
//! local store in step with the API, plus callbacks that tell a controller
//! what changed, and a record of the controller's own writes so it never
//! acts on a store that has not seen them yet.
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Applied,
    Deleted,
}

/// Keeps `writer`'s store in step with `api` until the caller drops the
/// future. `on_change` sees every object added, modified or deleted, after
/// the store has it; `on_resync` runs whenever a (re)list has replaced the
/// whole store, since a relist can drop objects without a delete event.
pub async fn mirror<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    on_change: impl FnMut(&K, Change),
    on_resync: impl FnMut(),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let events = watcher(api, config)
        .default_backoff()
        // The stores hold every object of the kind: keep them small.
        .modify(|o| o.meta_mut().managed_fields = None);
    let events = reflector::reflector(writer, events);
    follow(&kind, events, on_change, on_resync).await
}

/// [`mirror`]'s callbacks over events whose store is kept elsewhere (a
/// [`crate::shared::SharedInformer`] subscription).
pub async fn follow<K, E: std::fmt::Display>(
    kind: &str,
    events: impl futures::Stream<Item = Result<watcher::Event<K>, E>>,
    mut on_change: impl FnMut(&K, Change),
    mut on_resync: impl FnMut(),
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(o)) => on_change(&o, Change::Applied),
            Ok(watcher::Event::Delete(o)) => on_change(&o, Change::Deleted),
            Ok(watcher::Event::InitDone) => on_resync(),
            // InitApply objects only reach the store at InitDone.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying with backoff"),
        }
    }
}

/// A write of ours the store has not shown yet: the object named `name`
/// at `resource_version`, or its deletion (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    name: String,
    resource_version: Option<String>,
    at: Instant,
}

/// How long a write may stay unobserved before it is assumed lost (a
/// watch that relisted, an object deleted by someone else at once): past
/// this the controller acts on its store again rather than wedge.
const FORGET_AFTER: Duration = Duration::from_secs(30);

/// Upstream's EndpointSliceTracker / staleEndpointsTracker: per owner key
/// (a Service), the writes made and not yet seen through the watch. A
/// sync that finds any must wait: acting on the stale store would, for
/// instance, create a second EndpointSlice for endpoints already placed in
/// one it just created under a generated name.
///
/// Matching is by exact resourceVersion (the server's answer to our
/// write), never by comparing versions, which are opaque.
pub struct WriteTracker<Key> {
    pending: Mutex<HashMap<Key, Vec<Pending>>>,
}

impl<Key> Default for WriteTracker<Key> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
        }
    }
}

impl<Key: Clone + Eq + Hash> WriteTracker<Key> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Pending>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// We created or updated `name`; the server answered `resource_version`.
    pub fn wrote(&self, key: &Key, name: &str, resource_version: Option<String>) {
        self.push(key, name, resource_version);
    }

    pub fn deleted(&self, key: &Key, name: &str) {
        self.push(key, name, None);
    }

    fn push(&self, key: &Key, name: &str, resource_version: Option<String>) {
        let mut p = self.lock();
        let v = p.entry(key.clone()).or_default();
        // Only the latest write of an object matters.
        v.retain(|w| w.name != name);
        v.push(Pending {
            name: name.to_string(),
            resource_version,
            at: Instant::now(),
        });
    }

    /// The watch delivered `name` at `resource_version` (`deleted` for a
    /// delete event).
    pub fn observed(&self, key: &Key, name: &str, resource_version: Option<&str>, deleted: bool) {
        let mut p = self.lock();
        if let Some(v) = p.get_mut(key) {
            v.retain(|w| {
                let seen = w.name == name
                    && if deleted {
                        w.resource_version.is_none()
                    } else {
                        w.resource_version.is_some()
                            && w.resource_version.as_deref() == resource_version
                    };
                !seen
            });
            if v.is_empty() {
                p.remove(key);
            }
        }
    }

    /// A relist replaced the store with the server's current state.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// True while some write for `key` has not shown up in the store.
    /// `current` gives the resourceVersion the store holds for a name (None
    /// when absent): the watch may have delivered a write before the
    /// controller recorded it, and then only the store can tell.
    pub fn is_stale(&self, key: &Key, current: impl Fn(&str) -> Option<String>) -> bool {
        let mut p = self.lock();
        let Some(v) = p.get_mut(key) else {
            return false;
        };
        let now = Instant::now();
        v.retain(|w| {
            let shown = match &w.resource_version {
                Some(rv) => current(&w.name).as_ref() == Some(rv),
                None => current(&w.name).is_none(),
            };
            let expired = now.duration_since(w.at) >= FORGET_AFTER;
            if expired && !shown {
                tracing::debug!(
                    object = w.name,
                    "write never observed through the watch; no longer waiting for it"
                );
            }
            !shown && !expired
        });
        if v.is_empty() {
            p.remove(key);
            return false;
        }
        true
    }

    pub fn forget(&self, key: &Key) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that has not seen anything.
    fn absent(_: &str) -> Option<String> {
        None
    }

    #[tokio::test]
    async fn a_write_is_stale_until_the_watch_shows_that_exact_version() {
        let t = WriteTracker::default();
        t.wrote(&"svc", "svc-abc", Some("7".into()));
        assert!(t.is_stale(&"svc", absent));
        t.observed(&"svc", "svc-abc", Some("6"), false);
        assert!(t.is_stale(&"svc", absent), "an older version is not ours");
        t.observed(&"svc", "svc-abc", Some("7"), false);
        assert!(!t.is_stale(&"svc", absent));
    }

    #[tokio::test]
    async fn a_delete_is_stale_until_the_delete_event() {
        let t = WriteTracker::default();
        t.deleted(&"svc", "svc-abc");
        t.observed(&"svc", "svc-abc", Some("9"), false);
        assert!(
            t.is_stale(&"svc", |_| Some("9".into())),
            "a modification is not the deletion"
        );
        t.observed(&"svc", "svc-abc", Some("10"), true);
        assert!(!t.is_stale(&"svc", |_| Some("9".into())));
    }

    #[tokio::test]
    async fn other_keys_and_objects_are_independent() {
        let t = WriteTracker::default();
        t.wrote(&"a", "a-1", Some("1".into()));
        t.wrote(&"a", "a-2", Some("2".into()));
        assert!(!t.is_stale(&"b", absent));
        t.observed(&"a", "a-1", Some("1"), false);
        assert!(t.is_stale(&"a", absent), "a-2 is still unseen");
        t.observed(&"a", "a-2", Some("2"), false);
        assert!(!t.is_stale(&"a", absent));
    }

    #[tokio::test]
    async fn a_write_the_store_already_shows_is_not_stale_even_if_its_event_came_first() {
        let t = WriteTracker::default();
        // The watch delivered version 7 before the write was recorded.
        t.observed(&"svc", "svc-abc", Some("7"), false);
        t.wrote(&"svc", "svc-abc", Some("7".into()));
        assert!(t.is_stale(&"svc", |_| Some("6".into())));
        assert!(!t.is_stale(&"svc", |_| Some("7".into())));
        t.deleted(&"svc", "svc-abc");
        assert!(t.is_stale(&"svc", |_| Some("7".into())));
        assert!(!t.is_stale(&"svc", absent), "gone from the store");
    }

    #[tokio::test]
    async fn a_relist_clears_every_pending_write() {
        let t = WriteTracker::default();
        t.wrote(&"a", "a-1", Some("1".into()));
        t.clear();
        assert!(!t.is_stale(&"a", absent));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_never_observed_is_given_up_after_a_while() {
        let t = WriteTracker::default();
        t.wrote(&"a", "a-1", Some("1".into()));
        tokio::time::advance(FORGET_AFTER - Duration::from_millis(1)).await;
        assert!(t.is_stale(&"a", absent));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!t.is_stale(&"a", absent));
    }
}
