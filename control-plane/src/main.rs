//! `sluice-server`: the control plane's API server (Kubernetes REST over
//! the state store). `--data-dir DIR` keeps the embedded store, the PKI and
//! DIR/admin.kubeconfig; `--etcd-endpoints` stores in etcd instead.
mod admission;
mod alloc;
mod api;
mod decode;
mod health;
mod metrics;
mod openapi;
mod pki;
mod resources;
mod selector;
mod serve;
mod strategic;
mod table;
mod watch_cache;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use sluice_store::{Store, embedded, etcd};

#[derive(Parser)]
#[command(
    name = "sluice-server",
    version,
    about = "sluice control plane: a Kubernetes-compatible API server"
)]
struct Cli {
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
}

/// Flag values clap cannot check; the error names the flag and value.
fn allocator(cli: &Cli) -> Result<alloc::Allocator, String> {
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
    let alloc = match allocator(&cli) {
        Ok(a) => a,
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
    match rt.block_on(run(cli, alloc)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, alloc: alloc::Allocator) -> anyhow::Result<()> {
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
    api::ensure_system_namespaces(store.as_ref()).await?;
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
    let tokens = [pki.admin_token.clone(), pki.node_token.clone()]
        .into_iter()
        .collect();
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
    serve::serve(listener, &pki, app).await
}
