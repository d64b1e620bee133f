//! The scheduler and the controller manager as `sluice-server` runs them:
//! in-process beside the API server or alone (`sluice-server scheduler`,
//! `sluice-server controllers`), always as API clients from a kubeconfig.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

/// A client from `kubeconfig`, named in every error.
async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let what = || format!("--kubeconfig {}", kubeconfig.display());
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).with_context(what)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(what)?;
    kube::Client::try_from(config).with_context(what)
}

/// This process as a leader-election candidate: unique even for several
/// servers on one host (upstream: hostname + "_" + a uuid).
fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}_{}_{nanos:08x}", std::process::id())
}

/// Runs the scheduler until `shutdown`, while this process holds the
/// `kube-system/kube-scheduler` Lease (one active scheduler per cluster).
pub async fn scheduler(kubeconfig: PathBuf, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = client(&kubeconfig).await?;
    tracing::info!(kubeconfig = %kubeconfig.display(), "scheduler starting");
    let lease = sluice_leader_election::Config::new("kube-scheduler", &identity());
    sluice_leader_election::run(client.clone(), lease, shutdown, |term| {
        sluice_scheduler::run(client.clone(), sluice_scheduler::Config::default(), term)
    })
    .await
    .context("scheduler")
}

/// Runs the controller manager until `shutdown`, while this process holds
/// the `kube-system/kube-controller-manager` Lease.
pub async fn controllers(
    kubeconfig: PathBuf,
    config: sluice_controllers::Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = client(&kubeconfig).await?;
    tracing::info!(kubeconfig = %kubeconfig.display(), "controller manager starting");
    let lease = sluice_leader_election::Config::new("kube-controller-manager", &identity());
    sluice_leader_election::run(client.clone(), lease, shutdown, |term| {
        sluice_controllers::run(client.clone(), config.clone(), term)
    })
    .await
    .context("controller manager")
}
