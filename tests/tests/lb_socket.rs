//! Socket-level service load balancing on a real netns topology
//! (see `sluice_tests::topology`): the agent programs Services from a
//! manifests directory and a client pod in the node's cgroup connects to
//! ClusterIPs.
use std::{
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::Duration,
};

use sluice_tests::{
    held::Held,
    poll::wait_until,
    require_root,
    topology::programmed,
    topology::{
        ClientPod, LbTopology, NODE_NAME, SPREAD_SAMPLES, SvcSpec, assert_uniform_spread, tally,
    },
};

const VIP: &str = "10.96.0.10";

fn ready(ip: Ipv4Addr) -> (Ipv4Addr, bool, bool, bool, &'static str) {
    (ip, true, true, false, NODE_NAME)
}

fn web(t: &LbTopology, backends: &[usize], extra_spec: &str) -> String {
    let eps: Vec<_> = backends.iter().map(|&i| ready(t.backends[i].ip)).collect();
    SvcSpec {
        name: "web",
        cluster_ip: VIP,
        ports: &[("http", "TCP", 80), ("dns", "UDP", 53)],
        extra_spec,
        endpoints: &eps,
        with_slice: true,
    }
    .yaml()
}

/// A topology with `n` backend pods, the `web` service over `endpoints`,
/// and an agent that has programmed it.
fn started(n: usize, endpoints: &[usize], extra_spec: &str) -> LbTopology {
    let mut t = LbTopology::new(n);
    t.write_manifest("web.yaml", &web(&t, endpoints, extra_spec));
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), programmed);
    t
}

#[test]
fn clusterip_tcp_and_udp_spread_over_backends_and_show_the_service_address() {
    if !require_root("clusterip_tcp_and_udp_spread_over_backends_and_show_the_service_address") {
        return;
    }
    let t = started(3, &[0, 1, 2], "");
    let n = SPREAD_SAMPLES.to_string();

    let tcp = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), &n]),
        &format!("{VIP}:80"),
    );
    assert_uniform_spread(&tcp, "TCP");

    // Unconnected UDP on one socket: recvmsg4 must show the service as the
    // source of every reply, whichever backend answered.
    let udp = tally(
        &t.client(&["udp", &format!("{VIP}:53"), &n]),
        &format!("{VIP}:53"),
    );
    assert_uniform_spread(&udp, "UDP");

    // Connected UDP: getpeername shows the service.
    let cu = tally(
        &t.client(&["udp-connected", &format!("{VIP}:53"), "30"]),
        &format!("{VIP}:53"),
    );
    assert_eq!(cu.values().sum::<u64>(), 30);

    // The listing reads the pinned maps: two service ports, their frontends,
    // three backends in each table, and the connections we made.
    let list = t.lb_list_json();
    let svcs = list.as_array().expect("array");
    let http = svcs
        .iter()
        .find(|s| s["name"] == "default/web:http/TCP")
        .unwrap_or_else(|| panic!("no http service in {list}"));
    assert_eq!(http["frontends"][0]["address"], VIP);
    assert_eq!(http["frontends"][0]["port"], 80);
    assert_eq!(http["backends"].as_array().map(Vec::len), Some(3));
    assert_eq!(http["maglev_table_size"], 509);
    assert_eq!(http["conns"], SPREAD_SAMPLES);
    let slots: u64 = http["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["slots"].as_u64().expect("slots"))
        .sum();
    assert_eq!(slots, 509);
    assert!(svcs.iter().any(|s| s["name"] == "default/web:dns/UDP"));

    let m = t.metrics();
    let conns_metric = format!(
        "sluice_lb_service_connections_total{{service=\"default/web:http/TCP\"}} {SPREAD_SAMPLES}"
    );
    for want in [
        "sluice_lb_services 2",
        "sluice_lb_backends 6",
        conns_metric.as_str(),
        "sluice_lb_service_backends{service=\"default/web:http/TCP\"} 3",
        "sluice_lb_map_fill_ratio{map=\"LB4_SERVICES\"}",
        "sluice_lb_programming_latency_seconds_count 1",
    ] {
        assert!(m.contains(want), "metrics lack {want:?}:\n{m}");
    }
}

/// Refused, like kube-proxy's REJECT, rather than left to time out: a
/// dropped SYN would show as `ERROR ... timed out` after the client's 3 s
/// connect timeout, an unroutable one as `ERROR No route to host`; only
/// ECONNREFUSED prints `REFUSED`.
#[test]
fn service_without_endpoints_refuses_connections() {
    if !require_root("service_without_endpoints_refuses_connections") {
        return;
    }
    let t = started(1, &[], "");
    let out = t.client(&["tcp", &format!("{VIP}:80"), "3"]);
    assert_eq!(
        out,
        vec!["REFUSED"; 3],
        "connects to a service without endpoints"
    );
}

#[test]
fn session_affinity_pins_a_client_to_one_backend() {
    if !require_root("session_affinity_pins_a_client_to_one_backend") {
        return;
    }
    let mut t = LbTopology::new(3);
    let extra = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 300\n";
    t.write_manifest("web.yaml", &web(&t, &[0, 1, 2], extra));
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), programmed);
    let tcp = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), "40"]),
        &format!("{VIP}:80"),
    );
    assert_eq!(tcp.len(), 1, "affinity keeps one backend: {tcp:?}");

    // Turning affinity off changes the services' flags, not their
    // backends: the frontends and infos are rewritten, no table is.
    t.write_manifest("web.yaml", &web(&t, &[0, 1, 2], ""));
    let line = t
        .agent()
        .wait_for_line("affinity off", Duration::from_secs(60), |l| {
            programmed(l) && l.contains("tables_written=0")
        });
    assert!(line.contains("tables_computed=0"), "{line}");
    let tcp = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), "60"]),
        &format!("{VIP}:80"),
    );
    assert!(tcp.len() > 1, "no affinity any more: {tcp:?}");
}

/// A long-lived connection through the service.
fn hold(pod: &ClientPod) -> Held {
    Held::open(pod.command(&["hold", &format!("{VIP}:80")]))
}

/// The reverse translations (socket -> service) the pinned map holds, as
/// the frontend addresses they restore.
fn sock_revnat_entries(t: &LbTopology) -> Vec<String> {
    let maps = sluice_datapath::LbMaps::open(&t.pins.path).expect("open pinned LB maps");
    maps.sock_revnat
        .iter()
        .map(|e| {
            let (_, v) = e.expect("read entry");
            format!(
                "{}:{}",
                Ipv4Addr::from(u32::from_be(v.addr)),
                u16::from_be(v.port)
            )
        })
        .collect()
}

#[test]
fn closing_a_socket_forgets_its_reverse_translation() {
    if !require_root("closing_a_socket_forgets_its_reverse_translation") {
        return;
    }
    let t = started(2, &[0, 1], "");
    let held = hold(&t.client_pod());
    let tcp = t.client(&["tcp", &format!("{VIP}:80"), "30"]);
    let udp = t.client(&["udp-connected", &format!("{VIP}:53"), "10"]);
    // While open, each socket saw the service as its peer.
    assert!(
        tcp.iter().all(|l| l.ends_with(&format!(" {VIP}:80"))),
        "{tcp:?}"
    );
    let replies = tally(&udp, &format!("{VIP}:53"));
    assert_eq!(replies.values().sum::<u64>(), 10, "{udp:?}");
    // Only the live connection's entry is left.
    assert_eq!(sock_revnat_entries(&t), vec![format!("{VIP}:80")]);
    drop(held);
    assert_eq!(sock_revnat_entries(&t), Vec::<String>::new());
}

#[test]
fn manifest_changes_move_new_connections_and_keep_existing_ones() {
    if !require_root("manifest_changes_move_new_connections_and_keep_existing_ones") {
        return;
    }
    let mut t = LbTopology::new(3);
    t.write_manifest("web.yaml", &web(&t, &[0], ""));
    t.start_agent(&[]);
    t.agent()
        .wait_for_count("programmed", 1, Duration::from_secs(60), programmed);
    let mut held = hold(&t.client_pod());
    assert_eq!(held.backend, "pod-0");
    // Idle: nothing changed, so nothing is re-read (the agent's own reads
    // must not count as changes). A window, not an event: a read loop
    // would show within it (each read's own events 50 ms apart), and a
    // slow machine can only make the check miss one, never fail a working
    // agent. The next change is read (below): the watcher was live.
    let reads = |d: &sluice_tests::Daemon| d.count_lines(|l| l.contains("manifests read"));
    let before = reads(t.agent());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reads(t.agent()), before, "manifests re-read with no change");

    // pod-0 becomes terminating (still serving), pod-1 is the new ready one.
    let (ip0, ip1) = (t.backends[0].ip, t.backends[1].ip);
    let y = SvcSpec {
        name: "web",
        cluster_ip: VIP,
        ports: &[("http", "TCP", 80), ("dns", "UDP", 53)],
        extra_spec: "",
        endpoints: &[(ip0, false, true, true, NODE_NAME), ready(ip1)],
        with_slice: true,
    }
    .yaml();
    t.write_manifest("web.yaml", &y);
    t.agent()
        .wait_for_count("programmed", 2, Duration::from_secs(60), programmed);
    let tcp = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), "30"]),
        &format!("{VIP}:80"),
    );
    assert_eq!(
        tcp.keys().collect::<Vec<_>>(),
        ["pod-1"],
        "no new connections to a terminating endpoint"
    );
    assert_eq!(
        held.ping(),
        "pod-0 ping",
        "the existing connection keeps flowing"
    );
    let list = t.lb_list_json();
    let http = &list.as_array().expect("array")[1];
    assert_eq!(http["name"], "default/web:http/TCP", "{list}");

    // pod-0 removed entirely, pod-2 added: new connections spread over 1 and 2.
    t.write_manifest("web.yaml", &web(&t, &[1, 2], ""));
    t.agent()
        .wait_for_count("programmed", 3, Duration::from_secs(60), programmed);
    let tcp = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), "60"]),
        &format!("{VIP}:80"),
    );
    assert_eq!(
        tcp.keys().collect::<Vec<_>>(),
        ["pod-1", "pod-2"],
        "{tcp:?}"
    );
    assert_eq!(
        held.ping(),
        "pod-0 ping",
        "removal does not cut established connections"
    );

    // Deleting the file withdraws the service: the ClusterIP is no longer translated.
    std::fs::remove_file(t.manifests_dir().join("web.yaml")).expect("rm");
    t.agent()
        .wait_for_count("programmed", 4, Duration::from_secs(60), programmed);
    assert_eq!(t.lb_list_json(), serde_json::json!([]));
}

#[test]
fn bad_manifests_are_reported_by_file_and_object_and_skipped() {
    if !require_root("bad_manifests_are_reported_by_file_and_object_and_skipped") {
        return;
    }
    let mut t = LbTopology::new(1);
    let ok = web(&t, &[0], "");
    // A valid service in the same file as a bad one still gets programmed.
    let unknown_field = ok.replace("name: web\n", "name: typo\n").replace(
        "  clusterIP: 10.96.0.10\n",
        "  clusterIP: 10.96.0.20\n  clusterIp: 10.96.0.21\n",
    );
    t.write_manifest("a-mixed.yaml", &format!("{ok}---\n{unknown_field}"));
    t.write_manifest(
        "b-broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [oops\n",
    );
    let out_of_range = ok
        .replace("name: web\n", "name: bigport\n")
        .replace("10.96.0.10", "10.96.0.30")
        .replace("port: 80\n", "port: 70000\n")
        .replace("web-slice", "bigport-slice")
        .replace("service-name: web", "service-name: bigport");
    t.write_manifest("c-range.yaml", &out_of_range);
    let dup = ok
        .replace("name: web\n", "name: zdup\n")
        .replace("web-slice", "zdup-slice")
        .replace("service-name: web", "service-name: zdup");
    t.write_manifest("d-dup.yaml", &dup);
    let orphan = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: lost\n  namespace: default\n  labels: {kubernetes.io/service-name: ghost}\naddressType: IPv4\nendpoints: []\n";
    t.write_manifest("e-orphan.yaml", orphan);
    t.start_agent(&[]);
    let agent = t.agent();
    agent.wait_for_line("programmed", Duration::from_secs(60), programmed);
    for (file, object, why) in [
        ("a-mixed.yaml", "Service default/typo", "spec.clusterIp"),
        ("b-broken.yaml", "", "invalid YAML"),
        ("c-range.yaml", "Service default/bigport", "70000"),
        (
            "d-dup.yaml",
            "Service default/zdup",
            "already used by Service default/web",
        ),
        (
            "e-orphan.yaml",
            "EndpointSlice default/lost",
            "default/ghost",
        ),
    ] {
        agent.wait_for_line(why, Duration::from_secs(60), |l| {
            l.contains("WARN") && l.contains(file) && l.contains(object) && l.contains(why)
        });
    }
    let list = t.lb_list_json();
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["default/web:dns/UDP", "default/web:http/TCP"]);
    let tcp = t.client(&["tcp", &format!("{VIP}:80"), "3"]);
    assert_eq!(tcp, vec![format!("pod-0 {VIP}:80"); 3]);
}

/// Where a restart stands, as the traffic thread sees it when a round of
/// traffic starts and ends.
const BEFORE_KILL: u8 = 0;
const AGENT_DOWN: u8 = 1;
const RESTARTING: u8 = 2;
const IN_SYNC: u8 = 3;

/// New connections per round of [`Churn`], back to back in one client.
const PER_ROUND: u64 = 20;

/// One round of [`Churn`]: new connections and a ping on every held one.
struct Round {
    /// Phase when the round started and when it ended.
    from: u8,
    to: u8,
    /// `sluice-testpod tcp` output: one line per new connection.
    replies: Vec<String>,
    /// (backend the held connection greeted with, its answer to a ping).
    pings: Vec<(String, String)>,
}

/// Traffic through the VIP from a thread, round after round with no pause,
/// while the test kills and restarts the agent: [`PER_ROUND`] new
/// connections per round, and a ping on each of 4 connections opened
/// before the kill.
struct Churn {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    rounds: Arc<Mutex<Vec<Round>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Churn {
    fn start(pod: ClientPod) -> Self {
        let mut held: Vec<Held> = (0..4).map(|_| hold(&pod)).collect();
        let phase = Arc::new(AtomicU8::new(BEFORE_KILL));
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let (p, s, r) = (phase.clone(), stop.clone(), rounds.clone());
        let (vip, n) = (format!("{VIP}:80"), PER_ROUND.to_string());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let from = p.load(Ordering::SeqCst);
                let replies = pod.run(&["tcp", &vip, &n]);
                let pings = held
                    .iter_mut()
                    .map(|h| (h.backend.clone(), h.ping()))
                    .collect();
                let to = p.load(Ordering::SeqCst);
                r.lock().expect("rounds lock").push(Round {
                    from,
                    to,
                    replies,
                    pings,
                });
            }
        });
        Self {
            phase,
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    fn set(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// Waits for a round that started and ended within `phases` (a
    /// ceiling of 60 s only catches a hung thread).
    fn wait_for_round(&self, what: &str, phases: std::ops::RangeInclusive<u8>) {
        let rounds = || -> Vec<(u8, u8)> {
            let r = self.rounds.lock().expect("rounds lock");
            r.iter().map(|r| (r.from, r.to)).collect()
        };
        wait_until(
            &format!("a round of traffic {what}"),
            Duration::from_secs(60),
            || {
                let finished = self.thread.as_ref().is_none_or(|t| t.is_finished());
                assert!(!finished, "traffic thread ended before a round {what}");
                rounds()
                    .iter()
                    .any(|(from, to)| phases.contains(from) && phases.contains(to))
                    .then_some(())
            },
            || format!("rounds (phase at start, at end): {:?}", rounds()),
        );
    }

    /// Stops after the current round; every round's replies and pings.
    fn finish(mut self) -> Vec<Round> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("traffic thread panicked");
        }
        std::mem::take(&mut *self.rounds.lock().expect("rounds lock"))
    }
}

impl Drop for Churn {
    /// On a failure elsewhere: the thread stops after its round (not
    /// joined; a round stuck on a dead connection ends when the test's
    /// cgroup, which holds its clients, is emptied).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What a restart under traffic showed.
struct Restarted {
    /// The new agent's "adopted pinned LB state" and "LB maps in sync" lines.
    adopted: String,
    synced: String,
}

/// Kills the agent (a crash: no cleanup code runs) while [`Churn`] keeps
/// traffic going, runs `while_down` with no agent, and starts it again
/// with `extra` flags. Traffic covers the whole restart by events, not
/// time: a round finished before the kill, at least one round started
/// after the kill and ended before the new agent was started, and rounds
/// kept running back to back until one started after the new agent said
/// its maps are in sync. Every new connection reached a backend through
/// the VIP and every held connection kept answering from its backend.
fn restart_under_load(
    t: &mut LbTopology,
    extra: &[&str],
    while_down: &mut dyn FnMut(&LbTopology),
) -> Restarted {
    let churn = Churn::start(t.client_pod());
    churn.wait_for_round("before the kill", BEFORE_KILL..=BEFORE_KILL);
    // Programs stay attached through their pinned links and keep using the
    // pinned maps.
    t.agent().kill();
    t.agent = None;
    churn.set(AGENT_DOWN);
    while_down(t);
    churn.wait_for_round("while no agent ran", AGENT_DOWN..=AGENT_DOWN);
    churn.set(RESTARTING);
    t.start_agent(extra);
    let adopted = t
        .agent()
        .wait_for_line("adopted", Duration::from_secs(60), |l| {
            l.contains("adopted pinned LB state")
        });
    let synced = wait_in_sync(t);
    churn.set(IN_SYNC);
    churn.wait_for_round("after the restart", IN_SYNC..=IN_SYNC);
    let rounds = churn.finish();
    let phases: Vec<(u8, u8)> = rounds.iter().map(|r| (r.from, r.to)).collect();
    eprintln!("traffic rounds (phase at start, at end): {phases:?}");
    for r in &rounds {
        let seen = tally(&r.replies, &format!("{VIP}:80"));
        assert_eq!(seen.values().sum::<u64>(), PER_ROUND, "{:?}", r.replies);
        for (backend, answer) in &r.pings {
            assert_eq!(
                answer,
                &format!("{backend} ping"),
                "a held connection broke (phases {}..{})",
                r.from,
                r.to
            );
        }
    }
    Restarted { adopted, synced }
}

fn wait_in_sync(t: &mut LbTopology) -> String {
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(60), |l| {
            l.contains("LB maps in sync")
        })
}

/// Value of `key=` in a tracing line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// "services programmed" lines of a restarted agent's first apply (the one
/// that logged `synced`): after it, a change of our own (a service `probe`
/// without endpoints) is applied and logged; the agent logs through one
/// pipe, in order, so once the probe's line is read every line of the
/// first apply has been too.
fn first_apply_writes(t: &mut LbTopology, synced: &str) -> usize {
    let probe = SvcSpec {
        name: "probe",
        cluster_ip: "10.96.0.99",
        ports: &[("http", "TCP", 80)],
        extra_spec: "",
        endpoints: &[],
        with_slice: false,
    };
    t.write_manifest("probe.yaml", &probe.yaml());
    let want = format!("services={} ", field(synced, "services") + 1);
    t.agent()
        .wait_for_line("the probe applied", Duration::from_secs(60), |l| {
            programmed(l) && l.contains(&want)
        });
    t.agent().count_lines(programmed) - 1
}

#[test]
fn agent_crash_and_restart_under_load_loses_no_connection() {
    if !require_root("agent_crash_and_restart_under_load_loses_no_connection") {
        return;
    }
    let mut t = started(3, &[0, 1, 2], "");
    let ids_before = t.lb_list_json();

    let r = restart_under_load(&mut t, &[], &mut |_| {});
    // 3 pods x (TCP, UDP) backends.
    assert!(
        r.adopted.contains("services=2") && r.adopted.contains("backends=6"),
        "{}",
        r.adopted
    );
    // The restarted agent kept every id and rewrote nothing that was right.
    let after = t.lb_list_json();
    let ids = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or("").to_string(),
                    s["id"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert_eq!(ids(&ids_before), ids(&after));
    // ... and recognises the pinned tables by their digests, without
    // computing them again.
    assert!(r.synced.contains("tables_computed=0"), "{}", r.synced);
    assert_eq!(
        first_apply_writes(&mut t, &r.synced),
        0,
        "an agent restarted on unchanged manifests writes nothing"
    );
    // Inputs changed while the agent was down are noticed by the digest:
    // both of web's backend sets (TCP, UDP) lose pod-2 and are recomputed.
    t.agent().kill();
    t.agent = None;
    t.write_manifest("web.yaml", &web(&t, &[0, 1], ""));
    t.start_agent(&[]);
    let synced = wait_in_sync(&mut t);
    assert!(
        synced.contains("tables_computed=2") && synced.contains("backends=4"),
        "{synced}"
    );
    let after = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), "30"]),
        &format!("{VIP}:80"),
    );
    assert!(!after.contains_key("pod-2"), "{after:?}");
}

/// `count` services without endpoints, to fill service ids and frontends.
fn fillers(count: u8) -> String {
    (0..count)
        .map(|i| {
            SvcSpec {
                name: &format!("filler-{i}"),
                cluster_ip: &format!("10.96.1.{}", i + 1),
                ports: &[("http", "TCP", 80)],
                extra_spec: "",
                endpoints: &[],
                with_slice: false,
            }
            .yaml()
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `bpf lb list -o json` with the traffic counters taken out.
fn without_counters(mut v: serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for k in ["conns", "packets", "bytes"] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

fn pinned_sizes(t: &LbTopology) -> sluice_datapath::LbMapSizes {
    sluice_datapath::LbMapSizes::pinned(&t.pins.path).expect("pinned LB map sizes")
}

/// Connections to the `quiet` service (10.96.0.11:80, only ever used
/// here, with no traffic of the restart's): all three backends answer.
fn quiet_connections(t: &LbTopology, n: u64) {
    let replies = tally(
        &t.client(&["tcp", "10.96.0.11:80", &n.to_string()]),
        "10.96.0.11:80",
    );
    assert_eq!(replies.values().sum::<u64>(), n, "{replies:?}");
}

fn service_conns(list: &serde_json::Value, name: &str) -> u64 {
    list.as_array()
        .expect("array")
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["conns"].as_u64())
        .unwrap_or_else(|| panic!("no conns for {name} in {list}"))
}

#[test]
fn restart_with_other_map_sizes_resizes_pinned_maps_under_load() {
    if !require_root("restart_with_other_map_sizes_resizes_pinned_maps_under_load") {
        return;
    }
    let mut t = LbTopology::new(3);
    t.write_manifest("web.yaml", &web(&t, &[0, 1, 2], ""));
    t.write_manifest("fill.yaml", &fillers(20));
    let quiet = sluice_tests::topology::http_service(&t, "quiet", "10.96.0.11", &[0, 1, 2]);
    t.write_manifest("quiet.yaml", &quiet);
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(60), programmed);
    assert_eq!(pinned_sizes(&t), sluice_datapath::LbMapSizes::default());
    quiet_connections(&t, 30);
    let before = t.lb_list_json();

    let bigger = [
        "--bpf-lb-max-frontends",
        "1024",
        "--bpf-lb-max-services",
        "4096",
        "--bpf-lb-max-backends",
        "8192",
    ];
    // Counted by the old programs in the old maps before the new agent
    // exists, so before its copy: all of them must survive the resize.
    let r = restart_under_load(&mut t, &bigger, &mut |t| quiet_connections(t, 20));
    // web: 2 service ids (TCP, UDP) over 3 pods x 2 protocols; quiet:
    // 1 id over web's TCP backends; 20 fillers.
    assert!(
        r.adopted.contains("services=23") && r.adopted.contains("backends=6"),
        "{}",
        r.adopted
    );
    assert_eq!(
        pinned_sizes(&t),
        sluice_datapath::LbMapSizes {
            frontends: 1024,
            services: 4096,
            backends: 8192,
        }
    );
    // Entries copied as they were, and counters: quiet's exactly. (web's
    // also counted connections the old programs took between the copy
    // and their replacement, which are lost.)
    let after = t.lb_list_json();
    assert_eq!(without_counters(before), without_counters(after.clone()));
    assert_eq!(
        service_conns(&after, "default/quiet:http/TCP"),
        50,
        "counters not carried over: {after}"
    );
    assert_eq!(
        first_apply_writes(&mut t, &r.synced),
        0,
        "the copy is the programmed state: nothing left to write"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&t.pins.path)
        .expect("read pins")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_RESIZING"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let metrics = t.metrics();
    let fill = metrics
        .lines()
        .find(|l| l.starts_with("sluice_lb_map_fill_ratio{map=\"LB4_BACKENDS\"}"))
        .unwrap_or_else(|| panic!("no backend fill ratio in\n{metrics}"));
    assert!(fill.ends_with(&format!(" {}", 6.0 / 8192.0)), "{fill}");

    // Too small for what is pinned (24 services, ids from 1: web 2, quiet,
    // probe, 20 fillers): refused with exit 2 before anything
    // moves; the data plane keeps serving with the maps as they were.
    t.agent().kill();
    t.agent = None;
    let mut args = t.node_args();
    args.extend(
        [
            "--manifests",
            &t.manifests_dir().display().to_string(),
            "--bpf-lb-max-services",
            "16",
        ]
        .map(String::from),
    );
    let out = std::process::Command::new(sluice_tests::bin("sluice-agent"))
        .args(&args)
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("--bpf-lb-max-services: 16 is too small")
            && last.contains("needs 25 services"),
        "{stderr}"
    );
    assert_eq!(pinned_sizes(&t).services, 4096);
    let tcp = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), "30"]),
        &format!("{VIP}:80"),
    );
    assert_eq!(tcp.values().sum::<u64>(), 30, "{tcp:?}");
}
