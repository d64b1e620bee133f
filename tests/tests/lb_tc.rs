//! Per-packet (tc) service load balancing: NodePort and ExternalIP traffic
//! from an external host, and ClusterIP traffic from a pod the socket hooks
//! do not cover; neither passes the socket hooks.
use std::{net::Ipv4Addr, time::Duration};

use sluice_tests::{
    require_root,
    topology::{
        BACKEND_PORT, LbTopology, NODE_IP, NODE_NAME, SPREAD_SAMPLES, SvcSpec,
        assert_uniform_spread, http_service, serve_in, tally,
    },
};

const EXTERNAL_VIP: &str = "192.168.77.100";
/// The Service's status.loadBalancer.ingress IP.
const LB_VIP: &str = "192.168.77.101";

fn svc(t: &LbTopology, etp_local: bool, node_of: impl Fn(usize) -> &'static str) -> String {
    let eps: Vec<(Ipv4Addr, bool, bool, bool, &str)> = (0..t.backends.len())
        .map(|i| (t.backends[i].ip, true, true, false, node_of(i)))
        .collect();
    let policy = if etp_local { "Local" } else { "Cluster" };
    SvcSpec {
        name: "np",
        cluster_ip: "10.96.0.50",
        ports: &[("http", "TCP", 80), ("dns", "UDP", 53)],
        extra_spec: &format!(
            "  type: LoadBalancer\n  externalTrafficPolicy: {policy}\n  externalIPs: [\"{EXTERNAL_VIP}\"]\n"
        ),
        endpoints: &eps,
        with_slice: true,
    }
    .yaml()
    .replacen(
        "---\n",
        &format!("status:\n  loadBalancer:\n    ingress:\n    - ip: {LB_VIP}\n---\n"),
        1,
    )
    .replace("port: 80\n", "port: 80\n    nodePort: 30080\n")
    .replace("port: 53\n", "port: 53\n    nodePort: 30053\n")
}

#[test]
fn nodeport_external_ip_and_lb_ip_from_outside_are_dnatted_and_reverse_natted() {
    if !require_root("nodeport_external_ip_and_lb_ip_from_outside_are_dnatted_and_reverse_natted") {
        return;
    }
    let mut t = LbTopology::new(3);
    for vip in [EXTERNAL_VIP, LB_VIP] {
        t.external.ip([
            "route",
            "add",
            &format!("{vip}/32"),
            "via",
            &NODE_IP.to_string(),
        ]);
    }
    t.write_manifest("np.yaml", &svc(&t, false, |_| NODE_NAME));
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), |l| {
            l.contains("services programmed")
        });

    let np = format!("{NODE_IP}:30080");
    let n = SPREAD_SAMPLES.to_string();
    let tcp = tally(&t.external(&["tcp", &np, &n]), &np);
    // Flow-hash selection over the kernel's source ports: as uniform as random.
    assert_uniform_spread(&tcp, "NodePort TCP");

    let udp_np = format!("{NODE_IP}:30053");
    let udp = tally(&t.external(&["udp-connected", &udp_np, "60"]), &udp_np);
    assert_eq!(udp.values().sum::<u64>(), 60, "{udp:?}");

    let eip = format!("{EXTERNAL_VIP}:80");
    let e = tally(&t.external(&["tcp", &eip, "30"]), &eip);
    assert_eq!(e.values().sum::<u64>(), 30, "{e:?}");

    let lb = format!("{LB_VIP}:80");
    let l = tally(&t.external(&["tcp", &lb, "30"]), &lb);
    assert_eq!(
        l.values().sum::<u64>(),
        30,
        "LoadBalancer ingress IP: {l:?}"
    );

    // Conntrack holds forward entries that point at the backends.
    let ct = t.ct_list_json();
    let fwd: Vec<&serde_json::Value> = ct
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["direction"] == "fwd" && r["dst"] == np.as_str())
        .collect();
    assert!(
        fwd.len() as u64 >= SPREAD_SAMPLES,
        "one forward entry per connection, got {}",
        fwd.len()
    );
    assert!(
        fwd.iter()
            .all(|r| r["nat"].as_str().unwrap_or("").starts_with("10.244.0."))
    );
    // Those connections are closed: FIN/RST marked them closing (short GC
    // timeout, and their backend-side tuples are free for reuse).
    let closing = fwd.iter().filter(|r| r["closing"] == true).count();
    assert!(
        closing as u64 >= SPREAD_SAMPLES,
        "closed flows marked closing: {closing} of {}",
        fwd.len()
    );

    // Per-service counters on the tc path count packets and bytes too.
    let list = t.lb_list_json();
    let http = list
        .as_array()
        .expect("array")
        .iter()
        .find(|s| s["name"] == "default/np:http/TCP")
        .unwrap_or_else(|| panic!("{list}"));
    let conns = SPREAD_SAMPLES + 60;
    assert!(http["conns"].as_u64().unwrap_or(0) >= conns, "{http}");
    assert!(http["packets"].as_u64().unwrap_or(0) >= conns * 3, "{http}");
    assert!(http["bytes"].as_u64().unwrap_or(0) > 0, "{http}");
}

#[test]
fn external_traffic_policy_local_uses_only_this_nodes_endpoints() {
    if !require_root("external_traffic_policy_local_uses_only_this_nodes_endpoints") {
        return;
    }
    let mut t = LbTopology::new(3);
    // Only pod-1 runs on this node.
    t.write_manifest(
        "np.yaml",
        &svc(&t, true, |i| if i == 1 { NODE_NAME } else { "node-b" }),
    );
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), |l| {
            l.contains("services programmed")
        });
    let np = format!("{NODE_IP}:30080");
    let ext = tally(&t.external(&["tcp", &np, "40"]), &np);
    assert_eq!(ext.keys().collect::<Vec<_>>(), ["pod-1"], "{ext:?}");
    // In-cluster traffic to the ClusterIP still uses every endpoint.
    let int = tally(&t.client(&["tcp", "10.96.0.50:80", "60"]), "10.96.0.50:80");
    assert_eq!(int.len(), 3, "{int:?}");
}

#[test]
fn cluster_ip_from_a_pod_outside_the_socket_hooks_is_balanced_per_packet() {
    if !require_root("cluster_ip_from_a_pod_outside_the_socket_hooks_is_balanced_per_packet") {
        return;
    }
    let mut t = LbTopology::new(3);
    t.write_manifest("np.yaml", &svc(&t, false, |_| NODE_NAME));
    let pod_if = t.client.host_if.clone();
    t.start_agent(&["--pod-iface", &pod_if]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), |l| {
            l.contains("services programmed")
        });
    let vip = "10.96.0.50:80";
    let n = SPREAD_SAMPLES.to_string();
    let tcp = tally(&t.client_outside_cgroup(&["tcp", vip, &n]), vip);
    assert_uniform_spread(&tcp, "ClusterIP TCP on the tc path");
    // Unconnected UDP: replies come back from the ClusterIP (reverse NAT on
    // the pod interface's egress), so recvfrom shows the service address.
    let dns = "10.96.0.50:53";
    let udp = tally(&t.client_outside_cgroup(&["udp", dns, "30"]), dns);
    assert_eq!(udp.values().sum::<u64>(), 30, "{udp:?}");
    // It really was the tc path: the connections are in its conntrack.
    let ct = t.ct_list_json();
    let fwd = ct
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["direction"] == "fwd" && r["dst"] == vip)
        .count();
    assert!(
        fwd as u64 >= SPREAD_SAMPLES,
        "one forward entry per connection, got {fwd}"
    );
    // The external interface does not balance a ClusterIP: from outside it
    // is not a frontend. To see that the packet arrived and was left
    // alone (rather than lost to a broken route), the node owns the
    // address here and serves its port itself: an untranslated connection
    // reaches the node's server, a translated one a backend.
    t.node.ip(["addr", "add", "10.96.0.50/32", "dev", "lo"]);
    let _node_server = serve_in(&t.node, "node", 80);
    t.external
        .ip(["route", "add", "10.96.0.50/32", "via", &NODE_IP.to_string()]);
    let ext = t.external(&["tcp", vip, "3"]);
    assert_eq!(
        ext,
        vec![format!("node {vip}"); 3],
        "ClusterIP from outside the cluster must reach the node untranslated"
    );
}

#[test]
fn tc_path_keeps_two_flows_sharing_a_client_port_apart() {
    if !require_root("tc_path_keeps_two_flows_sharing_a_client_port_apart") {
        return;
    }
    let mut t = LbTopology::new(3);
    // "one" has only pod-0; "many" has all three. A client socket on port P
    // to "one" is DNATed to pod-0:8080; a second socket on the same port to
    // "many" must not also become P -> pod-0:8080 on the wire.
    let ep = |i: usize| (t.backends[i].ip, true, true, false, NODE_NAME);
    let one = SvcSpec {
        name: "one",
        cluster_ip: "10.96.0.61",
        ports: &[("http", "TCP", 80)],
        extra_spec: "",
        endpoints: &[ep(0)],
        with_slice: true,
    }
    .yaml();
    let many = SvcSpec {
        name: "many",
        cluster_ip: "10.96.0.62",
        ports: &[("http", "TCP", 80)],
        extra_spec: "",
        endpoints: &[ep(0), ep(1), ep(2)],
        with_slice: true,
    }
    .yaml();
    t.write_manifest("svcs.yaml", &format!("{one}---\n{many}"));
    let pod_if = t.client.host_if.clone();
    t.start_agent(&["--pod-iface", &pod_if]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), |l| {
            l.contains("services programmed")
        });
    let lines =
        t.client_outside_cgroup(&["same-port", "10.96.0.61:80", "10.96.0.62:80", "40100", "12"]);
    assert_eq!(lines.len(), 12, "{lines:?}");
    for l in &lines {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 4, "{l}");
        assert_eq!(f[0], "pod-0", "{l}");
        assert_ne!(f[1], "pod-0", "second flow collided with the first: {l}");
        assert_eq!(&f[2..], ["ok", "ok"], "both connections keep working: {l}");
    }
}

/// A connection straight to a backend's pod IP, from the client port of a
/// closed ClusterIP connection that was DNATed to that backend: the wire
/// tuple is the same, and the closed flow's reverse entry (kept until the
/// GC expires it) must not rewrite the new connection's replies to the
/// ClusterIP. Checked with the replies reverse-NATed on the client's veth
/// (backends behind host routing) and on the backend's veth (every pod a
/// sluice endpoint).
fn direct_connection_reusing_a_closed_flows_port(enroll: bool) {
    let mut t = LbTopology::new(1);
    let one = SvcSpec {
        name: "one",
        cluster_ip: "10.96.0.63",
        ports: &[("http", "TCP", 80)],
        extra_spec: "",
        endpoints: &[(t.backends[0].ip, true, true, false, NODE_NAME)],
        with_slice: true,
    }
    .yaml();
    t.write_manifest("one.yaml", &one);
    let _enrolled;
    if enroll {
        // The agent first (it creates the pinned maps), then the pods.
        t.start_agent(&[]);
        _enrolled = t.enroll(&[&t.backends[0], &t.client]);
    } else {
        let pod_if = t.client.host_if.clone();
        t.start_agent(&["--pod-iface", &pod_if]);
    }
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), |l| {
            l.contains("services programmed")
        });
    let direct = format!("{}:{BACKEND_PORT}", t.backends[0].ip);
    let lines = t.client_outside_cgroup(&["port-reuse", "10.96.0.63:80", &direct, "40200", "5"]);
    assert_eq!(
        lines,
        vec!["pod-0 pod-0 ok ok"; 5],
        "ClusterIP, closed, then the pod IP from the same port"
    );
}

#[test]
fn direct_connection_reusing_a_closed_flows_port_via_host_routing() {
    if !require_root("direct_connection_reusing_a_closed_flows_port_via_host_routing") {
        return;
    }
    direct_connection_reusing_a_closed_flows_port(false);
}

#[test]
fn direct_connection_reusing_a_closed_flows_port_between_endpoints() {
    if !require_root("direct_connection_reusing_a_closed_flows_port_between_endpoints") {
        return;
    }
    direct_connection_reusing_a_closed_flows_port(true);
}

#[test]
fn pods_enrolled_before_a_map_resize_balance_with_the_resized_maps() {
    if !require_root("pods_enrolled_before_a_map_resize_balance_with_the_resized_maps") {
        return;
    }
    let mut t = LbTopology::new(3);
    let web = |t: &LbTopology, backends: &[usize]| http_service(t, "web", "10.96.0.70", backends);
    let programmed = |l: &str| l.contains("services programmed");
    t.write_manifest("web.yaml", &web(&t, &[0, 1, 2]));
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), programmed);
    let pods = [&t.backends[0], &t.backends[1], &t.backends[2], &t.client];
    let _enrolled = t.enroll(&pods);
    let vip = "10.96.0.70:80";
    assert_eq!(
        tally(&t.client_outside_cgroup(&["tcp", vip, "30"]), vip).len(),
        3
    );

    // Restarts the agent with bigger maps; returns its "switched" line.
    let restart_bigger = |t: &mut LbTopology, before: &dyn Fn()| {
        t.agent().kill();
        t.agent = None;
        before();
        t.start_agent(&["--bpf-lb-max-services", "4096"]);
        t.agent()
            .wait_for_line("pod programs switched", Duration::from_secs(60), |l| {
                l.contains("pod programs switched")
            })
    };
    let switched = restart_bigger(&mut t, &|| {});
    assert!(switched.contains("pods=4"), "{switched}");
    let stale = t.pins.path.join("pod-progs-stale");
    assert!(!stale.exists(), "marker left after every veth was switched");
    // Only the new maps hear about this change: a veth still running the
    // programs loaded before the resize would keep sending to pod-2.
    t.write_manifest("web.yaml", &web(&t, &[0, 1]));
    t.agent()
        .wait_for_line("reprogrammed", Duration::from_secs(60), |l| {
            programmed(l) && l.contains("backends=2 ")
        });
    let after = tally(&t.client_outside_cgroup(&["tcp", vip, "60"]), vip);
    assert_eq!(after.values().sum::<u64>(), 60, "{after:?}");
    assert!(
        after.keys().all(|b| b != "pod-2"),
        "a removed backend still chosen after the resize: {after:?}"
    );
    // An agent killed between the resize and the switch leaves the marker:
    // the next start switches, though the sizes now match.
    let again = restart_bigger(&mut t, &|| {
        std::fs::create_dir(&stale).expect("leave the marker");
    });
    assert!(again.contains("pods=4"), "{again}");
    assert!(!stale.exists());
    assert!(t.metrics().contains("sluice_pod_programs_stale 0"));
    let last = tally(&t.client_outside_cgroup(&["tcp", vip, "20"]), vip);
    assert_eq!(last.values().sum::<u64>(), 20, "{last:?}");

    // A veth that cannot be switched (here: directories where its tcx link
    // pins would go, so re-pinning fails) keeps the marker; the agent says
    // so in its log and metrics and retries until the switch succeeds. The
    // blocked veth is the client's, and the maps are resized once more, so
    // a retry that did not really switch it would balance with the old maps.
    let blockers: Vec<_> = ["ingress", "egress"]
        .iter()
        .map(|d| {
            let host_if = &t.client.host_if;
            t.pins.path.join(format!("links/tc_{d}_{host_if}"))
        })
        .collect();
    t.agent().kill();
    t.agent = None;
    for b in &blockers {
        std::fs::create_dir_all(b).expect("block a link pin");
    }
    t.start_agent(&["--bpf-lb-max-services", "8192"]);
    let warned = t
        .agent()
        .wait_for_line("switch incomplete", Duration::from_secs(60), |l| {
            l.contains("could not be switched")
        });
    assert!(warned.contains("pods=3"), "{warned}");
    assert!(
        stale.exists(),
        "marker removed though a veth was not switched"
    );
    assert!(t.metrics().contains("sluice_pod_programs_stale 1"));
    for b in &blockers {
        std::fs::remove_dir(b).expect("unblock");
    }
    t.agent()
        .wait_for_line("switch retried", Duration::from_secs(60), |l| {
            l.contains("pod programs switched to the resized")
        });
    assert!(!stale.exists(), "marker left after a successful retry");
    assert!(t.metrics().contains("sluice_pod_programs_stale 0"));
    t.write_manifest("web.yaml", &web(&t, &[0]));
    t.agent()
        .wait_for_line("reprogrammed to one", Duration::from_secs(60), |l| {
            programmed(l) && l.contains("backends=1 ")
        });
    let retried = tally(&t.client_outside_cgroup(&["tcp", vip, "20"]), vip);
    assert_eq!(retried.get("pod-0"), Some(&20), "{retried:?}");
}
