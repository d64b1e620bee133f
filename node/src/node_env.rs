//! Resolving and entering the node this agent serves (netns, cgroup, bpffs).
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use nix::sched::CloneFlags;

/// A configuration problem the user must fix; the binary exits 2 on it.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The cgroup v2 directory the socket hooks attach to: `--cgroup` if given
/// (must be a cgroup2 directory), else the host's cgroup2 mount.
pub fn resolve_cgroup(arg: Option<&Path>) -> Result<PathBuf, ConfigError> {
    let path = match arg {
        Some(p) => p.to_path_buf(),
        None => sluice_datapath::node::cgroup2_root().ok_or_else(|| {
            ConfigError("no cgroup2 mount in /proc/mounts; pass --cgroup PATH".into())
        })?,
    };
    let fs_type = sluice_datapath::node::fs_magic(&path)
        .map_err(|e| ConfigError(format!("--cgroup {}: {e}", path.display())))?;
    if fs_type != sluice_datapath::node::CGROUP2_SUPER_MAGIC {
        return Err(ConfigError(format!(
            "--cgroup {}: not a cgroup v2 directory (f_type {fs_type:#x})",
            path.display()
        )));
    }
    Ok(path)
}

/// Moves the calling thread into the network namespace at `path`. Call it
/// before starting any runtime threads: threads created afterwards inherit it.
pub fn enter_netns(path: &Path) -> Result<(), ConfigError> {
    let f =
        File::open(path).map_err(|e| ConfigError(format!("--netns {}: {e}", path.display())))?;
    nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
        .map_err(|e| ConfigError(format!("--netns {}: setns: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_outside_cgroupfs_is_a_config_error_naming_the_path() {
        let err = resolve_cgroup(Some(Path::new("/tmp"))).unwrap_err().0;
        assert!(err.starts_with("--cgroup /tmp: "), "{err}");
        let err = resolve_cgroup(Some(Path::new("/nonexistent/sluice")))
            .unwrap_err()
            .0;
        assert!(err.contains("/nonexistent/sluice"), "{err}");
    }

    #[test]
    fn missing_netns_is_a_config_error_naming_the_path() {
        let err = enter_netns(Path::new("/run/netns/sluice-does-not-exist"))
            .unwrap_err()
            .0;
        assert!(err.contains("/run/netns/sluice-does-not-exist"), "{err}");
    }
}
