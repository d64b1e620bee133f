//! `sluice-api-bench --out DIR [--saturate N] [--seconds S] [--pods P]`,
//! run by `cargo xtask bench api`: sluice-server on the embedded store and
//! on a real etcd (one member, Debian's etcd 3.4, same disk), one after the
//! other on this machine, driven through kube-rs (the client agents and
//! controllers use). Writes DIR/api.{md,json}.
//!
//! Per store: create throughput at saturation (16 requests in flight);
//! create and get latency at a fixed 100 requests/s (open loop: requests
//! start on schedule whether or not earlier ones finished), with the
//! delivery latency of each create to a watcher; LIST of P pods (10 000);
//! the server's RSS with them stored.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    api::{ListParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::{Value, json};
use sluice_tests::{
    api_server::ApiServer,
    bench_args::{BenchArgs, median, pct_ms, rss_mib, write_report},
    etcd::EtcdCluster,
};

const NS: &str = "bench";
const QPS: u64 = 100;

struct Opts {
    out: PathBuf,
    saturate: usize,
    seconds: u64,
    pods: usize,
}

/// A pod of realistic size (two containers, labels, env, resources;
/// ~1.3 KiB stored after defaulting).
fn pod(name: &str, i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench", "shard": (i % 10).to_string()}},
        "spec": {
            "nodeName": format!("node-{}", i % 50),
            "containers": [
                {"name": "app", "image": "registry.example/app:1.0",
                 "ports": [{"containerPort": 8080, "name": "http"}],
                 "env": [{"name": "MODE", "value": "bench"}, {"name": "SHARD", "value": (i % 10).to_string()}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "proxy", "image": "registry.example/proxy:2.1", "args": ["--listen", ":15001"]},
            ],
        },
    }))
    .expect("pod template")
}

/// Creates `n` pods named `{prefix}-{i}` with `inflight` requests at once;
/// returns creates per second.
async fn saturate(pods: &Api<Pod>, prefix: &str, n: usize, inflight: usize) -> f64 {
    let t = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(inflight, |i| async move {
            pods.create(&PostParams::default(), &pod(&format!("{prefix}-{i}"), i))
                .await
                .expect("create");
        })
        .await;
    n as f64 / t.elapsed().as_secs_f64()
}

/// Runs `op(i)` at QPS for `seconds` on schedule (open loop); returns
/// each request's latency from its scheduled start.
async fn fixed_rate<F, Fut>(seconds: u64, op: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / QPS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for i in 0..(seconds * QPS) as usize {
        let scheduled = tick.tick().await;
        let fut = op(i);
        tasks.push(tokio::spawn(async move {
            fut.await;
            scheduled.elapsed()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

async fn measure(name: &str, s: &ApiServer, o: &Opts) -> Value {
    let client = s.client().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}})).expect("namespace"),
    )
    .await
    .expect("create namespace");
    let pods: Api<Pod> = Api::namespaced(client, NS);

    eprintln!("-- {name}: {} creates at saturation", o.saturate);
    let sat = saturate(&pods, "sat", o.saturate, 16).await;

    eprintln!("-- {name}: creates at {QPS}/s for {} s, watched", o.seconds);
    let rv = pods
        .list_metadata(&ListParams::default().limit(1))
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let expected = (o.seconds * QPS) as usize;
    let watcher = {
        let (pods, started) = (pods.clone(), started.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let stream = pods
                .watch(&WatchParams::default().timeout(290), &rv)
                .await
                .expect("watch");
            let mut stream = std::pin::pin!(stream);
            while seen.len() < expected {
                match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                    Ok(Some(Ok(WatchEvent::Added(p)))) => {
                        let at = Instant::now();
                        let name = p.metadata.name.unwrap_or_default();
                        if let Some(t0) = started.lock().ok().and_then(|m| m.get(&name).copied()) {
                            seen.push(at - t0);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    other => panic!(
                        "watch ended early: {:?}",
                        other.map(|o| o.map(|r| r.map(|_| ())))
                    ),
                }
            }
            seen
        })
    };
    let mut create_lat = {
        let pods = pods.clone();
        fixed_rate(o.seconds, move |i| {
            let (pods, started) = (pods.clone(), started.clone());
            async move {
                let name = format!("rate-{i}");
                if let Ok(mut m) = started.lock() {
                    m.insert(name.clone(), Instant::now());
                }
                pods.create(&PostParams::default(), &pod(&name, i))
                    .await
                    .expect("create");
            }
        })
        .await
    };
    let mut watch_lat = watcher.await.expect("watcher");

    eprintln!("-- {name}: gets at {QPS}/s for {} s", o.seconds);
    let have = o.saturate;
    let mut get_lat = {
        let pods = pods.clone();
        fixed_rate(o.seconds, move |i| {
            let pods = pods.clone();
            async move {
                pods.get(&format!("sat-{}", (i * 7919) % have))
                    .await
                    .expect("get");
            }
        })
        .await
    };

    let stored = o.saturate + expected;
    let fill = o.pods.saturating_sub(stored);
    eprintln!("-- {name}: filling to {} pods", o.pods);
    saturate(&pods, "fill", fill, 16).await;
    let mut list_ms = Vec::new();
    let mut paged_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let l = pods.list(&ListParams::default()).await.expect("list");
        list_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(l.items.len(), stored + fill, "LIST lost pods");
        // kubectl's way: pages of 500.
        let t = Instant::now();
        let mut lp = ListParams::default().limit(500);
        let mut n = 0;
        loop {
            let page = pods.list(&lp).await.expect("paged list");
            n += page.items.len();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => break,
            }
        }
        paged_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(n, stored + fill, "paged LIST lost pods");
    }
    let (rss, hwm) = s.pid().map_or((f64::NAN, f64::NAN), rss_mib);
    json!({
        "store": name,
        "creates_per_s_saturated": sat,
        "create_p50_ms": pct_ms(&mut create_lat, 0.5), "create_p99_ms": pct_ms(&mut create_lat, 0.99),
        "get_p50_ms": pct_ms(&mut get_lat, 0.5), "get_p99_ms": pct_ms(&mut get_lat, 0.99),
        "watch_p50_ms": pct_ms(&mut watch_lat, 0.5), "watch_p99_ms": pct_ms(&mut watch_lat, 0.99),
        "list_all_ms": median(list_ms), "list_paged_500_ms": median(paged_ms),
        "pods": stored + fill,
        "rss_mib": rss, "rss_peak_mib": hwm,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = BenchArgs::parse(
        "sluice-api-bench --out DIR [--saturate 2000] [--seconds 10] [--pods 10000]",
        &["--out", "--saturate", "--seconds", "--pods"],
    );
    let o = Opts {
        out: args.path("--out", "target/bench"),
        saturate: args.num("--saturate", 2000),
        seconds: args.num("--seconds", 10) as u64,
        pods: args.num("--pods", 10_000),
    };
    if o.saturate == 0 || o.seconds == 0 {
        args.fail("--saturate and --seconds must be positive");
    }
    let embedded = {
        let s = ApiServer::api_only(&[]);
        measure("embedded", &s, &o).await
    };
    let etcd = {
        let cluster = EtcdCluster::start(1);
        let s = ApiServer::api_only(&cluster.endpoints());
        measure("etcd", &s, &o).await
    };
    let rows = [embedded, etcd];
    let keys = [
        ("creates_per_s_saturated", "creates/s, 16 in flight"),
        ("create_p50_ms", "create p50 at 100/s (ms)"),
        ("create_p99_ms", "create p99 at 100/s (ms)"),
        ("get_p50_ms", "get p50 at 100/s (ms)"),
        ("get_p99_ms", "get p99 at 100/s (ms)"),
        ("watch_p50_ms", "create -> watch event p50 (ms)"),
        ("watch_p99_ms", "create -> watch event p99 (ms)"),
        ("list_all_ms", "LIST all pods, one request (ms)"),
        ("list_paged_500_ms", "LIST all pods, pages of 500 (ms)"),
        ("rss_mib", "server RSS after (MiB)"),
        ("rss_peak_mib", "server peak RSS (MiB)"),
    ];
    let mut md = format!(
        "# API server benchmark\n\nsluice-server on the embedded store and on etcd 3.4 (1 member, \
         loopback, same disk), driven by kube-rs with typed Pods (~1.3 KiB each): {} creates at \
         saturation, {} s of creates then {} s of gets at {QPS}/s (open loop, latency from the \
         scheduled start), each create's delivery to a watcher, then LIST with {} pods stored.\n\n\
         | measure | embedded | etcd |\n|---|---:|---:|\n",
        o.saturate, o.seconds, o.seconds, rows[0]["pods"]
    );
    for (k, label) in keys {
        md.push_str(&format!(
            "| {label} | {:.2} | {:.2} |\n",
            rows[0][k].as_f64().unwrap_or(f64::NAN),
            rows[1][k].as_f64().unwrap_or(f64::NAN)
        ));
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    md.push_str("\n## Targets\n\n| target | embedded | etcd | bound | verdict |\n|---|---:|---:|---:|---|\n");
    for (k, label, bound) in [
        ("create_p99_ms", "create p99 at 100/s", 50.0),
        ("list_all_ms", "LIST of all pods", 1000.0),
        ("rss_mib", "server RSS with the pods stored (MiB)", 200.0),
    ] {
        let (e, c) = (
            rows[0][k].as_f64().unwrap_or(f64::NAN),
            rows[1][k].as_f64().unwrap_or(f64::NAN),
        );
        md.push_str(&format!(
            "| {label} | {e:.1} | {c:.1} | < {bound} | {} |\n",
            verdict(e < bound && c < bound)
        ));
    }
    write_report(&o.out, "api", &md, &json!({"rows": rows}));
}
