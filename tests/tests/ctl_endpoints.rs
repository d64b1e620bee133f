//! The endpoint, node IPAM and ServiceAccount controllers of the real
//! `sluice-server` (in-process controller manager). Pods are created
//! directly on fake Nodes and their status written through `pods/status`
//! as a kubelet would, so each test decides readiness itself. No root
//! needed.
use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sluice_tests::{
    api_server::ApiServer,
    cluster::{FakeNodes, NodeSpec},
    unique,
};

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(90);
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Polls `f` until it returns Some, failing with `what` and the last value
/// seen at the hang ceiling.
async fn wait<T, S: std::fmt::Debug>(what: &str, mut f: impl AsyncFnMut() -> Result<T, S>) -> T {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(s) => s,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}; last seen: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn namespace(client: &Client) -> String {
    let name = unique("ep");
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("Namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

async fn delete_namespace(client: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

/// A Service selecting `app=<app>`, port 80 to the Pods' port named http.
async fn service(client: &Client, ns: &str, name: &str, app: &str) -> Service {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"team": "t1"}},
        "spec": {
            "selector": {"app": app},
            "ports": [{"name": "web", "port": 80, "targetPort": "http"}],
        },
    }))
    .expect("Service");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service")
}

/// A Pod on `node` with port 8080 named http, Running with `ip` and Ready
/// as told (written through pods/status, as a kubelet does).
async fn pod(
    client: &Client,
    ns: &str,
    name: &str,
    app: &str,
    node: &str,
    ip: &str,
    ready: bool,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "localhost/busybox:1.35",
                            "ports": [{"name": "http", "containerPort": 8080}]}],
        },
    }))
    .expect("Pod");
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create pod");
    set_status(&pods, name, ip, ready).await
}

async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) -> Pod {
    let now = k8s_openapi::chrono::Utc::now().to_rfc3339();
    let truth = if ready { "True" } else { "False" };
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "Ready", "status": truth, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": truth, "lastTransitionTime": now},
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("pod status")
}

async fn slices(client: &Client, ns: &str, service: &str) -> Vec<EndpointSlice> {
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("list slices")
        .items
}

fn managed(slices: Vec<EndpointSlice>) -> Vec<EndpointSlice> {
    slices
        .into_iter()
        .filter(|s| s.labels().get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER))
        .collect()
}

/// (address, ready, serving, terminating) of every endpoint of the
/// Service's managed slices, sorted.
fn endpoint_states(slices: &[EndpointSlice]) -> Vec<(String, bool, bool, bool)> {
    let mut v: Vec<_> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                e.addresses.join(","),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
            )
        })
        .collect();
    v.sort();
    v
}

/// (ready IPs, not-ready IPs) of the Endpoints object.
fn endpoints_ips(e: &Endpoints) -> (Vec<String>, Vec<String>) {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for s in e.subsets.iter().flatten() {
        ready.extend(s.addresses.iter().flatten().map(|a| a.ip.clone()));
        not_ready.extend(s.not_ready_addresses.iter().flatten().map(|a| a.ip.clone()));
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

async fn endpoints_with(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    want: (Vec<&str>, Vec<&str>),
) -> Endpoints {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let want = (
        want.0.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        want.1.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    wait(what, async || {
        match api.get_opt(name).await.expect("get endpoints") {
            Some(e) if endpoints_ips(&e) == want => Ok(e),
            other => Err(other.map(|e| endpoints_ips(&e))),
        }
    })
    .await
}

async fn slices_with(
    client: &Client,
    ns: &str,
    service: &str,
    what: &str,
    want: &[(&str, bool, bool, bool)],
) -> Vec<EndpointSlice> {
    let want: Vec<(String, bool, bool, bool)> = want
        .iter()
        .map(|(a, r, s, t)| (a.to_string(), *r, *s, *t))
        .collect();
    wait(what, async || {
        let got = managed(slices(client, ns, service).await);
        if endpoint_states(&got) == want {
            Ok(got)
        } else {
            Err(endpoint_states(&got))
        }
    })
    .await
}

async fn cluster_with_node(args: &[&str]) -> (ApiServer, Client, FakeNodes) {
    let s = ApiServer::start_with(args);
    let client = s.client().await;
    let nodes = FakeNodes::new(client.clone());
    nodes
        .add(&NodeSpec::new("node-a").label(ZONE, "zone-a"))
        .await;
    (s, client, nodes)
}

#[tokio::test]
async fn ready_pods_of_a_service_become_an_endpointslice_and_endpoints() {
    let (_s, client, _nodes) = cluster_with_node(&[]).await;
    let ns = namespace(&client).await;
    let svc = service(&client, &ns, "web", "web").await;
    pod(&client, &ns, "web-1", "web", "node-a", "10.244.0.11", true).await;
    pod(&client, &ns, "web-2", "web", "node-a", "10.244.0.12", true).await;
    pod(&client, &ns, "other", "db", "node-a", "10.244.0.13", true).await;

    let got = slices_with(
        &client,
        &ns,
        "web",
        "an EndpointSlice with both ready pods",
        &[
            ("10.244.0.11", true, true, false),
            ("10.244.0.12", true, true, false),
        ],
    )
    .await;
    assert_eq!(got.len(), 1);
    let slice = &got[0];
    assert!(slice.name_any().starts_with("web-"), "{}", slice.name_any());
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(
        slice.labels().get("team").map(String::as_str),
        Some("t1"),
        "the Service's labels"
    );
    let owner = &slice.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );
    assert_eq!(Some(&owner.uid), svc.metadata.uid.as_ref());
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    let port = &slice.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("web"), Some(8080), Some("TCP")),
        "the named targetPort resolved in the Pod"
    );
    let ep = &slice.endpoints[0];
    assert_eq!(ep.node_name.as_deref(), Some("node-a"));
    assert_eq!(ep.zone.as_deref(), Some("zone-a"));
    let r = ep.target_ref.as_ref().expect("targetRef");
    assert_eq!(
        (r.kind.as_deref(), r.name.as_deref()),
        (Some("Pod"), Some("web-1"))
    );

    let e = endpoints_with(
        &client,
        &ns,
        "web",
        "Endpoints listing both ready pods",
        (vec!["10.244.0.11", "10.244.0.12"], vec![]),
    )
    .await;
    let p = &e.subsets.as_ref().expect("subsets")[0]
        .ports
        .as_ref()
        .expect("ports")[0];
    assert_eq!((p.name.as_deref(), p.port), (Some("web"), 8080));
    assert_eq!(
        e.labels()
            .get("endpoints.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpoint-controller")
    );
    // kubectl describe reads the same thing.
    let described = _s.kubectl_ok(&["describe", "service", "web", "-n", &ns]);
    assert!(
        described.contains("10.244.0.11:8080") && described.contains("10.244.0.12:8080"),
        "{described}"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_pod_turning_not_ready_then_terminating_updates_the_slice_and_the_endpoints() {
    let (_s, client, _nodes) = cluster_with_node(&[]).await;
    let ns = namespace(&client).await;
    service(&client, &ns, "web", "web").await;
    pod(&client, &ns, "web-1", "web", "node-a", "10.244.0.11", true).await;
    pod(&client, &ns, "web-2", "web", "node-a", "10.244.0.12", true).await;
    slices_with(
        &client,
        &ns,
        "web",
        "both ready",
        &[
            ("10.244.0.11", true, true, false),
            ("10.244.0.12", true, true, false),
        ],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let before = managed(slices(&client, &ns, "web").await);

    set_status(&pods, "web-2", "10.244.0.12", false).await;
    let after = slices_with(
        &client,
        &ns,
        "web",
        "web-2 not ready nor serving",
        &[
            ("10.244.0.11", true, true, false),
            ("10.244.0.12", false, false, false),
        ],
    )
    .await;
    assert_eq!(
        after[0].name_any(),
        before[0].name_any(),
        "updated in place, not replaced"
    );
    endpoints_with(
        &client,
        &ns,
        "web",
        "web-2 among the not-ready addresses",
        (vec!["10.244.0.11"], vec!["10.244.0.12"]),
    )
    .await;

    // Ready again, then deleted while a finalizer holds it: terminating.
    set_status(&pods, "web-2", "10.244.0.12", true).await;
    let hold = json!({"metadata": {"finalizers": ["test.sluice.dev/hold"]}});
    pods.patch("web-2", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .expect("add finalizer");
    slices_with(
        &client,
        &ns,
        "web",
        "web-2 ready again",
        &[
            ("10.244.0.11", true, true, false),
            ("10.244.0.12", true, true, false),
        ],
    )
    .await;
    pods.delete("web-2", &DeleteParams::default())
        .await
        .expect("delete pod");
    slices_with(
        &client,
        &ns,
        "web",
        "web-2 terminating: serving, not ready",
        &[
            ("10.244.0.11", true, true, false),
            ("10.244.0.12", false, true, true),
        ],
    )
    .await;
    endpoints_with(
        &client,
        &ns,
        "web",
        "Endpoints without the terminating pod",
        (vec!["10.244.0.11"], vec![]),
    )
    .await;

    // Gone for good: no finalizer left, and the deletion confirmed at once,
    // as the kubelet does once the containers are gone.
    let release = json!({"metadata": {"finalizers": null}});
    pods.patch("web-2", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("drop finalizer");
    let _ = pods
        .delete("web-2", &DeleteParams::default().grace_period(0))
        .await;
    slices_with(
        &client,
        &ns,
        "web",
        "web-2 gone",
        &[("10.244.0.11", true, true, false)],
    )
    .await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn two_hundred_fifty_pods_make_three_slices_of_at_most_100() {
    let (_s, client, _nodes) = cluster_with_node(&[]).await;
    let ns = namespace(&client).await;
    // The Pods first, so that the controller mostly sees them at once: how
    // Pods arriving a few at a time get packed depends on when each sync
    // runs (as upstream's does); the bound per slice never does.
    stream::iter(0..250u32)
        .map(|i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let ip = format!("10.244.{}.{}", i / 200, i % 200 + 1);
                pod(
                    &client,
                    &ns,
                    &format!("big-{i}"),
                    "big",
                    "node-a",
                    &ip,
                    true,
                )
                .await;
                Ok::<_, ()>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("pods");
    service(&client, &ns, "big", "big").await;
    let got = wait("250 endpoints in the slices", async || {
        let got = managed(slices(&client, &ns, "big").await);
        let n: usize = got.iter().map(|s| s.endpoints.len()).sum();
        if n == 250 { Ok(got) } else { Err(n) }
    })
    .await;
    let sizes: Vec<usize> = got.iter().map(|s| s.endpoints.len()).collect();
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 100), "{sizes:?}");
    let addresses: BTreeSet<String> = got
        .iter()
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
        .collect();
    assert_eq!(addresses.len(), 250, "each pod once");
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn slices_and_endpoints_written_by_a_user_are_never_touched() {
    let (_s, client, _nodes) = cluster_with_node(&[]).await;
    let ns = namespace(&client).await;
    // A Service without selector, with hand-written endpoints of both kinds.
    let manual: Service = serde_json::from_value(json!({
        "metadata": {"name": "manual"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .expect("Service");
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &manual)
        .await
        .expect("create service");
    let user_endpoints: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "manual"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 80}]}],
    }))
    .expect("Endpoints");
    let user_endpoints = Api::<Endpoints>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &user_endpoints)
        .await
        .expect("create endpoints");
    let slices_api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let user_slice = |name: &str, service: &str| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/service-name": service, MANAGED_BY: "someone-else"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.10"]}],
            "ports": [{"port": 80}],
        }))
        .expect("EndpointSlice")
    };
    let manual_slice = slices_api
        .create(&PostParams::default(), &user_slice("manual-1", "manual"))
        .await
        .expect("create slice");
    // And a user slice beside the controller's for a selector Service.
    let extra = slices_api
        .create(&PostParams::default(), &user_slice("web-extra", "web"))
        .await
        .expect("create slice");

    service(&client, &ns, "web", "web").await;
    pod(&client, &ns, "web-1", "web", "node-a", "10.244.0.11", true).await;
    slices_with(
        &client,
        &ns,
        "web",
        "the controller's slice",
        &[("10.244.0.11", true, true, false)],
    )
    .await;
    endpoints_with(
        &client,
        &ns,
        "web",
        "the controller's Endpoints",
        (vec!["10.244.0.11"], vec![]),
    )
    .await;
    // Another change the controllers act on, after the user objects exist.
    set_status(
        &Api::namespaced(client.clone(), &ns),
        "web-1",
        "10.244.0.11",
        false,
    )
    .await;
    slices_with(
        &client,
        &ns,
        "web",
        "web-1 not ready",
        &[("10.244.0.11", false, false, false)],
    )
    .await;
    endpoints_with(
        &client,
        &ns,
        "web",
        "web-1 not ready",
        (vec![], vec!["10.244.0.11"]),
    )
    .await;

    let now = slices_api.get("web-extra").await.expect("user slice");
    assert_eq!(
        now.metadata.resource_version, extra.metadata.resource_version,
        "{now:?}"
    );
    let now = slices_api.get("manual-1").await.expect("user slice");
    assert_eq!(
        now.metadata.resource_version,
        manual_slice.metadata.resource_version
    );
    let now = Api::<Endpoints>::namespaced(client.clone(), &ns)
        .get("manual")
        .await
        .expect("user endpoints");
    assert_eq!(
        now.metadata.resource_version,
        user_endpoints.metadata.resource_version
    );
    assert!(
        managed(slices(&client, &ns, "manual").await).is_empty(),
        "no slice for a Service without selector"
    );
    delete_namespace(&client, &ns).await;
}

async fn pod_cidr(nodes: &Api<Node>, name: &str) -> String {
    wait(&format!("a podCIDR on {name}"), async || {
        let n = nodes.get(name).await.expect("get node");
        let spec = n.spec.clone().unwrap_or_default();
        match (spec.pod_cidr, spec.pod_cidrs) {
            (Some(c), Some(cs)) if cs == [c.clone()] => Ok(c),
            other => Err(other),
        }
    })
    .await
}

#[tokio::test]
async fn nodes_get_distinct_blocks_and_a_deleted_node_s_block_is_reused() {
    let s = ApiServer::start_with(&[]);
    let client = s.client().await;
    let fake = FakeNodes::new(client.clone());
    let specs: Vec<NodeSpec> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| NodeSpec::new(n))
        .collect();
    // Registered at once, as kubelets starting together do.
    futures::future::join_all(specs.iter().map(|s| fake.add(s))).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut got = Vec::new();
    for n in ["n1", "n2", "n3"] {
        got.push(pod_cidr(&nodes, n).await);
    }
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(
        distinct.into_iter().cloned().collect::<Vec<_>>(),
        ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"],
        "the three lowest /24s of --cluster-cidr, one each: {got:?}"
    );
    let freed = got[1].clone();
    fake.stop_renewing("n2");
    nodes
        .delete("n2", &DeleteParams::default())
        .await
        .expect("delete node");
    wait("n2 gone", async || {
        match nodes.get_opt("n2").await.expect("get") {
            None => Ok(()),
            Some(n) => Err(n.metadata.deletion_timestamp),
        }
    })
    .await;
    fake.add(&NodeSpec::new("n4")).await;
    assert_eq!(
        pod_cidr(&nodes, "n4").await,
        freed,
        "the freed block is the lowest free one"
    );
}

#[tokio::test]
async fn a_full_cluster_cidr_is_an_event_and_a_condition_and_the_node_is_served_once_a_block_frees()
{
    // Two /24 blocks only.
    let s = ApiServer::start_with(&[
        "--cluster-cidr",
        "10.99.0.0/23",
        "--node-cidr-mask-size",
        "24",
    ]);
    let client = s.client().await;
    let fake = FakeNodes::new(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    for n in ["n1", "n2"] {
        fake.add(&NodeSpec::new(n)).await;
        pod_cidr(&nodes, n).await;
    }
    fake.add(&NodeSpec::new("n3")).await;
    let events: Api<Event> = Api::all(client.clone());
    let ev = wait("a CIDRNotAvailable event about n3", async || {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("n3")
            })
            .ok_or("none yet")
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(
        ev.note
            .as_deref()
            .unwrap_or_default()
            .contains("10.99.0.0/23"),
        "{:?}",
        ev.note
    );
    let condition = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "NetworkUnavailable")
            .map(|c| (c.status, c.reason.unwrap_or_default()))
    };
    wait("n3 NetworkUnavailable=True NoCIDRAvailable", async || {
        let n = nodes.get("n3").await.expect("get node");
        match condition(&n) {
            Some((s, r)) if s == "True" && r == "NoCIDRAvailable" => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let n3 = nodes.get("n3").await.expect("get node");
    assert_eq!(n3.spec.and_then(|s| s.pod_cidr), None);

    // The server (and its controllers) carried on: freeing a block serves n3.
    let freed = pod_cidr(&nodes, "n1").await;
    fake.stop_renewing("n1");
    nodes
        .delete("n1", &DeleteParams::default())
        .await
        .expect("delete node");
    assert_eq!(pod_cidr(&nodes, "n3").await, freed);
    wait("n3's condition lifted", async || {
        let n = nodes.get("n3").await.expect("get node");
        match condition(&n) {
            Some((s, _)) if s == "False" => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[tokio::test]
async fn every_namespace_gets_a_default_service_account_back_when_deleted() {
    let s = ApiServer::start_with(&[]);
    let client = s.client().await;
    let ns = namespace(&client).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let first = wait("a default ServiceAccount", async || {
        sas.get_opt("default").await.expect("get sa").ok_or("none")
    })
    .await;
    sas.delete("default", &DeleteParams::default())
        .await
        .expect("delete sa");
    let again = wait("the default ServiceAccount recreated", async || {
        match sas.get_opt("default").await.expect("get sa") {
            Some(sa) if sa.uid() != first.uid() => Ok(sa),
            other => Err(other.and_then(|s| s.uid())),
        }
    })
    .await;
    assert_eq!(again.name_any(), "default");
    for builtin in ["default", "kube-system"] {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), builtin);
        wait(
            &format!("default ServiceAccount in {builtin}"),
            async || sas.get_opt("default").await.expect("get sa").ok_or("none"),
        )
        .await;
    }
    delete_namespace(&client, &ns).await;
}
