//! The scheduler's view of the cluster: every Node with the pods bound to
//! it, fed by the Node and Pod watchers, plus the assume-cache. A pod is
//! counted on its node the moment the scheduler decides (`assume`), before
//! the bind call returns, so the next decision already sees it and two
//! decisions never overcommit a node; a failed bind `forget`s it; the
//! watcher's view of the bound pod confirms it.
//!
//! Pure and synchronous: the edge keeps it behind a mutex.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::framework::{ClusterEvent, NodeInfo, PodInfo, Snapshot, pod_key};

#[derive(Debug)]
struct PodState {
    info: Arc<PodInfo>,
    node: String,
    assumed: bool,
}

#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, Arc<NodeInfo>>,
    /// Bound or assumed pods that hold resources, by key.
    pods: HashMap<String, PodState>,
    /// Pending pods preemption nominated to a node, by key.
    nominated: HashMap<String, (String, Arc<PodInfo>)>,
}

/// Succeeded or Failed: its containers are gone and so is its claim.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The fields of a Node the filters and scores read.
fn scheduling_view(n: &Node) -> impl PartialEq + '_ {
    let spec = n.spec.as_ref();
    (
        n.metadata.labels.as_ref(),
        spec.and_then(|s| s.taints.as_ref()),
        spec.and_then(|s| s.unschedulable),
        n.status.as_ref().and_then(|s| s.allocatable.as_ref()),
    )
}

impl Cache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a Node; the event, if what scheduling reads of it
    /// changed.
    pub fn apply_node(&mut self, node: Node) -> Option<ClusterEvent> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let node = Arc::new(node);
        if let Some(info) = self.nodes.get_mut(&name) {
            let changed = scheduling_view(&info.node) != scheduling_view(&node);
            Arc::make_mut(info).set_node(node);
            return changed.then_some(ClusterEvent::NodeUpdated);
        }
        let mut info = NodeInfo::new(node);
        for p in self.pods.values().filter(|p| p.node == name) {
            info.add_pod(p.info.clone());
        }
        self.nodes.insert(name, Arc::new(info));
        Some(ClusterEvent::NodeAdded)
    }

    pub fn delete_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Keeps only the nodes named in `seen` (after a re-list).
    pub fn retain_nodes(&mut self, seen: &HashSet<String>) {
        self.nodes.retain(|n, _| seen.contains(n));
    }

    fn place(&mut self, info: Arc<PodInfo>, node: &str, assumed: bool) {
        if let Some(n) = self.nodes.get_mut(node) {
            Arc::make_mut(n).add_pod(info.clone());
        }
        self.pods.insert(
            info.key.clone(),
            PodState {
                info,
                node: node.to_string(),
                assumed,
            },
        );
    }

    fn unplace(&mut self, key: &str) -> Option<PodState> {
        let st = self.pods.remove(key)?;
        if let Some(n) = self.nodes.get_mut(&st.node) {
            Arc::make_mut(n).remove_pod(key);
        }
        Some(st)
    }

    /// Takes in a Pod as the watcher sees it; the events it amounts to.
    pub fn apply_pod(&mut self, pod: Pod) -> Vec<ClusterEvent> {
        let key = pod_key(&pod);
        let node = node_name(&pod).map(str::to_string);
        let pending_nominee = node.is_none()
            && !is_terminal(&pod)
            && pod.metadata.deletion_timestamp.is_none()
            && pod
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.as_deref())
                .is_some_and(|n| !n.is_empty());
        let Some(node) = node else {
            if pending_nominee {
                let info = Arc::new(PodInfo::new(pod));
                let n = info.nominated_node().unwrap_or_default().to_string();
                self.nominated.insert(key, (n, info));
            } else {
                self.nominated.remove(&key);
            }
            // Unbound: nothing held, unless the scheduler assumed it (the
            // binding is in flight) - then it stays counted.
            return Vec::new();
        };
        self.nominated.remove(&key);
        if is_terminal(&pod) {
            return match self.unplace(&key) {
                Some(_) => vec![ClusterEvent::AssignedPodDeleted],
                None => Vec::new(),
            };
        }
        let event = match self.pods.get(&key) {
            None => Some(ClusterEvent::AssignedPodAdded),
            // The bind the scheduler made, confirmed: already counted.
            Some(st) if st.assumed && st.node == node => None,
            Some(st) if st.info.pod.metadata.labels != pod.metadata.labels => {
                Some(ClusterEvent::AssignedPodUpdated)
            }
            Some(st) if st.info.terminating() != pod.metadata.deletion_timestamp.is_some() => {
                Some(ClusterEvent::AssignedPodUpdated)
            }
            Some(_) => None,
        };
        self.unplace(&key);
        self.place(Arc::new(PodInfo::new(pod)), &node, false);
        event.into_iter().collect()
    }

    /// A Pod is gone; its event if it held resources.
    pub fn delete_pod(&mut self, pod: &Pod) -> Option<ClusterEvent> {
        let key = pod_key(pod);
        self.nominated.remove(&key);
        self.unplace(&key).map(|_| ClusterEvent::AssignedPodDeleted)
    }

    /// Keeps only the pods whose keys are in `seen` (after a re-list); the
    /// event if any that held resources went.
    pub fn retain_pods(&mut self, seen: &HashSet<String>) -> Option<ClusterEvent> {
        self.nominated.retain(|k, _| seen.contains(k));
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in &gone {
            self.unplace(k);
        }
        (!gone.is_empty()).then_some(ClusterEvent::AssignedPodDeleted)
    }

    /// Counts `pod` on `node` now, before its binding is written.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.nominated.remove(&pod.key);
        self.unplace(&pod.key);
        self.place(pod, node, true);
    }

    /// Undoes `assume` after a failed bind (a confirmed pod stays).
    pub fn forget(&mut self, key: &str) {
        if self.pods.get(key).is_some_and(|p| p.assumed) {
            self.unplace(key);
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    /// Records that preemption nominated `pod` to `node` (before the
    /// watcher shows its status), so the room stays reserved.
    pub fn nominate(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.nominated
            .insert(pod.key.clone(), (node.to_string(), pod));
    }

    /// The pods nominated to `node`.
    pub fn nominated_to(&self, node: &str) -> Vec<Arc<PodInfo>> {
        self.nominated
            .values()
            .filter(|(n, _)| n == node)
            .map(|(_, p)| p.clone())
            .collect()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// What one cycle works on (cheap: shared NodeInfos).
    pub fn snapshot(&self) -> Snapshot {
        let mut nominated: HashMap<String, Vec<Arc<PodInfo>>> = HashMap::new();
        for (node, p) in self.nominated.values() {
            nominated.entry(node.clone()).or_default().push(p.clone());
        }
        Snapshot {
            nodes: self.nodes.values().cloned().collect(),
            nominated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NodeBuilder, PodBuilder, container};

    fn cpu_requested(c: &Cache, node: &str) -> i64 {
        c.snapshot().get(node).unwrap().requested.milli_cpu
    }

    #[test]
    fn an_assumed_pod_counts_before_its_binding_is_seen() {
        let mut c = Cache::new();
        c.apply_node(NodeBuilder::new("n1").build());
        let pod = PodBuilder::new("p").container(container("1", "")).build();
        c.assume(Arc::new(PodInfo::new(pod.clone())), "n1");
        assert_eq!(cpu_requested(&c, "n1"), 1000);
        // The watcher still shows it unbound: it stays counted.
        assert!(c.apply_pod(pod.clone()).is_empty());
        assert_eq!(cpu_requested(&c, "n1"), 1000);
        // Then bound: confirmed, counted once, no event.
        let mut bound = pod;
        bound.spec.as_mut().unwrap().node_name = Some("n1".into());
        assert!(c.apply_pod(bound).is_empty());
        assert_eq!(cpu_requested(&c, "n1"), 1000);
        assert!(!c.is_assumed("uid-p"));
    }

    #[test]
    fn a_forgotten_pod_frees_its_node() {
        let mut c = Cache::new();
        c.apply_node(NodeBuilder::new("n1").build());
        let pod = PodBuilder::new("p").container(container("1", "")).build();
        c.assume(Arc::new(PodInfo::new(pod)), "n1");
        c.forget("uid-p");
        assert_eq!(cpu_requested(&c, "n1"), 0);
        assert!(c.snapshot().get("n1").unwrap().pods.is_empty());
    }

    #[test]
    fn a_terminated_pod_frees_its_node_and_says_so() {
        let mut c = Cache::new();
        c.apply_node(NodeBuilder::new("n1").build());
        let pod = PodBuilder::new("p")
            .node("n1")
            .container(container("1", ""))
            .build();
        assert_eq!(
            c.apply_pod(pod.clone()),
            vec![ClusterEvent::AssignedPodAdded]
        );
        let done = PodBuilder::from(pod).phase("Succeeded").build();
        assert_eq!(c.apply_pod(done), vec![ClusterEvent::AssignedPodDeleted]);
        assert_eq!(cpu_requested(&c, "n1"), 0);
    }

    #[test]
    fn pods_seen_before_their_node_are_counted_when_it_arrives() {
        let mut c = Cache::new();
        c.apply_pod(
            PodBuilder::new("p")
                .node("n1")
                .container(container("1", ""))
                .build(),
        );
        assert_eq!(
            c.apply_node(NodeBuilder::new("n1").build()),
            Some(ClusterEvent::NodeAdded)
        );
        assert_eq!(cpu_requested(&c, "n1"), 1000);
    }

    #[test]
    fn only_scheduling_relevant_node_changes_are_events() {
        let mut c = Cache::new();
        let node = NodeBuilder::new("n1").build();
        c.apply_node(node.clone());
        let mut heartbeat = node.clone();
        heartbeat.metadata.resource_version = Some("2".into());
        assert_eq!(c.apply_node(heartbeat), None);
        let tainted = NodeBuilder::from(node)
            .taint("k", "v", "NoSchedule")
            .build();
        assert_eq!(c.apply_node(tainted), Some(ClusterEvent::NodeUpdated));
    }

    #[test]
    fn deleted_pods_free_their_node() {
        let mut c = Cache::new();
        c.apply_node(NodeBuilder::new("n1").build());
        let pod = PodBuilder::new("p")
            .node("n1")
            .container(container("1", ""))
            .build();
        c.apply_pod(pod.clone());
        assert_eq!(c.delete_pod(&pod), Some(ClusterEvent::AssignedPodDeleted));
        assert_eq!(cpu_requested(&c, "n1"), 0);
    }

    #[test]
    fn a_relist_drops_pods_no_longer_listed() {
        let mut c = Cache::new();
        c.apply_node(NodeBuilder::new("n1").build());
        c.apply_pod(
            PodBuilder::new("a")
                .node("n1")
                .container(container("1", ""))
                .build(),
        );
        c.apply_pod(
            PodBuilder::new("b")
                .node("n1")
                .container(container("1", ""))
                .build(),
        );
        let seen = HashSet::from(["uid-a".to_string()]);
        assert_eq!(c.retain_pods(&seen), Some(ClusterEvent::AssignedPodDeleted));
        assert_eq!(cpu_requested(&c, "n1"), 1000);
    }

    #[test]
    fn nominated_pending_pods_are_tracked_until_bound() {
        let mut c = Cache::new();
        c.apply_node(NodeBuilder::new("n1").build());
        let pod = PodBuilder::new("p").nominated("n1").build();
        c.apply_pod(pod.clone());
        assert_eq!(c.snapshot().nominated["n1"].len(), 1);
        c.apply_pod(PodBuilder::from(pod).node("n1").build());
        assert!(c.snapshot().nominated.is_empty());
    }
}
