//! Test-only constructors for Nodes, Pods and snapshots, so each unit test
//! states only what it is about.
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::core::v1::{
        Affinity, Container, ContainerPort, Node, NodeAffinity, NodeSelector,
        NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, NodeStatus, Pod, PodAffinity,
        PodAffinityTerm, PodAntiAffinity, PodSpec, PodStatus, PreferredSchedulingTerm,
        ResourceRequirements, Taint, Toleration, TopologySpreadConstraint, WeightedPodAffinityTerm,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, OwnerReference, Time},
    },
    chrono::{TimeZone, Utc},
};

use crate::{
    cache::Cache,
    framework::{NodeInfo, PodInfo, Snapshot},
};

pub fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn q(s: &str) -> Quantity {
    Quantity(s.to_string())
}

/// A container requesting `cpu` and `memory` ("" leaves one unset).
pub fn container(cpu: &str, memory: &str) -> Container {
    let mut requests = BTreeMap::new();
    if !cpu.is_empty() {
        requests.insert("cpu".to_string(), q(cpu));
    }
    if !memory.is_empty() {
        requests.insert("memory".to_string(), q(memory));
    }
    Container {
        name: "c".into(),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A label selector from matchLabels.
pub fn selector(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(kv)),
        ..Default::default()
    }
}

pub fn node_req(key: &str, op: &str, vals: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: (!vals.is_empty()).then(|| vals.iter().map(|s| s.to_string()).collect()),
    }
}

pub fn term(reqs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: Some(reqs),
        ..Default::default()
    }
}

pub fn pod_term(sel: &[(&str, &str)], topology_key: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        label_selector: Some(selector(sel)),
        topology_key: topology_key.into(),
        ..Default::default()
    }
}

/// A Node named `name` with the hostname label and, unless changed,
/// allocatable cpu 4, memory 16Gi, ephemeral-storage 100Gi, 110 pods.
pub struct NodeBuilder(Node);

impl NodeBuilder {
    pub fn new(name: &str) -> Self {
        let alloc: BTreeMap<String, Quantity> = [
            ("cpu", "4"),
            ("memory", "16Gi"),
            ("ephemeral-storage", "100Gi"),
            ("pods", "110"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), q(v)))
        .collect();
        Self(Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(&[("kubernetes.io/hostname", name)])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(alloc),
                ..Default::default()
            }),
        })
    }

    fn alloc(mut self, k: &str, v: &str) -> Self {
        let st = self.0.status.get_or_insert_with(Default::default);
        st.allocatable
            .get_or_insert_with(Default::default)
            .insert(k.into(), q(v));
        self
    }

    pub fn cpu(self, v: &str) -> Self {
        self.alloc("cpu", v)
    }

    pub fn memory(self, v: &str) -> Self {
        self.alloc("memory", v)
    }

    pub fn pods(self, v: &str) -> Self {
        self.alloc("pods", v)
    }

    pub fn resource(self, k: &str, v: &str) -> Self {
        self.alloc(k, v)
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
        self
    }

    pub fn zone(self, z: &str) -> Self {
        self.label("topology.kubernetes.io/zone", z)
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        let spec = self.0.spec.get_or_insert_with(Default::default);
        spec.taints.get_or_insert_with(Vec::new).push(Taint {
            key: key.into(),
            value: (!value.is_empty()).then(|| value.into()),
            effect: effect.into(),
            time_added: None,
        });
        self
    }

    pub fn unschedulable(mut self) -> Self {
        self.0
            .spec
            .get_or_insert_with(Default::default)
            .unschedulable = Some(true);
        self
    }

    pub fn build(self) -> Node {
        self.0
    }
}

impl From<Node> for NodeBuilder {
    fn from(n: Node) -> Self {
        Self(n)
    }
}

/// A Pod named `name` in `default` with UID `uid-<name>`, no containers
/// unless added, created at a fixed instant.
pub struct PodBuilder(Pod);

impl PodBuilder {
    pub fn new(name: &str) -> Self {
        Self(Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(Utc.timestamp_opt(1_700_000_000, 0).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        })
    }

    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    fn affinity(&mut self) -> &mut Affinity {
        self.spec().affinity.get_or_insert_with(Default::default)
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.into());
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
        self
    }

    pub fn container(mut self, c: Container) -> Self {
        self.spec().containers.push(c);
        self
    }

    pub fn init_container(mut self, c: Container) -> Self {
        self.spec()
            .init_containers
            .get_or_insert_with(Vec::new)
            .push(c);
        self
    }

    pub fn overhead(mut self, cpu: &str, memory: &str) -> Self {
        self.spec().overhead = Some(
            [
                ("cpu".to_string(), q(cpu)),
                ("memory".to_string(), q(memory)),
            ]
            .into(),
        );
        self
    }

    pub fn priority(mut self, p: i32) -> Self {
        self.spec().priority = Some(p);
        self
    }

    pub fn preemption_never(mut self) -> Self {
        self.spec().preemption_policy = Some("Never".into());
        self
    }

    pub fn node(mut self, n: &str) -> Self {
        self.spec().node_name = Some(n.into());
        self
    }

    pub fn node_selector(mut self, k: &str, v: &str) -> Self {
        self.spec()
            .node_selector
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
        self
    }

    pub fn toleration(mut self, key: &str, op: &str, value: &str, effect: &str) -> Self {
        self.spec()
            .tolerations
            .get_or_insert_with(Vec::new)
            .push(Toleration {
                key: (!key.is_empty()).then(|| key.into()),
                operator: (!op.is_empty()).then(|| op.into()),
                value: (!value.is_empty()).then(|| value.into()),
                effect: (!effect.is_empty()).then(|| effect.into()),
                toleration_seconds: None,
            });
        self
    }

    pub fn host_port(mut self, port: i32, protocol: &str, ip: &str) -> Self {
        let c = Container {
            name: format!("port-{port}"),
            ports: Some(vec![ContainerPort {
                container_port: port,
                host_port: Some(port),
                protocol: (!protocol.is_empty()).then(|| protocol.into()),
                host_ip: (!ip.is_empty()).then(|| ip.into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        self.spec().containers.push(c);
        self
    }

    pub fn owner(mut self, uid: &str) -> Self {
        self.0
            .metadata
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            });
        self
    }

    pub fn required_node_terms(mut self, terms: Vec<NodeSelectorTerm>) -> Self {
        self.affinity()
            .node_affinity
            .get_or_insert_with(NodeAffinity::default)
            .required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: terms,
        });
        self
    }

    pub fn preferred_node_term(mut self, weight: i32, t: NodeSelectorTerm) -> Self {
        self.affinity()
            .node_affinity
            .get_or_insert_with(NodeAffinity::default)
            .preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(PreferredSchedulingTerm {
                weight,
                preference: t,
            });
        self
    }

    pub fn pod_affinity(mut self, t: PodAffinityTerm) -> Self {
        self.affinity()
            .pod_affinity
            .get_or_insert_with(PodAffinity::default)
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(t);
        self
    }

    pub fn pod_anti_affinity(mut self, t: PodAffinityTerm) -> Self {
        self.affinity()
            .pod_anti_affinity
            .get_or_insert_with(PodAntiAffinity::default)
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(t);
        self
    }

    pub fn preferred_pod_affinity(mut self, weight: i32, t: PodAffinityTerm) -> Self {
        self.affinity()
            .pod_affinity
            .get_or_insert_with(PodAffinity::default)
            .preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(WeightedPodAffinityTerm {
                weight,
                pod_affinity_term: t,
            });
        self
    }

    pub fn preferred_pod_anti_affinity(mut self, weight: i32, t: PodAffinityTerm) -> Self {
        self.affinity()
            .pod_anti_affinity
            .get_or_insert_with(PodAntiAffinity::default)
            .preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(WeightedPodAffinityTerm {
                weight,
                pod_affinity_term: t,
            });
        self
    }

    /// A topology spread constraint over pods matching `sel`.
    pub fn spread(mut self, max_skew: i32, key: &str, when: &str, sel: &[(&str, &str)]) -> Self {
        self.spec()
            .topology_spread_constraints
            .get_or_insert_with(Vec::new)
            .push(TopologySpreadConstraint {
                max_skew,
                topology_key: key.into(),
                when_unsatisfiable: when.into(),
                label_selector: Some(selector(sel)),
                ..Default::default()
            });
        self
    }

    pub fn min_domains(mut self, n: i32) -> Self {
        if let Some(c) = self
            .spec()
            .topology_spread_constraints
            .as_mut()
            .and_then(|v| v.last_mut())
        {
            c.min_domains = Some(n);
        }
        self
    }

    pub fn phase(mut self, p: &str) -> Self {
        self.0.status.get_or_insert_with(Default::default).phase = Some(p.into());
        self
    }

    pub fn nominated(mut self, node: &str) -> Self {
        self.0
            .status
            .get_or_insert_with(Default::default)
            .nominated_node_name = Some(node.into());
        self
    }

    pub fn terminating(mut self) -> Self {
        self.0.metadata.deletion_timestamp =
            Some(Time(Utc.timestamp_opt(1_700_000_100, 0).unwrap()));
        self
    }

    /// Created (and started) `secs` after the fixed base instant.
    pub fn created_at(mut self, secs: i64) -> Self {
        let t = Time(Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap());
        self.0.metadata.creation_timestamp = Some(t.clone());
        self.0
            .status
            .get_or_insert_with(Default::default)
            .start_time = Some(t);
        self
    }

    pub fn build(self) -> Pod {
        self.0
    }

    pub fn info(self) -> PodInfo {
        PodInfo::new(self.0)
    }
}

impl From<Pod> for PodBuilder {
    fn from(p: Pod) -> Self {
        Self(p)
    }
}

/// The snapshot of a cluster of `nodes` with `pods` on them (through the
/// real cache).
pub fn snapshot(nodes: Vec<Node>, pods: Vec<Pod>) -> Snapshot {
    let mut c = Cache::new();
    for n in nodes {
        c.apply_node(n);
    }
    for p in pods {
        c.apply_pod(p);
    }
    c.snapshot()
}

/// A lone node's NodeInfo holding `pods`.
pub fn node_info(node: Node, pods: Vec<Pod>) -> NodeInfo {
    let mut n = NodeInfo::new(Arc::new(node));
    for p in pods {
        n.add_pod(Arc::new(PodInfo::new(p)));
    }
    n
}
