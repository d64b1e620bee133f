//! Idempotent installation of everything a fresh machine of this kind lacks.
//! Each step probes first and prints one line: `present`, or `installing`
//! then `done` with the elapsed time. A second run only probes.
use std::{path::Path, time::Instant};

use anyhow::{Context as _, bail};

use crate::cmd::{self, Env};

/// Debian packages the build and the tests use.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker build (against Debian's LLVM 22)
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // etcd-client / k8s-cri codegen (libprotobuf-dev: the well-known
    // google/protobuf/*.proto that etcd-client's protos import)
    "protobuf-compiler",
    "libprotobuf-dev",
    // real components the tests drive
    "etcd-server",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    // kernel networking tools (inspection and kube-proxy baselines)
    "bpftool",
    "iproute2",
    "iptables",
    "ipvsadm",
    "nftables",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<Env> {
    let env = Env::discover()?;
    let t0 = Instant::now();
    apt_packages(&env)?;
    kubectl(&env)?;
    old_kubectl(&env)?;
    nightly_toolchain(&env)?;
    rustup_component(&env, Some("nightly"), "rust-src")?;
    // The active toolchain (what `cargo` runs) lints and formats.
    rustup_component(&env, None, "clippy")?;
    rustup_component(&env, None, "rustfmt")?;
    bpf_linker(&env)?;
    bpffs_mounted(&env)?;
    eprintln!(
        "bootstrap: all steps ok ({:.1}s)",
        t0.elapsed().as_secs_f64()
    );
    Ok(env)
}

fn step(
    name: &str,
    present: bool,
    install: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if present {
        eprintln!("bootstrap: {name}: present");
        return Ok(());
    }
    eprintln!("bootstrap: {name}: installing");
    let t = Instant::now();
    install().with_context(|| format!("bootstrap step `{name}`"))?;
    eprintln!(
        "bootstrap: {name}: done ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn apt_packages(env: &Env) -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(env, p))
        .collect();
    let name = if missing.is_empty() {
        format!("apt packages ({})", APT_PACKAGES.len())
    } else {
        format!("apt packages (missing: {})", missing.join(" "))
    };
    step(&name, missing.is_empty(), || {
        if !cmd::is_root() {
            bail!(
                "installing Debian packages needs root; run as root or install: {}",
                missing.join(" ")
            );
        }
        // A fresh machine's package lists can be stale or empty.
        cmd::run(env.command("apt-get").args(["update", "-q"]))?;
        cmd::run(
            env.command("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )
    })
}

/// The API server tests drive a kubectl. This machine kind ships one
/// (/usr/bin/kubectl, a dispatcher over v1.27-v1.33); where none exists,
/// Debian's kubernetes-client (1.20) is installed. It is not in
/// APT_PACKAGES because installing it over the dispatcher conflicts.
fn kubectl(env: &Env) -> anyhow::Result<()> {
    let present = cmd::probe(env.command("kubectl").args(["version", "--client"]))
        .is_some_and(|o| o.status.success());
    step("kubectl", present, || {
        if !cmd::is_root() {
            bail!("installing kubernetes-client needs root; run as root or install kubectl");
        }
        cmd::run(
            env.command("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "kubernetes-client",
                ]),
        )
    })
}

/// Where the old-client tests find Debian's kubectl 1.20: extracted
/// under the target dir (not installed: it would replace /usr/bin/kubectl).
pub const OLD_KUBECTL: &str = "tools/kubectl-1.20/usr/bin/kubectl";

/// The API tests also drive Debian's kubectl 1.20 (an old client: OpenAPI
/// v2 only, no server-side field validation). `apt-get download` and
/// `dpkg-deb -x` need no root.
fn old_kubectl(env: &Env) -> anyhow::Result<()> {
    let bin = env.target_dir.join(OLD_KUBECTL);
    step("kubectl 1.20 (extracted)", bin.is_file(), || {
        let root = env.target_dir.join("tools/kubectl-1.20");
        let download = env.target_dir.join("tools/download");
        std::fs::create_dir_all(&download)?;
        cmd::run(env.command("apt-get").current_dir(&download).args([
            "download",
            "-q",
            "kubernetes-client",
        ]))?;
        let deb = std::fs::read_dir(&download)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("kubernetes-client_") && n.ends_with(".deb"))
            })
            .context("apt-get download left no kubernetes-client .deb")?;
        cmd::run(env.command("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        std::fs::remove_dir_all(&download)?;
        if !bin.is_file() {
            bail!("{} is not in the kubernetes-client package", bin.display());
        }
        Ok(())
    })
}

fn dpkg_installed(env: &Env, pkg: &str) -> bool {
    cmd::probe(
        env.command("dpkg-query")
            .args(["-W", "-f=${db:Status-Abbrev}", pkg]),
    )
    .is_some_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
}

fn nightly_toolchain(env: &Env) -> anyhow::Result<()> {
    let present = cmd::probe(env.command("rustup").args(["toolchain", "list"])).is_some_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.starts_with("nightly-"))
    });
    step("rust nightly toolchain", present, || {
        cmd::run(env.command("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
    })
}

fn rustup_component(env: &Env, toolchain: Option<&str>, component: &str) -> anyhow::Result<()> {
    let tc_args: Vec<&str> = toolchain
        .map(|t| vec!["--toolchain", t])
        .unwrap_or_default();
    let present = cmd::probe(
        env.command("rustup")
            .args(["component", "list", "--installed"])
            .args(&tc_args),
    )
    .is_some_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.starts_with(&format!("{component}-")) || l == component)
    });
    let label = toolchain.unwrap_or("active toolchain");
    step(
        &format!("rustup component {component} ({label})"),
        present,
        || {
            cmd::run(
                env.command("rustup")
                    .args(["component", "add", component])
                    .args(&tc_args),
            )
        },
    )
}

fn bpf_linker(env: &Env) -> anyhow::Result<()> {
    let present = cmd::probe(env.command("bpf-linker").arg("--version")).is_some_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    });
    step(
        &format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"),
        present,
        || {
            let path = format!("{LLVM_PREFIX}/bin:{}", env.path);
            cmd::run(
                env.cargo()
                    .env("LLVM_PREFIX", LLVM_PREFIX)
                    .env("PATH", path)
                    .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                    .args(["--no-default-features", "--features", "llvm-22"]),
            )
        },
    )
}

fn bpffs_mounted(env: &Env) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let present = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    });
    if !present && !cmd::is_root() {
        eprintln!("bootstrap: bpffs at /sys/fs/bpf: absent (not root: privileged tests will skip)");
        return Ok(());
    }
    step("bpffs at /sys/fs/bpf", present, || {
        if !Path::new("/sys/fs/bpf").exists() {
            std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
        }
        cmd::run(
            env.command("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
        )
    })
}
