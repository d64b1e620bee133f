//! The node lifecycle controller: a Node whose Lease stops being renewed
//! becomes NotReady (conditions Unknown) and gets the unreachable taints;
//! its pods are evicted once their tolerationSeconds run out; a Node that
//! comes back loses the taints. Fake nodes and a fake kubelet play the
//! machines (a server with a 4 s grace period, Leases renewed every
//! second). No root needed.
use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, Pod},
};
use kube::{
    Api, ResourceExt as _,
    api::{ListParams, PostParams},
};
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

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

/// Active (not being deleted), bound, Ready pods of `app=web` by node,
/// once there are `n` of them.
async fn ready_web_pods(
    pods: &Api<Pod>,
    n: usize,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("list pods");
        let active: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let nodes: Vec<String> = active.iter().filter_map(|p| node_of(p)).collect();
        if active.len() == n
            && nodes.len() == n
            && active.iter().all(|p| is_ready(p))
            && nodes.iter().all(|x| ok(x))
        {
            return nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {:?}",
            active
                .iter()
                .map(|p| (p.name_any(), node_of(p), is_ready(p)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_failed_nodes_deployment_pods_are_recreated_on_the_healthy_nodes() {
    let s = ApiServer::start_with(&["--node-monitor-grace-period", "4s"]);
    let client = s.client().await;
    let fake = FakeNodes::new(client.clone()).renewing_every(Duration::from_secs(1));
    let names = ["w1", "w2", "w3"];
    for n in names {
        fake.add(&NodeSpec::new(n)).await;
    }
    let _kubelet = FakeKubelet::start(client.clone(), &names);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "c", "image": "localhost/busybox:1.35"}],
                    "tolerations": [{
                        "key": "node.kubernetes.io/unreachable", "operator": "Exists",
                        "effect": "NoExecute", "tolerationSeconds": 2,
                    }],
                },
            },
        },
    }))
    .expect("Deployment");
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let placed = ready_web_pods(&pods, 4, "had 4 ready pods", |_| true).await;
    let victim = placed[0].clone();
    fake.stop_renewing(&victim);
    let after = ready_web_pods(&pods, 4, "had 4 ready pods off the failed node", |n| {
        n != victim
    })
    .await;
    assert!(
        after
            .iter()
            .all(|n| names.contains(&n.as_str()) && *n != victim),
        "{after:?}"
    );
}
