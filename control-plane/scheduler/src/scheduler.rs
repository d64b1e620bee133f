//! The I/O edge: the Node and Pod watchers feeding the cache and the queue,
//! the scheduling loop (one pod at a time, as upstream), and the binding,
//! status, event and preemption writes it spawns. Everything it decides is
//! decided by the pure modules.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Node, Pod},
    chrono::{SecondsFormat, Utc},
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        events::{EventType, Recorder, Reporter},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Config, bind,
    cache::{Cache, is_terminal},
    events::EventSink,
    framework::{ClusterEvent, Cursor, PodInfo, Profile, pod_key, schedule},
    plugins::default_profile,
    preemption::{self, Candidate, Outcome},
    queue::{QueuedPod, SchedulingQueue},
    status::{self, Nomination, fit_error_message},
};

/// How many bindings may be in flight at once (the loop waits beyond).
const MAX_BINDS_IN_FLIGHT: usize = 64;
/// How often backed-off pods are checked.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Whether `pod` is this scheduler's to place now: it names this
/// scheduler, has no node, is not being deleted or finished, and has no
/// scheduling gates left.
pub fn wants(pod: &Pod, scheduler_name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.scheduler_name
        .as_deref()
        .unwrap_or("default-scheduler")
        == scheduler_name
        && spec.node_name.as_deref().is_none_or(str::is_empty)
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
        && spec.scheduling_gates.as_ref().is_none_or(|g| g.is_empty())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough data (every
    // mutation completes before returning); keep scheduling.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pod_name(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

struct Scheduler {
    client: Client,
    config: Config,
    profile: Profile,
    cache: Mutex<Cache>,
    queue: Mutex<SchedulingQueue>,
    wake: Notify,
    event_sink: EventSink,
    binds: Arc<Semaphore>,
}

impl Scheduler {
    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Tells the queue about cluster events.
    fn events(&self, events: &[ClusterEvent]) {
        if events.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut q = lock(&self.queue);
        let mut moved = 0;
        for e in events {
            moved += q.cluster_event(&self.profile.requeued_by(*e), now);
        }
        drop(q);
        if moved > 0 {
            self.wake.notify_one();
        }
    }

    fn on_pod(&self, pod: Pod) {
        let key = pod_key(&pod);
        let ours = wants(&pod, &self.config.scheduler_name);
        let (events, assumed) = {
            let mut c = lock(&self.cache);
            let ev = c.apply_pod(pod.clone());
            (ev, c.is_assumed(&key))
        };
        {
            let mut q = lock(&self.queue);
            if ours && !assumed {
                q.add(Arc::new(PodInfo::new(pod)), Instant::now());
            } else {
                q.delete(&key);
            }
        }
        self.events(&events);
        if ours {
            self.wake.notify_one();
        }
    }

    fn on_pod_deleted(&self, pod: &Pod) {
        let key = pod_key(pod);
        let ev = lock(&self.cache).delete_pod(pod);
        lock(&self.queue).delete(&key);
        self.events(&ev.into_iter().collect::<Vec<_>>());
    }

    async fn watch_pods(self: Arc<Self>, synced: watch::Sender<bool>, shutdown: CancellationToken) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut relist: Option<HashSet<String>> = None;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev { Some(ev) => ev, None => return },
            };
            match ev {
                Ok(watcher::Event::Init) => relist = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(p)) => {
                    if let Some(seen) = relist.as_mut() {
                        seen.insert(pod_key(&p));
                    }
                    self.on_pod(p);
                }
                Ok(watcher::Event::InitDone) => {
                    let seen = relist.take().unwrap_or_default();
                    let ev = lock(&self.cache).retain_pods(&seen);
                    {
                        let mut q = lock(&self.queue);
                        for k in q.keys() {
                            if !seen.contains(&k) {
                                q.delete(&k);
                            }
                        }
                    }
                    self.events(&ev.into_iter().collect::<Vec<_>>());
                    let _ = synced.send(true);
                }
                Ok(watcher::Event::Apply(p)) => self.on_pod(p),
                Ok(watcher::Event::Delete(p)) => self.on_pod_deleted(&p),
                Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            }
        }
    }

    async fn watch_nodes(
        self: Arc<Self>,
        synced: watch::Sender<bool>,
        shutdown: CancellationToken,
    ) {
        let api: Api<Node> = Api::all(self.client.clone());
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut relist: Option<HashSet<String>> = None;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev { Some(ev) => ev, None => return },
            };
            match ev {
                Ok(watcher::Event::Init) => relist = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(n)) | Ok(watcher::Event::Apply(n)) => {
                    if let Some(seen) = relist.as_mut() {
                        seen.insert(n.metadata.name.clone().unwrap_or_default());
                    }
                    let ev = lock(&self.cache).apply_node(n);
                    self.events(&ev.into_iter().collect::<Vec<_>>());
                }
                Ok(watcher::Event::InitDone) => {
                    let seen = relist.take().unwrap_or_default();
                    lock(&self.cache).retain_nodes(&seen);
                    let _ = synced.send(true);
                }
                Ok(watcher::Event::Delete(n)) => {
                    lock(&self.cache).delete_node(n.metadata.name.as_deref().unwrap_or_default());
                }
                Err(e) => tracing::warn!(error = %e, "node watch failed; retrying"),
            }
        }
    }

    async fn flush_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let active = {
                let mut q = lock(&self.queue);
                q.flush(Instant::now());
                q.active_len()
            };
            if active > 0 {
                self.wake.notify_one();
            }
        }
    }

    async fn next_pod(&self, shutdown: &CancellationToken) -> Option<QueuedPod> {
        loop {
            if let Some(p) = lock(&self.queue).pop() {
                return Some(p);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn schedule_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut rng = fastrand::Rng::new();
        let mut cursor = Cursor::default();
        while let Some(qp) = self.next_pod(&shutdown).await {
            let span = tracing::debug_span!("schedule", pod = %pod_name(&qp.info.pod), attempt = qp.attempts);
            self.clone()
                .schedule_one(qp, &mut rng, &mut cursor)
                .instrument(span)
                .await;
        }
    }

    /// One scheduling cycle, then the writes it calls for (spawned).
    async fn schedule_one(
        self: Arc<Self>,
        qp: QueuedPod,
        rng: &mut fastrand::Rng,
        cursor: &mut Cursor,
    ) {
        let pod = qp.info.clone();
        let snapshot = lock(&self.cache).snapshot();
        match schedule(&self.profile, &pod, &snapshot, rng, cursor) {
            Ok(node) => {
                // Counted on the node before anything else is decided.
                lock(&self.cache).assume(pod.clone(), &node);
                lock(&self.queue).done(&pod.key);
                tracing::debug!(node, "assumed");
                let Ok(permit) = self.binds.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(
                    async move {
                        me.bind(qp, node).await;
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
            Err(mut fit) => {
                let (nomination, candidate) = if fit.num_all_nodes == 0 {
                    (Nomination::Keep, None)
                } else {
                    let offset = rng.usize(..fit.num_all_nodes.max(1));
                    match preemption::preempt(&self.profile, &pod, &snapshot, &fit, offset) {
                        Outcome::Preempt(c) => (Nomination::Set(c.node.clone()), Some(c)),
                        Outcome::NotEligible(msg) => {
                            fit.post_filter_msg = Some(msg);
                            (Nomination::Keep, None)
                        }
                        Outcome::NoCandidate(msg) => {
                            fit.post_filter_msg = Some(msg);
                            (Nomination::Clear, None)
                        }
                    }
                };
                let message = fit_error_message(&fit);
                tracing::debug!(message, "unschedulable");
                if let Some(c) = &candidate {
                    lock(&self.cache).nominate(pod.clone(), &c.node);
                }
                let mut rejected_by: Vec<&'static str> =
                    fit.statuses.values().map(|r| r.plugin).collect();
                rejected_by.sort_unstable();
                rejected_by.dedup();
                lock(&self.queue).unschedulable(&pod.key, rejected_by, Instant::now());
                let me = self.clone();
                tokio::spawn(
                    async move {
                        if let Some(c) = candidate {
                            me.carry_out_preemption(&pod, &c).await;
                        }
                        let api = me.pods(&pod.namespace);
                        status::record_unschedulable(
                            &api,
                            &me.event_sink,
                            &pod.pod,
                            &message,
                            &nomination,
                        )
                        .await;
                    }
                    .in_current_span(),
                );
            }
        }
    }

    async fn bind(&self, qp: QueuedPod, node: String) {
        let pod = &qp.info;
        let api = self.pods(&pod.namespace);
        match bind::bind(&api, &pod.pod, &node).await {
            Ok(()) => {
                tracing::debug!(node, "bound");
                self.event_sink.emit(
                    pod.pod.object_ref(&()),
                    EventType::Normal,
                    "Scheduled",
                    "Binding",
                    status::scheduled_message(&pod.pod, &node),
                    None,
                );
            }
            Err(e) => {
                lock(&self.cache).forget(&pod.key);
                // Its room is free again for the pods waiting on it.
                self.events(&[ClusterEvent::AssignedPodDeleted]);
                if bind::is_final(&e) {
                    tracing::debug!(error = %e, node, "binding refused; dropping the pod");
                    return;
                }
                tracing::warn!(error = %e, node, "binding failed; retrying");
                lock(&self.queue).retry_after_bind_error(qp.clone(), Instant::now());
                self.event_sink.emit(
                    pod.pod.object_ref(&()),
                    EventType::Warning,
                    "FailedScheduling",
                    "Scheduling",
                    format!("Binding rejected: {e}"),
                    None,
                );
            }
        }
    }

    /// Evicts the victims (marked DisruptionTarget first, as upstream, so
    /// their owners and the preemptor can tell why), and clears the
    /// nominations of lower-priority pods on that node.
    async fn carry_out_preemption(&self, preemptor: &PodInfo, c: &Candidate) {
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        for v in &c.victims {
            if v.terminating() {
                continue;
            }
            let api = self.pods(&v.namespace);
            let condition = json!({"status": {"conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "PreemptionByScheduler",
                "message": format!("{}: preempting to accommodate a higher priority pod", self.config.scheduler_name),
                "lastTransitionTime": now,
            }]}});
            if let Err(e) = api
                .patch_status(
                    &v.name,
                    &PatchParams::default(),
                    &Patch::Strategic(condition),
                )
                .await
            {
                tracing::debug!(error = %e, victim = v.name, "could not mark the victim");
            }
            match api.delete(&v.name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => {
                    tracing::warn!(error = %e, victim = v.name, "could not preempt");
                    continue;
                }
            }
            tracing::info!(victim = %pod_name(&v.pod), node = c.node, "preempted");
            self.event_sink.emit(
                v.pod.object_ref(&()),
                EventType::Normal,
                "Preempted",
                "Preempting",
                format!(
                    "Preempted by pod {} on node {}",
                    preemptor.pod.metadata.uid.as_deref().unwrap_or_default(),
                    c.node
                ),
                Some(preemptor.pod.object_ref(&())),
            );
        }
        let lower: Vec<Arc<PodInfo>> = lock(&self.cache)
            .nominated_to(&c.node)
            .into_iter()
            .filter(|p| p.priority < preemptor.priority)
            .collect();
        for p in lower {
            let patch = json!({"status": {"nominatedNodeName": null}});
            if let Err(e) = self
                .pods(&p.namespace)
                .patch_status(&p.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                tracing::debug!(error = %e, pod = p.name, "could not clear a nomination");
            }
        }
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), crate::Error> {
    let reporter = Reporter::from(config.scheduler_name.as_str());
    let (events, event_writer) = EventSink::new(Recorder::new(client.clone(), reporter));
    let me = Arc::new(Scheduler {
        event_sink: events,
        client,
        config,
        profile: default_profile(),
        cache: Mutex::new(Cache::new()),
        queue: Mutex::new(SchedulingQueue::new()),
        wake: Notify::new(),
        binds: Arc::new(Semaphore::new(MAX_BINDS_IN_FLIGHT)),
    });
    let (nodes_tx, mut nodes_rx) = watch::channel(false);
    let (pods_tx, mut pods_rx) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(me.clone().watch_nodes(nodes_tx, shutdown.clone())),
        tokio::spawn(me.clone().watch_pods(pods_tx, shutdown.clone())),
        tokio::spawn(me.clone().flush_loop(shutdown.clone())),
    ];
    let event_writer = tokio::spawn(event_writer);
    // Decide nothing before both caches hold the whole cluster: a node's
    // existing pods unseen would be overcommitted.
    let synced = async {
        let _ = nodes_rx.wait_for(|s| *s).await;
        let _ = pods_rx.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = synced => {
            tracing::info!(scheduler = me.config.scheduler_name, "caches synced; scheduling");
            me.clone().schedule_loop(shutdown.clone()).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    // The last sink goes with the scheduler; the writer then drains and ends.
    drop(me);
    let _ = event_writer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::PodBuilder;

    #[test]
    fn pending_pods_naming_this_scheduler_are_wanted() {
        assert!(wants(&PodBuilder::new("p").build(), "default-scheduler"));
        assert!(!wants(&PodBuilder::new("p").build(), "other-scheduler"));
    }

    #[test]
    fn bound_deleting_finished_or_gated_pods_are_not_wanted() {
        let s = "default-scheduler";
        assert!(!wants(&PodBuilder::new("p").node("n1").build(), s));
        assert!(!wants(&PodBuilder::new("p").terminating().build(), s));
        assert!(!wants(&PodBuilder::new("p").phase("Succeeded").build(), s));
        assert!(!wants(&PodBuilder::new("p").phase("Failed").build(), s));
        let mut gated = PodBuilder::new("p").build();
        gated.spec.as_mut().unwrap().scheduling_gates =
            Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
                name: "wait".into(),
            }]);
        assert!(!wants(&gated, s));
    }
}
