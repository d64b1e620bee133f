//! `sluice-cni-bench --out DIR [--adds N] [--secs S] [--rounds R]`, run by
//! `cargo xtask bench cni`: sluice-cni side by side with the reference
//! bridge + host-local in one run. ADD and DEL latency (sequential and 8
//! parallel callers), pod-to-pod request/response rate and bulk throughput
//! between two pods on one node, rounds alternating between the plugins. Writes
//! DIR/cni.{md,json}.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice_tests::{
    Daemon, NetNs, PinDir,
    bench_args::{BenchArgs, median, pct_ms, write_report},
    bin,
    cni_suite::{invoke, pod_ip},
    topology::{TempDir, serve_in, testpod},
    unique,
};

use sluice_tests::cni_suite::REFERENCE_PLUGINS as REFERENCE;

struct Opts {
    out: PathBuf,
    adds: usize,
    secs: u64,
    rounds: usize,
    conns: usize,
}

struct Plugin {
    name: &'static str,
    path: PathBuf,
    conf: Value,
    node: NetNs,
    _dirs: (TempDir, PinDir),
}

impl Plugin {
    fn call(&self, cmd: &str, cid: &str, pod: &NetNs) -> (bool, Duration, Value) {
        let env = [
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_NETNS", pod.path().display().to_string()),
        ];
        let t = Instant::now();
        let r = invoke(
            &self.node,
            &self.path,
            REFERENCE,
            &env,
            &self.conf.to_string(),
        );
        let dt = t.elapsed();
        if !r.ok {
            eprintln!("{} {cmd} {cid} failed: {}", self.name, r.describe());
        }
        (r.ok, dt, r.json())
    }
}

fn plugins() -> Vec<Plugin> {
    let (d1, p1) = (TempDir::new(), PinDir::new());
    let sluice_conf = json!({"cniVersion": "1.0.0", "name": unique("bench"), "type": "sluice-cni",
        "podCIDR": "10.82.0.0/22", "dataDir": d1.0.join("ipam").display().to_string(),
        "bpffs": p1.path.display().to_string(), "mtu": 1500});
    let (d2, p2) = (TempDir::new(), PinDir::new());
    let bridge_conf = json!({"cniVersion": "1.0.0", "name": unique("bench"), "type": "bridge",
        "bridge": "slbbr0", "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.83.0.0/22",
                 "dataDir": d2.0.display().to_string()}});
    vec![
        Plugin {
            name: "sluice-cni",
            path: bin("sluice-cni"),
            conf: sluice_conf,
            node: NetNs::new(),
            _dirs: (d1, p1),
        },
        Plugin {
            name: "bridge+host-local",
            path: Path::new(REFERENCE).join("bridge"),
            conf: bridge_conf,
            node: NetNs::new(),
            _dirs: (d2, p2),
        },
    ]
}

/// ADD then DEL latencies for `n` pods with `par` concurrent callers.
fn latencies(p: &Plugin, n: usize, par: usize, tag: &str) -> (Vec<Duration>, Vec<Duration>, usize) {
    let pods: Vec<NetNs> = (0..n).map(|_| NetNs::new()).collect();
    let run = |cmd: &str| -> (Vec<Duration>, usize) {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..par)
                .map(|w| {
                    let pods = &pods;
                    s.spawn(move || {
                        let (mut d, mut errs) = (Vec::new(), 0);
                        for i in (w..n).step_by(par) {
                            let (ok, dt, _) = p.call(cmd, &format!("{tag}-{i}"), &pods[i]);
                            d.push(dt);
                            errs += usize::from(!ok);
                        }
                        (d, errs)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("worker")).fold(
                (Vec::new(), 0),
                |(mut a, e), (d, x)| {
                    a.extend(d);
                    (a, e + x)
                },
            )
        })
    };
    let (adds, e1) = run("ADD");
    let (dels, e2) = run("DEL");
    (adds, dels, e1 + e2)
}

/// Pod-to-pod on `p`'s node: request/response rate over one persistent
/// connection (netperf TCP_RR-style: latency-bound) and over `conns`
/// (CPU-bound on this machine), and bulk throughput over one connection
/// in Gbit/s.
fn pod_to_pod(p: &Plugin, secs: u64, conns: usize, round: usize) -> (f64, f64, f64) {
    let (a, b) = (NetNs::new(), NetNs::new());
    let (ca, cb) = (format!("p2p-a-{round}"), format!("p2p-b-{round}"));
    let (ok_a, _, _) = p.call("ADD", &ca, &a);
    let (ok_b, _, rb) = p.call("ADD", &cb, &b);
    let (mut rate1, mut rate, mut gbit) = (f64::NAN, f64::NAN, f64::NAN);
    if ok_a && ok_b {
        let ip_b = pod_ip(&rb, "eth0").unwrap_or_default();
        let in_b = |args: &[&str]| {
            let mut c = b.command(testpod());
            c.args(args);
            c
        };
        let _echo = serve_in(&b, "pod-b", 8080);
        let mut sink = Daemon::from_command("pod-b-sink", in_b(&["sink", "9090"]));
        sink.wait_for_line("sink", Duration::from_secs(10), |l| l.contains("sink"));
        let file = TempDir::new();
        let targets = file.0.join("targets");
        std::fs::write(&targets, format!("{ip_b}:8080\n")).expect("targets");
        let from_a = |args: &[&str]| -> String {
            let out = a.command(testpod()).args(args).output().expect("client");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let value = |text: &str, key: &str| -> f64 {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let secs_s = secs.to_string();
        let targets_s = targets.display().to_string();
        let rr = |n: usize| {
            value(
                &from_a(&["rr", &targets_s, &n.to_string(), &secs_s]),
                "requests=",
            ) / secs as f64
        };
        rate1 = rr(1);
        rate = rr(conns);
        let bytes = value(
            &from_a(&["stream", &format!("{ip_b}:9090"), &secs_s]),
            "bytes=",
        );
        gbit = bytes * 8.0 / secs as f64 / 1e9;
    }
    p.call("DEL", &ca, &a);
    p.call("DEL", &cb, &b);
    (rate1, rate, gbit)
}

fn main() {
    let args = BenchArgs::parse(
        "sluice-cni-bench --out DIR [--adds 100] [--secs 3] [--rounds 3] [--conns 4]",
        &["--out", "--adds", "--secs", "--rounds", "--conns"],
    );
    let o = Opts {
        out: args.path("--out", "target/bench"),
        adds: args.num("--adds", 100),
        secs: args.num("--secs", 3) as u64,
        rounds: args.num("--rounds", 3),
        conns: args.num("--conns", 4),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        args.fail("needs root (network namespaces, eBPF)");
    }
    let ps = plugins();
    // First use (sluice loads and pins its programs; bridge creates the
    // bridge) is not what a steady node pays per pod.
    for p in &ps {
        let w = NetNs::new();
        p.call("ADD", "warm", &w);
        p.call("DEL", "warm", &w);
    }
    let mut rows = Vec::new();
    for p in &ps {
        eprintln!("-- {}: {} sequential ADD/DEL", p.name, o.adds);
        let (mut a1, mut d1, e1) = latencies(p, o.adds, 1, "seq");
        eprintln!("-- {}: {} ADD/DEL from 8 callers", p.name, o.adds);
        let (mut a8, mut d8, e8) = latencies(p, o.adds, 8, "par");
        rows.push(json!({
            "plugin": p.name,
            "add_seq_p50_ms": pct_ms(&mut a1, 0.5), "add_seq_p99_ms": pct_ms(&mut a1, 0.99),
            "del_seq_p50_ms": pct_ms(&mut d1, 0.5), "del_seq_p99_ms": pct_ms(&mut d1, 0.99),
            "add_par8_p50_ms": pct_ms(&mut a8, 0.5), "add_par8_p99_ms": pct_ms(&mut a8, 0.99),
            "del_par8_p50_ms": pct_ms(&mut d8, 0.5), "del_par8_p99_ms": pct_ms(&mut d8, 0.99),
            "errors": e1 + e8,
        }));
    }
    let mut rr1: Vec<Vec<f64>> = vec![Vec::new(); ps.len()];
    let mut rr: Vec<Vec<f64>> = vec![Vec::new(); ps.len()];
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); ps.len()];
    for round in 0..o.rounds {
        for (i, p) in ps.iter().enumerate() {
            eprintln!("-- {}: pod-to-pod, round {}", p.name, round + 1);
            let (r1, r, t) = pod_to_pod(p, o.secs, o.conns, round);
            rr1[i].push(r1);
            rr[i].push(r);
            tput[i].push(t);
        }
    }
    let paired =
        |v: &[Vec<f64>]| -> f64 { median(v[0].iter().zip(&v[1]).map(|(a, b)| a / b).collect()) };
    for (i, row) in rows.iter_mut().enumerate() {
        row["pod_rr1_per_s"] = json!(median(rr1[i].clone()));
        row["pod_rr_per_s"] = json!(median(rr[i].clone()));
        row["pod_gbit_per_s"] = json!(median(tput[i].clone()));
    }
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let add_ratio = f(&rows[0], "add_seq_p50_ms") / f(&rows[1], "add_seq_p50_ms");
    let (rr1_ratio, rr_ratio, tput_ratio) = (paired(&rr1), paired(&rr), paired(&tput));
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut md = format!(
        "# CNI benchmark\n\n{} ADDs then DELs per mode; pod-to-pod request/response over 1 \
         and over {} persistent connections, and bulk throughput over one connection, {} s each, \
         {} rounds alternating plugins (median).\n\n\
         | plugin | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | ADD p50 ms (8 par) | ADD p99 ms (8 par) | DEL p50 ms (8 par) | DEL p99 ms (8 par) | pod-to-pod req/s (1 conn) | pod-to-pod req/s ({} conns) | pod-to-pod Gbit/s | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        o.adds, o.conns, o.secs, o.rounds, o.conns
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} | {} |\n",
            r["plugin"].as_str().unwrap_or(""),
            f(r, "add_seq_p50_ms"),
            f(r, "add_seq_p99_ms"),
            f(r, "del_seq_p50_ms"),
            f(r, "del_seq_p99_ms"),
            f(r, "add_par8_p50_ms"),
            f(r, "add_par8_p99_ms"),
            f(r, "del_par8_p50_ms"),
            f(r, "del_par8_p99_ms"),
            f(r, "pod_rr1_per_s"),
            f(r, "pod_rr_per_s"),
            f(r, "pod_gbit_per_s"),
            r["errors"]
        ));
    }
    md.push_str(&format!(
        "\n## Targets\n\n| target | value | bound | verdict |\n|---|---:|---:|---|\n\
         | ADD p50, sluice / reference | {add_ratio:.2} x | <= 1 x | {} |\n\
         | pod-to-pod request rate over 1 connection, sluice / bridge (median of paired rounds; reported: latency-bound, dominated by wake-up latency on a VM) | {rr1_ratio:.2} x | - | - |\n\
         | pod-to-pod request rate over {} connections, sluice / bridge (median of paired rounds) | {rr_ratio:.2} x | >= 1.1 x | {} |\n\
         | pod-to-pod throughput, sluice / bridge (median of paired rounds; reported, no target) | {tput_ratio:.2} x | - | - |\n",
        verdict(add_ratio <= 1.0),
        o.conns,
        verdict(rr_ratio >= 1.1)
    ));
    let json = json!({"rows": rows, "rr1_rounds": rr1, "rr_rounds": rr, "gbit_rounds": tput,
               "add_p50_ratio": add_ratio, "rr1_ratio": rr1_ratio, "rr_ratio": rr_ratio,
               "gbit_ratio": tput_ratio, "conns": o.conns});
    write_report(&o.out, "cni", &md, &json);
}
