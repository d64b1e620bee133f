//! Loading the eBPF object for one node and attaching its programs.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, Program, ProgramError, SchedClassifier, TcAttachType, links::FdLink,
    },
};
use sluice_common::{Counter, ProgStat, link_pins, map_names, prog_names};

use crate::{DatapathError, EBPF_OBJECT, LbMapSizes, bpffs, lb_sizes};

/// Level below which eBPF-side log statements are compiled out by the
/// verifier (aya-log's `AYA_LOG_LEVEL` global is patched before load), so
/// disabled logs cost nothing on the hot path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum BpfLogLevel {
    Off = 0,
    Error = 1,
    #[default]
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl std::str::FromStr for BpfLogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warn" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => {
                return Err(format!(
                    "invalid eBPF log level {s:?} (expected off|error|warn|info|debug|trace)"
                ));
            }
        })
    }
}

/// How to load the data plane for one node.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The node's bpffs directory; pinned maps live (and are reused) here.
    pub bpffs_dir: PathBuf,
    pub log_level: BpfLogLevel,
    /// Capacities of the service LB maps. `Some` (the agent): pinned maps of
    /// another size are resized, keeping their entries, and the userspace
    /// service info map is created. `None` (the CNI plugin): pinned maps are
    /// used as they are and new ones get the object's defaults.
    pub lb_sizes: Option<LbMapSizes>,
}

/// Which per-packet LB program an interface gets on ingress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbIface {
    /// A node's external interface: NodePort, ExternalIP and LoadBalancer
    /// frontends only.
    External,
    /// The host side of a pod's veth: every frontend, ClusterIPs included,
    /// for pods whose sockets the cgroup hooks do not cover.
    Pod,
}

/// The loaded eBPF object of one node. Its programs are attached through
/// pinned links and stay attached when this is dropped (tc filters only
/// where tcx exists, see [`attach_pinned`]). Pinned maps stay.
pub struct Datapath {
    ebpf: Ebpf,
    bpffs_dir: PathBuf,
}

impl Datapath {
    /// Loads the embedded object, reusing maps already pinned under
    /// `opts.bpffs_dir` (so state survives restarts) and pinning new ones.
    pub fn load(opts: &LoadOptions) -> Result<Self, DatapathError> {
        bpffs::ensure_pin_dir(&opts.bpffs_dir)?;
        raise_memlock_rlimit();
        raise_nofile_rlimit();
        let level = opts.log_level as u8;
        let maglev_pin = opts.bpffs_dir.join(map_names::LB4_MAGLEV);
        // Sizing holds the node's bpffs lock from the first rename to the
        // last copy, so a CNI ADD cannot load (and pin default-size maps)
        // in between.
        let (_sizing, resize) = match &opts.lb_sizes {
            Some(sizes) => {
                let lock = crate::pod::lock(&opts.bpffs_dir, nix::fcntl::FlockArg::LockExclusive)?;
                (Some(lock), Some(lb_sizes::prepare(&opts.bpffs_dir, sizes)?))
            }
            None => (None, None),
        };
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&opts.bpffs_dir)
            // BTF map definitions carry no pinning attribute; pin by path.
            .map_pin_path(map_names::LB4_MAGLEV, maglev_pin.as_path())
            .override_global(aya_log::LEVEL, &level, false);
        for (name, size) in opts.lb_sizes.iter().flat_map(|s| s.object_maps()) {
            loader.map_max_entries(name, size);
        }
        let ebpf = match loader.load(EBPF_OBJECT) {
            Ok(ebpf) => ebpf,
            Err(e) => {
                if let Some(r) = &resize {
                    r.abort();
                }
                return Err(e.into());
            }
        };
        if let (Some(r), Some(sizes)) = (resize, &opts.lb_sizes) {
            r.finish(sizes)?;
        }
        Ok(Self {
            ebpf,
            bpffs_dir: opts.bpffs_dir.clone(),
        })
    }

    /// The underlying object, for log forwarding and map access.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches the socket-LB hooks (connect4, sendmsg4, recvmsg4,
    /// getpeername4, sock_release) to the node's cgroup subtree as bpf_links
    /// pinned under `<bpffs>/links/`, so they stay attached (and keep
    /// translating with the pinned maps) while the agent is down or
    /// restarting.
    ///
    /// A link pinned by a previous agent is replaced make-before-break: the
    /// new program is attached first, then the old link is unpinned (which
    /// detaches it). While both run, translation is idempotent: the second
    /// program sees a backend address, which is not a frontend.
    /// The kernel rejects explicit attach flags for links, so the mode
    /// stays the default (links always coexist with other programs).
    pub fn attach_socket_lb(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let links_dir = self.bpffs_dir.join("links");
        std::fs::create_dir_all(&links_dir).map_err(|e| DatapathError::Pin {
            path: links_dir.clone(),
            reason: e.to_string(),
        })?;
        for (name, pin) in [
            (prog_names::SOCK4_CONNECT, link_pins::SOCK4_CONNECT),
            (prog_names::SOCK4_SENDMSG, link_pins::SOCK4_SENDMSG),
            (prog_names::SOCK4_RECVMSG, link_pins::SOCK4_RECVMSG),
            (prog_names::SOCK4_GETPEERNAME, link_pins::SOCK4_GETPEERNAME),
            (prog_names::SOCK4_RELEASE, link_pins::SOCK4_RELEASE),
        ] {
            self.attach_cgroup_pinned(name, cgroup, &self.bpffs_dir.join(pin))?;
        }
        Ok(())
    }

    fn attach_cgroup_pinned(
        &mut self,
        name: &'static str,
        cgroup: &Path,
        pin: &Path,
    ) -> Result<(), DatapathError> {
        let cgroup_file = File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::ProgramMissing(name))?;
        let err = |source| DatapathError::Program { name, source };
        // The two cgroup program types share this API but no trait.
        macro_rules! attach {
            ($prog:expr) => {{
                $prog.load().map_err(err)?;
                let id = $prog
                    .attach(&cgroup_file, CgroupAttachMode::default())
                    .map_err(err)?;
                $prog.take_link(id).map_err(err)?.try_into()
            }};
        }
        let link: FdLink = match program {
            Program::CgroupSockAddr(prog) => attach!(prog),
            Program::CgroupSock(prog) => attach!(prog),
            _ => return Err(err(ProgramError::UnexpectedProgramType)),
        }
        .map_err(|e: aya::programs::links::LinkError| DatapathError::Pin {
            path: pin.to_path_buf(),
            reason: e.to_string(),
        })?;
        pin_replacing(link, pin)?;
        Ok(())
    }

    /// Attaches the per-packet LB (DNAT on ingress, reverse NAT on egress)
    /// to an interface, as tcx links pinned under
    /// `<bpffs>/links/tc_{ingress,egress}_<iface>` so NodePort/ExternalIP
    /// traffic keeps flowing while the agent restarts. A pinned link from a
    /// previous agent is replaced make-before-break, as for socket hooks.
    /// On kernels without tcx (< 6.6) the clsact filter cannot be pinned and
    /// is detached when the agent exits (known gap; this machine has tcx).
    pub fn attach_lb_iface(&mut self, iface: &str, role: LbIface) -> Result<(), DatapathError> {
        let ingress = match role {
            LbIface::External => prog_names::TC_LB_INGRESS,
            LbIface::Pod => prog_names::TC_POD_INGRESS,
        };
        for (name, ty, dir) in [
            (ingress, TcAttachType::Ingress, "ingress"),
            (prog_names::TC_LB_EGRESS, TcAttachType::Egress, "egress"),
        ] {
            let pin = self
                .bpffs_dir
                .join(format!("{}{dir}_{iface}", link_pins::TC_PREFIX));
            if let Some(parent) = pin.parent() {
                std::fs::create_dir_all(parent).map_err(|e| DatapathError::Pin {
                    path: parent.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
            let prog = self.classifier(name)?;
            if prog.fd().is_err() {
                prog.load()
                    .map_err(|source| DatapathError::Program { name, source })?;
            }
            attach_pinned(prog, name, iface, ty, &pin)?;
        }
        Ok(())
    }

    pub(crate) fn classifier(
        &mut self,
        name: &'static str,
    ) -> Result<&mut SchedClassifier, DatapathError> {
        self.ebpf
            .program_mut(name)
            .ok_or(DatapathError::ProgramMissing(name))?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })
    }
}

/// Per-program counters read from the maps pinned under `bpffs_dir`, for
/// CLI inspection while (or after) an agent runs.
pub fn pinned_counters(bpffs_dir: &Path) -> Result<Vec<(ProgStat, Counter)>, DatapathError> {
    let name = map_names::PROG_STATS;
    let data = MapData::from_pin(bpffs_dir.join(name))
        .map_err(|source| DatapathError::Map { name, source })?;
    let map = Map::from_map_data(data).map_err(|source| DatapathError::Map { name, source })?;
    counters_from(&map)
}

fn counters_from(map: &Map) -> Result<Vec<(ProgStat, Counter)>, DatapathError> {
    let name = map_names::PROG_STATS;
    let stats = PerCpuArray::<_, Counter>::try_from(map)
        .map_err(|source| DatapathError::Map { name, source })?;
    ProgStat::ALL
        .iter()
        .map(|s| {
            let per_cpu = stats
                .get(&(*s as u32), 0)
                .map_err(|source| DatapathError::Map { name, source })?;
            Ok((*s, Counter::sum(per_cpu.iter())))
        })
        .collect()
}

/// Pins `link` at `pin`, replacing (and so detaching) a link a previous
/// agent pinned there. The new link is already attached, so there is no
/// moment without a program.
fn pin_replacing(link: FdLink, pin: &Path) -> Result<(), DatapathError> {
    let pin_err = |reason: String| DatapathError::Pin {
        path: pin.to_path_buf(),
        reason,
    };
    // Pinned under a scratch name, then renamed over the old pin: the old
    // link (and with it the old program) goes only once the new one holds
    // its place, so a failure leaves the interface as it was. (bpffs
    // refuses names with a dot.)
    let mut scratch = pin.as_os_str().to_owned();
    scratch.push("-new");
    let scratch = std::path::PathBuf::from(scratch);
    let _ = std::fs::remove_file(&scratch); // left by a crash
    link.pin(&scratch).map_err(|e| pin_err(e.to_string()))?;
    std::fs::rename(&scratch, pin).map_err(|e| {
        let _ = std::fs::remove_file(&scratch);
        pin_err(e.to_string())
    })
}

/// Attaches `prog` to `iface` and pins the tcx link at `pin` (replacing a
/// previous one), so the attachment outlives this process. Without tcx
/// the clsact filter cannot be pinned (known gap: it detaches with us).
pub(crate) fn attach_pinned(
    prog: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    ty: TcAttachType,
    pin: &Path,
) -> Result<(), DatapathError> {
    if !tcx_available() {
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
    }
    let id = prog
        .attach(iface, ty)
        .map_err(|source| DatapathError::Program { name, source })?;
    let link = prog
        .take_link(id)
        .map_err(|source| DatapathError::Program { name, source })?;
    match FdLink::try_from(link) {
        Ok(link) => pin_replacing(link, pin),
        Err(e) => {
            tracing::warn!(iface, "{name}: no tcx, link not pinned: {e}");
            Ok(())
        }
    }
}

/// tcx (link-based tc attachment, pinnable) exists from Linux 6.6; older
/// kernels get a clsact qdisc and netlink filters.
fn tcx_available() -> bool {
    aya::util::KernelVersion::current()
        .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
        .unwrap_or(false)
}

/// Each Maglev table being built holds an fd until its batch is installed
/// (see `LbMaps::commit_tables`); lift the soft open-file limit to the hard
/// one so batches can be large.
fn raise_nofile_rlimit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so map
/// creation does not fail there. Harmless (and ignored on failure) elsewhere.
pub(crate) fn raise_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (ret {ret}); fine on kernels >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_parses_and_rejects_with_the_bad_value() {
        assert_eq!("DEBUG".parse::<BpfLogLevel>(), Ok(BpfLogLevel::Debug));
        assert_eq!("off".parse::<BpfLogLevel>(), Ok(BpfLogLevel::Off));
        let err = "loud".parse::<BpfLogLevel>().unwrap_err();
        assert!(err.contains("\"loud\""), "{err}");
    }

    #[test]
    fn embedded_object_is_a_bpf_elf() {
        // ELF magic, 64-bit, little endian, machine EM_BPF (247).
        assert_eq!(&EBPF_OBJECT[..4], b"\x7fELF");
        assert_eq!(EBPF_OBJECT[4], 2);
        assert_eq!(EBPF_OBJECT[5], 1);
        assert_eq!(u16::from_le_bytes([EBPF_OBJECT[18], EBPF_OBJECT[19]]), 247);
    }
}
