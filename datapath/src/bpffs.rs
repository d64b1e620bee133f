//! The node's bpffs pin directory: maps pinned here outlive the agent process,
//! which is what lets the data plane keep forwarding across agent restarts.
use std::path::Path;

use crate::{
    DatapathError,
    node::{BPF_FS_MAGIC, fs_magic},
};

/// Checks `dir` is (or would be created) on a bpf filesystem, then creates
/// it. The check comes first so a typo'd `--bpffs` fails up front, names the
/// path and leaves nothing behind.
pub fn ensure_pin_dir(dir: &Path) -> Result<(), DatapathError> {
    let err = |reason: String| DatapathError::Bpffs {
        path: dir.to_path_buf(),
        reason,
    };
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| err("no existing ancestor".into()))?;
    let fs_type = fs_magic(existing).map_err(|e| err(format!("statfs: {e}")))?;
    if fs_type != BPF_FS_MAGIC {
        return Err(err(format!(
            "not on a bpf filesystem (f_type {fs_type:#x}); mount one with `mount -t bpf bpf /sys/fs/bpf`"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("create: {e}")))?;
    Ok(())
}

/// Removing what is already gone is success (pins and marker dirs are
/// removed idempotently).
pub(crate) fn gone_ok(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_directory_outside_bpffs() {
        let dir = std::env::temp_dir().join(format!("sluice-bpffs-unit-{}", std::process::id()));
        let res = ensure_pin_dir(&dir);
        let created = dir.exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!created, "a rejected --bpffs must not be created");
        let msg = res.expect_err("tmp is not bpffs").to_string();
        assert!(msg.contains("not on a bpf filesystem"), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }
}
