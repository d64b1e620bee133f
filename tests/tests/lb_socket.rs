//! Socket-level service load balancing on a real netns topology
//! (see `sluice_tests::topology`): the agent programs Services from a
//! manifests directory and a client pod in the node's cgroup connects to
//! ClusterIPs.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    process::Stdio,
    time::{Duration, Instant},
};

use sluice_tests::{
    Daemon, require_root,
    topology::{CHI2_DF2_P999, LbTopology, NODE_NAME, SvcSpec, chi_square_uniform, tally},
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

fn programmed(l: &str) -> bool {
    l.contains("services programmed")
}

/// A topology with `n` backend pods, the `web` service over `endpoints`,
/// and an agent that has programmed it.
fn started(n: usize, endpoints: &[usize], extra_spec: &str) -> LbTopology {
    let mut t = LbTopology::new(n);
    t.write_manifest("web.yaml", &web(&t, endpoints, extra_spec));
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(10), programmed);
    t
}

#[test]
fn clusterip_tcp_and_udp_spread_over_backends_and_show_the_service_address() {
    if !require_root("clusterip_tcp_and_udp_spread_over_backends_and_show_the_service_address") {
        return;
    }
    let t = started(3, &[0, 1, 2], "");

    let tcp = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), "300"]),
        &format!("{VIP}:80"),
    );
    assert_eq!(tcp.len(), 3, "all backends get TCP connections: {tcp:?}");
    let counts: Vec<u64> = tcp.values().copied().collect();
    assert_eq!(counts.iter().sum::<u64>(), 300);
    let chi2 = chi_square_uniform(&counts);
    assert!(chi2 < CHI2_DF2_P999, "TCP spread {tcp:?} chi2 {chi2:.2}");

    // Unconnected UDP on one socket: recvmsg4 must show the service as the
    // source of every reply, whichever backend answered.
    let udp = tally(
        &t.client(&["udp", &format!("{VIP}:53"), "300"]),
        &format!("{VIP}:53"),
    );
    let counts: Vec<u64> = udp.values().copied().collect();
    assert_eq!(counts.iter().sum::<u64>(), 300, "{udp:?}");
    assert_eq!(udp.len(), 3, "{udp:?}");
    let chi2 = chi_square_uniform(&counts);
    assert!(chi2 < CHI2_DF2_P999, "UDP spread {udp:?} chi2 {chi2:.2}");

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
    assert_eq!(http["conns"], 300);
    let slots: u64 = http["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["slots"].as_u64().expect("slots"))
        .sum();
    assert_eq!(slots, 509);
    assert!(svcs.iter().any(|s| s["name"] == "default/web:dns/UDP"));

    let m = t.metrics();
    for want in [
        "sluice_lb_services 2",
        "sluice_lb_backends 6",
        "sluice_lb_service_connections_total{service=\"default/web:http/TCP\"} 300",
        "sluice_lb_service_backends{service=\"default/web:http/TCP\"} 3",
        "sluice_lb_map_fill_ratio{map=\"LB4_SERVICES\"}",
        "sluice_lb_programming_latency_seconds_count 1",
    ] {
        assert!(m.contains(want), "metrics lack {want:?}:\n{m}");
    }
}

#[test]
fn service_without_endpoints_refuses_connections_at_once() {
    if !require_root("service_without_endpoints_refuses_connections_at_once") {
        return;
    }
    let t = started(1, &[], "");
    let start = Instant::now();
    let out = t.client(&["tcp", &format!("{VIP}:80"), "3"]);
    assert_eq!(out, vec!["REFUSED"; 3], "like kube-proxy's REJECT");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refusal must be immediate, took {:?}",
        start.elapsed()
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
        .wait_for_line("programmed", Duration::from_secs(10), programmed);
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
        .wait_for_line("affinity off", Duration::from_secs(10), |l| {
            programmed(l) && l.contains("tables_written=0")
        });
    assert!(line.contains("tables_computed=0"), "{line}");
    let tcp = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), "60"]),
        &format!("{VIP}:80"),
    );
    assert!(tcp.len() > 1, "no affinity any more: {tcp:?}");
}

/// A long-lived connection through the service, driven line by line.
struct Held {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    pub backend: String,
}

impl Held {
    fn open(t: &LbTopology) -> Self {
        let mut c = t.client_command(&["hold", &format!("{VIP}:80")]);
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hold");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut backend = String::new();
        out.read_line(&mut backend).expect("hold: first line");
        Self {
            child,
            out,
            backend: backend.trim().to_string(),
        }
    }

    fn ping(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "ping").expect("write");
        stdin.flush().expect("flush");
        let mut l = String::new();
        self.out.read_line(&mut l).expect("read");
        l.trim().to_string()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let held = Held::open(&t);
    let tcp = t.client(&["tcp", &format!("{VIP}:80"), "30"]);
    let udp = t.client(&["udp-connected", &format!("{VIP}:53"), "10"]);
    // While open, each socket saw the service as its peer.
    assert!(
        tcp.iter().all(|l| l.ends_with(&format!(" {VIP}:80"))),
        "{tcp:?}"
    );
    assert_eq!(udp.len(), 10, "{udp:?}");
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
        .wait_for_count("programmed", 1, Duration::from_secs(10), programmed);
    let mut held = Held::open(&t);
    assert_eq!(held.backend, "pod-0");
    // Idle: nothing changed, so nothing is re-read (the agent's own reads
    // must not count as changes).
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
        .wait_for_count("programmed", 2, Duration::from_secs(10), programmed);
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
        .wait_for_count("programmed", 3, Duration::from_secs(10), programmed);
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
        .wait_for_count("programmed", 4, Duration::from_secs(10), programmed);
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
    agent.wait_for_line("programmed", Duration::from_secs(10), programmed);
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
        agent.wait_for_line(why, Duration::from_secs(5), |l| {
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

/// Successful connections of a `sluice-testpod load` run.
struct LoadCounts {
    new_ok: u64,
}

/// Kills the agent (a crash: no cleanup code runs) while a client keeps
/// opening new connections to the VIP and using 8 persistent ones for 5 s,
/// and starts it again with `extra` flags after `gap`. Checks that no
/// connection failed; returns the new agent's "adopted" log line.
fn restart_under_load(t: &mut LbTopology, gap: Duration, extra: &[&str]) -> (String, LoadCounts) {
    let mut load = Daemon::from_command(
        "load",
        t.client_command(&["load", &format!("{VIP}:80"), "8", "5"]),
    );
    std::thread::sleep(Duration::from_secs(2));
    // Programs stay attached through their pinned links and keep using the
    // pinned maps.
    t.agent().kill();
    t.agent = None;
    std::thread::sleep(gap);
    t.start_agent(extra);
    let adopted = t
        .agent()
        .wait_for_line("adopted", Duration::from_secs(10), |l| {
            l.contains("adopted pinned LB state")
        });
    let summary = load.wait_for_line("load summary", Duration::from_secs(20), |l| {
        l.starts_with("new_ok=")
    });
    let field = |k: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {summary}"))
    };
    assert!(field("new_ok") > 100, "{summary}");
    assert_eq!(field("new_failed"), 0, "{summary}");
    assert!(field("persist_ok") > 0, "{summary}");
    assert_eq!(field("persist_failed"), 0, "{summary}");
    (
        adopted,
        LoadCounts {
            new_ok: field("new_ok"),
        },
    )
}

#[test]
fn agent_crash_and_restart_under_load_loses_no_connection() {
    if !require_root("agent_crash_and_restart_under_load_loses_no_connection") {
        return;
    }
    let mut t = started(3, &[0, 1, 2], "");
    let ids_before = t.lb_list_json();

    let (adopted, _) = restart_under_load(&mut t, Duration::from_secs(2), &[]);
    // 3 pods x (TCP, UDP) backends.
    assert!(
        adopted.contains("services=2") && adopted.contains("backends=6"),
        "{adopted}"
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
    assert_eq!(
        t.agent().count_lines(programmed),
        0,
        "an agent restarted on unchanged manifests writes nothing"
    );
    // ... and recognises the pinned tables by their digests, without
    // computing them again.
    let synced = t
        .agent()
        .wait_for_line("in sync", Duration::from_secs(10), |l| {
            l.contains("LB maps in sync")
        });
    assert!(synced.contains("tables_computed=0"), "{synced}");
    // Inputs changed while the agent was down are noticed by the digest:
    // both of web's backend sets (TCP, UDP) lose pod-2 and are recomputed.
    t.agent().kill();
    t.agent = None;
    t.write_manifest("web.yaml", &web(&t, &[0, 1], ""));
    t.start_agent(&[]);
    let synced = t
        .agent()
        .wait_for_line("in sync", Duration::from_secs(10), |l| {
            l.contains("LB maps in sync")
        });
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

#[test]
fn restart_with_other_map_sizes_resizes_pinned_maps_under_load() {
    if !require_root("restart_with_other_map_sizes_resizes_pinned_maps_under_load") {
        return;
    }
    let mut t = LbTopology::new(3);
    t.write_manifest("web.yaml", &web(&t, &[0, 1, 2], ""));
    t.write_manifest("fill.yaml", &fillers(20));
    t.start_agent(&[]);
    t.agent()
        .wait_for_line("programmed", Duration::from_secs(10), programmed);
    assert_eq!(pinned_sizes(&t), sluice_datapath::LbMapSizes::default());
    let before = t.lb_list_json();

    let bigger = [
        "--bpf-lb-max-frontends",
        "1024",
        "--bpf-lb-max-services",
        "4096",
        "--bpf-lb-max-backends",
        "8192",
    ];
    let (adopted, load) = restart_under_load(&mut t, Duration::ZERO, &bigger);
    // web: 2 service ids (TCP, UDP) over 3 pods x 2 protocols; 20 fillers.
    assert!(
        adopted.contains("services=22") && adopted.contains("backends=6"),
        "{adopted}"
    );
    assert_eq!(
        pinned_sizes(&t),
        sluice_datapath::LbMapSizes {
            frontends: 1024,
            services: 4096,
            backends: 8192,
        }
    );
    // Entries copied as they were; counters too, short of the connections
    // the old programs counted between the copy and their replacement.
    let after = t.lb_list_json();
    assert_eq!(without_counters(before), without_counters(after.clone()));
    let conns: u64 = after
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["conns"].as_u64())
        .sum();
    assert!(
        conns * 100 >= load.new_ok * 95,
        "{conns} connections counted, {} made: counters not carried over",
        load.new_ok
    );
    assert_eq!(
        t.agent().count_lines(programmed),
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

    // Too small for what is pinned: refused with exit 2 before anything
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
            && last.contains("needs 23 services"),
        "{stderr}"
    );
    assert_eq!(pinned_sizes(&t).services, 4096);
    let tcp = tally(
        &t.client(&["tcp", &format!("{VIP}:80"), "30"]),
        &format!("{VIP}:80"),
    );
    assert_eq!(tcp.values().sum::<u64>(), 30, "{tcp:?}");
}
