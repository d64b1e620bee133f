//! The node follows the API: `sluice-agent --kubeconfig` watches Services
//! and EndpointSlices on a real sluice-server (kube-rs watchers), and a
//! client pod's connections to the ClusterIP follow what kubectl changes.
use std::time::Duration;

use sluice_tests::{
    api_server::{API_ONLY, ApiServer},
    require_root,
    topology::programmed,
    topology::{LbTopology, TempDir, http_service, serve_in, tally},
};

const VIP: &str = "10.96.0.10";

fn web(t: &LbTopology, backends: &[usize]) -> String {
    http_service(t, "web", VIP, backends)
}

#[test]
fn agent_programs_what_kubectl_applies_and_follows_endpoint_changes() {
    if !require_root("agent_programs_what_kubectl_applies_and_follows_endpoint_changes") {
        return;
    }
    let mut t = LbTopology::new(2);
    let api = ApiServer::start_on(Some(&t.node), &[], API_ONLY);
    let files = TempDir::new();
    let apply = |yaml: String| {
        let f = files.0.join("web.yaml");
        std::fs::write(&f, yaml).expect("write manifest");
        api.kubectl_ok(&["apply", "-f", &f.display().to_string()]);
    };
    apply(web(&t, &[0]));
    let kubeconfig = api.node_kubeconfig().display().to_string();
    t.start_agent_on(&["--kubeconfig", &kubeconfig], &[]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), programmed);

    let peer = format!("{VIP}:80");
    let seen = tally(&t.client(&["tcp", &peer, "20"]), &peer);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["pod-0"], "{seen:?}");

    // The slice moves to pod-1: traffic follows.
    let before = t.agent().count_lines(programmed);
    apply(web(&t, &[1]));
    t.agent().wait_for_count(
        "re-programmed",
        before + 1,
        Duration::from_secs(60),
        programmed,
    );
    let seen = tally(&t.client(&["tcp", &peer, "20"]), &peer);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["pod-1"], "{seen:?}");

    // Both backends: spread over both.
    let before = t.agent().count_lines(programmed);
    apply(web(&t, &[0, 1]));
    t.agent().wait_for_count(
        "re-programmed",
        before + 1,
        Duration::from_secs(60),
        programmed,
    );
    let seen = tally(&t.client(&["tcp", &peer, "60"]), &peer);
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The node owns the ClusterIP here and serves its port itself, so a
    // connect the LB leaves alone is answered by "node" (not lost to a
    // missing route): what follows tells "refused by the LB" and "not
    // translated" apart from each other and from a broken path.
    t.node
        .ip(["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    let _node_server = serve_in(&t.node, "node", 80);

    // No endpoints left: connects are refused with ECONNREFUSED (the
    // client prints `REFUSED` for that error kind only).
    let before = t.agent().count_lines(programmed);
    apply(web(&t, &[]));
    t.agent()
        .wait_for_count("emptied", before + 1, Duration::from_secs(60), programmed);
    let out = t.client(&["tcp", &peer, "3"]);
    assert_eq!(out, vec!["REFUSED"; 3], "a service without endpoints");

    // Deleting the Service withdraws it: the ClusterIP is no longer
    // translated, so the connect reaches the address's owner.
    let before = t.agent().count_lines(programmed);
    api.kubectl_ok(&["delete", "service", "web"]);
    t.agent()
        .wait_for_count("withdrawn", before + 1, Duration::from_secs(60), programmed);
    let lb = t.lb_list_json();
    assert!(lb.as_array().is_some_and(|s| s.is_empty()), "{lb}");
    let out = t.client(&["tcp", &peer, "3"]);
    assert_eq!(out, vec![format!("node {peer}"); 3], "a withdrawn service");
}
