//! The garbage collector (upstream pkg/controller/garbagecollector):
//! deletes objects whose owners are gone, and carries out the Foreground
//! and Orphan propagation policies the API server records as finalizers.
//!
//! Every served resource that can be listed, watched and deleted is
//! watched metadata-only (discovery is re-read, so kinds added later are
//! collected too); [`graph::Graph`] keeps who owns whom by uid and says
//! which objects to look at after each change; [`decide`] says what to do
//! with one once live reads have settled the state of its owners. An
//! owner is only ever judged gone by a live GET (NotFound, or another uid
//! under its name), never by the graph alone.
//!
//! Scope: namespaced dependents look for namespaced owners in their own
//! namespace; a cluster-scoped owner can own anything; a cluster-scoped
//! object naming a namespaced owner is left alone (upstream reports it).
mod decide;
mod graph;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api,
    api::{
        ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams,
        Preconditions, PropagationPolicy,
    },
    discovery::{Discovery, Scope, verbs},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Context;
use decide::{Action, ForegroundStep, OwnerState, Policy};
use graph::{FOREGROUND, Graph, Identity, ORPHAN, Object, Work};

/// Resources never collected nor watched (upstream's
/// DefaultIgnoredResources): events are many, short-lived and own nothing.
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

/// How often discovery is read again for kinds served since.
const REDISCOVER: Duration = Duration::from_secs(30);
/// Concurrent look-ups (upstream's --concurrent-gc-syncs defaults to 20;
/// sluice's API server is in-process and small clusters are the norm).
const WORKERS: usize = 4;
/// The longest the first pass waits for every resource's initial list
/// before acting on what it has (a resource whose list keeps failing
/// must not stop collection of the others).
const SYNC_WAIT: Duration = Duration::from_secs(60);

/// How many absent owners are remembered.
const ABSENT_REMEMBERED: usize = 10_000;

#[derive(Debug, thiserror::Error)]
enum GcError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no served resource for {api_version} {kind}")]
    UnknownKind { api_version: String, kind: String },
}

/// A served resource, as discovery describes it.
#[derive(Clone, Debug)]
struct Kind {
    ar: ApiResource,
    namespaced: bool,
}

/// The group of an ownerReference's `apiVersion` ("" for core).
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Work to do, each item once at a time (upstream's workqueue): an item
/// added while it is being processed is processed again after.
#[derive(Default)]
struct Queue {
    order: VecDeque<Work>,
    queued: HashSet<Work>,
    processing: HashSet<Work>,
    again: HashSet<Work>,
    failures: HashMap<Work, u32>,
}

impl Queue {
    fn push(&mut self, w: Work) {
        if self.processing.contains(&w) {
            self.again.insert(w);
        } else if self.queued.insert(w.clone()) {
            self.order.push_back(w);
        }
    }

    fn pop(&mut self) -> Option<Work> {
        let w = self.order.pop_front()?;
        self.queued.remove(&w);
        self.processing.insert(w.clone());
        Some(w)
    }

    fn done(&mut self, w: &Work) {
        self.processing.remove(w);
        if self.again.remove(w) {
            self.push(w.clone());
        }
    }

    /// The delay before a failed item is tried again: 50 ms doubling to
    /// at most a minute, reset by a success.
    fn failed(&mut self, w: &Work) -> Duration {
        let n = self.failures.entry(w.clone()).or_default();
        *n = n.saturating_add(1);
        Duration::from_millis(50u64.saturating_mul(1 << (*n).min(11))).min(Duration::from_secs(60))
    }

    fn succeeded(&mut self, w: &Work) {
        self.failures.remove(w);
    }
}

struct Shared {
    client: kube::Client,
    graph: Mutex<Graph>,
    /// (group, kind) -> resource, for ownerReferences.
    kinds: Mutex<HashMap<(String, String), Kind>>,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Owners a live read found gone, by uid and the namespace looked in
    /// (a uid never comes back).
    absent: Mutex<HashSet<(String, Option<String>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn push(&self, work: impl IntoIterator<Item = Work>) {
        let mut q = lock(&self.queue);
        for w in work {
            q.push(w);
        }
        drop(q);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    fn kind(&self, api_version: &str, kind: &str) -> Result<Kind, GcError> {
        lock(&self.kinds)
            .get(&(group_of(api_version).to_string(), kind.to_string()))
            .cloned()
            .ok_or_else(|| GcError::UnknownKind {
                api_version: api_version.into(),
                kind: kind.into(),
            })
    }

    /// The API of `id`'s resource, in its namespace when namespaced.
    fn api(&self, id: &Identity) -> Result<Api<DynamicObject>, GcError> {
        let k = self.kind(&id.api_version, &id.kind)?;
        Ok(match (&id.namespace, k.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            _ => Api::all_with(self.client.clone(), &k.ar),
        })
    }
}

fn object_of(k: &Kind, m: &PartialObjectMeta<DynamicObject>) -> Option<Object> {
    let meta = &m.metadata;
    Some(Object {
        identity: Identity {
            api_version: k.ar.api_version.clone(),
            kind: k.ar.kind.clone(),
            namespace: meta.namespace.clone().filter(|_| k.namespaced),
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
        },
        owners: meta.owner_references.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone(),
    })
}

/// What a resource's watcher reports.
enum Msg {
    Init(usize),
    Apply { res: usize, obj: Object, init: bool },
    Delete(String),
    InitDone(usize),
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        graph: Mutex::default(),
        kinds: Mutex::default(),
        queue: Mutex::default(),
        wake: Notify::new(),
        absent: Mutex::default(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watched: Vec<(String, String)> = Vec::new();
    // The first discovery: what must be listed before acting.
    let first = loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            found = discover(&shared) => match found {
                Ok(kinds) => break kinds,
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector: discovery failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            },
        }
    };
    for k in first {
        start_watch(&shared, &ctx.shutdown, &tx, &mut watched, k);
    }
    let expected = watched.len();
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {}
        _ = consume(shared.clone(), rx, expected, ready_tx) => {}
        _ = rediscover(shared.clone(), ctx.shutdown.clone(), tx, watched) => {}
        _ = workers(shared.clone(), ready_rx) => {}
    }
    Ok(())
}

/// The served resources to watch, registering every kind for owner lookups.
async fn discover(shared: &Shared) -> Result<Vec<Kind>, kube::Error> {
    let d = Discovery::new(shared.client.clone()).run().await?;
    let mut out = Vec::new();
    let mut kinds = HashMap::new();
    for group in d.groups() {
        for (ar, caps) in group.recommended_resources() {
            let k = Kind {
                namespaced: caps.scope == Scope::Namespaced,
                ar: ar.clone(),
            };
            kinds.insert((ar.group.clone(), ar.kind.clone()), k.clone());
            let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v));
            if usable && !IGNORED.contains(&(ar.group.as_str(), ar.plural.as_str())) {
                out.push(k);
            }
        }
    }
    lock(&shared.kinds).extend(kinds);
    Ok(out)
}

/// Watches `k` (metadata only) unless already watched, until shutdown.
fn start_watch(
    shared: &Shared,
    shutdown: &CancellationToken,
    tx: &mpsc::UnboundedSender<Msg>,
    watched: &mut Vec<(String, String)>,
    k: Kind,
) {
    let key = (k.ar.group.clone(), k.ar.plural.clone());
    if watched.contains(&key) {
        return;
    }
    let res = watched.len();
    watched.push(key);
    tracing::debug!(resource = %k.ar.plural, group = %k.ar.group, "garbage collector: watching");
    let api: Api<DynamicObject> = Api::all_with(shared.client.clone(), &k.ar);
    let (tx, shutdown) = (tx.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(
            watcher::metadata_watcher(api, watcher::Config::default()).default_backoff()
        );
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            let msg = match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, resource = %k.ar.plural, "garbage collector: watch error");
                    continue;
                }
                Some(Ok(watcher::Event::Init)) => Msg::Init(res),
                Some(Ok(watcher::Event::InitDone)) => Msg::InitDone(res),
                Some(Ok(watcher::Event::Apply(m))) => match object_of(&k, &m) {
                    Some(obj) => Msg::Apply {
                        res,
                        obj,
                        init: false,
                    },
                    None => continue,
                },
                Some(Ok(watcher::Event::InitApply(m))) => match object_of(&k, &m) {
                    Some(obj) => Msg::Apply {
                        res,
                        obj,
                        init: true,
                    },
                    None => continue,
                },
                Some(Ok(watcher::Event::Delete(m))) => match m.metadata.uid {
                    Some(uid) => Msg::Delete(uid),
                    None => continue,
                },
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
}

/// Feeds the graph from every watcher; a re-list forgets what it no
/// longer shows. Signals `ready` once every first resource has listed.
async fn consume(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    expected: usize,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let mut known: HashMap<usize, HashSet<String>> = HashMap::new();
    let mut listing: HashMap<usize, HashSet<String>> = HashMap::new();
    let mut synced: HashSet<usize> = HashSet::new();
    let deadline = tokio::time::sleep(SYNC_WAIT);
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = &mut deadline, if !*ready.borrow() => {
                tracing::warn!(listed = synced.len(), expected, "garbage collector: not every resource listed in time; collecting anyway");
                let _ = ready.send(true);
                continue;
            }
        };
        let Some(msg) = msg else { return };
        let work = match msg {
            Msg::Init(res) => {
                listing.insert(res, HashSet::new());
                Vec::new()
            }
            Msg::Apply { res, obj, init } => {
                let uid = obj.identity.uid.clone();
                if init {
                    listing.entry(res).or_default().insert(uid.clone());
                }
                known.entry(res).or_default().insert(uid);
                lock(&shared.graph).observe(obj)
            }
            Msg::Delete(uid) => {
                for set in known.values_mut() {
                    set.remove(&uid);
                }
                lock(&shared.graph).remove(&uid)
            }
            Msg::InitDone(res) => {
                let fresh = listing.remove(&res).unwrap_or_default();
                let old = known.insert(res, fresh.clone()).unwrap_or_default();
                synced.insert(res);
                if synced.len() >= expected && !*ready.borrow() {
                    tracing::info!(
                        objects = lock(&shared.graph).objects(),
                        "garbage collector: graph synced"
                    );
                    let _ = ready.send(true);
                }
                let mut g = lock(&shared.graph);
                old.difference(&fresh)
                    .flat_map(|uid| g.remove(uid))
                    .collect()
            }
        };
        shared.push(work);
    }
}

async fn rediscover(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tx: mpsc::UnboundedSender<Msg>,
    mut watched: Vec<(String, String)>,
) {
    loop {
        tokio::time::sleep(REDISCOVER).await;
        match discover(&shared).await {
            Ok(kinds) => {
                for k in kinds {
                    start_watch(&shared, &shutdown, &tx, &mut watched, k);
                }
            }
            Err(e) => tracing::debug!(error = %e, "garbage collector: rediscovery failed"),
        }
    }
}

async fn workers(shared: Arc<Shared>, mut ready: tokio::sync::watch::Receiver<bool>) {
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    futures::future::join_all((0..WORKERS).map(|_| worker(shared.clone()))).await;
}

async fn worker(shared: Arc<Shared>) {
    loop {
        let next = lock(&shared.queue).pop();
        let Some(work) = next else {
            let notified = shared.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&shared.queue).order.is_empty() {
                notified.await;
            }
            continue;
        };
        let span = tracing::debug_span!("gc", work = ?work);
        let result = process(&shared, &work).instrument(span).await;
        let mut q = lock(&shared.queue);
        q.done(&work);
        match result {
            Ok(()) => q.succeeded(&work),
            Err(e) => {
                let delay = q.failed(&work);
                drop(q);
                tracing::debug!(error = %e, work = ?work, ?delay, "garbage collector: will retry");
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    shared.push([work]);
                });
                continue;
            }
        }
        let more = !q.order.is_empty();
        drop(q);
        if more {
            shared.wake.notify_one();
        }
    }
}

async fn process(shared: &Shared, work: &Work) -> Result<(), GcError> {
    match work {
        Work::Delete(uid) => attempt_to_delete(shared, uid).await,
        Work::Orphan(uid) => attempt_to_orphan(shared, uid).await,
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == code)
}

/// The object as it is now (None: gone, or another object under its name).
async fn live(shared: &Shared, id: &Identity) -> Result<Option<Object>, GcError> {
    let k = shared.kind(&id.api_version, &id.kind)?;
    let found = shared.api(id)?.get_metadata_opt(&id.name).await?;
    Ok(found
        .and_then(|m| object_of(&k, &m))
        .filter(|o| o.identity.uid == id.uid))
}

/// A merge patch of `id`'s metadata, pinned to the resourceVersion the
/// decision was made on (a conflict retries the whole decision).
async fn patch_meta(shared: &Shared, obj: &Object, meta: serde_json::Value) -> Result<(), GcError> {
    let mut meta = meta;
    meta["resourceVersion"] = serde_json::json!(obj.resource_version);
    let patch = serde_json::json!({ "metadata": meta });
    match shared
        .api(&obj.identity)?
        .patch_metadata(
            &obj.identity.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn refs_value(refs: &[OwnerReference]) -> serde_json::Value {
    if refs.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::json!(refs)
    }
}

fn finalizers_value(f: &[String]) -> serde_json::Value {
    if f.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::json!(f)
    }
}

/// attemptToDeleteItem.
async fn attempt_to_delete(shared: &Shared, uid: &str) -> Result<(), GcError> {
    let Some(item) = lock(&shared.graph).get(uid).cloned() else {
        return Ok(());
    };
    if !lock(&shared.graph).needs_attention(&item) {
        return Ok(());
    }
    let Some(latest) = live(shared, &item.identity).await? else {
        // Gone: its watch will say so and send its dependents here.
        return Ok(());
    };
    if latest.deleting_dependents() {
        let step = decide::deleting_dependents(&lock(&shared.graph), uid);
        match step {
            ForegroundStep::RemoveFinalizer => {
                tracing::info!(object = ?latest.identity, "no blocking dependents left: removing {FOREGROUND}");
                let rest = decide::finalizers_without(&latest.finalizers, FOREGROUND);
                patch_meta(
                    shared,
                    &latest,
                    serde_json::json!({"finalizers": finalizers_value(&rest)}),
                )
                .await?;
            }
            ForegroundStep::Wait(deps) => shared.push(deps.into_iter().map(Work::Delete)),
        }
        return Ok(());
    }
    if latest.deleting || latest.owners.is_empty() {
        return Ok(());
    }
    let mut states = Vec::new();
    for r in &latest.owners {
        match owner_state(shared, &latest, r).await? {
            Some(s) => states.push((r.uid.clone(), s)),
            // Not a valid reference: left as it is.
            None => return Ok(()),
        }
    }
    let (has_dependents, dependent_deleting) = {
        let g = lock(&shared.graph);
        let deps = g.dependents(uid);
        (
            !deps.is_empty(),
            deps.iter().any(|d| d.deleting_dependents()),
        )
    };
    match decide::dependent(&latest, &states, has_dependents, dependent_deleting) {
        Action::Nothing => Ok(()),
        Action::DropReferences(uids) => {
            tracing::info!(object = ?latest.identity, owners = ?uids, "dropping references to owners that are gone or waiting");
            let kept = decide::without(&latest.owners, &uids);
            patch_meta(
                shared,
                &latest,
                serde_json::json!({"ownerReferences": refs_value(&kept)}),
            )
            .await
        }
        Action::Delete {
            policy,
            unblock_first,
        } => {
            let mut preconditions = Preconditions {
                uid: Some(latest.identity.uid.clone()),
                resource_version: latest.resource_version.clone(),
            };
            if unblock_first {
                let refs = decide::unblocked(&latest.owners);
                patch_meta(
                    shared,
                    &latest,
                    serde_json::json!({"ownerReferences": refs}),
                )
                .await?;
                preconditions.resource_version = None;
            }
            tracing::info!(object = ?latest.identity, ?policy, "deleting: no owner left");
            let dp = DeleteParams {
                propagation_policy: Some(match policy {
                    Policy::Background => PropagationPolicy::Background,
                    Policy::Foreground => PropagationPolicy::Foreground,
                    Policy::Orphan => PropagationPolicy::Orphan,
                }),
                preconditions: Some(preconditions),
                ..Default::default()
            };
            match shared
                .api(&latest.identity)?
                .delete(&latest.identity.name, &dp)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if is_status(&e, 404) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// What a live read says of `item`'s owner `r` (upstream's isDangling and
/// classifyReferences). None: the reference cannot be valid (a
/// cluster-scoped object naming a namespaced owner).
async fn owner_state(
    shared: &Shared,
    item: &Object,
    r: &OwnerReference,
) -> Result<Option<OwnerState>, GcError> {
    let k = shared.kind(&r.api_version, &r.kind)?;
    let looked_in = item.identity.namespace.clone().filter(|_| k.namespaced);
    let absent_key = (r.uid.clone(), looked_in.clone());
    if lock(&shared.absent).contains(&absent_key) {
        return Ok(Some(OwnerState::Dangling));
    }
    if k.namespaced && item.identity.namespace.is_none() {
        tracing::warn!(object = ?item.identity, owner = %r.name, "a cluster-scoped object cannot have a namespaced owner; its reference is ignored");
        return Ok(None);
    }
    let owner = Identity {
        api_version: r.api_version.clone(),
        kind: r.kind.clone(),
        namespace: looked_in,
        name: r.name.clone(),
        uid: r.uid.clone(),
    };
    Ok(Some(match live(shared, &owner).await? {
        None => {
            let mut absent = lock(&shared.absent);
            // Bounded like upstream's absentOwnerCache: forgetting only
            // costs a GET.
            if absent.len() >= ABSENT_REMEMBERED {
                absent.clear();
            }
            absent.insert(absent_key);
            OwnerState::Dangling
        }
        Some(o) if o.deleting_dependents() => OwnerState::Waiting,
        Some(_) => OwnerState::Solid,
    }))
}

/// attemptToOrphan: every dependent loses its reference to the owner,
/// then the owner loses its `orphan` finalizer (and goes).
async fn attempt_to_orphan(shared: &Shared, uid: &str) -> Result<(), GcError> {
    let Some(owner) = lock(&shared.graph).get(uid).cloned() else {
        return Ok(());
    };
    if !owner.orphaning() {
        return Ok(());
    }
    let deps: Vec<Object> = lock(&shared.graph)
        .dependents(uid)
        .into_iter()
        .cloned()
        .collect();
    for d in deps {
        let Some(latest) = live(shared, &d.identity).await? else {
            continue;
        };
        if latest.reference_to(uid).is_none() {
            continue;
        }
        let kept = decide::without(&latest.owners, &[uid.to_string()]);
        patch_meta(
            shared,
            &latest,
            serde_json::json!({"ownerReferences": refs_value(&kept)}),
        )
        .await?;
    }
    let Some(latest) = live(shared, &owner.identity).await? else {
        return Ok(());
    };
    if latest.has_finalizer(ORPHAN) {
        tracing::info!(object = ?latest.identity, "dependents orphaned: removing {ORPHAN}");
        let rest = decide::finalizers_without(&latest.finalizers, ORPHAN);
        patch_meta(
            shared,
            &latest,
            serde_json::json!({"finalizers": finalizers_value(&rest)}),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_is_processed_once_at_a_time_and_again_if_it_changed_meanwhile() {
        let mut q = Queue::default();
        let a = Work::Delete("a".into());
        q.push(a.clone());
        q.push(a.clone());
        assert_eq!(q.pop(), Some(a.clone()));
        assert_eq!(q.pop(), None, "queued once");
        q.push(a.clone());
        assert_eq!(q.pop(), None, "not handed out while processing");
        q.done(&a);
        assert_eq!(q.pop(), Some(a.clone()), "processed again after");
        q.done(&a);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn retries_back_off_and_reset() {
        let mut q = Queue::default();
        let a = Work::Orphan("a".into());
        let d1 = q.failed(&a);
        let d2 = q.failed(&a);
        assert!(d2 > d1);
        for _ in 0..40 {
            q.failed(&a);
        }
        assert_eq!(q.failed(&a), Duration::from_secs(60));
        q.succeeded(&a);
        assert_eq!(q.failed(&a), d1);
    }

    #[test]
    fn owner_references_name_their_group() {
        assert_eq!(group_of("v1"), "");
        assert_eq!(group_of("apps/v1"), "apps");
        assert_eq!(group_of("events.k8s.io/v1"), "events.k8s.io");
    }
}
