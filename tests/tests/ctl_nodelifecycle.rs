//! The node lifecycle controller: a Node whose Lease stops being renewed
//! becomes NotReady (conditions Unknown) and gets the unreachable taints;
//! its pods are evicted once their tolerationSeconds run out; a Node that
//! comes back loses the taints. Fake nodes and a fake kubelet play the
//! machines (a server with a 4 s grace period, Leases renewed every
//! second). No root needed.
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, api::PostParams};
use serde_json::json;
use sluice_tests::{
    api_server::ApiServer,
    cluster::{FakeKubelet, FakeNodes, NodeSpec},
};

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(90);

fn pod_on(name: &str, node: &str, toleration_seconds: i64) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "localhost/busybox:1.35"}],
            "tolerations": [{
                "key": "node.kubernetes.io/unreachable", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": toleration_seconds,
            }],
        },
    }))
    .expect("Pod")
}

fn taint_keys(n: &Node) -> Vec<(String, String)> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

fn ready_status(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

async fn wait_node(
    nodes: &Api<Node>,
    name: &str,
    what: &str,
    pred: impl Fn(&Node) -> bool,
) -> Node {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let n = nodes.get(name).await.expect("get node");
        if pred(&n) {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {name} never {what}: taints {:?}, Ready {:?}",
            taint_keys(&n),
            ready_status(&n)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_silent_node_is_tainted_unreachable_and_its_pods_evicted_after_their_toleration() {
    let s = ApiServer::start_with(&["--node-monitor-grace-period", "4s"]);
    let client = s.client().await;
    let fake = FakeNodes::new(client.clone()).renewing_every(Duration::from_secs(1));
    fake.add(&NodeSpec::new("n1")).await;
    fake.add(&NodeSpec::new("n2")).await;
    let _kubelet = FakeKubelet::start(client.clone(), &["n1", "n2"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node) in [("on-n1", "n1"), ("on-n2", "n2")] {
        pods.create(&PostParams::default(), &pod_on(name, node, 2))
            .await
            .expect("create pod");
    }
    let nodes: Api<Node> = Api::all(client.clone());
    fake.stop_renewing("n1");
    let n1 = wait_node(&nodes, "n1", "became unreachable", |n| {
        taint_keys(n).contains(&("node.kubernetes.io/unreachable".into(), "NoExecute".into()))
    })
    .await;
    assert!(
        taint_keys(&n1).contains(&("node.kubernetes.io/unreachable".into(), "NoSchedule".into())),
        "{:?}",
        taint_keys(&n1)
    );
    wait_node(&nodes, "n1", "had Ready=Unknown", |n| {
        ready_status(n).as_deref() == Some("Unknown")
    })
    .await;
    // The pod on the silent node goes once its 2 s toleration is over.
    let deadline = tokio::time::Instant::now() + HANG;
    while pods.get_opt("on-n1").await.expect("get pod").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "on-n1 was never evicted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The healthy node kept its pod and has no lifecycle taints: the
    // controller was judging every node during all of that.
    assert!(
        pods.get_opt("on-n2").await.expect("get pod").is_some(),
        "on-n2 was evicted"
    );
    let n2 = nodes.get("n2").await.expect("n2");
    assert!(taint_keys(&n2).is_empty(), "n2: {:?}", taint_keys(&n2));
}

#[tokio::test]
async fn a_node_that_renews_again_loses_the_unreachable_taints() {
    let s = ApiServer::start_with(&["--node-monitor-grace-period", "4s"]);
    let client = s.client().await;
    let fake = FakeNodes::new(client.clone()).renewing_every(Duration::from_secs(1));
    let spec = NodeSpec::new("n1");
    fake.add(&spec).await;
    let nodes: Api<Node> = Api::all(client.clone());
    fake.stop_renewing("n1");
    wait_node(&nodes, "n1", "became unreachable", |n| {
        !taint_keys(n).is_empty()
    })
    .await;
    // The kubelet is back: it renews and posts Ready again.
    fake.resume(&spec).await;
    wait_node(&nodes, "n1", "lost its taints", |n| {
        taint_keys(n).is_empty() && ready_status(n).as_deref() == Some("True")
    })
    .await;
}
