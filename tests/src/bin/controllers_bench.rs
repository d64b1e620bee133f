//! `sluice-controllers-bench --out DIR [--nodes 1000] [--replicas 3000]
//! [--rss-pods 10000] [--clients 4] [--inflight 4] [--lease-renew-s 10]`,
//! run by `cargo xtask bench controllers`: a Deployment's way to bound
//! Pods against the same API server's raw create+bind, in one run. Writes
//! DIR/controllers.{md,json,svg}.
//!
//! - raw: a fresh `sluice-server` with scheduler and controllers off and
//!   N kwok-style fake Nodes; R pods created by several clients and bound
//!   round-robin by a client that decides nothing (as the scheduler bench).
//! - deployment: a fresh server with everything on (a cluster CIDR large
//!   enough for N node /24s) and N fake Nodes; one Deployment of R
//!   replicas; time from its create to the last of its R pods seen bound.
//! - rolling update: a fake kubelet (tests/src/cluster.rs) marks bound
//!   pods Running and Ready and finishes deletions; once the Deployment is
//!   available, its image changes; time until the rollout is complete
//!   (every replica updated, ready and available, old ones gone).
//! - memory: the Deployment scaled to the `--rss-pods` total, all
//!   ready; the server's VmRSS and VmHWM.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use sluice_tests::{
    bench_args::{BenchArgs, write_report},
    cluster::FakeKubelet,
    cp_bench::{
        BoundTracker, Cluster, NS, create_pods, curve, plot_curves, pod_template, spawn_raw_binder,
    },
};

struct Opts {
    out: PathBuf,
    nodes: usize,
    replicas: usize,
    rss_pods: usize,
    clients: usize,
    inflight: usize,
    renew: Duration,
}

/// Raw create+bind of R pods: seconds and the curve.
async fn raw(o: &Opts) -> (f64, Vec<f64>) {
    eprintln!("-- raw create+bind: {} nodes, {} pods", o.nodes, o.replicas);
    let cluster = Cluster::start(&["--disable", "scheduler,controllers"], o.nodes, o.renew).await;
    let binder = spawn_raw_binder(cluster.client.clone(), cluster.nodes.clone(), 64);
    let (tracker, watch) = BoundTracker::start(cluster.client.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..o.clients {
        clients.push(cluster.server.client().await);
    }
    let t0 = Instant::now();
    let started = create_pods(&clients, "p", o.replicas, o.inflight).await;
    tracker
        .wait_for(
            o.replicas,
            Duration::from_secs(120 + o.replicas as u64 / 20),
        )
        .await;
    binder.abort();
    watch.abort();
    let first = started.values().min().copied().unwrap_or(t0);
    let bound = tracker.snapshot();
    let last = bound.values().max().copied().unwrap_or(t0);
    (
        last.saturating_duration_since(first).as_secs_f64(),
        curve(first, bound.into_values()),
    )
}

/// Whether the Deployment's rollout is complete with `want` replicas, as
/// `kubectl rollout status` judges it (and all of them ready).
fn complete(d: &Deployment, want: usize) -> bool {
    let want = want as i32;
    let (Some(spec), Some(st)) = (d.spec.as_ref(), d.status.as_ref()) else {
        return false;
    };
    st.observed_generation >= d.metadata.generation
        && spec.replicas == Some(want)
        && st.updated_replicas == Some(want)
        && st.replicas == Some(want)
        && st.ready_replicas == Some(want)
        && st.available_replicas == Some(want)
}

async fn wait_complete(api: &Api<Deployment>, want: usize, what: &str) -> f64 {
    let t = Instant::now();
    let ceiling = Duration::from_secs(300 + want as u64 / 10);
    loop {
        match api.get("bench").await {
            Ok(d) if complete(&d, want) => return t.elapsed().as_secs_f64(),
            Ok(d) => assert!(
                t.elapsed() < ceiling,
                "{what}: not complete after {ceiling:?}: {:?}",
                d.status
            ),
            Err(e) => eprintln!("{what}: get deployment: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = BenchArgs::parse(
        "sluice-controllers-bench --out DIR [--nodes 1000] [--replicas 3000] [--rss-pods 10000 (0: skip)] \
         [--clients 4] [--inflight 4] [--lease-renew-s 10]",
        &[
            "--out",
            "--nodes",
            "--replicas",
            "--rss-pods",
            "--clients",
            "--inflight",
            "--lease-renew-s",
        ],
    );
    let o = Opts {
        out: args.path("--out", "target/bench"),
        nodes: args.num("--nodes", 1000),
        replicas: args.num("--replicas", 3000),
        rss_pods: args.num("--rss-pods", 10_000),
        clients: args.num("--clients", 4),
        inflight: args.num("--inflight", 4),
        renew: Duration::from_secs(args.num("--lease-renew-s", 10) as u64),
    };
    if o.nodes == 0 || o.replicas == 0 || o.clients == 0 || o.inflight == 0 || o.renew.is_zero() {
        args.fail(
            "--nodes, --replicas, --clients, --inflight and --lease-renew-s must be positive",
        );
    }
    let (raw_s, raw_curve) = raw(&o).await;
    eprintln!("-- raw create+bind of {} pods: {raw_s:.2} s", o.replicas);

    eprintln!(
        "-- deployment: {} nodes, {} replicas, everything on",
        o.nodes, o.replicas
    );
    // The default 10.244.0.0/16 holds 256 node /24s.
    let cluster = Cluster::start(&["--cluster-cidr", "10.128.0.0/9"], o.nodes, o.renew).await;
    let (tracker, watch) = BoundTracker::start(cluster.client.clone()).await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), NS);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": pod_template("registry.example/app:1.0"),
        },
    }))
    .expect("Deployment");
    let t0 = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
    tracker
        .wait_for(
            o.replicas,
            Duration::from_secs(120 + o.replicas as u64 / 10),
        )
        .await;
    let bound = tracker.snapshot();
    watch.abort();
    let last = bound.values().max().copied().unwrap_or(t0);
    let deploy_s = last.saturating_duration_since(t0).as_secs_f64();
    let deploy_curve = curve(t0, bound.into_values());
    let ratio = deploy_s / raw_s;
    eprintln!("-- deployment bound in {deploy_s:.2} s ({ratio:.2}x raw)");

    let names: Vec<&str> = cluster.nodes.iter().map(String::as_str).collect();
    let _kubelet = FakeKubelet::start(cluster.client.clone(), &names);
    let ready_s = wait_complete(&deployments, o.replicas, "ready").await;
    eprintln!(
        "-- fake kubelet: all {} ready in {ready_s:.2} s",
        o.replicas
    );

    let image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "registry.example/app:2.0"}]}}}});
    let t = Instant::now();
    deployments
        .patch("bench", &PatchParams::default(), &Patch::Strategic(image))
        .await
        .expect("set image");
    let _ = wait_complete(&deployments, o.replicas, "rollout").await;
    let rollout_s = t.elapsed().as_secs_f64();
    eprintln!("-- rolling update complete in {rollout_s:.2} s");
    let (rss_r, hwm_r) = cluster.rss_mib();

    let mut memory = json!(null);
    if o.rss_pods > 0 {
        let t = Instant::now();
        deployments
            .patch(
                "bench",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": o.rss_pods}})),
            )
            .await
            .expect("scale");
        let scaled_s = wait_complete(&deployments, o.rss_pods, "scale").await;
        let (rss, hwm) = cluster.rss_mib();
        eprintln!(
            "-- scaled to {} ready pods in {:.2} s; RSS {rss:.1} MiB, peak {hwm:.1} MiB",
            o.rss_pods,
            t.elapsed().as_secs_f64()
        );
        memory = json!({"pods": o.rss_pods, "nodes": o.nodes, "scale_s": scaled_s,
                        "rss_mib": rss, "rss_peak_mib": hwm});
    }

    let v = |x: &Value, k: &str| x[k].as_f64().unwrap_or(f64::NAN);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut md = format!(
        "# Controllers benchmark\n\n{nodes} kwok-style fake Nodes (Node + Lease renewed every {renew} s), \
         embedded store, one run. *raw*: a fresh server with scheduler and controllers off; \
         {r} pods created by {c} clients ({i} in flight each) and bound round-robin through \
         `pods/binding` by a client that decides nothing. *deployment*: a fresh server with \
         everything on; one Deployment of {r} replicas, timed from its create to the last pod \
         seen bound by a watch. Then a fake kubelet marks pods Running/Ready and completes \
         deletions; the image changes (RollingUpdate, default 25 % surge / 25 % unavailable) \
         and the rollout is timed until every replica is updated, ready and available and the \
         old ones are gone.\n\n\
         | measure | value |\n|---|---:|\n\
         | raw create+bind of {r} pods (s) | {raw_s:.2} |\n\
         | Deployment of {r} replicas: all pods bound (s) | {deploy_s:.2} |\n\
         | ratio deployment / raw | {ratio:.2}x |\n\
         | fake kubelet: all {r} ready, Deployment available (s) | {ready_s:.2} |\n\
         | rolling update of {r} replicas (s) | {rollout_s:.2} |\n\
         | server RSS after the rollout (MiB) | {rss_r:.1} |\n\
         | server peak RSS after the rollout (MiB) | {hwm_r:.1} |\n",
        nodes = o.nodes,
        renew = o.renew.as_secs(),
        r = o.replicas,
        c = o.clients,
        i = o.inflight,
    );
    if !memory.is_null() {
        md.push_str(&format!(
            "| scaled to {} replicas, all ready (s) | {:.2} |\n\
             | server RSS, {} nodes, {} pods, all components (MiB) | {:.1} |\n\
             | server peak RSS (MiB) | {:.1} |\n",
            o.rss_pods,
            v(&memory, "scale_s"),
            o.nodes,
            o.rss_pods,
            v(&memory, "rss_mib"),
            v(&memory, "rss_peak_mib"),
        ));
    }
    md.push_str(&format!(
        "\n## Targets\n\n| target | measured | bound | verdict |\n|---|---:|---:|---|\n\
         | deployment / raw create+bind | {ratio:.2}x | <= 1.3x | {} |\n",
        verdict(ratio <= 1.3)
    ));
    if !memory.is_null() {
        let hwm = v(&memory, "rss_peak_mib");
        md.push_str(&format!(
            "| server peak RSS, {} nodes, {} pods (MiB) | {hwm:.1} | < 400 | {} |\n",
            o.nodes,
            o.rss_pods,
            verdict(hwm < 400.0)
        ));
    }
    let svg = o.out.join("controllers.svg");
    if let Err(e) = std::fs::create_dir_all(&o.out)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            plot_curves(
                &svg,
                &format!("{} pods bound over time", o.replicas),
                &[
                    ("raw create+bind".to_string(), raw_curve),
                    (format!("Deployment of {}", o.replicas), deploy_curve),
                ],
            )
        })
    {
        eprintln!("{e}");
    }
    md.push_str("\nPlot: controllers.svg (pods bound since the first create).\n");
    write_report(
        &o.out,
        "controllers",
        &md,
        &json!({
            "nodes": o.nodes, "replicas": o.replicas,
            "raw_create_bind_s": raw_s, "deployment_bound_s": deploy_s,
            "deployment_over_raw": ratio, "ready_s": ready_s, "rolling_update_s": rollout_s,
            "rss_after_rollout_mib": rss_r, "rss_peak_after_rollout_mib": hwm_r,
            "memory": memory,
        }),
    );
}
