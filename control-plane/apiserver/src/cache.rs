//! The watch cache: every served resource's objects in memory, fed by one
//! store watch over the whole registry, so lists and watches cost the
//! store nothing and N watchers cost one store watch.
//!
//! Consistency: one feeder task applies store events in revision order.
//! Each event is applied to its resource's cache and the global revision
//! is advanced *while that resource's lock is held*, so a reader holding a
//! resource's lock sees its state at exactly the global revision it reads
//! there. A list without a resourceVersion first waits for the cache to
//! reach the store's current revision (read-your-writes, like upstream's
//! consistent reads from cache); with one watch over every prefix that
//! revision arrives as soon as the write is delivered.
//!
//! Each resource keeps a bounded history for watches that resume from a
//! resourceVersion (older than the history: 410 Gone) and a broadcast
//! channel for live events. A watcher that falls a channel's worth of
//! events behind is cut off with 410 (it re-lists); the server never waits
//! for a client.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::StreamExt as _;
use serde_json::Value;
use sluice_store::{ListRequest, Store, StoreError, WatchEvent};
use tokio::sync::{broadcast, watch};

use crate::registry::{self, Corrupt, Resource};

/// How much the cache remembers and tolerates.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Events kept per resource for watches resuming from a resourceVersion.
    pub history: usize,
    /// Live events a watcher may fall behind before it is cut off.
    pub lag: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            history: 8192,
            lag: 4096,
        }
    }
}
/// How long a request waits for the cache to reach a revision.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// The fields selectors usually read, kept parsed; any other field is
/// read by parsing the object again.
pub const SUMMARY_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
];

/// One object as cached: its JSON as served (a list or watch event copies
/// these bytes as they are) and a parsed summary for selectors. A pod is
/// ~1.3 KiB this way instead of ~10 KiB as a `serde_json::Value`.
#[derive(Debug, PartialEq)]
pub struct Cached {
    pub json: bytes::Bytes,
    /// `{"metadata": {name, namespace, labels}, "spec": {nodeName}, "status": {phase}}`.
    pub summary: Value,
}

impl Cached {
    pub fn new(obj: &Value) -> Self {
        let mut summary = serde_json::json!({"metadata": {}});
        for f in SUMMARY_FIELDS
            .iter()
            .copied()
            .chain(std::iter::once("metadata.labels"))
        {
            let (a, b) = f.split_once('.').unwrap_or((f, ""));
            if let Some(v) = obj.get(a).and_then(|x| x.get(b)) {
                summary[a][b] = v.clone();
            }
        }
        Self {
            json: serde_json::to_vec(obj).unwrap_or_default().into(),
            summary,
        }
    }

    /// The whole object, parsed again.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or_default()
    }
}

/// One change to one object, as every watcher of its resource sees it.
#[derive(Debug)]
pub enum Change {
    /// `prev` is None for a create.
    Put {
        obj: Arc<Cached>,
        prev: Option<Arc<Cached>>,
    },
    /// `obj` is the last state, with the deletion's resourceVersion.
    Delete { obj: Arc<Cached> },
    /// Nothing else happened to this resource up to `rev`.
    Bookmark,
}

#[derive(Debug)]
pub struct Event {
    pub rev: i64,
    pub change: Change,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Arc<Cached>>,
    /// Keys whose stored bytes are not an object of the resource, with
    /// why: a list that covers one fails naming it. (`objects` keeps the
    /// last good state, so watchers see a repair as MODIFIED.)
    corrupt: BTreeMap<String, String>,
    history: VecDeque<Arc<Event>>,
    /// Every event after this revision is in `history`.
    covered_from: i64,
}

struct ResourceCache {
    resource: &'static Resource,
    inner: RwLock<Inner>,
    live: broadcast::Sender<Arc<Event>>,
}

pub struct WatchCache {
    caches: Vec<ResourceCache>,
    limits: Limits,
    /// The revision every cache has caught up to.
    revision: watch::Sender<i64>,
    store: Arc<dyn Store>,
}

#[derive(Debug)]
pub enum CacheError {
    /// The requested revision is older than the cache remembers.
    Gone {
        requested: i64,
        oldest: i64,
    },
    /// The cache did not reach the requested revision in time.
    TooNew {
        requested: i64,
        current: i64,
    },
    Store(StoreError),
}

/// A consistent read of one resource.
pub struct Listing {
    pub revision: i64,
    pub items: Vec<Arc<Cached>>,
    /// The key after the last item, when `limit` cut the list short.
    pub next: Option<String>,
    /// A corrupt object in the listed range: the list must fail.
    pub corrupt: Option<Corrupt>,
}

fn decode(r: &Resource, key: &str, bytes: &[u8], rev: i64) -> Result<Arc<Cached>, Corrupt> {
    match r.parse_stored(key, bytes) {
        Ok(v) => Ok(Arc::new(Cached::new(&r.stamp(v, rev)))),
        Err(c) => {
            tracing::error!(key = %c.key, reason = %c.reason, "watch cache: corrupt stored object");
            Err(c)
        }
    }
}

/// An object's last state, stamped with the revision that deleted it.
pub fn deleted(old: &Cached, rev: i64) -> Arc<Cached> {
    let mut gone = old.value();
    gone["metadata"]["resourceVersion"] = Value::from(rev.to_string());
    Arc::new(Cached::new(&gone))
}

impl WatchCache {
    /// Lists the registry, fills every resource's cache and starts the
    /// feeder (which runs as long as the returned handle lives).
    pub async fn start(store: Arc<dyn Store>, limits: Limits) -> Result<Arc<Self>, StoreError> {
        let caches = registry::RESOURCES
            .iter()
            .map(|resource| ResourceCache {
                resource,
                inner: RwLock::default(),
                live: broadcast::channel(limits.lag.max(1)).0,
            })
            .collect();
        let cache = Arc::new(Self {
            caches,
            limits,
            revision: watch::channel(0).0,
            store,
        });
        let rev = cache.relist().await?;
        let feeder = Arc::downgrade(&cache);
        tokio::spawn(async move { feed(feeder, rev).await });
        Ok(cache)
    }

    fn cache_of(&self, r: &Resource) -> &ResourceCache {
        self.caches
            .iter()
            .find(|c| std::ptr::eq(c.resource, r))
            .unwrap_or(&self.caches[0])
    }

    /// The caches holding `key`: its resource's, and those of views of it.
    fn caches_for_key<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a ResourceCache> {
        self.caches
            .iter()
            .filter(move |c| key.starts_with(&c.resource.prefix(None)))
    }

    /// Replaces every cache with a fresh list of the store; changes since
    /// the old contents go to live watchers as events at the list's
    /// revision, and histories restart there (older resumes get 410).
    async fn relist(&self) -> Result<i64, StoreError> {
        let page = self
            .store
            .list(ListRequest {
                prefix: "/registry/",
                ..Default::default()
            })
            .await?;
        let rev = page.revision;
        let mut fresh: Vec<BTreeMap<String, Arc<Cached>>> =
            vec![BTreeMap::new(); self.caches.len()];
        let mut corrupt: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); self.caches.len()];
        for kv in page.kvs {
            // A view's cache holds the same keys as the viewed resource's.
            for (i, c) in self.caches.iter().enumerate() {
                if !kv.key.starts_with(&c.resource.prefix(None)) {
                    continue;
                }
                match decode(c.resource, &kv.key, &kv.value, kv.mod_revision) {
                    Ok(v) => {
                        fresh[i].insert(kv.key.clone(), v);
                    }
                    Err(c) => {
                        corrupt[i].insert(c.key, c.reason);
                    }
                }
            }
        }
        // Every cache is swapped under all the locks (taken in table
        // order, as no one else takes two), and the revision moves once,
        // so no reader sees one resource new and another old at `rev`.
        let mut guards: Vec<_> = self
            .caches
            .iter()
            .map(|c| c.inner.write().unwrap_or_else(|p| p.into_inner()))
            .collect();
        for (((c, inner), objects), corrupt) in self
            .caches
            .iter()
            .zip(guards.iter_mut())
            .zip(fresh)
            .zip(corrupt)
        {
            inner.corrupt = corrupt;
            let mut changes = Vec::new();
            for (k, old) in &inner.objects {
                if !objects.contains_key(k) {
                    changes.push(Change::Delete {
                        obj: deleted(old, rev),
                    });
                }
            }
            for (k, new) in &objects {
                match inner.objects.get(k) {
                    Some(old) if old == new => {}
                    prev => changes.push(Change::Put {
                        obj: new.clone(),
                        prev: prev.cloned(),
                    }),
                }
            }
            inner.objects = objects;
            inner.history.clear();
            inner.covered_from = rev;
            for change in changes {
                let _ = c.live.send(Arc::new(Event { rev, change }));
            }
        }
        self.revision.send_replace(rev);
        drop(guards);
        Ok(rev)
    }

    /// Applies one store event (the feeder's only job).
    fn apply(&self, ev: WatchEvent) {
        let rev = ev.revision();
        let Some(key) = ev.key().map(str::to_string) else {
            // Progress: every resource is quiet up to `rev`.
            for c in &self.caches {
                let _guard = c.inner.write().unwrap_or_else(|p| p.into_inner());
                let _ = c.live.send(Arc::new(Event {
                    rev,
                    change: Change::Bookmark,
                }));
                self.revision.send_replace(rev);
            }
            return;
        };
        let caches: Vec<&ResourceCache> = self.caches_for_key(&key).collect();
        if caches.is_empty() {
            // Not a served resource (allocations): only the revision moves.
            self.revision.send_replace(rev);
            return;
        }
        // Every cache of the key is written before the revision moves, so
        // a reader never sees one form of an object new and another old.
        let mut guards: Vec<_> = caches
            .iter()
            .map(|c| c.inner.write().unwrap_or_else(|p| p.into_inner()))
            .collect();
        for (c, inner) in caches.iter().zip(guards.iter_mut()) {
            self.apply_one(c, inner, &key, &ev, rev);
        }
        self.revision.send_replace(rev);
        drop(guards);
    }

    /// One store event to one resource's cache (the revision is the
    /// caller's to move).
    fn apply_one(
        &self,
        c: &ResourceCache,
        inner: &mut Inner,
        key: &str,
        ev: &WatchEvent,
        rev: i64,
    ) {
        let key = key.to_string();
        let change = match ev {
            WatchEvent::Put { kv, .. } => match decode(c.resource, &key, &kv.value, rev) {
                Ok(obj) => {
                    inner.corrupt.remove(&key);
                    Change::Put {
                        prev: inner.objects.insert(key, obj.clone()),
                        obj,
                    }
                }
                Err(bad) => {
                    inner.corrupt.insert(bad.key, bad.reason);
                    return;
                }
            },
            WatchEvent::Delete { .. } => {
                inner.corrupt.remove(&key);
                match inner.objects.remove(&key) {
                    Some(old) => Change::Delete {
                        obj: deleted(&old, rev),
                    },
                    None => return,
                }
            }
            WatchEvent::Progress { .. } => return,
        };
        let event = Arc::new(Event { rev, change });
        if inner.history.len() >= self.limits.history
            && let Some(old) = inner.history.pop_front()
        {
            inner.covered_from = old.rev;
        }
        inner.history.push_back(event.clone());
        let _ = c.live.send(event);
    }

    /// Waits until the cache has reached `rev`.
    async fn reach(&self, rev: i64) -> Result<(), CacheError> {
        self.reaches(rev, FRESHNESS_WAIT)
            .await
            .map_err(|current| CacheError::TooNew {
                requested: rev,
                current,
            })
    }

    /// Waits up to `wait` for the cache to reach `rev`; on timeout, the
    /// revision it is at (readiness: a cache that stopped following the
    /// store falls behind it).
    pub async fn reaches(&self, rev: i64, wait: Duration) -> Result<(), i64> {
        let mut rx = self.revision.subscribe();
        match tokio::time::timeout(wait, rx.wait_for(|r| *r >= rev)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(*self.revision.borrow()),
        }
    }

    /// The revision a list must reflect: the store's current one when the
    /// client asked for none ("" = most recent), else what it asked for.
    pub async fn settle(&self, resource_version: Option<i64>) -> Result<(), CacheError> {
        let rev = match resource_version {
            Some(0) => return Ok(()),
            Some(rev) => rev,
            None => self
                .store
                .current_revision()
                .await
                .map_err(CacheError::Store)?,
        };
        self.reach(rev).await
    }

    /// The objects of `r` (in namespace `ns`) matching `wanted`, in key
    /// order, from `start`, at most `limit` (0: all).
    pub fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        start: Option<&str>,
        limit: usize,
        at: Option<i64>,
        wanted: &dyn Fn(&Cached) -> bool,
    ) -> Option<Listing> {
        let prefix = r.prefix(ns);
        let from = start.unwrap_or(&prefix).to_string();
        // Only the Arcs are taken under the lock; selectors (which may
        // parse objects) run after it, so the feeder is never held up.
        let (revision, candidates, corrupt) = {
            let inner = self
                .cache_of(r)
                .inner
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let revision = *self.revision.borrow();
            // A later page must come from the same revision as the first.
            if at.is_some_and(|at| at != revision) {
                return None;
            }
            let corrupt = inner
                .corrupt
                .range(from.clone()..)
                .next()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, reason)| Corrupt {
                    key: k.clone(),
                    reason: reason.clone(),
                });
            let candidates: Vec<(String, Arc<Cached>)> = inner
                .objects
                .range(from..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (revision, candidates, corrupt)
        };
        let mut items = Vec::new();
        let mut next = None;
        for (k, v) in candidates {
            if !wanted(&v) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                next = Some(k);
                break;
            }
            items.push(v);
        }
        Some(Listing {
            revision,
            items,
            next,
            corrupt,
        })
    }

    /// A watch on `r` from `after`: the current objects as a snapshot
    /// (None: none) plus every later event, gap-free.
    pub async fn watch(
        &self,
        r: &Resource,
        after: Option<i64>,
    ) -> Result<(Vec<Arc<Event>>, i64, broadcast::Receiver<Arc<Event>>), CacheError> {
        if let Some(rev) = after {
            self.reach(rev).await?;
        }
        let c = self.cache_of(r);
        let inner = c.inner.read().unwrap_or_else(|p| p.into_inner());
        let now = *self.revision.borrow();
        let backlog = match after {
            None => inner
                .objects
                .values()
                .map(|obj| {
                    Arc::new(Event {
                        rev: now,
                        change: Change::Put {
                            obj: obj.clone(),
                            prev: None,
                        },
                    })
                })
                .collect(),
            Some(rev) if rev < inner.covered_from => {
                return Err(CacheError::Gone {
                    requested: rev,
                    oldest: inner.covered_from,
                });
            }
            Some(rev) => inner
                .history
                .iter()
                .filter(|e| e.rev > rev)
                .cloned()
                .collect(),
        };
        Ok((backlog, after.unwrap_or(now), c.live.subscribe()))
    }
}

/// The feeder: one store watch over the registry, re-listing when it
/// breaks. Ends when the cache is dropped.
async fn feed(cache: std::sync::Weak<WatchCache>, mut rev: i64) {
    loop {
        let Some(c) = cache.upgrade() else { return };
        let stream = c.store.watch("/registry/", rev).await;
        drop(c);
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("watch cache: store watch failed: {e}; re-listing");
                rev = relist_later(&cache).await.unwrap_or(rev);
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            let Some(c) = cache.upgrade() else { return };
            match ev {
                Ok(ev) => {
                    rev = ev.revision();
                    c.apply(ev);
                }
                Err(e) => {
                    tracing::warn!("watch cache: store watch ended: {e}; re-listing");
                    drop(c);
                    rev = relist_later(&cache).await.unwrap_or(rev);
                    break;
                }
            }
        }
    }
}

async fn relist_later(cache: &std::sync::Weak<WatchCache>) -> Option<i64> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = cache.upgrade()?;
    match c.relist().await {
        Ok(rev) => Some(rev),
        Err(e) => {
            tracing::warn!("watch cache: re-list failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_store::embedded::{Embedded, Options};

    use super::*;

    fn cm(name: &str, v: &str) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"metadata": {"name": name, "namespace": "ns"}, "data": {"v": v}}),
        )
        .expect("json")
    }

    const KEY: &str = "/registry/core/configmaps/ns/";

    async fn setup(limits: Limits) -> (tempfile::TempDir, Arc<dyn Store>, Arc<WatchCache>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            Embedded::open(&dir.path().join("s.redb"), Options::default()).expect("store"),
        );
        store
            .create(&format!("{KEY}a"), cm("a", "1"))
            .await
            .expect("create");
        let cache = WatchCache::start(store.clone(), limits)
            .await
            .expect("cache");
        (dir, store, cache)
    }

    fn configmaps() -> &'static Resource {
        registry::find("", "v1", "configmaps").expect("configmaps")
    }

    fn names(l: &Listing) -> Vec<String> {
        l.items
            .iter()
            .map(|o| {
                o.summary["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    #[tokio::test]
    async fn lists_read_their_writes_and_watches_resume_without_gaps() {
        let (_dir, store, cache) = setup(Limits::default()).await;
        let r = configmaps();
        let all = |_: &Cached| true;
        let first = cache
            .list(r, Some("ns"), None, 0, None, &all)
            .expect("listing");
        assert_eq!(names(&first), ["a"]);
        let rev_b = store
            .create(&format!("{KEY}b"), cm("b", "1"))
            .await
            .expect("b");
        store
            .update(
                &format!("{KEY}a"),
                cm("a", "2"),
                first.items[0].value()["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("rv"),
            )
            .await
            .expect("update a");
        // A list with no resourceVersion reflects every acknowledged write.
        cache.settle(None).await.expect("settle");
        let now = cache
            .list(r, Some("ns"), None, 0, None, &all)
            .expect("listing");
        assert_eq!(names(&now), ["a", "b"]);
        assert_eq!(now.items[0].value()["data"]["v"], "2");
        // Paging: one item, then the rest from the continue key.
        let page = cache
            .list(r, Some("ns"), None, 1, None, &all)
            .expect("listing");
        assert_eq!(names(&page), ["a"]);
        let rest = cache
            .list(
                r,
                Some("ns"),
                page.next.as_deref(),
                1,
                Some(page.revision),
                &all,
            )
            .expect("same revision");
        assert_eq!(names(&rest), ["b"]);
        // Resuming at b's revision replays exactly the later update.
        let (backlog, _, _) = cache.watch(r, Some(rev_b)).await.expect("watch");
        assert_eq!(backlog.len(), 1);
        assert!(
            matches!(&backlog[0].change, Change::Put { obj, prev: Some(_) } if obj.value()["data"]["v"] == "2")
        );
        // Older than the cache remembers: 410.
        assert!(matches!(
            cache.watch(r, Some(first.revision - 1)).await,
            Err(CacheError::Gone { .. })
        ));
        // Far in the future: the wait gives up.
        assert!(matches!(
            cache.watch(r, Some(now.revision + 1000)).await,
            Err(CacheError::TooNew { .. })
        ));
    }

    /// Writes `value` at `key` and lists namespace "ns" once the cache has
    /// the write.
    async fn update_and_list(
        store: &Arc<dyn Store>,
        cache: &WatchCache,
        key: &str,
        value: Vec<u8>,
        expected: i64,
    ) -> (i64, Listing) {
        let rev = store.update(key, value, expected).await.expect("update");
        cache
            .reaches(rev, Duration::from_secs(10))
            .await
            .expect("cache follows");
        let l = cache
            .list(configmaps(), Some("ns"), None, 0, None, &|_: &Cached| true)
            .expect("listing");
        (rev, l)
    }

    /// A list covering an object stored as garbage fails naming its key
    /// (at start-up and when it arrives by watch) until the key holds an
    /// object again; lists of other namespaces are unaffected.
    #[tokio::test]
    async fn a_list_over_a_corrupt_object_names_it() {
        let (_dir, store, _) = setup(Limits::default()).await;
        let bad = format!("{KEY}bad");
        store
            .create(&bad, b"{not json".to_vec())
            .await
            .expect("garbage");
        let all = |_: &Cached| true;
        let r = configmaps();
        // Found by the initial list...
        let cache = WatchCache::start(store.clone(), Limits::default())
            .await
            .expect("cache");
        let l = cache
            .list(r, Some("ns"), None, 0, None, &all)
            .expect("listing");
        assert_eq!(l.corrupt.map(|c| c.key), Some(bad.clone()));
        let other = cache
            .list(r, Some("other"), None, 0, None, &all)
            .expect("listing");
        assert_eq!(other.corrupt, None);
        // ...repaired by a good write...
        let kv = store.get(&bad).await.expect("get").expect("present");
        let (rev, l) = update_and_list(&store, &cache, &bad, cm("bad", "1"), kv.mod_revision).await;
        assert_eq!(
            (l.corrupt.clone(), names(&l)),
            (None, vec!["a".to_string(), "bad".to_string()])
        );
        // ...and broken again by a watched write.
        let (_, l) = update_and_list(&store, &cache, &bad, b"null".to_vec(), rev).await;
        let c = l.corrupt.expect("the watched garbage is reported");
        assert_eq!(c.key, bad);
        assert!(c.reason.contains("null"), "{}", c.reason);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_cut_off_and_others_carry_on() {
        let (_dir, store, cache) = setup(Limits {
            history: 64,
            lag: 8,
        })
        .await;
        let r = configmaps();
        let (_, _, mut slow) = cache.watch(r, None).await.expect("slow watch");
        let (_, _, mut keeping_up) = cache.watch(r, None).await.expect("watch");
        let mut seen = 0;
        for i in 0..20 {
            store
                .create(&format!("{KEY}x{i}"), cm(&format!("x{i}"), "1"))
                .await
                .expect("create");
            loop {
                match tokio::time::timeout(Duration::from_secs(5), keeping_up.recv()).await {
                    Ok(Ok(ev)) if matches!(ev.change, Change::Put { .. }) => {
                        seen += 1;
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    other => panic!("a reader that keeps up lost events: {other:?}"),
                }
            }
        }
        assert_eq!(seen, 20);
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
        // The history is bounded too: resuming before it is a 410.
        let oldest = {
            let c = cache.cache_of(r);
            c.inner.read().map(|i| i.covered_from).unwrap_or_default()
        };
        assert!(matches!(
            cache.watch(r, Some(oldest - 1)).await,
            Err(CacheError::Gone { .. })
        ));
    }
}
