//! `sluice-scheduler-bench --out DIR [--nodes 1000] [--pods 10000]
//! [--large-nodes 5000] [--clients 4] [--inflight 4] [--lease-renew-s 10]`,
//! run by `cargo xtask bench scheduler`: the scheduler's throughput against
//! the same API server's raw binding throughput, in one run. Writes
//! DIR/scheduler.{md,json,svg}.
//!
//! Each measurement is a fresh `sluice-server` (embedded store) with N
//! kwok-style fake Nodes (Node objects + Leases renewed every 10 s, no
//! kubelet), then P pods created by several clients at once:
//! - raw: scheduler and controllers off (`--disable scheduler,controllers`);
//!   a client binds each pod it sees, round-robin over the nodes, through
//!   `pods/binding`, deciding nothing (64 bindings in flight, the
//!   scheduler's own limit);
//! - scheduler: controllers off (`--disable controllers`) so nothing else
//!   acts; the in-process scheduler places them.
//!
//! Scheduled pods/s is P over first create to last binding seen through a
//! watch; create->bind latency is per pod, from the start of its create
//! request to its binding seen by the watch.
use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};
use sluice_tests::{
    bench_args::{BenchArgs, pct_ms, write_report},
    cp_bench::{BoundTracker, Cluster, create_pods, curve, plot_curves, spawn_raw_binder},
};

struct Opts {
    out: PathBuf,
    nodes: usize,
    pods: usize,
    large_nodes: usize,
    clients: usize,
    inflight: usize,
    renew: Duration,
}

#[derive(Clone, Copy, PartialEq)]
enum Binder {
    Raw,
    Scheduler,
}

/// One measurement: its JSON row and its cumulative curve.
async fn measure(binder: Binder, nodes: usize, o: &Opts) -> (Value, Vec<f64>) {
    let (name, flags): (&str, &[&str]) = match binder {
        Binder::Raw => ("raw binding", &["--disable", "scheduler,controllers"]),
        Binder::Scheduler => ("scheduler", &["--disable", "controllers"]),
    };
    eprintln!("-- {name}: {nodes} nodes, {} pods", o.pods);
    let cluster = Cluster::start(flags, nodes, o.renew).await;
    let binder_task = (binder == Binder::Raw)
        .then(|| spawn_raw_binder(cluster.client.clone(), cluster.nodes.clone(), 64));
    let (tracker, watch) = BoundTracker::start(cluster.client.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..o.clients {
        clients.push(cluster.server.client().await);
    }
    let t0 = std::time::Instant::now();
    let started = create_pods(&clients, "p", o.pods, o.inflight).await;
    let creates_s = t0.elapsed().as_secs_f64();
    let ceiling = Duration::from_secs(120 + o.pods as u64 / 20);
    tracker.wait_for(o.pods, ceiling).await;
    let bound = tracker.snapshot();
    let (rss, hwm) = cluster.rss_mib();
    if let Some(t) = binder_task {
        t.abort();
    }
    watch.abort();
    let first = started.values().min().copied().unwrap_or(t0);
    let last = bound.values().max().copied().unwrap_or(t0);
    let span = last.saturating_duration_since(first).as_secs_f64();
    let mut lat: Vec<Duration> = started
        .iter()
        .filter_map(|(n, s)| bound.get(n).map(|b| b.saturating_duration_since(*s)))
        .collect();
    let row = json!({
        "binder": name,
        "nodes": nodes,
        "pods": o.pods,
        "creates_per_s": o.pods as f64 / creates_s,
        "bound_per_s": o.pods as f64 / span,
        "first_create_to_last_bind_s": span,
        "create_to_bind_p50_ms": pct_ms(&mut lat, 0.5),
        "create_to_bind_p99_ms": pct_ms(&mut lat, 0.99),
        "rss_mib": rss,
        "rss_peak_mib": hwm,
    });
    eprintln!("-- {name}: {row}");
    (row, curve(first, bound.into_values()))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = BenchArgs::parse(
        "sluice-scheduler-bench --out DIR [--nodes 1000] [--pods 10000] [--large-nodes 5000 (0: skip)] \
         [--clients 4] [--inflight 4] [--lease-renew-s 10]",
        &[
            "--out",
            "--nodes",
            "--pods",
            "--large-nodes",
            "--clients",
            "--inflight",
            "--lease-renew-s",
        ],
    );
    let o = Opts {
        out: args.path("--out", "target/bench"),
        nodes: args.num("--nodes", 1000),
        pods: args.num("--pods", 10_000),
        large_nodes: args.num("--large-nodes", 5000),
        clients: args.num("--clients", 4),
        inflight: args.num("--inflight", 4),
        renew: Duration::from_secs(args.num("--lease-renew-s", 10) as u64),
    };
    if o.nodes == 0 || o.pods == 0 || o.clients == 0 || o.inflight == 0 || o.renew.is_zero() {
        args.fail("--nodes, --pods, --clients, --inflight and --lease-renew-s must be positive");
    }
    let mut sizes = vec![o.nodes];
    if o.large_nodes > 0 && o.large_nodes != o.nodes {
        sizes.push(o.large_nodes);
    }
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut ratios = Vec::new();
    for &n in &sizes {
        let (raw, raw_curve) = measure(Binder::Raw, n, &o).await;
        let (sched, sched_curve) = measure(Binder::Scheduler, n, &o).await;
        let ratio = f(&sched, "bound_per_s") / f(&raw, "bound_per_s");
        ratios.push(json!({"nodes": n, "scheduler_over_raw": ratio,
            "scheduler_pods_per_s": f(&sched, "bound_per_s")}));
        curves.push((format!("raw binding, {n} nodes"), raw_curve));
        curves.push((format!("scheduler, {n} nodes"), sched_curve));
        rows.push(raw);
        rows.push(sched);
    }

    let mut md = format!(
        "# Scheduler benchmark\n\nEach row is a fresh sluice-server (embedded store) with N \
         kwok-style fake Nodes (Node + Lease renewed every {} s, no kubelet) and {} pods \
         (two containers with requests) created by {} clients with {} requests in flight each. \
         *raw binding*: scheduler and controllers off, a client binds each pod it sees \
         round-robin through `pods/binding` (64 in flight), deciding nothing. *scheduler*: \
         controllers off, the in-process scheduler places them. pods/s = pods over first create \
         to last binding seen by a watch; latency = create request start to binding seen.\n\n\
         | binder | nodes | pods | creates/s | pods bound/s | create->bind p50 (ms) | \
         create->bind p99 (ms) | server RSS (MiB) | peak RSS (MiB) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        o.renew.as_secs(),
        o.pods,
        o.clients,
        o.inflight
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            r["binder"].as_str().unwrap_or_default(),
            r["nodes"],
            r["pods"],
            f(r, "creates_per_s"),
            f(r, "bound_per_s"),
            f(r, "create_to_bind_p50_ms"),
            f(r, "create_to_bind_p99_ms"),
            f(r, "rss_mib"),
            f(r, "rss_peak_mib"),
        ));
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    md.push_str("\n## Targets\n\n| target | nodes | measured | bound | verdict |\n|---|---:|---:|---:|---|\n");
    for r in &ratios {
        let (ratio, rate) = (f(r, "scheduler_over_raw"), f(r, "scheduler_pods_per_s"));
        md.push_str(&format!(
            "| scheduler / raw binding rate | {} | {ratio:.2}x | >= 0.8x | {} |\n\
             | scheduled pods/s | {} | {rate:.0} | >= 1000 | {} |\n",
            r["nodes"],
            verdict(ratio >= 0.8),
            r["nodes"],
            verdict(rate >= 1000.0)
        ));
    }
    let svg = o.out.join("scheduler.svg");
    if let Err(e) = std::fs::create_dir_all(&o.out)
        .map_err(|e| e.to_string())
        .and_then(|()| plot_curves(&svg, &format!("{} pods bound over time", o.pods), &curves))
    {
        eprintln!("{e}");
    }
    md.push_str("\nPlot: scheduler.svg (pods bound since the first create).\n");
    write_report(
        &o.out,
        "scheduler",
        &md,
        &json!({"rows": rows, "ratios": ratios}),
    );
}
