//! `cargo xtask test`: the one command CI runs.
use anyhow::Context as _;

use crate::{
    build,
    cmd::{self, Env},
};

/// `unprivileged`: the caller is not root and asked for the unprivileged
/// tests only; privileged tests then skip (`SLUICE_TEST_UNPRIVILEGED`),
/// which they otherwise refuse to do (see `sluice_tests::require_root`).
pub fn run(env: &Env, unprivileged: bool, cargo_test_args: &[String]) -> anyhow::Result<()> {
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
    let mut cargo = env.cargo();
    if unprivileged {
        eprintln!(
            "xtask: --unprivileged: only the unprivileged tests run; every privileged test (netns, eBPF, CNI, CRI) skips"
        );
        cargo.env("SLUICE_TEST_UNPRIVILEGED", "1");
    }
    cmd::run(
        cargo
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
