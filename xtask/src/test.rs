//! `cargo xtask test`: the one command CI runs.
use anyhow::Context as _;

use crate::{
    build,
    cmd::{self, Env},
};

pub fn run(env: &Env, cargo_test_args: &[String]) -> anyhow::Result<()> {
    let bin_dir = build::run(env)?;
    cmd::run(env.cargo().args(["fmt", "--all", "--check"]))?;
    // --workspace includes the eBPF crate, type-checked for the host (its
    // programs only build for bpf; see ebpf/src/main.rs). --release shares
    // build-script output (the eBPF object) with the build above.
    cmd::run(env.cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    clippy_ebpf(env)?;
    if !cmd::is_root() {
        eprintln!("xtask: not root: privileged tests (netns, eBPF) will skip");
    }
    cmd::run(
        env.cargo()
            .env("SLUICE_BIN_DIR", &bin_dir)
            .args(["test", "--release"])
            .args(cargo_test_args),
    )
    .context("test suite failed")
}

/// Lints the eBPF crate for its real target (it is not a default member).
fn clippy_ebpf(env: &Env) -> anyhow::Result<()> {
    let target_dir = env.target_dir.join("ebpf-clippy");
    cmd::run(
        env.command("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "sluice-ebpf",
                "--release",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(&target_dir)
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO"),
    )
}
