//! The agent's main loop: bring the node's data plane up, program services
//! from the configured source, run until SIGTERM/SIGINT.
use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::Context as _;
use sluice_datapath::{Datapath, DatapathError, LbIface, LbMaps, LoadOptions, PodDatapath};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    cli::{AgentArgs, NodeArgs},
    lb::{
        kube_source::KubeSource,
        model::{self, NodeInfo},
        reconcile::Reconciler,
        source::{ManifestSource, ServiceSource as _, Update},
    },
    metrics::{self, Metrics},
    node_env::{self, ConfigError},
};

pub fn run(node: &NodeArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    init_tracing();
    // Resolve paths before entering the netns; setns does not remount /sys,
    // but resolving first keeps errors about the host paths unambiguous.
    let cgroup = node_env::resolve_cgroup(node.cgroup.as_deref())?;
    if let Some(dir) = &agent.manifests
        && !dir.is_dir()
    {
        return Err(
            ConfigError(format!("--manifests: {} is not a directory", dir.display())).into(),
        );
    }
    // Read and parse before anything is attached: a bad file is a config
    // error (exit 2), not a half-started agent.
    if let Some(file) = &agent.kubeconfig
        && let Err(e) = kube::config::Kubeconfig::read_from(file)
    {
        return Err(ConfigError(format!("--kubeconfig: {}: {e}", file.display())).into());
    }
    if let Some(netns) = &node.netns {
        node_env::enter_netns(netns)?;
    }
    let node_info = NodeInfo {
        name: match &agent.node_name {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .context("hostname")?
                .to_string_lossy()
                .into_owned(),
        },
        node_ips: if agent.node_ips.is_empty() {
            local_ipv4_addrs()
        } else {
            agent.node_ips.clone()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio runtime")?;
    rt.block_on(async {
        let opts = LoadOptions {
            bpffs_dir: node.bpffs.clone(),
            log_level: agent.bpf_log_level,
            lb_sizes: Some(agent.lb_map_sizes()),
        };
        let mut dp = Datapath::load(&opts).map_err(|e| match e {
            DatapathError::Bpffs { .. } => anyhow::Error::new(ConfigError(format!("--bpffs: {e}"))),
            DatapathError::MapSize { which, .. } => {
                anyhow::Error::new(ConfigError(format!("--bpf-lb-max-{which}: {e}")))
            }
            e => anyhow::Error::new(e),
        })?;
        // Programs loaded before an LB map resize (this load's or an
        // earlier one's) may still run on pod veths with the old maps.
        if PodDatapath::programs_stale(&node.bpffs) {
            // Failing here is not fatal: the service LB works without it,
            // and the retry task below keeps at it.
            match PodDatapath::refresh_after_resize(&node.bpffs) {
                Ok(pods) if !PodDatapath::programs_stale(&node.bpffs) => tracing::info!(
                    pods,
                    "LB maps resized; pod programs switched to the new maps"
                ),
                Ok(pods) => tracing::warn!(
                    pods,
                    retry_in_s = POD_SWITCH_RETRY.0.as_secs(),
                    "LB maps resized; some pod veths could not be switched to the new maps"
                ),
                Err(e) => tracing::warn!(
                    retry_in_s = POD_SWITCH_RETRY.0.as_secs(),
                    "LB maps resized; switching pod programs to the new maps: {e}"
                ),
            }
        }
        let _logs = sluice_datapath::spawn_log_forwarder(dp.ebpf_mut())?;
        let maps = LbMaps::open(&node.bpffs)?;
        let reconciler = Reconciler::load(maps)?;
        let metrics = Arc::new(Metrics::new(LbMaps::open(&node.bpffs)?)?);
        if PodDatapath::programs_stale(&node.bpffs) {
            metrics.pod_programs_stale.set(1);
            tokio::spawn(retry_pod_switch(node.bpffs.clone(), metrics.clone()));
        }
        let metrics_addr = metrics::serve(metrics.clone(), agent.metrics_addr).await?;
        tracing::info!(addr = %metrics_addr, "metrics listening");
        let (services, backends) = reconciler.sizes();
        tracing::info!(services, backends, "adopted pinned LB state");
        dp.attach_socket_lb(&cgroup)?;
        let lb_ifaces = (agent.nodeport_ifaces.iter())
            .map(|i| (i, LbIface::External, "--nodeport-iface"))
            .chain(
                agent
                    .pod_ifaces
                    .iter()
                    .map(|i| (i, LbIface::Pod, "--pod-iface")),
            );
        for (iface, role, flag) in lb_ifaces {
            dp.attach_lb_iface(iface, role).map_err(|e| match e {
                DatapathError::Program { .. } => {
                    anyhow::Error::new(ConfigError(format!("{flag} {iface}: {e}")))
                }
                e => anyhow::Error::new(e),
            })?;
        }
        let gc_maps = LbMaps::open(&node.bpffs)?;
        let (gc_interval, ct_timeouts) = (agent.bpf_ct_gc_interval, agent.ct_timeouts());
        tokio::spawn(async move {
            // The walk is a few syscalls per entry: a blocking thread, not
            // an async worker, does it.
            let mut gc_maps = Some(gc_maps);
            let mut tick = tokio::time::interval(gc_interval);
            while let Some(mut maps) = gc_maps.take() {
                tick.tick().await;
                let res = tokio::task::spawn_blocking(move || {
                    let r = crate::lb::conntrack::gc(&mut maps, &ct_timeouts);
                    (maps, r)
                })
                .await;
                match res {
                    Ok((maps, r)) => {
                        gc_maps = Some(maps);
                        match r {
                            Ok(0) => {}
                            Ok(n) => tracing::debug!(removed = n, "conntrack GC"),
                            Err(e) => tracing::warn!("conntrack GC: {e}"),
                        }
                    }
                    Err(e) => tracing::error!("conntrack GC task failed: {e}"),
                }
            }
        });
        tracing::info!(
            cgroup = %cgroup.display(),
            bpffs = %node.bpffs.display(),
            node = %node_info.name,
            node_ips = ?node_info.node_ips,
            nodeport_ifaces = ?agent.nodeport_ifaces,
            pod_ifaces = ?agent.pod_ifaces,
            bpf_log_level = ?agent.bpf_log_level,
            ct_gc_interval = ?gc_interval,
            ct_timeouts = ?ct_timeouts,
            "datapath attached"
        );
        let (tx, rx) = mpsc::channel(1);
        if let Some(file) = &agent.kubeconfig {
            let source = KubeSource::from_kubeconfig(file).await?;
            tracing::info!(server = %source.origin, "watching the API server");
            tokio::spawn(async move {
                if let Err(e) = source.run(tx).await {
                    tracing::error!("API source stopped: {e:#}");
                }
            });
        } else if let Some(dir) = agent.manifests.clone() {
            let source = ManifestSource {
                dir,
                resync: Duration::from_secs(30),
            };
            tokio::spawn(async move {
                if let Err(e) = source.run(tx).await {
                    tracing::error!("manifests source stopped: {e:#}");
                }
            });
        } else {
            // No source: keep whatever is pinned (the data plane forwards
            // with the last programmed state) and just keep programs attached.
            drop(tx);
            tracing::info!("no service source configured; keeping the pinned LB state as is");
        }
        let lb = tokio::spawn(reconcile_loop(rx, reconciler, node_info, metrics));
        wait_for_shutdown().await?;
        lb.abort();
        tracing::info!(
            "shutting down: socket-LB links and maps stay pinned; the data plane keeps forwarding"
        );
        drop(dp);
        Ok(())
    })
}

/// First and longest wait between retries of a pod-program switch that
/// left veths on the old maps (doubling in between).
const POD_SWITCH_RETRY: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));

/// Retries the switch after an LB map resize until no pod veth runs
/// programs on the replaced maps (each attempt re-switches every veth; a
/// veth that fails keeps the marker). Such a veth's pods would otherwise
/// keep balancing with the last state programmed before the resize.
async fn retry_pod_switch(bpffs: std::path::PathBuf, metrics: Arc<Metrics>) {
    let mut wait = POD_SWITCH_RETRY.0;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(POD_SWITCH_RETRY.1);
        let dir = bpffs.clone();
        match tokio::task::spawn_blocking(move || PodDatapath::refresh_after_resize(&dir)).await {
            Ok(Ok(pods)) => tracing::info!(
                pods,
                "retried switching pod programs to the resized LB maps"
            ),
            Ok(Err(e)) => tracing::warn!("retrying the pod program switch: {e}"),
            Err(e) => {
                tracing::error!("pod program switch task failed: {e}");
                return;
            }
        }
        if !PodDatapath::programs_stale(&bpffs) {
            metrics.pod_programs_stale.set(0);
            tracing::info!("pod programs switched to the resized LB maps");
            return;
        }
        tracing::warn!(
            retry_in_s = wait.as_secs(),
            "some pod veths are still on the old LB maps"
        );
    }
}

/// Delay before re-applying a snapshot whose programming failed.
pub(crate) const RETRY: Duration = Duration::from_secs(5);

/// Waits for snapshots and applies the latest one. Errors in objects are
/// logged when the set of errors changes (not on every resync).
async fn reconcile_loop(
    mut rx: mpsc::Receiver<Update>,
    mut reconciler: Reconciler,
    node: NodeInfo,
    metrics: Arc<Metrics>,
) {
    let mut last_errors: Vec<String> = Vec::new();
    // A snapshot whose programming failed: retried after RETRY unless a
    // newer one arrives first (the source does not resend an unchanged one).
    let mut failed: Option<Update> = None;
    // Logged once, at the first successful apply: from then on the maps
    // match the source (an agent restarted on unchanged input writes
    // nothing, so "services programmed" alone would never say so).
    let mut synced = false;
    loop {
        let next = match failed.take() {
            Some(f) => tokio::select! {
                u = rx.recv() => u,
                _ = tokio::time::sleep(RETRY) => Some(f),
            },
            None => rx.recv().await,
        };
        let Some(mut update) = next else { return };
        while let Ok(newer) = rx.try_recv() {
            update = newer;
        }
        let node = node.clone();
        let res = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut desired = model::desired(&update.snapshot, &node);
            let res = reconciler.apply(&desired);
            // The maps are updated now; freeing the model and the snapshot
            // (100 000 backends' worth at 10 000 services) is not programming.
            let done = std::time::Instant::now();
            let apply_ms = (done - started).as_secs_f64() * 1e3;
            let latency = done - update.seen_at;
            // Freed here, off the runtime's threads; kept only for a retry.
            let errors = std::mem::take(&mut desired.errors);
            drop(desired);
            let failed = res.is_err().then_some(update);
            // glibc keeps freed heap otherwise, and a big snapshot is tens of MB.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free memory.
            unsafe {
                libc::malloc_trim(0);
            }
            (reconciler, errors, res, failed, apply_ms, latency)
        })
        .await;
        let (r, errors, res, retry, apply_ms, latency) = match res {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("reconciler task failed: {e}");
                return;
            }
        };
        reconciler = r;
        failed = retry;
        let errors: Vec<String> = errors
            .iter()
            .map(|e| {
                if e.object.is_empty() {
                    format!("skipped {}: {}", e.origin, e.message)
                } else {
                    format!("skipped {} in {}: {}", e.object, e.origin, e.message)
                }
            })
            .collect();
        metrics.object_errors.set(errors.len() as i64);
        if errors != last_errors {
            for e in &errors {
                tracing::warn!("{e}");
            }
            last_errors = errors;
        }
        if let Ok(st) = &res {
            if !synced {
                synced = true;
                tracing::info!(
                    services = st.services,
                    backends = st.backends,
                    tables_computed = st.tables_computed,
                    apply_ms,
                    "LB maps in sync with the service source"
                );
            }
            metrics.applied(st);
            // Only real programming counts; a resync that changed nothing
            // would drown the histogram in no-ops.
            if st.changed() {
                metrics.programming_latency.observe(latency.as_secs_f64());
            }
        }
        match res {
            Ok(st) if st.changed() => tracing::info!(
                services = st.services,
                frontends = st.frontends,
                backends = st.backends,
                tables_written = st.tables_written,
                tables_computed = st.tables_computed,
                frontends_written = st.frontends_written,
                backends_written = st.backends_written,
                removed = st.removed,
                latency_ms = latency.as_secs_f64() * 1e3,
                apply_ms,
                "services programmed"
            ),
            Ok(_) => tracing::debug!("no LB changes"),
            // Level-triggered: the retry (or a newer snapshot) starts from
            // scratch.
            Err(e) => {
                metrics.reconcile_errors.inc();
                tracing::error!(
                    retry_in_s = RETRY.as_secs(),
                    "programming services failed: {e}"
                );
            }
        }
    }
}

/// Every non-loopback IPv4 address in the current network namespace.
fn local_ipv4_addrs() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                let ip = sin.ip();
                if !ip.is_loopback() && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Agent events at info (RUST_LOG overrides); eBPF-side records (target
/// `sluice_ebpf`) always pass, since their level is chosen in the kernel by
/// --bpf-log-level.
fn init_tracing() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::{EnvFilter, fmt, prelude::*};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("sluice_ebpf=trace".parse().expect("static directive"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
}
