//! The embedded backend: one redb file, no extra process.
//!
//! Layout (all in one redb database, so every write is one ACID commit):
//! - `latest`: key -> newest [`Record`] (what reads at "now" use);
//! - `keyrevs`: (key, revision) -> [`Record`] for every write still in
//!   history, tombstones included (reads at an older revision);
//! - `log`: revision -> key (watch replay from disk, in revision order);
//! - `meta`: `rev` (current revision) and `compacted`.
//!
//! Writes go through one writer thread that takes every queued request,
//! applies them in order in one transaction (each successful one gets the
//! next revision) and commits once with fsync before answering any of
//! them: group commit, so 16 concurrent writers share a disk flush the
//! way etcd's raft batches do. After the commit the events enter an
//! in-memory history (bounded by count and age, like the API server's
//! watch cache) and a broadcast channel; watchers that fall a whole
//! buffer behind are cut off with [`StoreError::WatcherTooSlow`] instead
//! of slowing writers down. A watch from a revision no longer in memory
//! replays from the `log` table.
use std::{
    collections::VecDeque,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    KeyValue, ListRequest, ListResult, Store, StoreError, WatchEvent, WatchStream, validate_key,
    validate_write,
};

const LATEST: TableDefinition<&str, &[u8]> = TableDefinition::new("latest");
const KEYREVS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("keyrevs");
const LOG: TableDefinition<u64, &str> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REV: &str = "rev";
const META_COMPACTED: &str = "compacted";

/// Tunables; the defaults suit a single-node control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// Every key must start with this (e.g. `/registry/`).
    pub prefix: String,
    /// Events kept in memory for watch replay (older ones come from disk).
    pub history_events: usize,
    pub history_age: Duration,
    /// Events a watcher may fall behind before it is disconnected.
    pub watcher_buffer: usize,
    /// How often an idle watch gets a [`WatchEvent::Progress`].
    pub progress_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: "/registry/".into(),
            history_events: 10_000,
            history_age: Duration::from_secs(300),
            watcher_buffer: 1024,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// A key's state at one revision. Encoded as create | mod | version (u64
/// LE each), a tombstone flag byte, then the value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    create: u64,
    modified: u64,
    version: u64,
    tombstone: bool,
    value: Vec<u8>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(25 + self.value.len());
        b.extend_from_slice(&self.create.to_le_bytes());
        b.extend_from_slice(&self.modified.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.push(u8::from(self.tombstone));
        b.extend_from_slice(&self.value);
        b
    }

    fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() < 25 {
            return Err(StoreError::Backend(format!(
                "corrupt record ({} bytes)",
                b.len()
            )));
        }
        let u = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Ok(Self {
            create: u(0),
            modified: u(8),
            version: u(16),
            tombstone: b[24] != 0,
            value: b[25..].to_vec(),
        })
    }

    fn kv(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value.clone(),
            create_revision: self.create as i64,
            mod_revision: self.modified as i64,
            version: self.version as i64,
        }
    }
}

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: i64,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    Compact {
        revision: i64,
    },
}

enum Done {
    Rev(i64),
    Deleted(i64, KeyValue),
    Compacted,
}

type Reply = oneshot::Sender<Result<Done, StoreError>>;

/// What watchers share: recent events and the live feed.
struct Hub {
    history: VecDeque<(Instant, Arc<WatchEvent>)>,
    live: broadcast::Sender<Arc<WatchEvent>>,
    current: i64,
    compacted: i64,
}

struct Inner {
    db: Database,
    opts: Options,
    hub: Mutex<Hub>,
}

pub struct Embedded {
    inner: Arc<Inner>,
    writes: Option<mpsc::Sender<(Op, Reply)>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Closing stops the writer after its current batch and releases the
/// file (redb locks it), so the same path can be reopened at once.
impl Drop for Embedded {
    fn drop(&mut self) {
        self.writes.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Embedded {
    /// Opens (creating) the store file at `path`. Must be called within a
    /// tokio runtime (watchers are tasks on it).
    pub fn open(path: &Path, opts: Options) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Unavailable(format!("opening {}: {e}", path.display())))?;
        Self::on(db, opts)
    }

    /// The store over an open database: the unit tests below hand it one
    /// on a simulated disk, so the fsync-before-ack path can be checked.
    fn on(db: Database, opts: Options) -> Result<Self, StoreError> {
        let (current, compacted) = {
            let w = db.begin_write().map_err(be)?;
            let (rev, comp) = {
                // Create every table so readers never meet a missing one.
                w.open_table(LATEST).map_err(be)?;
                w.open_table(KEYREVS).map_err(be)?;
                w.open_table(LOG).map_err(be)?;
                let meta = w.open_table(META).map_err(be)?;
                let get = |k| -> Result<u64, StoreError> {
                    Ok(meta.get(k).map_err(be)?.map(|g| g.value()).unwrap_or(0))
                };
                (get(META_REV)?, get(META_COMPACTED)?)
            };
            w.commit().map_err(be)?;
            (rev as i64, comp as i64)
        };
        let (live, _) = broadcast::channel(opts.watcher_buffer.max(1));
        let inner = Arc::new(Inner {
            db,
            opts,
            hub: Mutex::new(Hub {
                history: VecDeque::new(),
                live,
                current,
                compacted,
            }),
        });
        let (tx, rx) = mpsc::channel(4096);
        let w = inner.clone();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(w, rx))
            .map_err(be)?;
        Ok(Self {
            inner,
            writes: Some(tx),
            writer: Some(handle),
        })
    }

    async fn write(&self, op: Op) -> Result<Done, StoreError> {
        let (tx, rx) = oneshot::channel();
        let writes = self
            .writes
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("store closed".into()))?;
        writes
            .send((op, tx))
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }
}

/// The writer thread: batches of queued requests, one commit each.
fn writer(inner: Arc<Inner>, mut rx: mpsc::Receiver<(Op, Reply)>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let (results, events, rev, compacted) = match apply(&inner.db, &batch) {
            Ok(r) => r,
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        inner.publish(events, rev, compacted);
        for ((_, reply), r) in batch.into_iter().zip(results) {
            let _ = reply.send(r);
        }
    }
}

type Applied = (
    Vec<Result<Done, StoreError>>,
    Vec<WatchEvent>,
    i64,
    Option<i64>,
);

/// Applies `batch` in order in one transaction and commits it.
fn apply(db: &Database, batch: &[(Op, Reply)]) -> Result<Applied, StoreError> {
    let w = db.begin_write().map_err(be)?;
    let mut results = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    let mut compacted_to = None;
    let rev_now;
    {
        let mut latest = w.open_table(LATEST).map_err(be)?;
        let mut keyrevs = w.open_table(KEYREVS).map_err(be)?;
        let mut log = w.open_table(LOG).map_err(be)?;
        let mut meta = w.open_table(META).map_err(be)?;
        let mut rev = meta
            .get(META_REV)
            .map_err(be)?
            .map(|g| g.value())
            .unwrap_or(0);
        let compacted = meta
            .get(META_COMPACTED)
            .map_err(be)?
            .map(|g| g.value())
            .unwrap_or(0);
        for (op, _) in batch {
            let key = match op {
                Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => {
                    Some(key.as_str())
                }
                Op::Compact { .. } => None,
            };
            let cur = match key {
                Some(k) => latest
                    .get(k)
                    .map_err(be)?
                    .map(|g| Record::decode(g.value()))
                    .transpose()?,
                None => None,
            };
            let next = rev + 1;
            let (record, event, done) = match op {
                Op::Create { key, value } => {
                    if cur.is_some() {
                        results.push(Err(StoreError::AlreadyExists(key.clone())));
                        continue;
                    }
                    let r = Record {
                        create: next,
                        modified: next,
                        version: 1,
                        tombstone: false,
                        value: value.clone(),
                    };
                    let ev = WatchEvent::Put {
                        kv: r.kv(key),
                        prev: None,
                    };
                    (r, ev, Done::Rev(next as i64))
                }
                Op::Update {
                    key,
                    value,
                    expected,
                } => {
                    let Some(c) = cur else {
                        results.push(Err(StoreError::NotFound(key.clone())));
                        continue;
                    };
                    if c.modified as i64 != *expected {
                        results.push(Err(StoreError::Conflict {
                            key: key.clone(),
                            expected: *expected,
                            current: Some(Box::new(c.kv(key))),
                        }));
                        continue;
                    }
                    let r = Record {
                        create: c.create,
                        modified: next,
                        version: c.version + 1,
                        tombstone: false,
                        value: value.clone(),
                    };
                    let ev = WatchEvent::Put {
                        kv: r.kv(key),
                        prev: Some(c.kv(key)),
                    };
                    (r, ev, Done::Rev(next as i64))
                }
                Op::Delete { key, expected } => {
                    let Some(c) = cur else {
                        results.push(Err(StoreError::NotFound(key.clone())));
                        continue;
                    };
                    if let Some(e) = expected
                        && c.modified as i64 != *e
                    {
                        results.push(Err(StoreError::Conflict {
                            key: key.clone(),
                            expected: *e,
                            current: Some(Box::new(c.kv(key))),
                        }));
                        continue;
                    }
                    let r = Record {
                        create: c.create,
                        modified: next,
                        version: 0,
                        tombstone: true,
                        value: Vec::new(),
                    };
                    let ev = WatchEvent::Delete {
                        revision: next as i64,
                        prev: c.kv(key),
                    };
                    (r, ev, Done::Deleted(next as i64, c.kv(key)))
                }
                Op::Compact { revision } => {
                    let r = *revision as u64;
                    if *revision <= compacted as i64 {
                        results.push(Err(StoreError::Compacted {
                            requested: *revision,
                            compacted: compacted as i64,
                        }));
                    } else if r > rev {
                        results.push(Err(StoreError::FutureRevision {
                            requested: *revision,
                            current: rev as i64,
                        }));
                    } else {
                        compact(&mut keyrevs, &mut log, r)?;
                        meta.insert(META_COMPACTED, r).map_err(be)?;
                        compacted_to = Some(*revision);
                        results.push(Ok(Done::Compacted));
                    }
                    continue;
                }
            };
            rev = next;
            let key = key.unwrap_or_default();
            let enc = record.encode();
            if record.tombstone {
                latest.remove(key).map_err(be)?;
            } else {
                latest.insert(key, enc.as_slice()).map_err(be)?;
            }
            keyrevs.insert((key, next), enc.as_slice()).map_err(be)?;
            log.insert(next, key).map_err(be)?;
            events.push(event);
            results.push(Ok(done));
        }
        meta.insert(META_REV, rev).map_err(be)?;
        rev_now = rev as i64;
    }
    // Durability::Immediate (redb's default): fsync before anyone hears back.
    w.commit().map_err(be)?;
    Ok((results, events, rev_now, compacted_to))
}

/// Drops history up to `r`: log entries <= r, and per key every record
/// older than its newest one <= r (that one too if it is a tombstone).
fn compact(
    keyrevs: &mut redb::Table<(&str, u64), &[u8]>,
    log: &mut redb::Table<u64, &str>,
    r: u64,
) -> Result<(), StoreError> {
    let mut doomed: Vec<(String, u64)> = Vec::new();
    let mut group: Vec<(u64, bool)> = Vec::new();
    let mut group_key: Option<String> = None;
    let flush = |key: &Option<String>, group: &mut Vec<(u64, bool)>, doomed: &mut Vec<_>| {
        if let Some(k) = key {
            let at_or_before: Vec<&(u64, bool)> = group.iter().filter(|(v, _)| *v <= r).collect();
            if let Some(&&(newest, tomb)) = at_or_before.last() {
                for (v, _) in group.iter().filter(|(v, _)| *v < newest) {
                    doomed.push((k.clone(), *v));
                }
                if tomb {
                    doomed.push((k.clone(), newest));
                }
            }
        }
        group.clear();
    };
    for item in keyrevs.iter().map_err(be)? {
        let (k, v) = item.map_err(be)?;
        let (key, rev) = k.value();
        if group_key.as_deref() != Some(key) {
            flush(&group_key, &mut group, &mut doomed);
            group_key = Some(key.to_string());
        }
        let tomb = Record::decode(v.value())?.tombstone;
        group.push((rev, tomb));
    }
    flush(&group_key, &mut group, &mut doomed);
    for (k, v) in &doomed {
        keyrevs.remove((k.as_str(), *v)).map_err(be)?;
    }
    let old: Vec<u64> = log
        .range(..=r)
        .map_err(be)?
        .map(|i| i.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()
        .map_err(be)?;
    for v in old {
        log.remove(v).map_err(be)?;
    }
    Ok(())
}

impl Inner {
    fn publish(&self, events: Vec<WatchEvent>, rev: i64, compacted: Option<i64>) {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for ev in events {
            let ev = Arc::new(ev);
            // No receivers is fine: nobody is watching.
            let _ = hub.live.send(ev.clone());
            hub.history.push_back((now, ev));
        }
        hub.current = rev;
        if let Some(c) = compacted {
            hub.compacted = c;
            while hub.history.front().is_some_and(|(_, e)| e.revision() <= c) {
                hub.history.pop_front();
            }
        }
        while hub.history.len() > self.opts.history_events
            || hub
                .history
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > self.opts.history_age)
        {
            hub.history.pop_front();
        }
    }

    /// Events under `prefix` after revision `after`, from disk. Events
    /// committed but not yet published may be included; the watcher skips
    /// their live copies by revision.
    fn replay_from_disk(&self, prefix: &str, after: i64) -> Result<Vec<WatchEvent>, StoreError> {
        let r = self.db.begin_read().map_err(be)?;
        let log = r.open_table(LOG).map_err(be)?;
        let keyrevs = r.open_table(KEYREVS).map_err(be)?;
        let meta = r.open_table(META).map_err(be)?;
        let upto = meta
            .get(META_REV)
            .map_err(be)?
            .map(|g| g.value())
            .unwrap_or(0);
        let mut out = Vec::new();
        for item in log.range((after as u64 + 1)..=upto).map_err(be)? {
            let (rev, key) = item.map_err(be)?;
            let (rev, key) = (rev.value(), key.value());
            if !key.starts_with(prefix) {
                continue;
            }
            let rec = keyrevs
                .get((key, rev))
                .map_err(be)?
                .map(|g| Record::decode(g.value()))
                .transpose()?
                .ok_or_else(|| StoreError::Backend(format!("log names {key}@{rev}, no record")))?;
            let prev = keyrevs
                .range((key, 0)..(key, rev))
                .map_err(be)?
                .next_back()
                .transpose()
                .map_err(be)?
                .map(|(_, v)| Record::decode(v.value()))
                .transpose()?
                .filter(|p| !p.tombstone)
                .map(|p| p.kv(key));
            out.push(if rec.tombstone {
                WatchEvent::Delete {
                    revision: rev as i64,
                    prev: prev.unwrap_or_else(|| KeyValue {
                        key: key.to_string(),
                        value: Vec::new(),
                        create_revision: rec.create as i64,
                        mod_revision: rev as i64,
                        version: 0,
                    }),
                }
            } else {
                WatchEvent::Put {
                    kv: rec.kv(key),
                    prev,
                }
            });
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Store for Embedded {
    async fn current_revision(&self) -> Result<i64, StoreError> {
        Ok(self
            .inner
            .hub
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current)
    }

    async fn compacted_revision(&self) -> Result<i64, StoreError> {
        Ok(self
            .inner
            .hub
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .compacted)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(&self.inner.opts.prefix, key)?;
        let inner = self.inner.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let r = inner.db.begin_read().map_err(be)?;
            let t = r.open_table(LATEST).map_err(be)?;
            t.get(key.as_str())
                .map_err(be)?
                .map(|g| Record::decode(g.value()).map(|rec| rec.kv(&key)))
                .transpose()
        })
        .await
        .map_err(be)?
    }

    async fn list(&self, req: ListRequest<'_>) -> Result<ListResult, StoreError> {
        validate_key(&self.inner.opts.prefix, req.prefix)?;
        let inner = self.inner.clone();
        let prefix = req.prefix.to_string();
        let start = req.start.unwrap_or(req.prefix).to_string();
        let (limit, at) = (req.limit, req.revision);
        tokio::task::spawn_blocking(move || list_blocking(&inner.db, &prefix, &start, limit, at))
            .await
            .map_err(be)?
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        validate_write(&self.inner.opts.prefix, key, &value)?;
        match self
            .write(Op::Create {
                key: key.to_string(),
                value,
            })
            .await?
        {
            Done::Rev(r) => Ok(r),
            _ => Err(StoreError::Backend("unexpected write result".into())),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        validate_write(&self.inner.opts.prefix, key, &value)?;
        match self
            .write(Op::Update {
                key: key.to_string(),
                value,
                expected,
            })
            .await?
        {
            Done::Rev(r) => Ok(r),
            _ => Err(StoreError::Backend("unexpected write result".into())),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError> {
        validate_key(&self.inner.opts.prefix, key)?;
        match self
            .write(Op::Delete {
                key: key.to_string(),
                expected,
            })
            .await?
        {
            Done::Deleted(r, kv) => Ok((r, kv)),
            _ => Err(StoreError::Backend("unexpected write result".into())),
        }
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.write(Op::Compact { revision }).await.map(|_| ())
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream, StoreError> {
        validate_key(&self.inner.opts.prefix, prefix)?;
        let (rx, from_memory) = {
            let hub = self.inner.hub.lock().unwrap_or_else(|p| p.into_inner());
            if after < hub.compacted {
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted: hub.compacted,
                });
            }
            let oldest = hub
                .history
                .front()
                .map(|(_, e)| e.revision())
                .unwrap_or(hub.current + 1);
            let from_memory = (after + 1 >= oldest).then(|| {
                hub.history
                    .iter()
                    .filter(|(_, e)| e.revision() > after)
                    .map(|(_, e)| (**e).clone())
                    .collect::<Vec<_>>()
            });
            (hub.live.subscribe(), from_memory)
        };
        let prefix = prefix.to_string();
        let replay = match from_memory {
            Some(v) => v
                .into_iter()
                .filter(|e| e.key().is_some_and(|k| k.starts_with(&prefix)))
                .collect(),
            None => {
                let inner = self.inner.clone();
                let p = prefix.clone();
                tokio::task::spawn_blocking(move || inner.replay_from_disk(&p, after))
                    .await
                    .map_err(be)??
            }
        };
        let (tx, out) = mpsc::channel(self.inner.opts.watcher_buffer.max(1));
        let interval = self.inner.opts.progress_interval;
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(feed(rx, tx, replay, prefix, after, interval, inner));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
    }
}

/// One watcher: the replay, then live events (skipping what the replay
/// already covered), with progress events while idle.
async fn feed(
    mut rx: broadcast::Receiver<Arc<WatchEvent>>,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
    replay: Vec<WatchEvent>,
    prefix: String,
    after: i64,
    interval: Duration,
    inner: std::sync::Weak<Inner>,
) {
    let mut last = after;
    for ev in replay {
        last = last.max(ev.revision());
        if tx.send(Ok(ev)).await.is_err() {
            return;
        }
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(ev) => {
                    if ev.revision() <= last {
                        continue;
                    }
                    last = ev.revision();
                    if ev.key().is_some_and(|k| k.starts_with(&prefix))
                        && tx.send(Ok((*ev).clone())).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(Err(StoreError::WatcherTooSlow)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.send(Err(StoreError::Unavailable("store closed".into()))).await;
                    return;
                }
            },
            _ = tick.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                let current = inner.hub.lock().unwrap_or_else(|p| p.into_inner()).current;
                drop(inner);
                // Only what this watcher has seen may be bookmarked.
                if current <= last || rx.is_empty() {
                    let revision = current.max(last);
                    last = revision;
                    if tx.send(Ok(WatchEvent::Progress { revision })).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn list_blocking(
    db: &Database,
    prefix: &str,
    start: &str,
    limit: usize,
    at: Option<i64>,
) -> Result<ListResult, StoreError> {
    if !start.starts_with(prefix) {
        return Err(StoreError::KeyOutsidePrefix {
            key: start.to_string(),
            prefix: prefix.to_string(),
        });
    }
    let r = db.begin_read().map_err(be)?;
    let meta = r.open_table(META).map_err(be)?;
    let current = meta
        .get(META_REV)
        .map_err(be)?
        .map(|g| g.value())
        .unwrap_or(0) as i64;
    let compacted = meta
        .get(META_COMPACTED)
        .map_err(be)?
        .map(|g| g.value())
        .unwrap_or(0) as i64;
    let at = at.unwrap_or(current);
    if at > current {
        return Err(StoreError::FutureRevision {
            requested: at,
            current,
        });
    }
    if at < compacted {
        return Err(StoreError::Compacted {
            requested: at,
            compacted,
        });
    }
    let mut kvs = Vec::new();
    let mut more = false;
    let full = |n: usize| limit != 0 && n >= limit;
    if at == current {
        let t = r.open_table(LATEST).map_err(be)?;
        for item in t.range(start..).map_err(be)? {
            let (k, v) = item.map_err(be)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if full(kvs.len()) {
                more = true;
                break;
            }
            kvs.push(Record::decode(v.value())?.kv(key));
        }
    } else {
        // Per key, its newest record at or before `at`.
        let t = r.open_table(KEYREVS).map_err(be)?;
        let mut pending: Option<(String, Record)> = None;
        let mut done = false;
        let emit = |p: Option<(String, Record)>, kvs: &mut Vec<KeyValue>| -> bool {
            if let Some((k, rec)) = p
                && !rec.tombstone
            {
                if full(kvs.len()) {
                    return true;
                }
                kvs.push(rec.kv(&k));
            }
            false
        };
        for item in t.range((start, 0u64)..).map_err(be)? {
            let (k, v) = item.map_err(be)?;
            let (key, rev) = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if pending.as_ref().is_some_and(|(pk, _)| pk != key) && emit(pending.take(), &mut kvs) {
                more = true;
                done = true;
                break;
            }
            if rev as i64 <= at {
                pending = Some((key.to_string(), Record::decode(v.value())?));
            }
        }
        if !done && emit(pending.take(), &mut kvs) {
            more = true;
        }
    }
    Ok(ListResult {
        kvs,
        revision: at,
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = Record {
            create: 3,
            modified: 9,
            version: 4,
            tombstone: false,
            value: b"abc".to_vec(),
        };
        assert_eq!(Record::decode(&r.encode()), Ok(r));
        assert!(Record::decode(&[1, 2, 3]).is_err());
    }

    /// A disk that can lose power: reads see every write (the page cache),
    /// but only what a `sync_data` covered survives a power cut. The process
    /// crash test (tests/tests/store.rs) cannot see a missing fsync, since
    /// the page cache outlives the process; this can.
    #[derive(Debug, Default)]
    struct Disk {
        cache: Mutex<Vec<u8>>,
        /// The bytes as of the last successful sync: all a power cut leaves.
        platter: Mutex<Vec<u8>>,
        /// Every `sync_data` from now on fails, as fsync does on an I/O error.
        fail_syncs: std::sync::atomic::AtomicBool,
    }

    impl Disk {
        /// A disk holding what `self` would after a power cut now.
        fn after_power_cut(&self) -> Arc<Disk> {
            let image = self.platter.lock().expect("platter").clone();
            Arc::new(Disk {
                cache: Mutex::new(image.clone()),
                platter: Mutex::new(image),
                ..Default::default()
            })
        }
    }

    #[derive(Debug)]
    struct OnDisk(Arc<Disk>);

    fn out_of_range() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "past the end")
    }

    impl redb::StorageBackend for OnDisk {
        fn len(&self) -> Result<u64, std::io::Error> {
            Ok(self.0.cache.lock().expect("cache").len() as u64)
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            let cache = self.0.cache.lock().expect("cache");
            let from = offset as usize;
            let src = cache.get(from..from + out.len()).ok_or_else(out_of_range)?;
            out.copy_from_slice(src);
            Ok(())
        }

        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.0.cache.lock().expect("cache").resize(len as usize, 0);
            Ok(())
        }

        fn sync_data(&self) -> Result<(), std::io::Error> {
            if self.0.fail_syncs.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            let cache = self.0.cache.lock().expect("cache").clone();
            *self.0.platter.lock().expect("platter") = cache;
            Ok(())
        }

        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            let mut cache = self.0.cache.lock().expect("cache");
            let from = offset as usize;
            let dst = cache
                .get_mut(from..from + data.len())
                .ok_or_else(out_of_range)?;
            dst.copy_from_slice(data);
            Ok(())
        }
    }

    fn open_on(disk: &Arc<Disk>) -> Embedded {
        let db = redb::Builder::new()
            .create_with_backend(OnDisk(disk.clone()))
            .expect("redb on the simulated disk");
        Embedded::on(db, Options::default()).expect("open the store")
    }

    /// 8 concurrent writers (so commits are shared), then the power goes:
    /// every write that was acknowledged is on the platter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_writes_survive_a_power_cut() {
        let disk = Arc::new(Disk::default());
        let s = Arc::new(open_on(&disk));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..25 {
                        let key = format!("/registry/power/{w}-{i:02}");
                        let rev = s.create(&key, b"v".to_vec()).await.expect("create");
                        acked.push((key, rev));
                    }
                    acked
                })
            })
            .collect();
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.await.expect("writer"));
        }
        let survivor = disk.after_power_cut();
        drop(s);
        let s = open_on(&survivor);
        let all = s
            .list(ListRequest {
                prefix: "/registry/power/",
                ..Default::default()
            })
            .await
            .expect("list after the power cut");
        let stored: std::collections::HashMap<String, i64> = all
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect();
        let lost: Vec<&(String, i64)> = acked
            .iter()
            .filter(|(k, r)| stored.get(k) != Some(r))
            .collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged writes lost in a power cut, e.g. {:?}",
            lost.len(),
            acked.len(),
            lost.first()
        );
    }

    /// When the commit's fsync fails the writer hears an error, not a
    /// revision: an acknowledgement means the write is on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_fsync_fails_is_not_acknowledged() {
        let disk = Arc::new(Disk::default());
        let s = open_on(&disk);
        s.create("/registry/fsync/before", b"v".to_vec())
            .await
            .expect("a write while fsync works");
        disk.fail_syncs
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let r = s.create("/registry/fsync/lost", b"v".to_vec()).await;
        assert!(
            matches!(&r, Err(StoreError::Backend(m)) if m.contains("injected fsync failure")),
            "a write whose fsync failed: want the I/O error, got {r:?}"
        );
    }
}
