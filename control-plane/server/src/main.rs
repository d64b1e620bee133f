//! `sluice-server`: the control plane's API server (Kubernetes REST over
//! the state store). `--data-dir DIR` keeps the embedded store, the PKI and
//! DIR/admin.kubeconfig; `--etcd-endpoints` stores in etcd instead.
//!
//! This crate only composes: flags, PKI, and store -> API server ->
//! scheduler + controllers. What the API does lives in `sluice-apiserver`.
mod components;
mod pki;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice_apiserver::{alloc, cache as watch_cache, handlers as api, http::serve, metrics};
use sluice_store::{Store, embedded, etcd};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sluice-server",
    version,
    about = "sluice control plane: a Kubernetes-compatible API server, with the scheduler and the controller manager in the same process",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run one component alone against any Kubernetes API server instead.
    #[command(subcommand)]
    component: Option<Component>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum Component {
    /// The scheduler alone.
    Scheduler {
        /// The API server and credential to use.
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// The controller manager alone.
    Controllers {
        /// The API server and credential to use.
        #[arg(long)]
        kubeconfig: PathBuf,
        #[command(flatten)]
        controllers: ControllerArgs,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// State (embedded store, PKI, kubeconfigs) lives here.
    #[arg(long, default_value = "/var/lib/sluice/server")]
    data_dir: PathBuf,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Store cluster state in etcd (comma-separated client URLs) instead of
    /// the embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// ClusterIPs are allocated from this IPv4 CIDR.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// NodePorts are allocated from this range (LOW-HIGH).
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// In-process components not to start (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum)]
    disable: Vec<Disable>,
    #[command(flatten)]
    controllers: ControllerArgs,
}

/// The components `sluice-server` runs beside the API server.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Disable {
    Scheduler,
    Controllers,
}

/// kube-controller-manager's flags, for in-process and standalone runs.
#[derive(Args)]
struct ControllerArgs {
    /// Node IPAM hands out pod CIDRs from this IPv4 range.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The prefix length of each Node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// A Node whose kubelet was silent (no Lease renewal, no status) this
    /// long is unreachable: tainted, and its pods evicted after their
    /// tolerationSeconds.
    #[arg(long, default_value = "40s", value_parser = humantime_duration)]
    node_monitor_grace_period: std::time::Duration,
}

/// Durations as upstream's flags take them: `40s`, `2m`, `500ms`.
fn humantime_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

impl ControllerArgs {
    fn config(&self) -> Result<sluice_controllers::Config, String> {
        let config = sluice_controllers::Config {
            cluster_cidr: self.cluster_cidr.clone(),
            node_cidr_mask_size: self.node_cidr_mask_size,
            node_monitor_grace_period: self.node_monitor_grace_period,
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Flag values clap cannot check; the error names the flag and value.
fn allocator(cli: &ServerArgs) -> Result<alloc::Allocator, String> {
    let cidr = cli
        .service_cidr
        .parse()
        .map_err(|e| format!("--service-cidr: {e}"))?;
    let bad = || {
        format!(
            "--service-node-port-range: {:?} is not a port range like 30000-32767",
            cli.service_node_port_range
        )
    };
    let (lo, hi) = cli
        .service_node_port_range
        .split_once('-')
        .ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(alloc::Allocator {
        cidr,
        node_ports: lo..=hi,
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Flag values clap cannot check: exit 2 naming the flag, before
    // anything starts.
    let checked = match &cli.component {
        None => {
            allocator(&cli.server).and_then(|a| Ok((Some(a), cli.server.controllers.config()?)))
        }
        Some(Component::Controllers { controllers, .. }) => controllers.config().map(|c| (None, c)),
        Some(Component::Scheduler { .. }) => Ok((None, sluice_controllers::Config::default())),
    };
    let (alloc, controllers) = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    rt.spawn(cancel_on_signal(shutdown.clone()));
    let res = match (cli.component, alloc) {
        (Some(Component::Scheduler { kubeconfig }), _) => {
            rt.block_on(components::scheduler(kubeconfig, shutdown))
        }
        (Some(Component::Controllers { kubeconfig, .. }), _) => {
            rt.block_on(components::controllers(kubeconfig, controllers, shutdown))
        }
        (None, Some(alloc)) => rt.block_on(run(cli.server, alloc, controllers, shutdown)),
        (None, None) => unreachable!("the server's flags were checked above"),
    };
    // Components and connections still draining get no longer than this.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGTERM or SIGINT cancels `shutdown`: components stop, then the server.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("no signal handlers: SIGTERM ends the process at once");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received, shutting down");
    shutdown.cancel();
}

async fn run(
    cli: ServerArgs,
    alloc: alloc::Allocator,
    controllers: sluice_controllers::Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("--data-dir {}", cli.data_dir.display()))?;
    let store: Arc<dyn Store> = if cli.etcd_endpoints.is_empty() {
        Arc::new(embedded::Embedded::open(
            &cli.data_dir.join("store.redb"),
            embedded::Options::default(),
        )?)
    } else {
        Arc::new(etcd::Etcd::connect(&cli.etcd_endpoints, etcd::Options::default()).await?)
    };
    let metrics = metrics::Metrics::new()?;
    let store: Arc<dyn Store> = Arc::new(metrics::MeteredStore {
        inner: store,
        metrics: metrics.clone(),
    });
    api::ensure_builtins(store.as_ref()).await?;
    let cache =
        watch_cache::WatchCache::start(store.clone(), watch_cache::Limits::default()).await?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("--listen {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let hosts = vec![
        addr.ip().to_string(),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    let pki = pki::Pki::load_or_create(&cli.data_dir, &hosts)?;
    pki.write_kubeconfigs(&cli.data_dir, &format!("https://{addr}"))?;
    let tokens = pki.tokens();
    let api = Arc::new(api::Api {
        store,
        metrics,
        cache,
        listen: addr.to_string(),
        alloc,
        repair_ran: false.into(),
    });
    // Allocation repair, like upstream's repair controllers: a minute
    // apart, an orphan goes on its second sighting.
    let repair = api.clone();
    tokio::spawn(async move {
        let done = |report: &alloc::RepairReport| {
            repair.metrics.repair_pass(report);
            repair
                .repair_ran
                .store(true, std::sync::atomic::Ordering::Release);
        };
        repair
            .alloc
            .repair_loop(
                repair.store.as_ref(),
                std::time::Duration::from_secs(60),
                done,
            )
            .await
    });
    let app = serve::router(api, tokens);
    tracing::info!(%addr, data_dir = %cli.data_dir.display(), "serving");
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let res = serve::serve(
                listener,
                &serve::ServingCert {
                    cert_pem: &pki.cert_pem,
                    key_pem: &pki.key_pem,
                },
                app,
            )
            .await;
            shutdown.cancel();
            res
        }
    });
    // Each component talks to this server like any other client, over
    // TLS with its own credential (like k3s).
    let mut running = tokio::task::JoinSet::new();
    if !cli.disable.contains(&Disable::Scheduler) {
        let kubeconfig = cli.data_dir.join(pki::SCHEDULER_KUBECONFIG);
        running.spawn(components::scheduler(kubeconfig, shutdown.clone()));
    }
    if !cli.disable.contains(&Disable::Controllers) {
        let kubeconfig = cli.data_dir.join(pki::CONTROLLER_MANAGER_KUBECONFIG);
        running.spawn(components::controllers(
            kubeconfig,
            controllers,
            shutdown.clone(),
        ));
    }
    // A component that fails takes the server down with it, as a crashed
    // kube-scheduler would be restarted by its supervisor: never a server
    // that looks whole and schedules nothing.
    let mut first_error = None;
    while let Some(done) = running.join_next().await {
        let res = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = res {
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    shutdown.cancelled().await;
    if server.is_finished() {
        if let Ok(Err(e)) = server.await {
            first_error.get_or_insert(e);
        }
    } else {
        server.abort();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
