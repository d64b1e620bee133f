//! Service policies from the spec: `internalTrafficPolicy: Local`,
//! ClientIP session affinity (its timeout, and on the per-packet path),
//! and the `sluice_lb_rejected_objects` metric for invalid objects. The
//! standalone agent (`--manifests DIR`) programs them.
use std::{net::Ipv4Addr, time::Duration};

use sluice_tests::{
    poll::wait_until,
    require_root,
    topology::{LbTopology, NODE_NAME, SvcSpec, http_service, tally},
};

fn in_sync(l: &str) -> bool {
    l.contains("LB maps in sync")
}

/// An `http` (TCP 80) Service over every backend pod of `t`, pod `i`
/// placed on node `node_of(i)`.
fn service(
    t: &LbTopology,
    name: &str,
    cluster_ip: &str,
    extra_spec: &str,
    node_of: impl Fn(usize) -> &'static str,
) -> String {
    let eps: Vec<(Ipv4Addr, bool, bool, bool, &str)> = (0..t.backends.len())
        .map(|i| (t.backends[i].ip, true, true, false, node_of(i)))
        .collect();
    SvcSpec {
        name,
        cluster_ip,
        ports: &[("http", "TCP", 80)],
        extra_spec,
        endpoints: &eps,
        with_slice: true,
    }
    .yaml()
}

const ITP_LOCAL: &str = "  internalTrafficPolicy: Local\n";

#[test]
fn internal_traffic_policy_local_sends_in_cluster_traffic_only_to_this_nodes_endpoints() {
    if !require_root(
        "internal_traffic_policy_local_sends_in_cluster_traffic_only_to_this_nodes_endpoints",
    ) {
        return;
    }
    let mut t = LbTopology::new(3);
    // Only pod-1 runs on this node.
    let node_of = |i| if i == 1 { NODE_NAME } else { "node-b" };
    t.write_manifest(
        "web.yaml",
        &service(&t, "web", "10.96.0.90", ITP_LOCAL, node_of),
    );
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(20), in_sync);
    let vip = "10.96.0.90:80";
    let seen = tally(&t.client(&["tcp", vip, "30"]), vip);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["pod-1"], "{seen:?}");
}

#[test]
fn internal_traffic_policy_local_without_a_local_endpoint_refuses_connections() {
    if !require_root("internal_traffic_policy_local_without_a_local_endpoint_refuses_connections") {
        return;
    }
    let mut t = LbTopology::new(2);
    // Every endpoint on another node; the same endpoints behind a Cluster
    // service prove they answer through the same path.
    let remote = |_| "node-b";
    let local = service(&t, "local", "10.96.0.91", ITP_LOCAL, remote);
    let cluster = service(&t, "cluster", "10.96.0.92", "", remote);
    t.write_manifest("svcs.yaml", &format!("{local}---\n{cluster}"));
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(20), in_sync);
    let control = "10.96.0.92:80";
    let seen = tally(&t.client(&["tcp", control, "10"]), control);
    assert_eq!(seen.values().sum::<u64>(), 10, "{seen:?}");
    assert_eq!(
        t.client(&["tcp", "10.96.0.91:80", "3"]),
        vec!["REFUSED"; 3],
        "a Local service without a local endpoint"
    );
}

const AFFINITY_TIMEOUT_S: u64 = 5;

#[test]
fn session_affinity_ends_after_its_timeout() {
    if !require_root("session_affinity_ends_after_its_timeout") {
        return;
    }
    let mut t = LbTopology::new(3);
    let extra = format!(
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {AFFINITY_TIMEOUT_S}\n"
    );
    t.write_manifest(
        "web.yaml",
        &service(&t, "web", "10.96.0.93", &extra, |_| NODE_NAME),
    );
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(20), in_sync);
    let vip = "10.96.0.93:80";
    // Back to back (each use refreshes the entry), the client stays.
    let seen = tally(&t.client(&["tcp", vip, "30"]), vip);
    assert_eq!(seen.len(), 1, "affinity within the timeout: {seen:?}");
    let mut last = seen.keys().next().expect("one backend").clone();
    // Idle past the timeout, a connection is balanced afresh: 2 in 3 land
    // on another backend. 20 tries all landing on the last one (a false
    // failure) has probability (1/3)^20, about 3e-10.
    let moved = (0..20).find_map(|_| {
        std::thread::sleep(Duration::from_secs(AFFINITY_TIMEOUT_S + 1));
        let now = tally(&t.client(&["tcp", vip, "1"]), vip);
        let now = now.keys().next().expect("one reply").clone();
        if now != last {
            return Some(now);
        }
        last = now;
        None
    });
    assert!(
        moved.is_some(),
        "20 connections, each after the affinity timeout, all went to {last}"
    );
}

#[test]
fn session_affinity_holds_on_the_tc_path() {
    if !require_root("session_affinity_holds_on_the_tc_path") {
        return;
    }
    let mut t = LbTopology::new(3);
    let sticky = service(
        &t,
        "sticky",
        "10.96.0.94",
        "  sessionAffinity: ClientIP\n",
        |_| NODE_NAME,
    );
    let plain = http_service(&t, "plain", "10.96.0.95", &[0, 1, 2]);
    t.write_manifest("svcs.yaml", &format!("{sticky}---\n{plain}"));
    let pod_if = t.client.host_if.clone();
    t.start_agent(&["--pod-iface", &pod_if]);
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(20), in_sync);
    // Outside the node's cgroup, only the tc path balances the client. The
    // same client's connections spread without affinity (each new source
    // port hashes to a Maglev slot of its own) ...
    let vip = "10.96.0.95:80";
    let spread = tally(&t.client_outside_cgroup(&["tcp", vip, "30"]), vip);
    assert!(spread.len() > 1, "without affinity: {spread:?}");
    // ... and stay on one backend with it.
    let vip = "10.96.0.94:80";
    let stuck = tally(&t.client_outside_cgroup(&["tcp", vip, "30"]), vip);
    assert_eq!(stuck.len(), 1, "with affinity: {stuck:?}");
    let ct = t.ct_list_json();
    let fwd = ct
        .as_array()
        .expect("bpf ct list: an array")
        .iter()
        .filter(|r| r["direction"] == "fwd" && r["dst"] == vip)
        .count();
    assert_eq!(fwd, 30, "the connections took the tc path");
}

/// `sluice_lb_rejected_objects` as the agent reports it.
fn rejected(t: &LbTopology) -> Option<u64> {
    t.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("sluice_lb_rejected_objects "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn rejected_objects_metric_counts_the_invalid_objects() {
    if !require_root("rejected_objects_metric_counts_the_invalid_objects") {
        return;
    }
    let mut t = LbTopology::new(1);
    let good = http_service(&t, "web", "10.96.0.96", &[0]);
    // Three invalid objects next to a valid Service: two Services (a port
    // out of range, a ClusterIP that is no address) and an EndpointSlice
    // of a Service that does not exist.
    let bad_service = |name: &str, cluster_ip: &str, port: u16| {
        SvcSpec {
            name,
            cluster_ip,
            ports: &[("http", "TCP", port)],
            extra_spec: "",
            endpoints: &[],
            with_slice: false,
        }
        .yaml()
        .replace("port: 1\n", "port: 70000\n")
    };
    let bad_port = bad_service("bigport", "10.96.0.97", 1);
    let bad_ip = bad_service("badip", "10.96.0.999", 80);
    let orphan = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: lost\n  namespace: default\n  labels: {kubernetes.io/service-name: ghost}\naddressType: IPv4\nendpoints: []\n";
    t.write_manifest("good.yaml", &good);
    t.write_manifest("bad.yaml", &format!("{bad_port}---\n{bad_ip}---\n{orphan}"));
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(20), in_sync);
    let vip = "10.96.0.96:80";
    assert_eq!(tally(&t.client(&["tcp", vip, "3"]), vip).len(), 1);
    wait_until(
        "3 rejected objects",
        Duration::from_secs(30),
        || (rejected(&t) == Some(3)).then_some(()),
        || {
            format!(
                "{:?}\n{}",
                rejected(&t),
                t.agent.as_ref().map(|a| a.output()).unwrap_or_default()
            )
        },
    );
    // Fixed, they are programmed and no longer counted.
    t.write_manifest("bad.yaml", &http_service(&t, "fixed", "10.96.0.97", &[0]));
    wait_until(
        "no rejected objects",
        Duration::from_secs(30),
        || (rejected(&t) == Some(0)).then_some(()),
        || format!("{:?}", rejected(&t)),
    );
    let vip = "10.96.0.97:80";
    assert_eq!(tally(&t.client(&["tcp", vip, "3"]), vip).len(), 1);
}
