//! Running external commands loudly: every command is echoed, and a failure
//! names the command and its exit status.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, bail};

/// Paths and environment every step shares.
pub struct Env {
    pub workspace: PathBuf,
    pub target_dir: PathBuf,
    /// PATH with cargo's bin dir first, so a freshly installed bpf-linker is
    /// found by aya-build's nested cargo even if the caller's PATH lacks it.
    pub path: String,
}

impl Env {
    pub fn discover() -> anyhow::Result<Self> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent dir")?
            .to_path_buf();
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .context("neither CARGO_HOME nor HOME is set")?;
        let old = std::env::var("PATH").unwrap_or_default();
        let path = format!("{}:{old}", cargo_home.join("bin").display());
        Ok(Self {
            workspace,
            target_dir,
            path,
        })
    }

    /// A command with the shared PATH, run from the workspace root.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("PATH", &self.path).current_dir(&self.workspace);
        c
    }

    /// `cargo` of the toolchain running xtask.
    pub fn cargo(&self) -> Command {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        self.command(&cargo)
    }
}

/// Runs `c` with inherited stdio; errors if it exits non-zero.
pub fn run(c: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", display(c));
    let status = c
        .status()
        .with_context(|| format!("spawning {}", display(c)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(c));
    }
    Ok(())
}

/// Runs `c` capturing output, without echoing; for probes.
pub fn probe(c: &mut Command) -> Option<Output> {
    c.stdin(Stdio::null()).output().ok()
}

pub fn display(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
