//! The scheduler end to end: the real `sluice-server` (scheduler
//! in-process), fake Nodes with allocatable, labels and taints (no
//! kubelet), Pods created through the API; each test asserts where they
//! are bound and what their PodScheduled condition says, as upstream's
//! scheduler integration tests do. No root needed.
use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::{core::v1::Pod, scheduling::v1::PriorityClass};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};
use sluice_tests::{
    api_server::ApiServer,
    cluster::{FakeKubelet, FakeNodes, NodeSpec},
};

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(90);

/// A pod requesting `cpu`, with `extra` merged into its spec.
fn pod(name: &str, cpu: &str, labels: Value, extra: Value) -> Pod {
    let mut p = json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{
            "name": "c", "image": "localhost/busybox:1.35",
            "resources": {"requests": {"cpu": cpu}},
        }]},
    });
    if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(p).expect("Pod")
}

struct Cluster {
    // Field order: the nodes' Lease renewers stop before the server.
    nodes: FakeNodes,
    pods: Api<Pod>,
    _server: ApiServer,
}

async fn cluster(nodes: &[NodeSpec]) -> Cluster {
    let server = ApiServer::start(&[]);
    let client = server.client().await;
    let fake = FakeNodes::new(client.clone());
    for n in nodes {
        fake.add(n).await;
    }
    Cluster {
        nodes: fake,
        pods: Api::namespaced(client, "default"),
        _server: server,
    }
}

impl Cluster {
    /// A PriorityClass `name` of `value` (gone with the test's server).
    async fn priority_class(&self, name: &str, value: i32) {
        let classes: Api<PriorityClass> = Api::all(self.pods.clone().into_client());
        let pc: PriorityClass =
            serde_json::from_value(json!({"metadata": {"name": name}, "value": value}))
                .expect("PriorityClass");
        classes
            .create(&PostParams::default(), &pc)
            .await
            .unwrap_or_else(|e| panic!("creating PriorityClass {name}: {e}"));
    }

    async fn create(&self, p: Pod) {
        let name = p.metadata.name.clone().unwrap_or_default();
        self.pods
            .create(&PostParams::default(), &p)
            .await
            .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
    }

    /// Waits until the pod is bound; its node.
    async fn bound(&self, name: &str) -> String {
        let deadline = tokio::time::Instant::now() + HANG;
        loop {
            let p = self.pods.get(name).await.expect("get pod");
            if let Some(n) = p.spec.and_then(|s| s.node_name) {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pod {name} was never bound"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The pod's PodScheduled=False reason and message, if it has one.
    async fn unschedulable_condition(&self, name: &str) -> Option<(String, String)> {
        let p = self.pods.get(name).await.expect("get pod");
        let c = p
            .status
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "PodScheduled"))
            .filter(|c| c.status == "False")?;
        assert_eq!(
            p.spec.and_then(|s| s.node_name),
            None,
            "{name} is bound yet unschedulable"
        );
        Some((c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
    }

    /// Waits until the pod is reported Unschedulable with `message` (an
    /// earlier attempt may have seen a node before its status was posted).
    async fn says_unschedulable(&self, name: &str, message: &str) {
        let deadline = tokio::time::Instant::now() + HANG;
        loop {
            let got = self.unschedulable_condition(name).await;
            if got
                .as_ref()
                .is_some_and(|(r, m)| r == "Unschedulable" && m == message)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pod {name}: PodScheduled=False Unschedulable {message:?} never came; last {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the pod no longer exists.
    async fn gone(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + HANG;
        while self.pods.get_opt(name).await.expect("get pod").is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pod {name} was never deleted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_pod_goes_to_the_node_with_room_for_its_requests() {
    let c = cluster(&[
        NodeSpec::new("small").resources("1", "8Gi"),
        NodeSpec::new("big").resources("4", "8Gi"),
    ])
    .await;
    c.create(pod("p", "2", json!({}), json!({}))).await;
    assert_eq!(c.bound("p").await, "big");
}

#[tokio::test]
async fn node_selector_and_required_node_affinity_pick_the_node() {
    let c = cluster(&[
        NodeSpec::new("ssd-a")
            .label("disk", "ssd")
            .label("topology.kubernetes.io/zone", "a"),
        NodeSpec::new("hdd-b")
            .label("disk", "hdd")
            .label("topology.kubernetes.io/zone", "b"),
        NodeSpec::new("ssd-c")
            .label("disk", "ssd")
            .label("topology.kubernetes.io/zone", "c"),
    ])
    .await;
    c.create(pod(
        "selected",
        "100m",
        json!({}),
        json!({"nodeSelector": {"disk": "hdd"}}),
    ))
    .await;
    let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "disk", "operator": "In", "values": ["ssd"]},
            {"key": "topology.kubernetes.io/zone", "operator": "NotIn", "values": ["a"]},
        ]}],
    }}}});
    c.create(pod("affine", "100m", json!({}), affinity)).await;
    assert_eq!(c.bound("selected").await, "hdd-b");
    assert_eq!(c.bound("affine").await, "ssd-c");
}

#[tokio::test]
async fn a_taint_keeps_off_pods_that_do_not_tolerate_it() {
    let c = cluster(&[
        NodeSpec::new("gpu")
            .label("pool", "gpu")
            .taint("dedicated", "gpu", "NoSchedule"),
        NodeSpec::new("plain"),
    ])
    .await;
    for i in 0..3 {
        c.create(pod(&format!("plain-{i}"), "100m", json!({}), json!({})))
            .await;
    }
    let tolerating = json!({
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    });
    c.create(pod("tolerant", "100m", json!({}), tolerating))
        .await;
    for i in 0..3 {
        assert_eq!(c.bound(&format!("plain-{i}")).await, "plain");
    }
    assert_eq!(c.bound("tolerant").await, "gpu");
}

fn anti_affinity_to_web() -> Value {
    json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"app": "web"}},
        "topologyKey": "kubernetes.io/hostname",
    }]}}})
}

#[tokio::test]
async fn required_anti_affinity_puts_each_replica_on_its_own_node() {
    let c = cluster(&[
        NodeSpec::new("n1"),
        NodeSpec::new("n2"),
        NodeSpec::new("n3"),
    ])
    .await;
    for i in 0..3 {
        c.create(pod(
            &format!("web-{i}"),
            "100m",
            json!({"app": "web"}),
            anti_affinity_to_web(),
        ))
        .await;
    }
    let mut nodes: Vec<String> = Vec::new();
    for i in 0..3 {
        nodes.push(c.bound(&format!("web-{i}")).await);
    }
    nodes.sort();
    assert_eq!(nodes, vec!["n1", "n2", "n3"]);
    c.create(pod(
        "web-3",
        "100m",
        json!({"app": "web"}),
        anti_affinity_to_web(),
    ))
    .await;
    c.says_unschedulable(
        "web-3",
        "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules. \
         preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
    )
    .await;
}

#[tokio::test]
async fn zone_spread_constraints_balance_pods_over_zones() {
    let zone = |n: &str, z: &str| NodeSpec::new(n).label("topology.kubernetes.io/zone", z);
    // Zone a has three nodes, b and c one each: without the constraint
    // least-allocated scoring would favour zone a.
    let c = cluster(&[
        zone("a1", "a"),
        zone("a2", "a"),
        zone("a3", "a"),
        zone("b1", "b"),
        zone("c1", "c"),
    ])
    .await;
    let spread = json!({"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}},
    }]});
    for i in 0..6 {
        c.create(pod(
            &format!("s-{i}"),
            "100m",
            json!({"app": "spread"}),
            spread.clone(),
        ))
        .await;
    }
    let mut per_zone: BTreeMap<char, usize> = BTreeMap::new();
    for i in 0..6 {
        let node = c.bound(&format!("s-{i}")).await;
        *per_zone
            .entry(node.chars().next().unwrap_or('?'))
            .or_default() += 1;
    }
    assert_eq!(per_zone, BTreeMap::from([('a', 2), ('b', 2), ('c', 2)]));
}

#[tokio::test]
async fn a_pod_that_fits_nowhere_says_why_node_by_node() {
    let c = cluster(&[
        NodeSpec::new("tainted").taint("k", "v", "NoSchedule"),
        NodeSpec::new("small-1").resources("1", "8Gi"),
        NodeSpec::new("small-2").resources("1", "8Gi"),
    ])
    .await;
    c.create(pod("big", "2", json!({}), json!({}))).await;
    c.says_unschedulable(
        "big",
        "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.",
    )
    .await;
}

#[tokio::test]
async fn an_unschedulable_pod_is_bound_once_a_node_with_room_joins() {
    let c = cluster(&[NodeSpec::new("small").resources("1", "8Gi")]).await;
    c.create(pod("big", "2", json!({}), json!({}))).await;
    let deadline = tokio::time::Instant::now() + HANG;
    while c.unschedulable_condition("big").await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "big never reported unschedulable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.nodes
        .add(&NodeSpec::new("large").resources("8", "8Gi"))
        .await;
    assert_eq!(c.bound("big").await, "large");
}

/// The victim is deleted gracefully; the fake kubelet finishes that, as a
/// real one would once its containers stop. The priorities come from the
/// pods' PriorityClasses (the API server's Priority admission), as in a
/// real cluster.
#[tokio::test]
async fn a_pod_of_a_higher_priority_class_preempts_one_of_a_lower_class() {
    let c = cluster(&[NodeSpec::new("n1").resources("2", "8Gi")]).await;
    let _kubelet = FakeKubelet::start(c.pods.clone().into_client(), &["n1"]);
    c.priority_class("low", 100).await;
    c.priority_class("high", 1000).await;
    c.create(pod(
        "low",
        "2",
        json!({}),
        json!({"priorityClassName": "low"}),
    ))
    .await;
    assert_eq!(c.bound("low").await, "n1");
    c.create(pod(
        "high",
        "2",
        json!({}),
        json!({"priorityClassName": "high"}),
    ))
    .await;
    c.gone("low").await;
    assert_eq!(c.bound("high").await, "n1");
    let high = c.pods.get("high").await.expect("get high");
    assert_eq!(high.spec.and_then(|s| s.priority), Some(1000));
}

#[tokio::test]
async fn an_equal_priority_pod_does_not_preempt() {
    let c = cluster(&[NodeSpec::new("n1").resources("2", "8Gi")]).await;
    c.priority_class("ten", 10).await;
    c.create(pod(
        "first",
        "2",
        json!({}),
        json!({"priorityClassName": "ten"}),
    ))
    .await;
    assert_eq!(c.bound("first").await, "n1");
    c.create(pod(
        "second",
        "2",
        json!({}),
        json!({"priorityClassName": "ten"}),
    ))
    .await;
    c.says_unschedulable(
        "second",
        "0/1 nodes are available: 1 Insufficient cpu. \
         preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
    )
    .await;
    assert!(c.pods.get_opt("first").await.expect("get first").is_some());
}

/// 200 pods created at once onto exactly enough cpu: every node ends at
/// its allocatable, none beyond (decisions made before earlier bindings
/// are seen must still count them), and one more pod fits nowhere.
#[tokio::test]
async fn no_node_is_overcommitted_by_200_pods_created_concurrently() {
    let names: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
    let specs: Vec<NodeSpec> = names
        .iter()
        .map(|n| NodeSpec::new(n).resources("2", "8Gi"))
        .collect();
    let c = cluster(&specs).await;
    stream::iter(0..200)
        .map(|i| {
            let pods = c.pods.clone();
            async move {
                pods.create(
                    &PostParams::default(),
                    &pod(&format!("p-{i}"), "50m", json!({"batch": "b"}), json!({})),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(50)
        .try_collect::<Vec<()>>()
        .await
        .expect("create 200 pods");
    let deadline = tokio::time::Instant::now() + HANG;
    let per_node = loop {
        let list = c
            .pods
            .list(&ListParams::default().labels("batch=b"))
            .await
            .expect("list pods");
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for p in &list.items {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                *per_node.entry(n).or_default() += 1;
            }
        }
        if per_node.values().sum::<usize>() == 200 {
            break per_node;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {per_node:?} of 200 pods bound"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // 40 pods of 50m = 2000m, each node's whole allocatable.
    let expected: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 40)).collect();
    assert_eq!(per_node, expected);
    c.create(pod("one-more", "50m", json!({}), json!({}))).await;
    c.says_unschedulable(
        "one-more",
        "0/5 nodes are available: 5 Insufficient cpu. \
         preemption: 0/5 nodes are available: 5 No preemption victims found for incoming pod.",
    )
    .await;
}
