//! `sluice-store-bench --out DIR [--ops N] [--rounds R]`, run by
//! `cargo xtask bench store`: the embedded store and a real etcd (one
//! member, Debian's etcd 3.4, data on the same disk) side by side in one
//! run. Both acknowledge a write only once it is on disk (redb commits
//! with fsync; etcd fsyncs its WAL). Writes DIR/store.{md,json}.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use serde_json::{Value, json};
use sluice_store::{ListRequest, Store, WatchEvent, embedded, etcd};
use sluice_tests::{
    bench_args::{BenchArgs, median, pct_ms, write_report},
    etcd::EtcdCluster,
    topology::TempDir,
};

struct Opts {
    out: PathBuf,
    ops: usize,
    rounds: usize,
}

/// Creates/s from `writers` concurrent tasks writing `ops` keys in total.
async fn creates(s: Arc<dyn Store>, prefix: &str, ops: usize, writers: usize) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (s, prefix) = (s.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            for i in (w..ops).step_by(writers) {
                s.create(&format!("{prefix}{i:07}"), vec![b'v'; 512])
                    .await
                    .expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    ops as f64 / t.elapsed().as_secs_f64()
}

/// Latencies of `n` compare-and-swap updates of one key.
async fn cas(s: &dyn Store, key: &str, n: usize) -> Vec<Duration> {
    let mut rev = s.create(key, b"0".to_vec()).await.expect("create");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        rev = s
            .update(key, i.to_string().into_bytes(), rev)
            .await
            .expect("update");
        out.push(t.elapsed());
    }
    out
}

/// Write call start -> event received, for `n` sequential writes.
async fn watch_latency(s: &dyn Store, prefix: &str, n: usize) -> Vec<Duration> {
    let now = s.current_revision().await.expect("revision");
    let mut w = s.watch(prefix, now).await.expect("watch");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let rev = s
            .create(&format!("{prefix}{i:06}"), b"w".to_vec())
            .await
            .expect("create");
        loop {
            match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
                Ok(Some(Ok(WatchEvent::Put { kv, .. }))) if kv.mod_revision == rev => break,
                Ok(Some(Ok(_))) => continue,
                other => panic!("watch: {other:?}"),
            }
        }
        out.push(t.elapsed());
    }
    out
}

/// Time to list `keys` keys of ~1 KiB (a pod-sized object) in one call.
async fn list_time(s: &dyn Store, prefix: &str, keys: usize, rounds: usize) -> f64 {
    let names: Vec<String> = (0..keys).map(|i| format!("{prefix}{i:06}")).collect();
    for chunk in names.chunks(64) {
        let writes = chunk.iter().map(|k| s.create(k, vec![b'p'; 1024]));
        for r in futures::future::join_all(writes).await {
            r.expect("create");
        }
    }
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let l = s
            .list(ListRequest {
                prefix,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(l.kvs.len(), keys);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

async fn measure(name: &str, s: Arc<dyn Store>, o: &Opts, round: usize) -> Value {
    let p = |what: &str| format!("/registry/bench-{what}-{round}/");
    eprintln!("-- {name}: round {}", round + 1);
    let seq = creates(s.clone(), &p("seq"), o.ops / 4, 1).await;
    let par = creates(s.clone(), &p("par"), o.ops, 16).await;
    let mut c = cas(s.as_ref(), &format!("{}k", p("cas")), o.ops / 4).await;
    let mut wl = watch_latency(s.as_ref(), &p("watch"), o.ops / 8).await;
    let list = if round == 0 {
        list_time(s.as_ref(), "/registry/bench-list/", 10_000, 5).await
    } else {
        f64::NAN
    };
    json!({
        "store": name,
        "seq_creates_per_s": seq,
        "par16_creates_per_s": par,
        "cas_p50_ms": pct_ms(&mut c, 0.5), "cas_p99_ms": pct_ms(&mut c, 0.99),
        "watch_p50_ms": pct_ms(&mut wl, 0.5), "watch_p99_ms": pct_ms(&mut wl, 0.99),
        "list_10k_ms": list,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = BenchArgs::parse(
        "sluice-store-bench --out DIR [--ops 2000] [--rounds 3]",
        &["--out", "--ops", "--rounds"],
    );
    let o = Opts {
        out: args.path("--out", "target/bench"),
        ops: args.num("--ops", 2000),
        rounds: args.num("--rounds", 3),
    };
    let dir = TempDir::new();
    let emb: Arc<dyn Store> = Arc::new(
        embedded::Embedded::open(&dir.0.join("bench.redb"), embedded::Options::default())
            .unwrap_or_else(|e| args.fail(&format!("embedded store: {e}"))),
    );
    let cluster = EtcdCluster::start(1);
    let etc: Arc<dyn Store> = Arc::new(
        etcd::Etcd::connect(&cluster.endpoints(), etcd::Options::default())
            .await
            .unwrap_or_else(|e| args.fail(&format!("etcd: {e}"))),
    );
    // Rounds alternate between the stores so machine drift hits both.
    let mut rows: Vec<Vec<Value>> = vec![Vec::new(), Vec::new()];
    for round in 0..o.rounds {
        rows[0].push(measure("embedded", emb.clone(), &o, round).await);
        rows[1].push(measure("etcd", etc.clone(), &o, round).await);
    }
    let keys = [
        "seq_creates_per_s",
        "par16_creates_per_s",
        "cas_p50_ms",
        "cas_p99_ms",
        "watch_p50_ms",
        "watch_p99_ms",
        "list_10k_ms",
    ];
    let med = |i: usize, k: &str| median(rows[i].iter().filter_map(|r| r[k].as_f64()).collect());
    let mut md = format!(
        "# Store benchmark\n\nembedded (redb, fsync per commit, group commit) vs etcd {} (1 member on \
         loopback, same disk); {} creates per 16-way round ({} sequential), {} CAS updates, {} \
         watched writes, a 10 000-key list (1 KiB values); {} rounds alternating stores (median).\n\n\
         | measure | embedded | etcd | embedded / etcd |\n|---|---:|---:|---:|\n",
        "3.4",
        o.ops,
        o.ops / 4,
        o.ops / 4,
        o.ops / 8,
        o.rounds
    );
    let mut summary = serde_json::Map::new();
    for k in keys {
        let (e, c) = (med(0, k), med(1, k));
        md.push_str(&format!("| {k} | {e:.2} | {c:.2} | {:.2} x |\n", e / c));
        summary.insert(
            k.to_string(),
            json!({"embedded": e, "etcd": c, "ratio": e / c}),
        );
    }
    let seq = med(0, "seq_creates_per_s") / med(1, "seq_creates_per_s");
    let par = med(0, "par16_creates_per_s") / med(1, "par16_creates_per_s");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    md.push_str(&format!(
        "\n## Targets\n\n| target | value | bound | verdict |\n|---|---:|---:|---|\n\
         | sequential create throughput, embedded / etcd | {seq:.2} x | >= 1 x | {} |\n\
         | 16-way create throughput, embedded / etcd | {par:.2} x | >= 1 x | {} |\n",
        verdict(seq >= 1.0),
        verdict(par >= 1.0)
    ));
    let report = json!({"rounds": rows, "median": summary});
    write_report(&o.out, "store", &md, &report);
}
