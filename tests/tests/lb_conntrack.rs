//! The tc path's conntrack GC: entries idle past their protocol's timeout
//! are removed (`--bpf-ct-gc-interval`, `--bpf-ct-timeout-regular-*`),
//! entries that have not expired stay. The client runs outside the node's
//! cgroup, so only the per-packet path (`--pod-iface`) balances it.
use std::time::Duration;

use sluice_tests::{
    held::Held,
    poll::wait_until,
    require_root,
    topology::{LbTopology, NODE_NAME, SvcSpec, tally},
};

const VIP: &str = "10.96.0.80";
/// Generous for a GC every second and timeouts of 3 s, and shorter than
/// the default UDP timeout (60 s), so a timeout flag that is ignored fails.
const CEILING: Duration = Duration::from_secs(45);

/// A node with one backend behind a TCP 80 + UDP 53 service and an agent
/// balancing the client's veth per packet, collecting garbage every second
/// with the given timeout flags.
fn started(timeouts: &[&str]) -> LbTopology {
    let mut t = LbTopology::new(1);
    let yaml = SvcSpec {
        name: "web",
        cluster_ip: VIP,
        ports: &[("http", "TCP", 80), ("dns", "UDP", 53)],
        extra_spec: "",
        endpoints: &[(t.backends[0].ip, true, true, false, NODE_NAME)],
        with_slice: true,
    }
    .yaml();
    t.write_manifest("web.yaml", &yaml);
    start(&mut t, timeouts);
    t
}

fn start(t: &mut LbTopology, timeouts: &[&str]) {
    let pod_if = t.client.host_if.clone();
    let mut args = vec!["--pod-iface", &pod_if, "--bpf-ct-gc-interval", "1s"];
    args.extend(timeouts);
    t.start_agent(&args);
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(20), |l| {
            l.contains("LB maps in sync")
        });
}

/// Entries are recorded under the default timeouts (so seeing them is no
/// race against a short one); then the agent is restarted with `timeouts`.
/// The pinned conntrack map and the tc programs stay through the restart.
fn restart_with(t: &mut LbTopology, timeouts: &[&str]) {
    t.agent().stop();
    t.agent = None;
    start(t, timeouts);
}

/// Conntrack rows (fwd and rev) matching `pred`.
fn ct_rows(t: &LbTopology, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let ct = t.ct_list_json();
    ct.as_array()
        .expect("bpf ct list: an array")
        .iter()
        .filter(|r| pred(r))
        .cloned()
        .collect()
}

fn udp(r: &serde_json::Value) -> bool {
    r["protocol"] == "UDP"
}

fn tcp(r: &serde_json::Value) -> bool {
    r["protocol"] == "TCP"
}

/// A TCP connection through the tc path kept open (and idle), and its
/// conntrack pair (fwd + rev).
fn held_open(t: &LbTopology) -> (Held, Vec<serde_json::Value>) {
    let before = ct_rows(t, tcp);
    let held = Held::open(t.client_outside_cgroup_command(&["hold", &format!("{VIP}:80")]));
    let mine = ct_rows(t, |r| {
        tcp(r) && same_flows(std::slice::from_ref(r), &before) == 0
    });
    assert_eq!(mine.len(), 2, "the held connection's fwd + rev entries");
    assert!(mine.iter().all(|r| r["closing"] == false), "{mine:?}");
    (held, mine)
}

/// Waits until no conntrack row matches `pred`.
fn wait_gone(t: &LbTopology, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    wait_until(
        what,
        CEILING,
        || ct_rows(t, &pred).is_empty().then_some(()),
        || t.ct_list_json().to_string(),
    );
}

#[test]
fn udp_flows_are_removed_once_idle_past_the_udp_timeout() {
    if !require_root("udp_flows_are_removed_once_idle_past_the_udp_timeout") {
        return;
    }
    let mut t = started(&[]);
    // Idle as long as the UDP flow, but under the (default 6 h) TCP timeout.
    let (mut held, held_rows) = held_open(&t);
    let dns = format!("{VIP}:53");
    let replies = tally(&t.client_outside_cgroup(&["udp", &dns, "5"]), &dns);
    assert_eq!(replies.values().sum::<u64>(), 5, "{replies:?}");
    assert_eq!(
        ct_rows(&t, udp).len(),
        2,
        "the UDP flow's fwd + rev entries"
    );

    restart_with(&mut t, &["--bpf-ct-timeout-regular-any", "3s"]);
    wait_gone(&t, "the idle UDP flow's entries to be collected", udp);
    // The same GC passes kept the TCP flow that has not expired.
    assert_eq!(
        same_flows(&ct_rows(&t, tcp), &held_rows),
        2,
        "an open TCP flow removed on the UDP timeout"
    );
    assert_eq!(held.ping(), format!("{} ping", held.backend));
}

#[test]
fn closed_tcp_flows_are_removed_after_the_closing_timeout() {
    if !require_root("closed_tcp_flows_are_removed_after_the_closing_timeout") {
        return;
    }
    let t = started(&["--bpf-ct-timeout-regular-tcp-fin", "3s"]);
    let (mut kept, kept_rows) = held_open(&t);
    let (closed, closed_rows) = held_open(&t);
    // Ends the process: the kernel closes its socket (FIN), and the tc path
    // marks both entries closing. Open, they would stay for 6 h.
    drop(closed);
    wait_gone(&t, "the closed flow's entries to be collected", |r| {
        same_flows(std::slice::from_ref(r), &closed_rows) == 1
    });
    assert_eq!(
        same_flows(&ct_rows(&t, tcp), &kept_rows),
        2,
        "an open TCP flow removed on the closing timeout"
    );
    assert_eq!(kept.ping(), format!("{} ping", kept.backend));
}

#[test]
fn open_tcp_flows_are_removed_once_idle_past_the_tcp_timeout() {
    if !require_root("open_tcp_flows_are_removed_once_idle_past_the_tcp_timeout") {
        return;
    }
    let mut t = started(&[]);
    let (_held, rows) = held_open(&t);
    restart_with(&mut t, &["--bpf-ct-timeout-regular-tcp", "3s"]);
    wait_gone(&t, "the idle open flow's entries to be collected", |r| {
        same_flows(std::slice::from_ref(r), &rows) == 1
    });
}

/// How many of `rows` are entries of the flows `of` lists (same
/// direction, protocol and addresses; idle time and state may differ).
fn same_flows(rows: &[serde_json::Value], of: &[serde_json::Value]) -> usize {
    let id = |r: &serde_json::Value| {
        (
            r["direction"].clone(),
            r["protocol"].clone(),
            r["src"].clone(),
            r["dst"].clone(),
        )
    };
    rows.iter()
        .filter(|r| of.iter().any(|o| id(o) == id(r)))
        .count()
}
