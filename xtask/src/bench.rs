//! `cargo xtask bench lb|cni|store|api|scheduler|controllers [ARGS]`:
//! release-build everything, then run the benchmark binary
//! (`sluice-<name>-bench`, built from tests/) with reports under
//! target/bench/. Extra arguments go to the benchmark (`--help`-style
//! usage is printed on a bad one).
use anyhow::bail;

use crate::{
    build,
    cmd::{self, Env},
};

pub fn run(env: &Env, args: &[String]) -> anyhow::Result<()> {
    let Some((what, rest)) = args.split_first() else {
        bail!("which benchmark? available: lb, cni, store, api, scheduler, controllers");
    };
    let bin = match what.as_str() {
        "lb" => "sluice-lb-bench",
        "cni" => "sluice-cni-bench",
        "store" => "sluice-store-bench",
        "api" => "sluice-api-bench",
        "scheduler" => "sluice-scheduler-bench",
        "controllers" => "sluice-controllers-bench",
        other => bail!(
            "unknown benchmark {other:?}; available: lb, cni, store, api, scheduler, controllers"
        ),
    };
    // The store, API and control-plane benchmarks are files and loopback only.
    if !matches!(what.as_str(), "store" | "api" | "scheduler" | "controllers") && !cmd::is_root() {
        bail!("bench {what} needs root (network namespaces, cgroups, eBPF, iptables)");
    }
    let bin_dir = build::run(env)?;
    let out = env.target_dir.join("bench");
    cmd::run(
        env.command(&bin_dir.join(bin).display().to_string())
            .env("SLUICE_BIN_DIR", &bin_dir)
            .arg("--out")
            .arg(&out)
            .args(rest),
    )
}

/// `cargo xtask cni-conformance ARGS`: build, then run the suite binary
/// (`sluice-cni-conformance`, built from tests/) with ARGS.
pub fn cni_conformance(env: &Env, args: &[String]) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("cni-conformance needs root (network namespaces)");
    }
    let bin_dir = build::run(env)?;
    cmd::run(
        env.command(&bin_dir.join("sluice-cni-conformance").display().to_string())
            .args(args),
    )
}
