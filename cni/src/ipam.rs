//! Pod address allocation from the node's pod CIDR, stored as files so it
//! needs no daemon and survives restarts (the host-local layout):
//! `<dataDir>/<network>/<ip>` holds `<container id>\n<ifname>\n`, and
//! `last_reserved_ip` makes allocation round-robin so a released address
//! is not handed to the next pod at once. An exclusive `flock` on
//! `<dataDir>/<network>/lock` serialises concurrent invocations; the lock
//! is held for as long as the [`Store`] lives.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("IPAM store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free address left in {0} (every pod address is allocated)")]
    Exhausted(Ipv4Net),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One allocation: which container interface owns which address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
}

/// A locked view of one network's allocations.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating) `<data_dir>/<network>` and takes its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, IpamError> {
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| IpamError::Io {
            path: lock_path.clone(),
            source: e.into(),
        })?;
        Ok(Self { dir, _lock: lock })
    }

    /// Every allocation (unreadable or empty files, e.g. from a crash
    /// between create and write, come back with an empty owner so GC
    /// releases them).
    pub fn list(&self) -> Result<Vec<Allocation>, IpamError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let mut lines = text.lines();
            out.push(Allocation {
                ip,
                container_id: lines.next().unwrap_or("").trim().to_string(),
                ifname: lines.next().unwrap_or("").trim().to_string(),
            });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// The address owned by (container id, ifname), if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .list()?
            .into_iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip))
    }

    /// Allocates the next free address after the last one handed out,
    /// never the network, gateway (first host) or broadcast address.
    pub fn allocate(
        &self,
        cidr: Ipv4Net,
        container_id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        let first = u32::from(cidr.network()) + 2;
        let last = u32::from(cidr.broadcast()) - 1;
        let size = last - first + 1;
        let last_path = self.dir.join("last_reserved_ip");
        let start = std::fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|ip| (first..=last).contains(ip))
            .map(|ip| ip - first + 1)
            .unwrap_or(0);
        for i in 0..size {
            let ip = Ipv4Addr::from(first + (start + i) % size);
            let path = self.dir.join(ip.to_string());
            let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            let written = f
                .write_all(format!("{container_id}\n{ifname}\n").as_bytes())
                .and_then(|()| f.sync_data());
            if let Err(e) = written {
                let _ = std::fs::remove_file(&path);
                return Err(io(&path)(e));
            }
            std::fs::write(&last_path, ip.to_string()).map_err(io(&last_path))?;
            return Ok(ip);
        }
        Err(IpamError::Exhausted(cidr))
    }

    /// Releases `ip` (absent is fine).
    pub fn release(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sluice-ipam-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn skips_reserved_addresses_exhausts_and_recovers() {
        let d = tmp();
        let cidr: Ipv4Net = "10.9.0.0/29".parse().expect("cidr");
        let s = Store::open(&d, "n").expect("open");
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(s.allocate(cidr, &format!("c{i}"), "eth0").expect("alloc"));
        }
        // .0 network, .1 gateway, .7 broadcast are never handed out.
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 9, 0, h)).collect();
        assert_eq!(got, want);
        assert!(matches!(
            s.allocate(cidr, "c9", "eth0"),
            Err(IpamError::Exhausted(_))
        ));
        s.release(Ipv4Addr::new(10, 9, 0, 4)).expect("release");
        assert_eq!(
            s.allocate(cidr, "c9", "eth0").expect("after release"),
            Ipv4Addr::new(10, 9, 0, 4)
        );
        assert_eq!(
            s.find("c9", "eth0").expect("find"),
            Some(Ipv4Addr::new(10, 9, 0, 4))
        );
        assert_eq!(s.find("c9", "eth1").expect("find"), None);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn round_robin_does_not_reuse_a_just_released_address() {
        let d = tmp();
        let cidr: Ipv4Net = "10.9.0.0/24".parse().expect("cidr");
        let s = Store::open(&d, "n").expect("open");
        let a = s.allocate(cidr, "a", "eth0").expect("a");
        s.release(a).expect("release");
        let b = s.allocate(cidr, "b", "eth0").expect("b");
        assert_ne!(a, b);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }
}
