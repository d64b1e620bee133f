//! Defaults for what a "node" is: (netns, cgroup v2 subtree, bpffs pin dir).
//! Every binary lets tests override all three.
use std::path::PathBuf;

/// Default pin directory for a node's maps and links.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/sluice";

/// `BPF_FS_MAGIC` from linux/magic.h.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The filesystem magic (statfs f_type) of `path`, to tell a bpffs or
/// cgroup2 directory from a typo'd path before anything is created in it.
pub fn fs_magic(path: &std::path::Path) -> nix::Result<i64> {
    let st = nix::sys::statfs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs per libc target
    Ok(st.filesystem_type().0 as i64)
}

/// The cgroup v2 mount point, read from /proc/mounts (it is
/// /sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on pure v2 ones).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    cgroup2_root_from(&mounts)
}

fn cgroup2_root_from(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_src, target, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_cgroup2_mounts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root_from(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root_from(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_root_from("proc /proc proc rw 0 0\n"), None);
    }
}
