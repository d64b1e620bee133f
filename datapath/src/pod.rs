//! The pod datapath as the CNI plugin drives it: one short-lived process
//! per ADD/DEL, so nothing here may cost a full object load per call.
//!
//! The first caller on a node loads the eBPF object (maps pinned as for the
//! agent, so both share them) and pins the two pod-veth programs under
//! `<bpffs>/progs/<object digest>/`; every later caller opens those pins,
//! which costs a few syscalls. The digest in the path means a new build of
//! sluice never attaches programs pinned by an old one. A lock on the bpffs
//! directory keeps concurrent first ADDs from loading twice.
//!
//! Attachments are tcx links pinned as `<bpffs>/links/tc_{ingress,egress}_<veth>`
//! (the agent's naming), so they outlive the plugin process; `detach`
//! removes the pins (the kernel already dropped the attachment if the veth
//! is gone).
use std::{
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, MapError},
    programs::{SchedClassifier, TcAttachType},
};
use nix::fcntl::{Flock, FlockArg};
use sluice_common::{endpoint::Endpoint, link_pins, map_names, prog_names};

use crate::{
    BpfLogLevel, Datapath, DatapathError, EBPF_OBJECT, LoadOptions, bpffs, loader::attach_pinned,
};

/// Programs attached to every pod's host-side veth: ingress (from the pod)
/// and egress (to the pod).
const POD_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    (prog_names::TC_POD_INGRESS, TcAttachType::Ingress, "ingress"),
    (prog_names::TC_LB_EGRESS, TcAttachType::Egress, "egress"),
];

/// Handle on a node's pinned pod datapath (programs and endpoint map).
pub struct PodDatapath {
    bpffs_dir: PathBuf,
    programs: Vec<(SchedClassifier, TcAttachType, &'static str, &'static str)>,
    endpoints: HashMap<MapData, u32, Endpoint>,
}

/// Where this build's pod programs are pinned.
fn prog_dir(bpffs_dir: &Path) -> PathBuf {
    let digest = xxhash_rust::xxh3::xxh3_64(EBPF_OBJECT);
    bpffs_dir.join("progs").join(format!("{digest:016x}"))
}

fn io_pin(path: &Path) -> impl Fn(std::io::Error) -> DatapathError + '_ {
    move |e| DatapathError::Pin {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl PodDatapath {
    /// Opens the pinned pod datapath under `bpffs_dir`, loading and pinning
    /// it first if this node has none yet (or only an older build's).
    pub fn open(bpffs_dir: &Path) -> Result<Self, DatapathError> {
        let dir = prog_dir(bpffs_dir);
        if !dir.join(prog_names::TC_POD_INGRESS).exists() {
            bpffs::ensure_pin_dir(bpffs_dir)?;
            let lock_file = File::open(bpffs_dir).map_err(io_pin(bpffs_dir))?;
            let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| {
                DatapathError::Pin {
                    path: bpffs_dir.to_path_buf(),
                    reason: format!("lock: {e}"),
                }
            })?;
            // Another ADD may have pinned them while we waited.
            if !dir.join(prog_names::TC_POD_INGRESS).exists() {
                Self::load_and_pin(bpffs_dir, &dir)?;
            }
        }
        crate::loader::raise_memlock_rlimit();
        let mut programs = Vec::new();
        for (name, ty, dir_name) in POD_PROGRAMS {
            let prog = SchedClassifier::from_pin(dir.join(name))
                .map_err(|source| DatapathError::Program { name, source })?;
            programs.push((prog, ty, name, dir_name));
        }
        let name = map_names::EP4_ENDPOINTS;
        let data = MapData::from_pin(bpffs_dir.join(name)).map_err(DatapathError::map(name))?;
        let endpoints =
            HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(DatapathError::map(name))?;
        Ok(Self {
            bpffs_dir: bpffs_dir.to_path_buf(),
            programs,
            endpoints,
        })
    }

    fn load_and_pin(bpffs_dir: &Path, dir: &Path) -> Result<(), DatapathError> {
        let mut dp = Datapath::load(&LoadOptions {
            bpffs_dir: bpffs_dir.to_path_buf(),
            log_level: BpfLogLevel::Warn,
        })?;
        // Pin into a scratch dir, then rename: readers never see half a set.
        // (bpffs refuses names with a dot.)
        let tmp = bpffs_dir
            .join("progs")
            .join(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_pin(&tmp))?;
        for (name, _, _) in POD_PROGRAMS {
            let prog = dp.classifier(name)?;
            if prog.fd().is_err() {
                prog.load()
                    .map_err(|source| DatapathError::Program { name, source })?;
            }
            prog.pin(tmp.join(name)).map_err(|e| DatapathError::Pin {
                path: tmp.join(name),
                reason: e.to_string(),
            })?;
        }
        std::fs::rename(&tmp, dir).map_err(io_pin(dir))
    }

    fn link_pin(&self, dir_name: &str, iface: &str) -> PathBuf {
        self.bpffs_dir
            .join(format!("{}{dir_name}_{iface}", link_pins::TC_PREFIX))
    }

    /// Attaches the pod programs to `iface` (a host-side veth, resolved in
    /// the calling thread's network namespace).
    pub fn attach(&mut self, iface: &str) -> Result<(), DatapathError> {
        let links = self.bpffs_dir.join("links");
        std::fs::create_dir_all(&links).map_err(io_pin(&links))?;
        let pins: Vec<PathBuf> = POD_PROGRAMS
            .iter()
            .map(|(_, _, d)| self.link_pin(d, iface))
            .collect();
        for ((prog, ty, name, _), pin) in self.programs.iter_mut().zip(pins) {
            attach_pinned(prog, name, iface, *ty, &pin)?;
        }
        Ok(())
    }

    /// Removes `iface`'s link pins (detaching the programs if the veth still
    /// exists). Missing pins are fine: DEL is idempotent.
    pub fn detach(bpffs_dir: &Path, iface: &str) -> Result<(), DatapathError> {
        for (_, _, dir_name) in POD_PROGRAMS {
            let pin = bpffs_dir.join(format!("{}{dir_name}_{iface}", link_pins::TC_PREFIX));
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_pin(&pin)(e)),
            }
        }
        Ok(())
    }

    /// Whether `iface` has the pod programs attached (their link pins exist).
    pub fn attached(bpffs_dir: &Path, iface: &str) -> bool {
        POD_PROGRAMS.iter().all(|(_, _, d)| {
            bpffs_dir
                .join(format!("{}{d}_{iface}", link_pins::TC_PREFIX))
                .exists()
        })
    }

    pub fn set_endpoint(&mut self, ip: Ipv4Addr, ep: Endpoint) -> Result<(), DatapathError> {
        self.endpoints
            .insert(u32::from_ne_bytes(ip.octets()), ep, 0)
            .map_err(DatapathError::map(map_names::EP4_ENDPOINTS))
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<Endpoint>, DatapathError> {
        match self.endpoints.get(&u32::from_ne_bytes(ip.octets()), 0) {
            Ok(ep) => Ok(Some(ep)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DatapathError::map(map_names::EP4_ENDPOINTS)(e)),
        }
    }

    /// Removes `ip`'s entry; absent is fine.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        match self.endpoints.remove(&u32::from_ne_bytes(ip.octets())) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(DatapathError::map(map_names::EP4_ENDPOINTS)(e)),
        }
    }

    /// Every endpoint entry (for GC).
    pub fn endpoints(&self) -> Vec<(Ipv4Addr, Endpoint)> {
        self.endpoints
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (Ipv4Addr::from(k.to_ne_bytes()), v))
            .collect()
    }
}
