//! The scheduling framework, as upstream's: per-pod facts computed once
//! ([`PodInfo`]), per-node aggregates ([`NodeInfo`]), the [`Filter`] and
//! [`Score`] plugin traits, and one scheduling cycle ([`schedule`]): filter
//! the nodes, score the feasible ones, normalise, weigh, pick the best with
//! a random tie-break. Pure: no I/O, the caller brings the snapshot and the
//! random source.
use std::{
    any::Any,
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use k8s_openapi::{
    api::core::v1::{Node, Pod, PodAffinityTerm, Taint, Toleration},
    apimachinery::pkg::apis::meta::v1::Time,
};

use crate::{
    labels::{Labels, Selector},
    resources::{Resource, allocatable, pod_requests},
};

/// The highest score a plugin gives a node (upstream's `MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;

/// The well-known topology keys.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// How a pod is identified in the queue and the cache: its UID (a pod
/// deleted and recreated under the same name is another pod), or
/// namespace/name for an object without one.
pub fn pod_key(pod: &Pod) -> String {
    match pod.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_string(),
        _ => format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// A host port a pod claims.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Upstream's `CheckConflict`: the same protocol and port on the same
    /// IP, where 0.0.0.0 stands for every IP.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

/// A required or preferred pod (anti-)affinity term, resolved against the
/// pod that carries it: which namespaces it looks at and its selector.
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    /// None: every namespace (an empty namespaceSelector).
    pub namespaces: Option<BTreeSet<String>>,
    pub selector: Selector,
    pub topology_key: String,
}

impl AffinityTerm {
    fn new(t: &PodAffinityTerm, owner_ns: &str, owner_labels: Option<&Labels>) -> Self {
        let mut selector = Selector::from_label_selector(t.label_selector.as_ref());
        for k in t.match_label_keys.iter().flatten() {
            if let Some(v) = owner_labels.and_then(|l| l.get(k)) {
                selector.require_in(k, v);
            }
        }
        for k in t.mismatch_label_keys.iter().flatten() {
            if let Some(v) = owner_labels.and_then(|l| l.get(k)) {
                selector.require_not_in(k, v);
            }
        }
        let listed: BTreeSet<String> = t.namespaces.iter().flatten().cloned().collect();
        let namespaces = match t.namespace_selector.as_ref() {
            // An empty namespaceSelector selects every namespace.
            Some(ns)
                if ns.match_labels.as_ref().is_none_or(|m| m.is_empty())
                    && ns.match_expressions.as_ref().is_none_or(|m| m.is_empty()) =>
            {
                None
            }
            // Namespace labels are not watched: a non-empty selector adds
            // no namespaces beyond the listed ones.
            Some(_) => Some(listed),
            None if listed.is_empty() => Some(BTreeSet::from([owner_ns.to_string()])),
            None => Some(listed),
        };
        Self {
            namespaces,
            selector,
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether `pod` is one of the pods this term is about.
    pub fn matches(&self, pod: &PodInfo) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|n| n.contains(&pod.namespace))
            && self.selector.matches(pod.labels())
    }
}

/// Everything the plugins read about a pod, computed once.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Pod,
    pub key: String,
    pub namespace: String,
    pub name: String,
    /// `spec.priority` (filled by the API server from the PriorityClass);
    /// absent counts as 0.
    pub priority: i32,
    /// What the fit check compares.
    pub requests: Resource,
    /// Requests with upstream's defaults for missing cpu/memory (scoring).
    pub non_zero_requests: Resource,
    pub host_ports: Vec<HostPort>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
    /// UID of the first owner reference: the group default spreading
    /// spreads (upstream's PodsWithOwnerRef).
    pub owner_uid: Option<String>,
}

impl PodInfo {
    pub fn new(pod: Pod) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let own_labels = pod.metadata.labels.as_ref();
        let aff = spec.and_then(|s| s.affinity.as_ref());
        let pa = aff.and_then(|a| a.pod_affinity.as_ref());
        let paa = aff.and_then(|a| a.pod_anti_affinity.as_ref());
        let terms = |ts: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            ts.into_iter()
                .flatten()
                .map(|t| AffinityTerm::new(t, &namespace, own_labels))
                .collect()
        };
        let weighted = |ts: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            ts.into_iter()
                .flatten()
                .map(|w| {
                    (
                        w.weight,
                        AffinityTerm::new(&w.pod_affinity_term, &namespace, own_labels),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut host_ports = Vec::new();
        if let Some(s) = spec {
            let sidecars = s
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            for c in s.containers.iter().chain(sidecars) {
                for p in c.ports.iter().flatten() {
                    let port = p.host_port.unwrap_or(0);
                    if port <= 0 {
                        continue;
                    }
                    host_ports.push(HostPort {
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|ip| !ip.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        protocol: p
                            .protocol
                            .clone()
                            .filter(|p| !p.is_empty())
                            .unwrap_or_else(|| "TCP".into()),
                        port,
                    });
                }
            }
        }
        Self {
            key: pod_key(&pod),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            requests: pod_requests(&pod, false),
            non_zero_requests: pod_requests(&pod, true),
            host_ports,
            required_affinity: terms(pa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti_affinity: terms(paa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: weighted(pa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti_affinity: weighted(paa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            owner_uid: pod
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
                .map(|o| o.uid.clone()),
            namespace,
            name,
            pod,
        }
    }

    pub fn labels(&self) -> Option<&Labels> {
        self.pod.metadata.labels.as_ref()
    }

    pub fn tolerations(&self) -> &[Toleration] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default()
    }

    pub fn terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }

    /// `status.nominatedNodeName`: where preemption made room for it.
    pub fn nominated_node(&self) -> Option<&str> {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty())
    }

    /// When it started running (or was created): the older of two pods of
    /// equal priority is the more important one.
    pub fn start_time(&self) -> Option<&Time> {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(self.pod.metadata.creation_timestamp.as_ref())
    }
}

/// A node with the pods on it (bound and assumed) and their totals.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub pods: Vec<Arc<PodInfo>>,
    pub requested: Resource,
    pub non_zero_requested: Resource,
    pub allocatable: Resource,
    pub used_ports: Vec<HostPort>,
    /// How many of `pods` carry any pod (anti-)affinity term, and how many
    /// a required anti-affinity term: the affinity plugin skips the rest.
    pub pods_with_affinity: usize,
    pub pods_with_required_anti_affinity: usize,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            allocatable: allocatable(&node),
            node,
            pods: Vec::new(),
            requested: Resource::default(),
            non_zero_requested: Resource::default(),
            used_ports: Vec::new(),
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> Option<&Labels> {
        self.node.metadata.labels.as_ref()
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels().and_then(|l| l.get(key)).map(String::as_str)
    }

    pub fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
    }

    /// Replaces the Node object (its pods stay).
    pub fn set_node(&mut self, node: Arc<Node>) {
        self.allocatable = allocatable(&node);
        self.node = node;
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.milli_cpu += pod.non_zero_requests.milli_cpu;
        self.non_zero_requested.memory += pod.non_zero_requests.memory;
        self.used_ports.extend(pod.host_ports.iter().cloned());
        self.pods_with_affinity += usize::from(pod.has_affinity());
        self.pods_with_required_anti_affinity +=
            usize::from(!pod.required_anti_affinity.is_empty());
        self.pods.push(pod);
    }

    /// Removes the pod with `key`; false if it was not here.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.key == key) else {
            return false;
        };
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        self.non_zero_requested.milli_cpu -= pod.non_zero_requests.milli_cpu;
        self.non_zero_requested.memory -= pod.non_zero_requests.memory;
        self.pods_with_affinity -= usize::from(pod.has_affinity());
        self.pods_with_required_anti_affinity -=
            usize::from(!pod.required_anti_affinity.is_empty());
        for hp in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        true
    }
}

/// What one cycle sees: every node (sorted by name) and the pods nominated
/// to nodes by preemption, which lower-or-equal priority pods must leave
/// room for.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<Arc<NodeInfo>>,
    pub nominated: HashMap<String, Vec<Arc<PodInfo>>>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        self.nodes
            .binary_search_by(|n| n.name().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// Why a filter turned a node down. `UnschedulableAndUnresolvable` tells
/// preemption that evicting pods from that node would not help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Unschedulable,
    UnschedulableAndUnresolvable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    /// Upstream's reason strings, counted per node in the message.
    pub reasons: Vec<String>,
    /// The filter that said no (set by the framework).
    pub plugin: &'static str,
}

impl Rejection {
    pub fn unschedulable(reason: impl Into<String>) -> Self {
        Self {
            code: Code::Unschedulable,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }

    pub fn unresolvable(reason: impl Into<String>) -> Self {
        Self {
            code: Code::UnschedulableAndUnresolvable,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }
}

pub type FilterResult = Result<(), Rejection>;

/// Per-cycle data a plugin computes once from the whole cluster
/// (upstream's PreFilter/PreScore state).
pub type CycleData = Box<dyn Any + Send + Sync>;

/// Reads a plugin's own cycle data back.
pub fn data<T: 'static>(d: Option<&CycleData>) -> Option<&T> {
    d.and_then(|d| d.downcast_ref::<T>())
}

/// A cluster change that may make a rejected pod schedulable; each filter
/// says which ones concern it, so the queue retries only pods they may
/// help (upstream's queueing hints, coarsely).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterEvent {
    NodeAdded,
    NodeUpdated,
    AssignedPodAdded,
    AssignedPodUpdated,
    /// Deleted, or terminated (Succeeded/Failed): its resources are free.
    AssignedPodDeleted,
}

/// A node feasibility check.
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;

    /// Computes what `filter` needs from the whole cluster, once a cycle.
    fn pre_filter(&self, _pod: &PodInfo, _nodes: &[Arc<NodeInfo>]) -> Option<CycleData> {
        None
    }

    fn filter(&self, state: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> FilterResult;

    /// The cluster events after which a pod this filter rejected is worth
    /// retrying.
    fn requeue_on(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::NodeAdded, ClusterEvent::NodeUpdated]
    }
}

/// What a score plugin's PreScore decided.
pub enum Prepared {
    /// Nothing to score: every node gets 0 from this plugin.
    Skip,
    Ready(Option<CycleData>),
}

/// A node ranking: `score` per feasible node, `normalize` over all of
/// them to 0..=100.
pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;

    fn pre_score(
        &self,
        _pod: &PodInfo,
        _all: &[Arc<NodeInfo>],
        _feasible: &[Arc<NodeInfo>],
    ) -> Prepared {
        Prepared::Ready(None)
    }

    fn score(&self, state: Option<&CycleData>, pod: &PodInfo, node: &NodeInfo) -> i64;

    /// `scores[i]` belongs to `feasible[i]` of `pre_score`.
    fn normalize(&self, _state: Option<&CycleData>, _nodes: &[Arc<NodeInfo>], _scores: &mut [i64]) {
    }
}

/// The filters (in upstream's order: the first rejection names the node's
/// reason) and the weighted scores.
pub struct Profile {
    pub filters: Vec<Box<dyn Filter>>,
    pub scores: Vec<(Box<dyn Score>, i64)>,
}

impl Profile {
    /// The filters that may pass after `event`, by name.
    pub fn requeued_by(&self, event: ClusterEvent) -> Vec<&'static str> {
        self.filters
            .iter()
            .filter(|f| f.requeue_on().contains(&event))
            .map(|f| f.name())
            .collect()
    }
}

/// Upstream's `DefaultNormalizeScore`: scale so the best node gets 100
/// (`reverse`: the lowest raw score is best).
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

/// Why no node fits: the rejection of every node that was tried, and what
/// preemption had to say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FitError {
    pub num_all_nodes: usize,
    pub statuses: BTreeMap<String, Rejection>,
    pub post_filter_msg: Option<String>,
}

/// The filters' per-cycle state for one pod.
pub struct Filtering<'a> {
    profile: &'a Profile,
    pod: &'a PodInfo,
    states: Vec<Option<CycleData>>,
    nominated: &'a HashMap<String, Vec<Arc<PodInfo>>>,
}

impl<'a> Filtering<'a> {
    pub fn new(profile: &'a Profile, pod: &'a PodInfo, snapshot: &'a Snapshot) -> Self {
        let states = profile
            .filters
            .iter()
            .map(|f| f.pre_filter(pod, &snapshot.nodes))
            .collect();
        Self {
            profile,
            pod,
            states,
            nominated: &snapshot.nominated,
        }
    }

    /// Runs every filter on `node` as it is, stopping at the first no.
    pub fn run(&self, node: &NodeInfo) -> FilterResult {
        for (f, s) in self.profile.filters.iter().zip(&self.states) {
            f.filter(s.as_ref(), self.pod, node).map_err(|mut r| {
                r.plugin = f.name();
                r
            })?;
        }
        Ok(())
    }

    /// Like [`Self::run`], with the node also holding the pods nominated to
    /// it whose priority is at least this pod's (upstream runs both: the
    /// nominated pods must fit too, and must not be what satisfies an
    /// affinity).
    pub fn run_with_nominated(&self, node: &NodeInfo) -> FilterResult {
        let extra: Vec<&Arc<PodInfo>> = self
            .nominated
            .get(node.name())
            .into_iter()
            .flatten()
            .filter(|p| p.priority >= self.pod.priority && p.key != self.pod.key)
            .collect();
        if !extra.is_empty() {
            let mut with = node.clone();
            for p in extra {
                with.add_pod(p.clone());
            }
            self.run(&with)?;
        }
        self.run(node)
    }
}

/// Upstream's adaptive `percentageOfNodesToScore`: all nodes under 100,
/// then 50% minus 1% per 125 nodes (at least 5%), never under 100 nodes.
pub fn num_feasible_nodes_to_find(all: usize) -> usize {
    const MIN: usize = 100;
    if all < MIN {
        return all;
    }
    let pct = (50usize.saturating_sub(all / 125)).max(5);
    (all * pct / 100).max(MIN)
}

/// Where the next cycle starts looking, so successive pods spread their
/// search over the cluster (upstream's `nextStartNodeIndex`).
#[derive(Debug, Default)]
pub struct Cursor(pub usize);

/// One scheduling cycle: the node for `pod`, or why there is none.
pub fn schedule(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    rng: &mut fastrand::Rng,
    cursor: &mut Cursor,
) -> Result<String, FitError> {
    let n = snapshot.nodes.len();
    if n == 0 {
        return Err(FitError::default());
    }
    let filtering = Filtering::new(profile, pod, snapshot);
    // A pod preemption made room for goes back to that node if it fits.
    if let Some(nominated) = pod.nominated_node().and_then(|name| snapshot.get(name))
        && filtering.run_with_nominated(nominated).is_ok()
    {
        return Ok(nominated.name().to_string());
    }
    let want = num_feasible_nodes_to_find(n);
    let mut feasible: Vec<Arc<NodeInfo>> = Vec::new();
    let mut statuses = BTreeMap::new();
    let start = cursor.0 % n;
    let mut processed = 0;
    for i in 0..n {
        let node = &snapshot.nodes[(start + i) % n];
        processed += 1;
        match filtering.run_with_nominated(node) {
            Ok(()) => {
                feasible.push(node.clone());
                if feasible.len() >= want {
                    break;
                }
            }
            Err(r) => {
                statuses.insert(node.name().to_string(), r);
            }
        }
    }
    cursor.0 = (start + processed) % n;
    if feasible.is_empty() {
        return Err(FitError {
            num_all_nodes: n,
            statuses,
            post_filter_msg: None,
        });
    }
    if feasible.len() == 1 {
        return Ok(feasible[0].name().to_string());
    }
    let totals = score_nodes(profile, pod, &snapshot.nodes, &feasible);
    Ok(feasible[select_host(&totals, rng)].name().to_string())
}

/// The weighted sum of every score plugin's normalised score, per
/// feasible node.
pub fn score_nodes(
    profile: &Profile,
    pod: &PodInfo,
    all: &[Arc<NodeInfo>],
    feasible: &[Arc<NodeInfo>],
) -> Vec<i64> {
    let mut totals = vec![0i64; feasible.len()];
    let mut scores = vec![0i64; feasible.len()];
    for (plugin, weight) in &profile.scores {
        let state = match plugin.pre_score(pod, all, feasible) {
            Prepared::Skip => continue,
            Prepared::Ready(s) => s,
        };
        for (s, node) in scores.iter_mut().zip(feasible) {
            *s = plugin.score(state.as_ref(), pod, node);
        }
        plugin.normalize(state.as_ref(), feasible, &mut scores);
        for (t, s) in totals.iter_mut().zip(&scores) {
            *t += s.clamp(&0, &MAX_NODE_SCORE) * weight;
        }
    }
    totals
}

/// The index of the highest score, ties broken uniformly at random
/// (reservoir sampling, as upstream's `selectHost`).
pub fn select_host(scores: &[i64], rng: &mut fastrand::Rng) -> usize {
    let mut best = 0;
    let mut ties = 0u64;
    for (i, s) in scores.iter().enumerate() {
        if i == 0 || *s > scores[best] {
            best = i;
            ties = 1;
        } else if *s == scores[best] {
            ties += 1;
            if rng.u64(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        plugins,
        testing::{NodeBuilder, PodBuilder, container, snapshot},
    };

    fn pod(cpu: &str) -> PodInfo {
        PodInfo::new(PodBuilder::new("p").container(container(cpu, "0")).build())
    }

    #[test]
    fn the_feasible_node_is_chosen() {
        let snap = snapshot(
            vec![
                NodeBuilder::new("small").cpu("1").build(),
                NodeBuilder::new("big").cpu("4").build(),
            ],
            vec![],
        );
        let mut rng = fastrand::Rng::with_seed(1);
        let got = schedule(
            &plugins::default_profile(),
            &pod("2"),
            &snap,
            &mut rng,
            &mut Cursor(0),
        );
        assert_eq!(got, Ok("big".to_string()));
    }

    #[test]
    fn no_feasible_node_reports_each_nodes_rejection() {
        let snap = snapshot(
            vec![
                NodeBuilder::new("a").cpu("1").build(),
                NodeBuilder::new("b").cpu("1").build(),
            ],
            vec![],
        );
        let mut rng = fastrand::Rng::with_seed(1);
        let err = schedule(
            &plugins::default_profile(),
            &pod("2"),
            &snap,
            &mut rng,
            &mut Cursor(0),
        )
        .unwrap_err();
        assert_eq!(err.num_all_nodes, 2);
        assert_eq!(err.statuses.len(), 2);
        assert_eq!(
            err.statuses["a"].reasons,
            vec!["Insufficient cpu".to_string()]
        );
        assert_eq!(err.statuses["a"].plugin, "NodeResourcesFit");
    }

    #[test]
    fn the_least_allocated_node_wins() {
        let busy = PodBuilder::new("busy")
            .node("n1")
            .container(container("3", "0"))
            .build();
        let snap = snapshot(
            vec![
                NodeBuilder::new("n1").cpu("4").build(),
                NodeBuilder::new("n2").cpu("4").build(),
            ],
            vec![busy],
        );
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let got = schedule(
                &plugins::default_profile(),
                &pod("500m"),
                &snap,
                &mut rng,
                &mut Cursor(0),
            );
            assert_eq!(got, Ok("n2".to_string()));
        }
    }

    #[test]
    fn equal_nodes_are_picked_at_random() {
        let mut rng = fastrand::Rng::with_seed(7);
        let picks: BTreeSet<usize> = (0..200)
            .map(|_| select_host(&[5, 9, 9, 9, 1], &mut rng))
            .collect();
        assert_eq!(picks, BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn a_nominated_pod_of_higher_priority_keeps_its_room() {
        let snap0 = snapshot(vec![NodeBuilder::new("n1").cpu("2").build()], vec![]);
        let mut snap = snap0.clone();
        let nominee = PodInfo::new(
            PodBuilder::new("nominee")
                .priority(10)
                .container(container("2", "0"))
                .build(),
        );
        snap.nominated.insert("n1".into(), vec![Arc::new(nominee)]);
        let low = PodInfo::new(
            PodBuilder::new("low")
                .priority(5)
                .container(container("1", "0"))
                .build(),
        );
        let mut rng = fastrand::Rng::with_seed(1);
        let p = plugins::default_profile();
        assert!(schedule(&p, &low, &snap0, &mut rng, &mut Cursor(0)).is_ok());
        let err = schedule(&p, &low, &snap, &mut rng, &mut Cursor(0)).unwrap_err();
        assert_eq!(
            err.statuses["n1"].reasons,
            vec!["Insufficient cpu".to_string()]
        );
    }

    #[test]
    fn large_clusters_stop_after_enough_feasible_nodes() {
        assert_eq!(num_feasible_nodes_to_find(50), 50);
        assert_eq!(num_feasible_nodes_to_find(100), 100);
        assert_eq!(num_feasible_nodes_to_find(1000), 420);
        assert_eq!(num_feasible_nodes_to_find(5000), 500);
        assert_eq!(num_feasible_nodes_to_find(300), 144);
    }

    #[test]
    fn default_normalize_scales_to_the_best() {
        let mut s = vec![0, 5, 10];
        default_normalize(&mut s, false);
        assert_eq!(s, vec![0, 50, 100]);
        let mut s = vec![0, 5, 10];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
        let mut s = vec![0, 0];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 100]);
    }
}
