//! Node IPAM: every Node gets its own `spec.podCIDR` block of the
//! server's `--cluster-cidr`, even when Nodes register at once; a full
//! range is reported on the Node (condition and Event) and served as soon
//! as a deleted Node frees a block. Real sluice-server with its in-process
//! controllers; fake Nodes. No root needed.
use std::{collections::HashSet, time::Duration};

use k8s_openapi::api::core::v1::{Event, Node};
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use sluice_tests::{
    api_server::ApiServer,
    cluster::{FakeNodes, NodeSpec},
};

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(90);

fn pod_cidr(n: &Node) -> Option<String> {
    n.spec.as_ref()?.pod_cidr.clone().filter(|c| !c.is_empty())
}

/// Polls `probe` until it gives `Some`, under [`HANG`].
async fn wait<T, Fut>(what: &str, mut probe: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cidr_of(nodes: &Api<Node>, name: &str) -> String {
    wait(&format!("a podCIDR on {name}"), || async {
        pod_cidr(&nodes.get(name).await.expect("get node"))
    })
    .await
}

#[tokio::test]
async fn nodes_registering_at_once_get_distinct_blocks_of_the_cluster_cidr() {
    let s = ApiServer::start_with(&[
        "--disable",
        "scheduler",
        "--cluster-cidr",
        "10.77.0.0/16",
        "--node-cidr-mask-size",
        "24",
    ]);
    let client = s.client().await;
    let fake = FakeNodes::new(client.clone());
    let names: Vec<String> = (0..8).map(|i| format!("ipam-{i}")).collect();
    let specs: Vec<NodeSpec> = names.iter().map(|n| NodeSpec::new(n)).collect();
    futures::future::join_all(specs.iter().map(|spec| fake.add(spec))).await;
    let nodes: Api<Node> = Api::all(client);
    let mut seen = HashSet::new();
    for name in &names {
        let cidr = cidr_of(&nodes, name).await;
        let net: ipnet::Ipv4Net = cidr.parse().expect("a CIDR");
        assert_eq!(net.prefix_len(), 24, "{name}: {cidr}");
        assert!(
            "10.77.0.0/16"
                .parse::<ipnet::Ipv4Net>()
                .expect("cidr")
                .contains(&net),
            "{name}: {cidr} is outside the cluster CIDR"
        );
        let node = nodes.get(name).await.expect("node");
        assert_eq!(
            node.spec.and_then(|s| s.pod_cidrs),
            Some(vec![cidr.clone()]),
            "{name}: podCIDRs"
        );
        assert!(seen.insert(cidr.clone()), "{cidr} handed out twice");
    }
}

fn network_unavailable(n: &Node) -> Option<(String, String)> {
    let c = n
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "NetworkUnavailable")?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test]
async fn a_full_cluster_cidr_is_reported_on_the_node_and_served_once_a_block_frees() {
    // Room for exactly two /24 blocks.
    let s = ApiServer::start_with(&[
        "--disable",
        "scheduler",
        "--cluster-cidr",
        "10.78.0.0/23",
        "--node-cidr-mask-size",
        "24",
    ]);
    let client = s.client().await;
    let fake = FakeNodes::new(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    fake.add(&NodeSpec::new("first")).await;
    fake.add(&NodeSpec::new("second")).await;
    let freed = cidr_of(&nodes, "first").await;
    cidr_of(&nodes, "second").await;
    fake.add(&NodeSpec::new("third")).await;
    let starved = wait("third reported NetworkUnavailable", || async {
        let n = nodes.get("third").await.expect("third");
        (network_unavailable(&n) == Some(("True".to_string(), "NoCIDRAvailable".to_string())))
            .then_some(n)
    })
    .await;
    assert_eq!(pod_cidr(&starved), None);
    let events: Api<Event> = Api::all(client.clone());
    wait("a CIDRNotAvailable event on third", || async {
        events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some("third")
                    && e.reason.as_deref() == Some("CIDRNotAvailable")
            })
    })
    .await;
    // The server keeps serving the other nodes meanwhile: nothing crashed.
    fake.stop_renewing("first");
    nodes
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete first");
    assert_eq!(cidr_of(&nodes, "third").await, freed);
    let third = nodes.get("third").await.expect("third");
    assert_eq!(
        network_unavailable(&third).map(|(s, _)| s).as_deref(),
        Some("False")
    );
}
