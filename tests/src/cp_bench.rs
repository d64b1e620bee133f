//! What the control-plane benchmarks (`sluice-scheduler-bench`,
//! `sluice-controllers-bench`) share: a `sluice-server` with kwok-style
//! fake Nodes (Node objects with capacity/allocatable and a Ready
//! condition, Leases renewed at the kubelet's pace, no kubelet), bench
//! pods, pod creators, the raw binder the scheduler is compared with, a
//! watcher timing when each pod is seen bound, and the plot.
use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Namespace, Node, Pod},
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
    chrono::{SecondsFormat, Utc},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinHandle};

use crate::api_server::ApiServer;

/// The namespace every bench pod lives in.
pub const NS: &str = "bench";

/// A server with `nodes` fake Nodes whose Leases are renewed every `renew`
/// (spread evenly over the period, as many kubelets would be).
pub struct Cluster {
    pub server: ApiServer,
    pub client: Client,
    pub nodes: Arc<Vec<String>>,
    renewer: JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Cluster {
    pub async fn start(flags: &[&str], nodes: usize, renew: Duration) -> Self {
        let server = ApiServer::start_with(flags);
        let client = server.client().await;
        let nss: Api<Namespace> = Api::all(client.clone());
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).expect("namespace"),
        )
        .await
        .expect("create the bench namespace");
        let names: Arc<Vec<String>> = Arc::new((0..nodes).map(|i| format!("node-{i}")).collect());
        let t = Instant::now();
        futures::stream::iter(names.iter())
            .for_each_concurrent(16, |n| register(&client, n))
            .await;
        eprintln!(
            "-- {nodes} fake nodes registered in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let renewer = tokio::spawn(renew_leases(client.clone(), names.clone(), renew));
        Self {
            server,
            client,
            nodes: names,
            renewer,
        }
    }

    /// `(VmRSS, VmHWM)` of the server in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        self.server
            .pid()
            .map_or((f64::NAN, f64::NAN), crate::bench_args::rss_mib)
    }
}

/// A Node as kwok makes one: 32 CPUs, 128 GiB, 110 pods, Ready, and its
/// Lease.
async fn register(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "type": "kwok",
        }},
    }))
    .expect("Node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let resources =
        json!({"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "fake node", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "10.250.255.1"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap_or_else(|e| panic!("status of node {name}: {e}"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                 "renewTime": MicroTime(Utc::now())},
    }))
    .expect("Lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_or_else(|e| panic!("lease of node {name}: {e}"));
}

/// Renews every Lease once per `period`, in 100 slices over the period.
async fn renew_leases(client: Client, nodes: Arc<Vec<String>>, period: Duration) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let slice = nodes.len().div_ceil(100).max(1);
    let mut tick = tokio::time::interval(period / 100);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for chunk in nodes.chunks(slice) {
            tick.tick().await;
            let patch = Patch::Merge(json!({"spec": {"renewTime": MicroTime(Utc::now())}}));
            futures::stream::iter(chunk)
                .for_each_concurrent(8, |n| {
                    let (leases, patch) = (&leases, &patch);
                    async move {
                        if let Err(e) = leases.patch(n, &PatchParams::default(), patch).await {
                            eprintln!("lease renewal of {n}: {e}");
                        }
                    }
                })
                .await;
        }
    }
}

/// A bench pod: two containers with requests (so resource fit has work),
/// labels, env; ~1.3 KiB stored, no node.
pub fn pod_template(image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "bench"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "app", "image": image,
                 "ports": [{"containerPort": 8080, "name": "http"}],
                 "env": [{"name": "MODE", "value": "bench"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "proxy", "image": "registry.example/proxy:2.1",
                 "args": ["--listen", ":15001"],
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}},
            ],
        },
    })
}

/// When each bench pod was first seen bound, by a watch on the namespace.
#[derive(Clone, Default)]
pub struct BoundTracker {
    bound: Arc<Mutex<HashMap<String, Instant>>>,
}

impl BoundTracker {
    /// Starts watching `NS`; the watch is synced when this returns.
    pub async fn start(client: Client) -> (Self, JoinHandle<()>) {
        let me = Self::default();
        let pods: Api<Pod> = Api::namespaced(client, NS);
        let bound = me.bound.clone();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            let stream = watcher(pods, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let p = match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let at = Instant::now();
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                    && let Some(name) = p.metadata.name
                    && let Ok(mut m) = bound.lock()
                {
                    m.entry(name).or_insert(at);
                }
            }
        });
        let _ = synced_rx.await;
        (me, task)
    }

    pub fn count(&self) -> usize {
        self.bound.lock().map_or(0, |m| m.len())
    }

    pub fn snapshot(&self) -> HashMap<String, Instant> {
        self.bound.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Waits until `n` pods were seen bound (panics after `ceiling`,
    /// naming how many were).
    pub async fn wait_for(&self, n: usize, ceiling: Duration) {
        let deadline = Instant::now() + ceiling;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} pods bound after {ceiling:?}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Creates `n` pods `{prefix}-{i}` from `clients` kube clients with
/// `inflight` requests in flight each; returns when each create started.
pub async fn create_pods(
    clients: &[Client],
    prefix: &str,
    n: usize,
    inflight: usize,
) -> HashMap<String, Instant> {
    let started = Arc::new(Mutex::new(HashMap::with_capacity(n)));
    let per = n.div_ceil(clients.len());
    let workers = clients.iter().enumerate().map(|(c, client)| {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let started = started.clone();
        let range = (c * per)..((c + 1) * per).min(n);
        async move {
            futures::stream::iter(range)
                .for_each_concurrent(inflight, |i| {
                    let (pods, started) = (&pods, &started);
                    async move {
                        let name = format!("{prefix}-{i}");
                        let mut body = pod_template("registry.example/app:1.0");
                        body["metadata"]["name"] = json!(name);
                        let pod: Pod = serde_json::from_value(body).expect("pod");
                        if let Ok(mut m) = started.lock() {
                            m.insert(name.clone(), Instant::now());
                        }
                        pods.create(&PostParams::default(), &pod)
                            .await
                            .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
                    }
                })
                .await;
        }
    });
    futures::future::join_all(workers).await;
    Arc::try_unwrap(started)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
}

/// Plays a scheduler that decides nothing: every pending pod in `NS` is
/// bound through `pods/binding` to the next node round-robin, with up to
/// `inflight` bindings at once (the scheduler's own limit).
pub fn spawn_raw_binder(
    client: Client,
    nodes: Arc<Vec<String>>,
    inflight: usize,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, NS);
        let permits = Arc::new(Semaphore::new(inflight));
        let next = Arc::new(AtomicUsize::new(0));
        let mut dispatched = std::collections::HashSet::new();
        let stream = watcher(pods.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let Ok(p) = ev else { continue };
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let (Some(name), Some(uid)) = (p.metadata.name.clone(), p.metadata.uid.clone()) else {
                continue;
            };
            if !dispatched.insert(uid.clone()) {
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let node = nodes[next.fetch_add(1, Ordering::Relaxed) % nodes.len()].clone();
            let pods = pods.clone();
            tokio::spawn(async move {
                let binding = json!({
                    "apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name, "namespace": NS, "uid": uid},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                });
                let body = serde_json::to_vec(&binding).unwrap_or_default();
                if let Err(e) = pods
                    .create_subresource::<Value>("binding", &name, &PostParams::default(), body)
                    .await
                {
                    eprintln!("raw binding of {name}: {e}");
                }
                drop(permit);
            });
        }
    })
}

/// Seconds since `t0` at which each of `times` happened, sorted: the
/// cumulative curve of the plot.
pub fn curve(t0: Instant, times: impl IntoIterator<Item = Instant>) -> Vec<f64> {
    let mut v: Vec<f64> = times
        .into_iter()
        .map(|t| t.saturating_duration_since(t0).as_secs_f64())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Plots cumulative curves (pods bound over seconds), one line each, into
/// an SVG at `path`.
pub fn plot_curves(path: &Path, title: &str, curves: &[(String, Vec<f64>)]) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Debug| format!("plotting {}: {e:?}", path.display());
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let max_t = curves
        .iter()
        .filter_map(|(_, c)| c.last().copied())
        .fold(1.0f64, f64::max);
    let max_n = curves
        .iter()
        .map(|(_, c)| c.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_t * 1.05, 0f64..max_n as f64 * 1.05)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first create")
        .y_desc("pods bound")
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [BLACK, BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, (name, c)) in curves.iter().enumerate() {
        let color = colors[i % colors.len()];
        // At most ~500 points per line keeps the SVG small.
        let step = (c.len() / 500).max(1);
        let pts: Vec<(f64, f64)> = c
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k + 1 == c.len())
            .map(|(k, t)| (*t, (k + 1) as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
