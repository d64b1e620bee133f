//! The per-packet (tc) path keeps forwarding after the agent exits: its
//! tcx links are pinned in bpffs (kernel >= 6.6), so neither a stopped
//! agent nor its cleanup code detaches them. New NodePort connections
//! from outside and ClusterIP connections from a pod the socket hooks do
//! not cover are balanced, and an established connection keeps working.
use std::time::Duration;

use sluice_tests::{
    held::Held,
    require_root,
    topology::{LbTopology, NODE_IP, NODE_NAME, SvcSpec, tally, testpod},
};

const VIP: &str = "10.96.0.120";

/// New connections through both tc attachments (NodePort on the external
/// interface, ClusterIP on the client pod's veth) are answered.
fn assert_tc_forwarding(t: &LbTopology, phase: &str) {
    let np = format!("{NODE_IP}:30080");
    let ext = tally(&t.external(&["tcp", &np, "10"]), &np);
    assert_eq!(ext.values().sum::<u64>(), 10, "{phase}: NodePort {ext:?}");
    let vip = format!("{VIP}:80");
    let pod = tally(&t.client_outside_cgroup(&["tcp", &vip, "10"]), &vip);
    assert_eq!(pod.values().sum::<u64>(), 10, "{phase}: ClusterIP {pod:?}");
}

#[test]
fn tc_path_keeps_forwarding_after_the_agent_exits() {
    if !require_root("tc_path_keeps_forwarding_after_the_agent_exits") {
        return;
    }
    let mut t = LbTopology::new(2);
    let eps = [
        (t.backends[0].ip, true, true, false, NODE_NAME),
        (t.backends[1].ip, true, true, false, NODE_NAME),
    ];
    let yaml = SvcSpec {
        name: "np",
        cluster_ip: VIP,
        ports: &[("http", "TCP", 80)],
        extra_spec: "  type: NodePort\n",
        endpoints: &eps,
        with_slice: true,
    }
    .yaml()
    .replace("port: 80\n", "port: 80\n    nodePort: 30080\n");
    t.write_manifest("np.yaml", &yaml);
    let pod_if = t.client.host_if.clone();
    t.start_agent(&["--pod-iface", &pod_if]);
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(20), |l| {
            l.contains("LB maps in sync")
        });
    assert_tc_forwarding(&t, "agent running");
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &t.external.name])
        .arg(testpod())
        .args(["hold", &format!("{NODE_IP}:30080")]);
    let mut held = Held::open(c);

    // SIGTERM: the agent's whole shutdown path runs, and it exits cleanly.
    let status = t.agent().stop();
    assert!(status.success(), "agent exit: {status}");
    t.agent = None;
    assert_tc_forwarding(&t, "agent gone");
    assert_eq!(
        held.ping(),
        format!("{} ping", held.backend),
        "an established NodePort connection after the agent exited"
    );
    // What keeps them attached: the tcx link pins.
    for iface in [&t.node_ext_if, &pod_if] {
        for dir in ["ingress", "egress"] {
            let pin = t.pins.path.join(format!("links/tc_{dir}_{iface}"));
            assert!(pin.exists(), "{} gone with the agent", pin.display());
        }
    }
}
