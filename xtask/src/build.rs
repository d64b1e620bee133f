//! `cargo xtask build`: release binaries plus the eBPF object as a file.
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::Stdio,
};

use anyhow::{Context as _, bail};

use crate::cmd::{self, Env};

pub const BINARIES: &[&str] = &["sluice-server", "sluice-agent", "sluice-cni"];
/// Where `build` leaves the eBPF object (also embedded in the binaries).
pub const EBPF_OBJECT_NAME: &str = "sluice-ebpf.o";

/// Builds the default members in release and returns target/release.
pub fn run(env: &Env) -> anyhow::Result<PathBuf> {
    let mut c = env.cargo();
    // No --workspace: default-members exclude the eBPF crate, which only
    // builds for bpfel-unknown-none (datapath/build.rs drives that build).
    c.args([
        "build",
        "--release",
        "--bins",
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped());
    eprintln!("xtask: $ {}", cmd::display(&c));
    let mut child = c.spawn().context("spawning cargo build")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut ebpf_out_dir = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "build-script-executed"
            && msg["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("sluice-datapath"))
        {
            ebpf_out_dir = msg["out_dir"].as_str().map(PathBuf::from);
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed: {status}");
    }
    let release = env.target_dir.join("release");
    for b in BINARIES {
        let p = release.join(b);
        if !p.is_file() {
            bail!("expected binary {} after build", p.display());
        }
    }
    let out_dir = ebpf_out_dir.context("cargo did not report sluice-datapath's build script")?;
    let obj = release.join(EBPF_OBJECT_NAME);
    std::fs::copy(out_dir.join("sluice-ebpf"), &obj)
        .with_context(|| format!("copying the eBPF object to {}", obj.display()))?;
    for b in BINARIES {
        eprintln!("xtask: built {}", release.join(b).display());
    }
    eprintln!("xtask: built {}", obj.display());
    Ok(release)
}
