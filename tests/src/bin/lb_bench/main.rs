//! `sluice-lb-bench`: the service load-balancing benchmark behind
//! `cargo xtask bench lb`.
//!
//! One run, one machine, the LB test topology (tests/src/topology.rs): for
//! each service count it measures, side by side,
//! (a) direct connections to pod IPs (the physical limit; measured with no
//! agent and again alternating round by round with (b)), (b) sluice's
//! socket LB (client in the node's cgroup), (c) sluice's tc path (the same
//! pinned state adopted by an agent with `--pod-iface` on the client's
//! veth; the client outside the cgroup, so only `tc_pod_ingress`
//! balances; the backends are plain routed pods, as remote ones would be),
//! (c') the tc path on a sluice node: every pod a sluice endpoint the way
//! sluice-cni wires it, so DNATed traffic and its replies are handed from
//! veth to veth in the kernel, measured against direct on that same
//! datapath,
//! (d) kube-proxy's iptables rules loaded with iptables-restore, and (e)
//! IPVS when the kernel has it. Every scale gets a fresh topology, so the
//! netfilter state of one baseline never taxes another.
//!
//! Load comes from `sluice-testpod rr|crr` inside the client pod, against a
//! sample of services spread over the whole list (a linear rule chain pays
//! for its position). Reports go to OUT/lb.{md,json,svg}.
mod kube_proxy;
mod report;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sluice_tests::{
    NetNs,
    topology::{BACKEND_PORT, LbTopology, NODE_NAME, Pod, TempDir, testpod},
    unique,
};

/// One service port and its endpoints (both sluice and the baselines
/// program exactly this).
pub struct Svc {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

pub struct Opts {
    pub scales: Vec<usize>,
    pub endpoints: usize,
    pub secs: u64,
    pub rounds: usize,
    pub rr_conns: u64,
    pub crr_conns: u64,
    /// Distinct services the load walks (spread over the whole list).
    pub sample: usize,
    /// `iptables-legacy-restore` or `iptables-nft-restore`.
    pub iptables_restore: String,
    pub out: PathBuf,
}

/// One path's numbers (medians over rounds).
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub rps: f64,
    pub crr: f64,
    pub connect_p50_us: f64,
    pub connect_p99_us: f64,
    pub errors: u64,
}

/// Paired ratios against direct (request rate, CRR).
#[derive(Clone, Copy, Debug)]
pub struct Ratio {
    pub rps: f64,
    pub crr: f64,
    /// The lowest and highest per-round ratio (the spread the median comes
    /// from; NaN when not paired).
    pub rps_lo: f64,
    pub rps_hi: f64,
    pub crr_lo: f64,
    pub crr_hi: f64,
}

#[derive(Debug)]
pub enum Outcome {
    Measured(Load),
    Skipped(String),
}

pub struct Scale {
    pub services: usize,
    pub direct: Load,
    pub socket: Load,
    pub tc: Load,
    /// (c'): every pod a sluice endpoint; direct and the tc path then both
    /// take sluice's pod-to-pod hand-off.
    pub node_direct: Load,
    pub node_tc: Load,
    /// Median over rounds of (path / direct) for alternated round pairs.
    pub socket_ratio: Ratio,
    pub tc_ratio: Ratio,
    pub node_tc_ratio: Ratio,
    /// The pairing's noise floor: direct from the client pod against direct
    /// from the baseline pod, paired the same way (the ideal is 1).
    pub null_ratio: Ratio,
    /// Socket LB CRR / iptables CRR over alternated rounds (`crr` fields).
    pub socket_vs_iptables: Ratio,
    /// Direct CRR / iptables CRR in those same rounds: the ceiling.
    pub direct_vs_iptables: Ratio,
    /// The same on the sluice-node datapath of (c').
    pub node_null_ratio: Ratio,
    pub iptables: Outcome,
    pub ipvs: Outcome,
    /// Agent-reported: change seen -> maps updated (includes YAML parsing).
    pub sluice_program_ms: f64,
    /// Agent-reported: model + map writes only.
    pub sluice_apply_ms: f64,
    /// Bench-observed: manifest renamed into place -> agent logged done.
    pub sluice_program_wall_ms: f64,
    pub agent_rss_mb: f64,
    /// The agent's CPU use while the socket LB was under load.
    pub agent_cpu_pct: f64,
    /// The same during the tc-path rounds (conntrack GC runs then).
    pub agent_cpu_tc_pct: f64,
    /// sluice's programs: (path, name, runs, mean ns per run), from one
    /// extra round per path with kernel BPF run-time stats on.
    pub prog_costs: Vec<(&'static str, String, u64, f64)>,
    pub agent_peak_rss_mb: f64,
    pub iptables_rules: usize,
    pub iptables_program_ms: f64,
}

const USAGE: &str = "usage: sluice-lb-bench [--services 1,1000,10000] [--endpoints 10] [--secs 2] [--rounds 5] [--rr-conns 4] [--crr-conns 2] [--sample 64] [--iptables legacy|nft] [--out DIR]";

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        scales: vec![1, 1000, 10_000],
        endpoints: 10,
        secs: 2,
        rounds: 5,
        rr_conns: 4,
        // One connecting thread per CPU of this machine kind: more only
        // measures run-queue waits in the connect latency.
        crr_conns: 2,
        sample: 64,
        // kube-proxy writes whichever backend the host uses; legacy is the
        // one that can restore 10 000 services in reasonable time (nft took
        // 8.4 s for 1 000 services and over 10 minutes for 10 000 here).
        iptables_restore: "iptables-legacy-restore".into(),
        out: PathBuf::from("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let val = args
            .next()
            .ok_or_else(|| format!("{flag}: missing value"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: not a positive number: {v:?}"))
        };
        match flag.as_str() {
            "--services" => {
                o.scales = val
                    .split(',')
                    .map(|v| num(v).map(|n| n as usize))
                    .collect::<Result<_, _>>()?
            }
            "--endpoints" => o.endpoints = num(&val)? as usize,
            "--secs" => o.secs = num(&val)?,
            "--rounds" => o.rounds = num(&val)? as usize,
            "--rr-conns" => o.rr_conns = num(&val)?,
            "--crr-conns" => o.crr_conns = num(&val)?,
            "--sample" => o.sample = num(&val)? as usize,
            "--iptables" => {
                o.iptables_restore = match val.as_str() {
                    "legacy" => "iptables-legacy-restore".into(),
                    "nft" => "iptables-nft-restore".into(),
                    _ => return Err(format!("--iptables {val:?}: expected legacy or nft")),
                }
            }
            "--out" => o.out = PathBuf::from(val),
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    // Services get ClusterIPs 10.96.0.10 + i; the ones the load never
    // reaches get endpoints of their own from IDLE_ENDPOINTS (a /12), which
    // bounds the product. The agent's maps are sized to fit (`agent_args`).
    if o.endpoints > 200 {
        return Err(format!("--endpoints {}: at most 200", o.endpoints));
    }
    if let Some(n) = o
        .scales
        .iter()
        .find(|&&n| n * o.endpoints > IDLE_ENDPOINTS_MAX)
    {
        return Err(format!(
            "--services {n}: at most {IDLE_ENDPOINTS_MAX} endpoints in all (services x --endpoints; \
             idle endpoints come from 10.192.0.0/12)"
        ));
    }
    Ok(o)
}

fn main() {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sluice-lb-bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("sluice-lb-bench: needs root (network namespaces, cgroups, eBPF, iptables)");
        std::process::exit(2);
    }
    let steal0 = cpu_steal();
    let mut scales = Vec::new();
    for &n in &opts.scales {
        eprintln!("== {n} services x {} endpoints", opts.endpoints);
        scales.push(run_scale(n, &opts));
    }
    let steal = match (steal0, cpu_steal()) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => 100.0 * (s1 - s0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };
    if let Err(e) = report::write(&opts, &scales, steal) {
        eprintln!("sluice-lb-bench: writing reports: {e}");
        std::process::exit(1);
    }
}

/// Indices of the services the load walks: `sample` spread evenly over
/// all `n`, so lookups hit the whole key range and not one warm corner.
fn sampled(n: usize, sample: usize) -> Vec<usize> {
    let sample = sample.min(n);
    (0..sample)
        .map(|j| j * n / sample + (n / sample) / 2)
        .collect()
}

/// Where the endpoints of services the load never reaches live: their own
/// addresses, as in a cluster where each service selects its own pods
/// (10.192.0.0/12, one block of `endpoints` per service; never routed).
const IDLE_ENDPOINTS: Ipv4Addr = Ipv4Addr::new(10, 192, 0, 0);
const IDLE_ENDPOINTS_MAX: usize = 1 << 20;

/// The agent's flags for `n` services: `extra`, plus LB map capacities
/// when the defaults (64k service ids, 256k backends and frontends) are too
/// small, with headroom, as an operator would set `--bpf-lb-max-*` for such
/// a cluster. Every phase of a scale passes the same sizes, so the pinned
/// maps are created once at that size and adopted after.
fn agent_args(n: usize, o: &Opts, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for (flag, need, default) in [
        ("--bpf-lb-max-services", n, 65_536),
        ("--bpf-lb-max-backends", n * o.endpoints, 262_144),
        ("--bpf-lb-max-frontends", n, 262_144),
    ] {
        let want = (need + need / 8).next_power_of_two();
        if want > default {
            args.extend([flag.to_string(), want.to_string()]);
        }
    }
    args
}

/// `n` services; the sampled ones balance over the backend pods, every
/// other one over endpoints of its own, so programming `n` services writes
/// `n` x endpoints backends, not the same few again.
fn services(n: usize, sample: usize, t: &LbTopology) -> Vec<Svc> {
    let base = u32::from(Ipv4Addr::new(10, 96, 0, 10));
    let mut live = vec![false; n];
    for i in sampled(n, sample) {
        live[i] = true;
    }
    let idle = u32::from(IDLE_ENDPOINTS);
    let per = t.backends.len() as u32;
    (0..n)
        .map(|i| Svc {
            name: format!("svc-{i}"),
            vip: Ipv4Addr::from(base + i as u32),
            port: 80,
            endpoints: if live[i] {
                t.backends.iter().map(|p| (p.ip, BACKEND_PORT)).collect()
            } else {
                (0..per)
                    .map(|k| (Ipv4Addr::from(idle + i as u32 * per + k), BACKEND_PORT))
                    .collect()
            },
        })
        .collect()
}

/// The Services and EndpointSlices, upstream schema, one multi-document file.
fn manifest(svcs: &[Svc]) -> String {
    let mut y = String::with_capacity(svcs.len() * 1600);
    for s in svcs {
        y.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {n}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  ports:\n  - name: http\n    protocol: TCP\n    port: {port}\n    targetPort: {BACKEND_PORT}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {n}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {n}\naddressType: IPv4\nports:\n- name: http\n  protocol: TCP\n  port: {BACKEND_PORT}\nendpoints:\n",
            n = s.name,
            vip = s.vip,
            port = s.port
        ));
        for (ip, _) in &s.endpoints {
            y.push_str(&format!(
                "- addresses: [\"{ip}\"]\n  nodeName: {NODE_NAME}\n  conditions: {{ready: true, serving: true, terminating: false}}\n"
            ));
        }
        y.push_str("---\n");
    }
    y
}

/// Clients open many short connections: let them reuse TIME_WAIT ports
/// and use the whole port range, as load generators do.
fn tune_client(netns: &str) {
    for kv in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65535",
    ] {
        let ok = Command::new("ip")
            .args(["netns", "exec", netns, "sysctl", "-qw", kv])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "sysctl {kv} in {netns}");
    }
}

fn run_scale(n: usize, o: &Opts) -> Scale {
    let mut t = LbTopology::new(o.endpoints);
    tune_client(&t.client.ns.name);
    let svcs = services(n, o.sample, &t);
    let files = TempDir::new();
    let direct_file = files.0.join("direct.txt");
    let vip_file = files.0.join("vips.txt");
    let direct: String = t
        .backends
        .iter()
        .map(|p| format!("{}:{BACKEND_PORT}\n", p.ip))
        .collect();
    std::fs::write(&direct_file, direct).expect("write direct targets");
    let vips: String = sampled(n, o.sample)
        .into_iter()
        .map(|i| format!("{}:{}\n", svcs[i].vip, svcs[i].port))
        .collect();
    std::fs::write(&vip_file, vips).expect("write service targets");

    // The direct baseline runs from its own pod, which no sluice program
    // sees, so it can alternate round by round with every sluice path and
    // each ratio pairs rounds taken under the same conditions (this
    // machine kind is noisy: one path's rate moves by +-20% over minutes).
    let base_pod = t.extra_pod("baseline", BASELINE_IP);
    let base_ns = &base_pod.ns;
    tune_client(&base_ns.name);
    let base = Client::Pod(base_ns);
    let mut direct = Vec::new();
    eprintln!("-- direct (no agent)");
    for _ in 0..o.rounds {
        direct.push(round(&t, base, &direct_file, o));
    }

    eprintln!("-- sluice: programming {n} services");
    let plain = agent_args(n, o, &["--metrics-addr", "127.0.0.1:0"]);
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    t.start_agent(&plain);
    let staged = std::env::temp_dir().join(unique("bench-manifest"));
    std::fs::write(&staged, manifest(&svcs)).expect("stage manifest");
    let t0 = Instant::now();
    std::fs::rename(&staged, t.manifests_dir().join("services.yaml")).expect("rename manifest");
    let want = format!("services={n} ");
    let line = t
        .agent()
        .wait_for_line("all services programmed", Duration::from_secs(600), |l| {
            l.contains("services programmed") && l.contains(&want)
        });
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (rss, peak) = rss_mb(t.agent().pid().expect("agent running"));
    // One phase under the running agent, which stops after it.
    let phase = |t: &mut LbTopology, client: Client, with_null: bool| {
        let p = alternate(t, client, base_ns, &vip_file, &direct_file, with_null, o);
        t.agent().stop();
        t.agent = None;
        p
    };
    eprintln!("-- sluice socket LB (client in the cgroup), alternating with direct");
    let socket_phase = phase(&mut t, Client::InCgroup, true);
    // sluice tc path: the same pinned state, adopted by an agent that also
    // balances on the client's veth; the client runs outside the cgroup.
    let pod_if = t.client.host_if.clone();
    let with_pod_if = agent_args(
        n,
        o,
        &["--pod-iface", &pod_if, "--metrics-addr", "127.0.0.1:0"],
    );
    let with_pod_if: Vec<&str> = with_pod_if.iter().map(String::as_str).collect();
    restart_agent(&mut t, &with_pod_if);
    eprintln!("-- sluice tc path (client outside the cgroup), alternating with direct");
    let tc_phase = phase(&mut t, Client::OutsideCgroup, false);
    // Detach: the links are pinned, so removing the pins is what lets go.
    let _ = std::fs::remove_dir_all(t.pins.path.join("links"));

    // (c') a sluice node: the agent with no --pod-iface, and every pod
    // (client, backends, baseline) an endpoint with the pod programs on
    // its veth, as sluice-cni leaves them. Direct traffic from the
    // baseline pod now takes the same hand-off as the DNATed traffic.
    eprintln!("-- sluice tc path, every pod a sluice endpoint, alternating with direct");
    let mut pods: Vec<&Pod> = t.backends.iter().collect();
    pods.extend([&t.client, &base_pod]);
    let enrolled = t.enroll(&pods);
    restart_agent(&mut t, &plain);
    let node_phase = phase(&mut t, Client::OutsideCgroup, true);
    drop(enrolled);
    direct.extend(socket_phase.direct.iter().copied());
    direct.extend(tc_phase.direct.iter().copied());

    // (d), in rounds alternating with CRR rounds of the socket LB and of
    // direct traffic: the target compares the first two, and rounds minutes
    // apart differ by more than the effect on this machine kind. iptables
    // balances the baseline pod's connections (its jump takes only that
    // veth), the socket LB the client pod's in the cgroup, under an agent
    // that adopts the pinned state; direct is the client pod to pod IPs.
    eprintln!("-- kube-proxy iptables: restoring rules");
    let payload = kube_proxy::iptables_nat(&svcs, "10.244.0.0/16", &base_pod.host_if);
    let t0 = Instant::now();
    let restore = o.iptables_restore.as_str();
    // Bounded: at 100 000 services kube-proxy's ruleset is millions of
    // rules in a million chains, and legacy restore may not finish.
    let restored = pipe_into(
        &t.node.name,
        &["timeout", RESTORE_LIMIT_S, restore, "--noflush"],
        &payload,
    )
    .map_err(|e| match e.contains("exit status: 124") {
        true => format!("gave up after {RESTORE_LIMIT_S} s"),
        false => e,
    });
    let iptables_program_ms = t0.elapsed().as_secs_f64() * 1e3;
    // The node netns now tracks connections (the nat table needs it); the
    // client pod's, balanced by the socket LB, are exempt, as on a node
    // without kube-proxy, where nothing turns conntrack on for them.
    let notrack = format!(
        "*raw\n-A PREROUTING -s {ip}/32 -j CT --notrack\n-A PREROUTING -d {ip}/32 -j CT --notrack\nCOMMIT\n",
        ip = t.client.ip
    );
    let restored =
        restored.and_then(|()| pipe_into(&t.node.name, &[restore, "--noflush"], &notrack));
    let (iptables, socket_vs_iptables, direct_vs_iptables) = match restored {
        Ok(()) => {
            restart_agent(&mut t, &plain);
            eprintln!(
                "-- kube-proxy iptables (baseline pod), alternating with socket LB and direct CRR"
            );
            let (ipt, sock, direct) = against_iptables(&t, base, &vip_file, &direct_file, o);
            t.agent().stop();
            t.agent = None;
            (
                Outcome::Measured(median(&ipt)),
                paired(&sock, &ipt),
                paired(&direct, &ipt),
            )
        }
        Err(e) => (
            Outcome::Skipped(format!("{restore} failed: {e}")),
            paired(&[], &[]),
            paired(&[], &[]),
        ),
    };
    let _ = pipe_into(&t.node.name, &[restore], "*nat\nCOMMIT\n*raw\nCOMMIT\n");

    let ipvs = match ipvs_unavailable(&t) {
        Some(why) => Outcome::Skipped(why),
        None => {
            eprintln!("-- IPVS");
            match ipvs_setup(&t, &svcs) {
                Ok(()) => Outcome::Measured(measure(&t, Client::OutsideCgroup, &vip_file, o)),
                Err(e) => Outcome::Skipped(e),
            }
        }
    };
    Scale {
        services: n,
        direct: median(&direct),
        socket: median(&socket_phase.path),
        tc: median(&tc_phase.path),
        socket_ratio: paired(&socket_phase.path, &socket_phase.direct),
        tc_ratio: paired(&tc_phase.path, &tc_phase.direct),
        node_direct: median(&node_phase.direct),
        node_tc: median(&node_phase.path),
        node_tc_ratio: paired(&node_phase.path, &node_phase.direct),
        null_ratio: paired(&socket_phase.null_a, &socket_phase.null_b),
        socket_vs_iptables,
        direct_vs_iptables,
        node_null_ratio: paired(&node_phase.null_a, &node_phase.null_b),
        iptables,
        ipvs,
        sluice_program_ms: field(&line, "latency_ms").unwrap_or(f64::NAN),
        sluice_apply_ms: field(&line, "apply_ms").unwrap_or(f64::NAN),
        sluice_program_wall_ms: wall_ms,
        agent_rss_mb: rss,
        agent_cpu_pct: socket_phase.agent_cpu_pct,
        agent_cpu_tc_pct: tc_phase.agent_cpu_pct,
        prog_costs: [
            ("socket LB", socket_phase.costs),
            ("tc path", tc_phase.costs),
            ("tc path, endpoints", node_phase.costs),
        ]
        .into_iter()
        .flat_map(|(path, costs)| costs.into_iter().map(move |(n, r, ns)| (path, n, r, ns)))
        .collect(),
        agent_peak_rss_mb: peak,
        iptables_rules: kube_proxy::rule_count(&payload),
        iptables_program_ms,
    }
}

/// Starts an agent on the state a previous one pinned and waits for its
/// first reconcile, so re-reading the manifest (seconds of CPU at 100 000
/// services) does not land in measured rounds.
fn restart_agent(t: &mut LbTopology, args: &[&str]) {
    t.start_agent(args)
        .wait_for_line("agent in sync", Duration::from_secs(600), |l| {
            l.contains("LB maps in sync")
        });
}

/// How long the iptables baseline may take to load its rules.
const RESTORE_LIMIT_S: &str = "1200";

/// `key=value` from a tracing or testpod line.
fn field(line: &str, key: &str) -> Option<f64> {
    let needle = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&needle))
        .and_then(|v| v.parse().ok())
}

/// Runs `f` (an extra, unreported round) with kernel.bpf_stats_enabled on
/// and returns the mean run time of each sluice program that ran. Stats
/// cost every BPF program two clock reads, so the measured rounds run
/// without them.
fn with_bpf_stats(f: impl FnOnce()) -> Vec<(String, u64, f64)> {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before_knob = std::fs::read_to_string(KNOB).unwrap_or_else(|_| "0".into());
    if std::fs::write(KNOB, "1").is_err() {
        return Vec::new();
    }
    let before = prog_stats();
    f();
    let after = prog_stats();
    let _ = std::fs::write(KNOB, before_knob.trim());
    let mut out: Vec<(String, u64, f64)> = after
        .iter()
        .filter_map(|(name, &(ns, runs))| {
            let (ns0, runs0) = before.get(name).copied().unwrap_or((0, 0));
            let runs = runs.checked_sub(runs0)?;
            (runs > 0).then(|| (name.clone(), runs, (ns - ns0) as f64 / runs as f64))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// (run_time_ns, run_cnt) per sluice program name (bpftool shows names cut
/// to 15 characters; loaded copies of one program are summed).
fn prog_stats() -> std::collections::HashMap<String, (u64, u64)> {
    let mut m = std::collections::HashMap::new();
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
    else {
        return m;
    };
    let Ok(progs) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return m;
    };
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        let known = ["sock4_", "tc_lb_", "tc_pod_"]
            .iter()
            .any(|pre| name.starts_with(pre));
        if known {
            let e = m.entry(name.to_string()).or_insert((0, 0));
            e.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            e.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    m
}

/// (steal, total) jiffies of all CPUs: how much of the run a hypervisor
/// gave to someone else, the main source of noise on a shared VM.
fn cpu_steal() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    Some((*cpu.get(7)?, cpu.iter().sum()))
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<f64>() / hz
}

fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// Where the load generator runs.
#[derive(Clone, Copy)]
enum Client<'a> {
    /// The client pod, inside the node's cgroup (socket LB applies).
    InCgroup,
    /// The client pod outside the cgroup (only the tc path can apply).
    OutsideCgroup,
    /// Another pod netns, outside the cgroup.
    Pod(&'a NetNs),
}

/// The direct baseline's pod.
const BASELINE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);

/// `o.rounds` rounds of one path; the median of each figure.
fn measure(t: &LbTopology, client: Client, targets: &Path, o: &Opts) -> Load {
    let runs: Vec<Load> = (0..o.rounds)
        .map(|_| round(t, client, targets, o))
        .collect();
    median(&runs)
}

/// `sluice-testpod ARGS` as `client`; its stdout (stderr's first lines
/// echoed).
fn load_gen(t: &LbTopology, client: Client, args: &[&str]) -> String {
    let mode = args.first().copied().unwrap_or("");
    let mut c = match client {
        Client::InCgroup => t.client_command(args),
        Client::OutsideCgroup => t.client_outside_cgroup_command(args),
        Client::Pod(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name])
                .arg(testpod())
                .args(args);
            c
        }
    };
    let out = c.output().expect("run load generator");
    assert!(
        out.status.success(),
        "load generator {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for l in stderr.lines().take(3) {
        eprintln!("   [{mode}] {l}");
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `sluice-testpod MODE FILE CONNS SECS` (rr or crr) for `o.secs`.
fn timed_run(
    t: &LbTopology,
    client: Client,
    mode: &str,
    targets: &Path,
    conns: u64,
    o: &Opts,
) -> String {
    let (targets, conns, secs) = (
        targets.display().to_string(),
        conns.to_string(),
        o.secs.to_string(),
    );
    load_gen(t, client, &[mode, &targets, &conns, &secs])
}

/// One crr run of `o.secs`: (conns/s, connect p50, connect p99, errors).
fn crr_run(t: &LbTopology, client: Client, targets: &Path, o: &Opts) -> Load {
    let crr = timed_run(t, client, "crr", targets, o.crr_conns, o);
    Load {
        rps: f64::NAN,
        crr: field(&crr, "conns").unwrap_or(0.0) / o.secs as f64,
        connect_p50_us: field(&crr, "connect_p50_us").unwrap_or(f64::NAN),
        connect_p99_us: field(&crr, "connect_p99_us").unwrap_or(f64::NAN),
        errors: field(&crr, "errors").unwrap_or(1.0) as u64,
    }
}

/// One rr run then one crr run of `o.secs` each.
fn round(t: &LbTopology, client: Client, targets: &Path, o: &Opts) -> Load {
    let rr = timed_run(t, client, "rr", targets, o.rr_conns, o);
    let mut l = crr_run(t, client, targets, o);
    l.rps = field(&rr, "requests").unwrap_or(0.0) / o.secs as f64;
    l.errors += field(&rr, "errors").unwrap_or(1.0) as u64;
    log_round(client, &l);
    l
}

fn log_round(client: Client, l: &Load) {
    let who = match client {
        Client::InCgroup => "in cgroup",
        Client::OutsideCgroup => "outside  ",
        Client::Pod(_) => "direct   ",
    };
    eprintln!(
        "   {} rr {:.0}/s  crr {:.0}/s  connect p50 {:.0} us p99 {:.0} us  errors {}",
        who, l.rps, l.crr, l.connect_p50_us, l.connect_p99_us, l.errors
    );
}

/// Slice length of the paired rr runs: long against a request (~30 us),
/// short against the VM's drifts (seconds).
const PAIR_SLICE_MS: u64 = 50;

/// Paired rr: `client` to the services (set A) and the direct pod `base`
/// to the pods (set B) in one load generator, alternating every
/// `PAIR_SLICE_MS`. Returns (path req/s, direct req/s, errors).
fn rr_pair(
    t: &LbTopology,
    client: Client,
    base: &NetNs,
    vip_file: &Path,
    direct_file: &Path,
    secs: u64,
    o: &Opts,
) -> (f64, f64, u64) {
    let out = load_gen(
        t,
        client,
        &[
            "rr-pair",
            &vip_file.display().to_string(),
            &direct_file.display().to_string(),
            &base.name,
            &o.rr_conns.to_string(),
            &secs.to_string(),
            &PAIR_SLICE_MS.to_string(),
        ],
    );
    let rate = |n: &str, s: &str| -> f64 {
        match (field(&out, n), field(&out, s)) {
            (Some(n), Some(s)) if s > 0.0 => n / s,
            _ => 0.0,
        }
    };
    (
        rate("a_requests", "a_secs"),
        rate("b_requests", "b_secs"),
        field(&out, "errors").unwrap_or(1.0) as u64,
    )
}

/// One sluice path measured against direct under the running agent.
struct Phase {
    path: Vec<Load>,
    direct: Vec<Load>,
    /// A/A rounds (request rates only): direct from `client` / direct from
    /// the baseline pod.
    null_a: Vec<Load>,
    null_b: Vec<Load>,
    agent_cpu_pct: f64,
    costs: Vec<(String, u64, f64)>,
}

/// `o.rounds` rounds of the path (`client` to the services) alternating
/// with direct rounds from `base`, the agent's CPU use meanwhile, then one
/// extra round with kernel BPF stats for the programs' run time.
fn alternate(
    t: &LbTopology,
    client: Client,
    base_ns: &NetNs,
    vip_file: &Path,
    direct_file: &Path,
    with_null: bool,
    o: &Opts,
) -> Phase {
    let base = Client::Pod(base_ns);
    let pid = t
        .agent
        .as_ref()
        .and_then(|a| a.pid())
        .expect("agent running");
    // Unreported warm-up: the first seconds after an agent start run
    // measurably slower on this machine kind (for both sets alike).
    let _ = rr_pair(t, client, base_ns, vip_file, direct_file, 1, o);
    let (cpu0, wall0) = (cpu_secs(pid), Instant::now());
    let (mut path, mut direct) = (Vec::new(), Vec::new());
    let (mut null_a, mut null_b) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        if with_null {
            let (a, b, _) = rr_pair(t, client, base_ns, direct_file, direct_file, o.secs, o);
            eprintln!("   A/A null  rr {a:.0}/s vs {b:.0}/s");
            null_a.push(Load {
                rps: a,
                ..Load::default()
            });
            null_b.push(Load {
                rps: b,
                ..Load::default()
            });
        }
        let (path_rps, direct_rps, errors) =
            rr_pair(t, client, base_ns, vip_file, direct_file, o.secs, o);
        let mut p = crr_run(t, client, vip_file, o);
        p.rps = path_rps;
        p.errors += errors;
        log_round(client, &p);
        let mut d = crr_run(t, base, direct_file, o);
        d.rps = direct_rps;
        log_round(base, &d);
        path.push(p);
        direct.push(d);
    }
    let agent_cpu_pct = 100.0 * (cpu_secs(pid) - cpu0) / wall0.elapsed().as_secs_f64();
    eprintln!("   agent CPU while under load: {agent_cpu_pct:.1}%");
    let costs = with_bpf_stats(|| {
        round(t, client, vip_file, o);
    });
    Phase {
        path,
        direct,
        null_a,
        null_b,
        agent_cpu_pct,
        costs,
    }
}

/// `o.rounds` rounds of iptables (rr and CRR from `ipt_client`, which the
/// kube-proxy rules take), each followed by a CRR round of the socket LB
/// (the client pod in the cgroup) and one of direct CRR from the client pod
/// (outside the cgroup, to the pod IPs): the ceiling any LB could reach
/// under the same conditions. Returns (iptables, socket LB, direct).
fn against_iptables(
    t: &LbTopology,
    ipt_client: Client,
    vip_file: &Path,
    direct_file: &Path,
    o: &Opts,
) -> (Vec<Load>, Vec<Load>, Vec<Load>) {
    let (mut ipt, mut sock, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        ipt.push(round(t, ipt_client, vip_file, o));
        for (client, targets, out) in [
            (Client::InCgroup, vip_file, &mut sock),
            (Client::OutsideCgroup, direct_file, &mut direct),
        ] {
            let l = crr_run(t, client, targets, o);
            log_round(client, &l);
            out.push(l);
        }
    }
    (ipt, sock, direct)
}

/// Median of per-pair ratios `a[i] / b[i]`, with their spread.
fn paired(a: &[Load], b: &[Load]) -> Ratio {
    let sorted = |f: fn(&Load) -> f64| -> Vec<f64> {
        let mut v: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let med = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    let (rps, crr) = (sorted(|l| l.rps), sorted(|l| l.crr));
    let ends = |v: &[f64]| {
        (
            v.first().copied().unwrap_or(f64::NAN),
            v.last().copied().unwrap_or(f64::NAN),
        )
    };
    let ((rps_lo, rps_hi), (crr_lo, crr_hi)) = (ends(&rps), ends(&crr));
    Ratio {
        rps: med(&rps),
        crr: med(&crr),
        rps_lo,
        rps_hi,
        crr_lo,
        crr_hi,
    }
}

/// Per-figure medians (errors summed).
fn median(runs: &[Load]) -> Load {
    let med = |f: fn(&Load) -> f64| -> f64 {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Load {
        rps: med(|l| l.rps),
        crr: med(|l| l.crr),
        connect_p50_us: med(|l| l.connect_p50_us),
        connect_p99_us: med(|l| l.connect_p99_us),
        errors: runs.iter().map(|l| l.errors).sum(),
    }
}

/// Runs `cmd` inside netns `ns` with `input` on stdin.
fn pipe_into(ns: &str, cmd: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", cmd[0]))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let write = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{} exited {}: {}",
            cmd[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    write.map_err(|e| format!("{}: writing stdin: {e}", cmd[0]))
}

/// Why IPVS cannot be measured here, if it cannot.
fn ipvs_unavailable(t: &LbTopology) -> Option<String> {
    let probe = Command::new("ip")
        .args(["netns", "exec", &t.node.name, "ipvsadm", "-Ln"])
        .output();
    match probe {
        Err(e) => Some(format!("ipvsadm not runnable: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "kernel has no IPVS: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("ipvsadm -Ln failed")
        )),
        Ok(_) => None,
    }
}

fn ipvs_setup(t: &LbTopology, svcs: &[Svc]) -> Result<(), String> {
    let ns = &t.node.name;
    pipe_into(
        ns,
        &["ip", "link", "add", "kube-ipvs0", "type", "dummy"],
        "",
    )?;
    pipe_into(
        ns,
        &["ip", "-batch", "-"],
        &kube_proxy::ipvs_vip_batch("kube-ipvs0", svcs),
    )?;
    pipe_into(ns, &["ipvsadm", "-R"], &kube_proxy::ipvsadm_restore(svcs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(endpoints: usize) -> Opts {
        Opts {
            scales: vec![1],
            endpoints,
            secs: 1,
            rounds: 1,
            rr_conns: 1,
            crr_conns: 1,
            sample: 64,
            iptables_restore: String::new(),
            out: PathBuf::new(),
        }
    }

    #[test]
    fn map_sizes_are_raised_only_past_the_defaults() {
        assert_eq!(agent_args(10_000, &opts(10), &["-x"]), ["-x"]);
        assert_eq!(
            agent_args(100_000, &opts(10), &[]),
            [
                "--bpf-lb-max-services",
                "131072",
                "--bpf-lb-max-backends",
                "2097152"
            ]
        );
    }

    #[test]
    fn samples_spread_over_all_services() {
        assert_eq!(sampled(1, 64), [0]);
        let s = sampled(100_000, 64);
        assert_eq!(s.len(), 64);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s[0] < 100_000 / 64 && s[63] >= 100_000 - 100_000 / 64);
    }
}
