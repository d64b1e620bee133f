//! The agent's main loop: bring the node's data plane up, forward eBPF logs,
//! run until SIGTERM/SIGINT.
use anyhow::Context as _;
use sluice_datapath::{Datapath, DatapathError, LoadOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{AgentArgs, NodeArgs},
    node_env::{self, ConfigError},
};

pub fn run(node: &NodeArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    init_tracing();
    // Resolve paths before entering the netns; setns does not remount /sys,
    // but resolving first keeps errors about the host paths unambiguous.
    let cgroup = node_env::resolve_cgroup(node.cgroup.as_deref())?;
    if let Some(netns) = &node.netns {
        node_env::enter_netns(netns)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio runtime")?;
    rt.block_on(async {
        let opts = LoadOptions {
            bpffs_dir: node.bpffs.clone(),
            log_level: agent.bpf_log_level,
        };
        let mut dp = Datapath::load(&opts).map_err(|e| match e {
            DatapathError::Bpffs { .. } => anyhow::Error::new(ConfigError(format!("--bpffs: {e}"))),
            e => anyhow::Error::new(e),
        })?;
        let _logs = sluice_datapath::spawn_log_forwarder(dp.ebpf_mut())?;
        dp.attach_connect4(&cgroup)?;
        tracing::info!(
            cgroup = %cgroup.display(),
            bpffs = %node.bpffs.display(),
            bpf_log_level = ?agent.bpf_log_level,
            "datapath attached"
        );
        wait_for_shutdown().await?;
        tracing::info!("shutting down: detaching programs (pinned maps stay)");
        drop(dp);
        Ok(())
    })
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
