//! Node IPAM, upstream's range allocator (pkg/controller/nodeipam/ipam):
//! every Node without `spec.podCIDR` gets the lowest free
//! `/node_cidr_mask_size` block of `cluster_cidr`.
//!
//! The allocation lives in the Node objects: the set of used blocks is
//! rebuilt from them at start and after every relist, so a restarted
//! controller never hands a block out twice. Allocation is done by one
//! task, one Node at a time, the block reserved in [`cidrset::CidrSet`]
//! before the Node is patched and given back if the patch did not land,
//! so concurrent registrations get distinct blocks.
//!
//! A full range is reported, never fatal: a Warning Event
//! `CIDRNotAvailable` on the Node (upstream records the same reason,
//! as a Normal event), and the Node condition `NetworkUnavailable=True`
//! with reason `NoCIDRAvailable` (an addition of sluice's: the issue asks
//! for a condition; upstream's range allocator sets none). The Node is
//! served as soon as a block is released.
pub mod cidrset;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::Utc;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use tracing::Instrument;

use crate::{Context, events};
use cidrset::CidrSet;

pub const CONDITION: &str = "NetworkUnavailable";
/// The reason of [`CONDITION`] while no block is free.
pub const REASON_NO_CIDR: &str = "NoCIDRAvailable";
/// The reason once a block came free and was assigned.
pub const REASON_ASSIGNED: &str = "CIDRAssigned";
/// The Event reason for a full range (upstream's).
pub const EVENT_NO_CIDR: &str = "CIDRNotAvailable";

const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let set = CidrSet::new(&ctx.config.cluster_cidr, ctx.config.node_cidr_mask_size)?;
    tracing::info!(cluster_cidr = %set.cluster(), mask = set.mask(), "node IPAM started");
    let api: Api<Node> = Api::all(ctx.client.clone());
    let io = Io {
        api: api.clone(),
        recorder: Recorder::new(ctx.client.clone(), Reporter::from("cidrAllocator")),
    };
    let mut state = State::new(set);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    // Nodes listed since the last (re)list started: the used blocks are
    // rebuilt from them once the list is complete, before any allocation.
    let mut listing: Option<Vec<Node>> = None;
    let mut synced = false;
    loop {
        if synced {
            for name in state.due(Instant::now()) {
                let span = tracing::info_span!("allocate_pod_cidr", node = name);
                let result = io
                    .allocate(&mut state, &name)
                    .instrument(span.clone())
                    .await;
                state.attempted(&name, result.err(), &span);
            }
        }
        let wake = state.next_due();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = sleep_until(wake) => {}
            ev = events.next() => match ev {
                None => return Ok(()),
                Some(Err(e)) => tracing::warn!(error = %e, "watching Nodes failed; retrying with backoff"),
                Some(Ok(watcher::Event::Init)) => listing = Some(Vec::new()),
                Some(Ok(watcher::Event::InitApply(n))) => listing.get_or_insert_with(Vec::new).push(n),
                Some(Ok(watcher::Event::InitDone)) => {
                    state.rebuild(&listing.take().unwrap_or_default());
                    synced = true;
                }
                Some(Ok(watcher::Event::Apply(n))) => state.observe(&n),
                Some(Ok(watcher::Event::Delete(n))) => state.forget(&n.name_any()),
            },
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn pod_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    let listed: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    spec.and_then(|s| s.pod_cidr.clone())
        .filter(|c| !c.is_empty())
        .into_iter()
        .collect()
}

/// What the allocator knows, without I/O: the blocks, the Nodes still to
/// serve and those waiting for a block to come free.
struct State {
    set: CidrSet,
    /// Node -> (when to try next, backoff after that).
    pending: BTreeMap<String, (Instant, Duration)>,
    starved: BTreeSet<String>,
}

impl State {
    fn new(set: CidrSet) -> Self {
        Self {
            set,
            pending: BTreeMap::new(),
            starved: BTreeSet::new(),
        }
    }

    /// Starts over from a complete list of the Nodes.
    fn rebuild(&mut self, nodes: &[Node]) {
        self.set.clear();
        self.pending.clear();
        self.starved.clear();
        // Every held block first, so that no allocation can take one a
        // Node listed later holds.
        let (with, without): (Vec<&Node>, Vec<&Node>) =
            nodes.iter().partition(|n| !pod_cidrs(n).is_empty());
        for n in with.iter().chain(&without) {
            self.observe(n);
        }
        tracing::info!(
            nodes = nodes.len(),
            with_cidr = with.len(),
            "rebuilt the used blocks from the Nodes"
        );
    }

    fn observe(&mut self, node: &Node) {
        let name = node.name_any();
        let cidrs = pod_cidrs(node);
        if cidrs.is_empty() {
            if node.meta().deletion_timestamp.is_none() && !self.starved.contains(&name) {
                self.pending
                    .entry(name)
                    .or_insert((Instant::now(), RETRY_FIRST));
            }
            return;
        }
        self.pending.remove(&name);
        self.starved.remove(&name);
        for e in self.set.set_node(&name, &cidrs) {
            tracing::warn!(node = name, error = %e, "the Node's podCIDR is not tracked");
        }
    }

    /// The Node is gone: its block is free, and whoever waited for one
    /// gets a try.
    fn forget(&mut self, name: &str) {
        self.pending.remove(name);
        self.starved.remove(name);
        if self.set.release(name) {
            tracing::info!(node = name, "released the Node's block");
            let now = Instant::now();
            for n in std::mem::take(&mut self.starved) {
                self.pending.insert(n, (now, RETRY_FIRST));
            }
        }
    }

    fn starve(&mut self, name: &str) {
        self.pending.remove(name);
        self.starved.insert(name.to_string());
    }

    fn due(&self, now: Instant) -> Vec<String> {
        self.pending
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|(at, _)| *at).min()
    }

    /// After an attempt: done, or retried after a doubling backoff.
    fn attempted(&mut self, name: &str, error: Option<kube::Error>, span: &tracing::Span) {
        let Some(e) = error else {
            self.pending.remove(name);
            return;
        };
        if let Some((at, backoff)) = self.pending.get_mut(name) {
            span.in_scope(|| tracing::warn!(error = %e, retry_in = ?backoff, "assigning the Node's podCIDR failed"));
            *at = Instant::now() + *backoff;
            *backoff = (*backoff * 2).min(RETRY_MAX);
        }
    }
}

struct Io {
    api: Api<Node>,
    recorder: Recorder,
}

impl Io {
    /// Gives `name` a block, or records why not. Ok when nothing is left
    /// to do for it now.
    async fn allocate(&self, state: &mut State, name: &str) -> Result<(), kube::Error> {
        // The watch may be behind: what does the Node say now?
        let Some(node) = self.api.get_opt(name).await? else {
            state.forget(name);
            return Ok(());
        };
        if !pod_cidrs(&node).is_empty() {
            state.observe(&node);
            return Ok(());
        }
        let Some(block) = state.set.allocate(name) else {
            state.starve(name);
            self.report_full(state, &node).await;
            return Ok(());
        };
        let cidr = block.to_string();
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        match self
            .api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(cidr, "set the Node's podCIDR");
                self.clear_full(&node, &cidr).await;
                Ok(())
            }
            Err(e) => {
                // Did it land anyway? Only the Node can say; until it
                // does, the block stays reserved.
                match self.api.get_opt(name).await {
                    Ok(Some(n)) if !pod_cidrs(&n).is_empty() => {
                        state.observe(&n);
                        if pod_cidrs(&n).contains(&cidr) {
                            return Ok(());
                        }
                    }
                    Ok(Some(_)) => {
                        state.set.release(name);
                    }
                    Ok(None) => {
                        state.forget(name);
                        return Ok(());
                    }
                    Err(_) => {}
                }
                Err(e)
            }
        }
    }

    async fn report_full(&self, state: &State, node: &Node) {
        let msg = format!(
            "no free /{} block left in --cluster-cidr {} for Node {}",
            state.set.mask(),
            state.set.cluster(),
            node.name_any()
        );
        tracing::warn!("{msg}");
        events::publish(
            &self.recorder,
            &node.object_ref(&()),
            EventType::Warning,
            EVENT_NO_CIDR,
            "AllocateCIDR",
            msg.clone(),
        )
        .await;
        if condition_reason(node).as_deref() != Some(REASON_NO_CIDR) {
            self.set_condition(node, "True", REASON_NO_CIDR, &msg).await;
        }
    }

    /// Lifts the condition [`Self::report_full`] set, and only that one:
    /// NetworkUnavailable otherwise belongs to the network plugin.
    async fn clear_full(&self, node: &Node, cidr: &str) {
        if condition_reason(node).as_deref() == Some(REASON_NO_CIDR) {
            self.set_condition(
                node,
                "False",
                REASON_ASSIGNED,
                &format!("node IPAM assigned {cidr}"),
            )
            .await;
        }
    }

    async fn set_condition(&self, node: &Node, status: &str, reason: &str, message: &str) {
        let now = Time(Utc::now());
        let patch = json!({"status": {"conditions": [{
            "type": CONDITION,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        if let Err(e) = self
            .api
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            tracing::warn!(error = %e, "setting the Node's {CONDITION} condition failed");
        }
    }
}

fn condition_reason(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION)?
        .reason
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(dead_code)]
    fn run_can_be_spawned(ctx: Context) {
        tokio::spawn(run(ctx));
    }

    fn node(name: &str, cidr: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.spec = Some(Default::default());
        if let Some(c) = cidr {
            n.spec.as_mut().unwrap().pod_cidr = Some(c.into());
            n.spec.as_mut().unwrap().pod_cidrs = Some(vec![c.into()]);
        }
        n
    }

    fn state(cidr: &str, mask: u8) -> State {
        State::new(CidrSet::new(cidr, mask).unwrap())
    }

    #[tokio::test]
    async fn a_rebuild_takes_every_held_block_before_listing_nodes_to_serve() {
        let mut s = state("10.244.0.0/16", 24);
        // The Node holding block 0 is listed after one that needs a block.
        s.rebuild(&[node("new", None), node("old", Some("10.244.0.0/24"))]);
        assert_eq!(s.due(Instant::now()), ["new"]);
        assert_eq!(s.set.allocate("new").unwrap().to_string(), "10.244.1.0/24");
    }

    #[tokio::test]
    async fn a_rebuild_forgets_blocks_of_nodes_no_longer_listed() {
        let mut s = state("10.244.0.0/16", 24);
        s.observe(&node("gone", Some("10.244.0.0/24")));
        s.rebuild(&[node("new", None)]);
        assert_eq!(s.set.allocate("new").unwrap().to_string(), "10.244.0.0/24");
    }

    #[tokio::test]
    async fn a_node_that_shows_a_cidr_is_no_longer_pending() {
        let mut s = state("10.244.0.0/16", 24);
        s.observe(&node("a", None));
        assert_eq!(s.due(Instant::now()), ["a"]);
        s.observe(&node("a", Some("10.244.5.0/24")));
        assert!(s.due(Instant::now()).is_empty());
        assert_eq!(s.set.held_by("a").len(), 1);
    }

    #[tokio::test]
    async fn a_node_being_deleted_is_not_given_a_block() {
        let mut s = state("10.244.0.0/16", 24);
        let mut n = node("a", None);
        n.metadata.deletion_timestamp = Some(Time(Utc::now()));
        s.observe(&n);
        assert!(s.due(Instant::now()).is_empty());
    }

    #[tokio::test]
    async fn starved_nodes_wait_for_a_release_then_are_served() {
        let mut s = state("10.0.0.0/24", 25);
        s.rebuild(&[
            node("a", Some("10.0.0.0/25")),
            node("b", Some("10.0.0.128/25")),
            node("c", None),
        ]);
        assert_eq!(s.set.allocate("c"), None);
        s.starve("c");
        s.observe(&node("c", None));
        assert!(
            s.due(Instant::now()).is_empty(),
            "no retry while nothing is free"
        );
        s.forget("b");
        assert_eq!(s.due(Instant::now()), ["c"]);
        assert_eq!(s.set.allocate("c").unwrap().to_string(), "10.0.0.128/25");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_attempt_is_retried_after_a_doubling_backoff() {
        let mut s = state("10.244.0.0/16", 24);
        s.observe(&node("a", None));
        let err = || Some(kube::Error::LinesCodecMaxLineLengthExceeded);
        s.attempted("a", err(), &tracing::Span::none());
        assert!(s.due(Instant::now()).is_empty());
        assert_eq!(s.next_due(), Some(Instant::now() + RETRY_FIRST));
        s.attempted("a", err(), &tracing::Span::none());
        assert_eq!(s.next_due(), Some(Instant::now() + RETRY_FIRST * 2));
        s.attempted("a", None, &tracing::Span::none());
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn pod_cidrs_prefer_the_list_and_fall_back_to_the_single_field() {
        let mut n = Node::default();
        assert!(pod_cidrs(&n).is_empty());
        n.spec = Some(Default::default());
        n.spec.as_mut().unwrap().pod_cidr = Some("10.244.1.0/24".into());
        assert_eq!(pod_cidrs(&n), ["10.244.1.0/24"]);
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.2.0/24".into()]);
        assert_eq!(pod_cidrs(&n), ["10.244.2.0/24"]);
    }
}
