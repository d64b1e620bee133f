//! The pod datapath as the CNI plugin drives it: one short-lived process
//! per ADD/DEL, so nothing here may cost a full object load per call.
//!
//! The first caller on a node loads the eBPF object (maps pinned as for the
//! agent, so both share them) and pins the two pod-veth programs under
//! `<bpffs>/progs/<object digest>/`; every later caller opens those pins,
//! which costs a few syscalls. The digest in the path means a new build of
//! sluice never attaches programs pinned by an old one. A lock on the bpffs
//! directory keeps concurrent first ADDs from loading twice (exclusive), and
//! is held shared while an ADD attaches, so the agent's switch after an LB
//! map resize ([`PodDatapath::refresh_after_resize`]) never misses a pod.
//!
//! Attachments are classic tc filters (clsact qdisc + cls_bpf in
//! direct-action mode, priority [`POD_FILTER_PRIORITY`]), not tcx links.
//! The exception is a pod whose egress is shaped by the CNI `bandwidth`
//! plugin chained after sluice: that plugin needs the veth's ingress qdisc
//! slot, which clsact would occupy, so such a veth gets tcx links (pinned
//! as `<bpffs>/links/tc_{ingress,egress}_<veth>`, removed on DEL) and the
//! [`prog_names::TC_POD_SHAPED`] ingress program.
//! On this kind of machine a tcx attach costs one or two RCU grace periods
//! (8-15 ms each, measured with strace: `BPF_LINK_CREATE` 7.8 ms + 15.4 ms
//! per veth), more than the whole ADD budget; a netlink filter add takes
//! under 0.5 ms. A filter also belongs to its device, so it outlives the
//! plugin process without a pin and vanishes with the veth: nothing to
//! clean up on DEL or GC.
use std::{
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, MapError},
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};
use nix::fcntl::{Flock, FlockArg};
use sluice_common::{endpoint::Endpoint, link_pins, map_names, prog_names};

use crate::{
    BpfLogLevel, Datapath, DatapathError, EBPF_OBJECT, LoadOptions, bpffs, loader::attach_pinned,
};

/// Programs attached as tc filters to a pod's host-side veth: ingress
/// (from the pod) and egress (to the pod).
pub const POD_PROGRAMS: [(&str, TcAttachType); 2] = [
    (prog_names::TC_POD_INGRESS, TcAttachType::Ingress),
    (prog_names::TC_LB_EGRESS, TcAttachType::Egress),
];

/// The same hooks as tcx links, for a veth whose egress is shaped.
const SHAPED_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    (prog_names::TC_POD_SHAPED, TcAttachType::Ingress, "ingress"),
    (prog_names::TC_LB_EGRESS, TcAttachType::Egress, "egress"),
];

/// Every program pinned per node; the last one pinned marks a complete set.
const PINNED: [&str; 3] = [
    prog_names::TC_POD_INGRESS,
    prog_names::TC_LB_EGRESS,
    prog_names::TC_POD_SHAPED,
];

/// tc priority (and handle 0:1) of the pod programs' filters: fixed, so
/// they are found and replaced deterministically.
pub const POD_FILTER_PRIORITY: u16 = 1;

/// Handle on a node's pinned pod datapath (programs and endpoint map).
pub struct PodDatapath {
    bpffs_dir: PathBuf,
    programs: Vec<(&'static str, SchedClassifier)>,
    endpoints: Endpoints,
    _lock: Option<Flock<File>>,
}

/// The pinned endpoint map alone: what DEL, CHECK and GC need (they never
/// attach, so they do not open the programs).
pub struct Endpoints(HashMap<MapData, u32, Endpoint>);

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
    ///
    /// The handle holds the node's bpffs lock shared until dropped, so an
    /// ADD attaches a program set the agent cannot swap out from under it
    /// (see [`PodDatapath::refresh_after_resize`]).
    pub fn open(bpffs_dir: &Path) -> Result<Self, DatapathError> {
        let dir = prog_dir(bpffs_dir);
        bpffs::ensure_pin_dir(bpffs_dir)?;
        loop {
            let shared = lock(bpffs_dir, FlockArg::LockShared)?;
            if dir.join(PINNED[0]).exists() {
                return Self::from_pins(bpffs_dir, Some(shared));
            }
            drop(shared);
            let _exclusive = lock(bpffs_dir, FlockArg::LockExclusive)?;
            // Another ADD may have pinned them while we waited.
            if !dir.join(PINNED[0]).exists() {
                Self::load_and_pin(bpffs_dir, &dir)?;
            }
        }
    }

    /// The pinned set, holding `lock` (if given) until dropped.
    fn from_pins(bpffs_dir: &Path, lock: Option<Flock<File>>) -> Result<Self, DatapathError> {
        let dir = prog_dir(bpffs_dir);
        crate::loader::raise_memlock_rlimit();
        let mut programs = Vec::new();
        for name in PINNED {
            let prog = SchedClassifier::from_pin(dir.join(name))
                .map_err(|source| DatapathError::Program { name, source })?;
            programs.push((name, prog));
        }
        Ok(Self {
            bpffs_dir: bpffs_dir.to_path_buf(),
            programs,
            endpoints: Endpoints::open(bpffs_dir)?,
            _lock: lock,
        })
    }

    pub fn endpoints(&mut self) -> &mut Endpoints {
        &mut self.endpoints
    }

    fn load_and_pin(bpffs_dir: &Path, dir: &Path) -> Result<(), DatapathError> {
        let mut dp = Datapath::load(&LoadOptions {
            bpffs_dir: bpffs_dir.to_path_buf(),
            log_level: BpfLogLevel::Warn,
            lb_sizes: None,
        })?;
        // Pin into a scratch dir, then rename: readers never see half a set.
        // (bpffs refuses names with a dot.)
        let tmp = bpffs_dir
            .join("progs")
            .join(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_pin(&tmp))?;
        for name in PINNED {
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

    fn program(&mut self, name: &'static str) -> &mut SchedClassifier {
        let i = PINNED.iter().position(|n| *n == name).unwrap_or(0);
        &mut self.programs[i].1
    }

    /// Attaches the pod programs to `iface` (a host-side veth, resolved in
    /// the calling thread's network namespace) so that they stay after this
    /// process exits: tc filters, or pinned tcx links when the pod's egress
    /// is shaped (see the module docs).
    pub fn attach(&mut self, iface: &str, shaped_egress: bool) -> Result<(), DatapathError> {
        if shaped_egress {
            let links = self.bpffs_dir.join("links");
            std::fs::create_dir_all(&links).map_err(io_pin(&links))?;
            for (name, ty, dir) in SHAPED_PROGRAMS {
                let pin = link_pin(&self.bpffs_dir, dir, iface);
                attach_pinned(self.program(name), name, iface, ty, &pin)?;
            }
            return Ok(());
        }
        // A fresh veth has no clsact yet; an existing one is fine too.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        for (name, ty) in POD_PROGRAMS {
            self.attach_filter(iface, name, ty)?;
        }
        Ok(())
    }

    /// Adds `name` as `iface`'s filter at the pod priority, kept after
    /// this process exits.
    fn attach_filter(
        &mut self,
        iface: &str,
        name: &'static str,
        ty: TcAttachType,
    ) -> Result<(), DatapathError> {
        let opts = TcAttachOptions::Netlink(NlOptions {
            priority: POD_FILTER_PRIORITY,
            handle: TcHandle::new(0, 1),
            ..Default::default()
        });
        let prog = self.program(name);
        let id = prog
            .attach_with_options(iface, ty, opts)
            .map_err(|source| DatapathError::Program { name, source })?;
        let link = prog
            .take_link(id)
            .map_err(|source| DatapathError::Program { name, source })?;
        // Dropping the link would remove the filter.
        std::mem::forget(link);
        Ok(())
    }

    /// After the agent resized the LB maps (`lb_sizes.rs`), the pinned pod
    /// programs, and the copies attached to pod veths, still use the old
    /// maps, which nothing updates any more; the resize leaves a marker
    /// ([`POD_PROGS_STALE`]) saying so. This drops the pinned set (the next
    /// ADD would otherwise attach it), pins one loaded on the new maps and
    /// swaps it onto every endpoint's veth in place: a filter's program is
    /// replaced atomically, a shaped pod's tcx link make-before-break.
    /// The marker goes only when every veth is switched, so an agent killed
    /// halfway (or a veth that failed) is retried at the next start. All of
    /// it runs under the bpffs lock, which an ADD holds shared from opening
    /// the program set to attaching it: each ADD attaches either before
    /// (and is switched here) or after (with the new set).
    /// Endpoints whose veth is gone, or whose ifindex now names another
    /// interface, are left to the CNI plugin's GC. Returns the veths switched.
    pub fn refresh_after_resize(bpffs_dir: &Path) -> Result<usize, DatapathError> {
        let marker = bpffs_dir.join(POD_PROGS_STALE);
        // Set once a set loaded on the new maps is pinned, so a retry after
        // a failed veth reuses it instead of loading the object again.
        let new_set = marker.join(NEW_SET_PINNED);
        let exclusive = lock(bpffs_dir, FlockArg::LockExclusive)?;
        let progs = bpffs_dir.join("progs");
        let reuse = new_set.exists() && prog_dir(bpffs_dir).join(PINNED[0]).exists();
        if !reuse {
            bpffs::gone_ok(std::fs::remove_dir_all(&progs)).map_err(io_pin(&progs))?;
        }
        let endpoints = match Endpoints::open_existing(bpffs_dir)? {
            Some(eps) => eps.list(),
            None => Vec::new(),
        };
        let mut switched = 0;
        let mut failed = 0;
        if !endpoints.is_empty() {
            if !reuse {
                Self::load_and_pin(bpffs_dir, &prog_dir(bpffs_dir))?;
                std::fs::create_dir_all(&new_set).map_err(io_pin(&new_set))?;
            }
            // `exclusive` stays held until the marker is gone.
            let mut dp = Self::from_pins(bpffs_dir, None)?;
            let macs = host_macs();
            for (ip, ep) in endpoints {
                let Some(iface) =
                    ifname(ep.ifindex).filter(|i| macs.get(i.as_str()) == Some(&ep.host_mac))
                else {
                    tracing::debug!(%ip, ifindex = ep.ifindex, "endpoint's veth is gone; skipped");
                    continue;
                };
                let res = if Self::tcx_linked(bpffs_dir, &iface) {
                    dp.attach(&iface, true)
                } else {
                    dp.replace_filters(&iface)
                };
                match res {
                    Ok(()) => switched += 1,
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(%ip, iface, "switching pod programs to resized maps: {e}");
                    }
                }
            }
        }
        if failed == 0 {
            for dir in [&new_set, &marker] {
                bpffs::gone_ok(std::fs::remove_dir(dir)).map_err(io_pin(dir))?;
            }
        }
        drop(exclusive);
        Ok(switched)
    }

    /// Whether programs loaded before an LB map resize may still run on
    /// some pod veth with the old maps: the marker a resize leaves until
    /// [`PodDatapath::refresh_after_resize`] has switched every veth.
    pub fn programs_stale(bpffs_dir: &Path) -> bool {
        bpffs_dir.join(POD_PROGS_STALE).exists()
    }

    /// Points `iface`'s pod filters at this set's programs, attaching any
    /// the veth lacks.
    fn replace_filters(&mut self, iface: &str) -> Result<(), DatapathError> {
        for (name, ty) in POD_PROGRAMS {
            let existing = SchedClassifierLink::attached(
                iface,
                ty,
                POD_FILTER_PRIORITY,
                TcHandle::new(0, 1),
                None,
            );
            let prog = self.program(name);
            let replaced = existing.map_err(ProgramError::from).and_then(|link| {
                let id = prog.attach_to_link(link)?;
                prog.take_link(id)
            });
            match replaced {
                // Dropping the link would remove the filter.
                Ok(link) => std::mem::forget(link),
                Err(e) => {
                    tracing::debug!(iface, "{name}: no filter to replace ({e}); attaching");
                    let _ = aya::programs::tc::qdisc_add_clsact(iface);
                    self.attach_filter(iface, name, ty)?;
                }
            }
        }
        Ok(())
    }

    /// Whether `iface` has shaped-pod tcx links (any of their pins exists:
    /// one whose other link failed to pin is still a tcx veth, to repair).
    pub fn tcx_linked(bpffs_dir: &Path, iface: &str) -> bool {
        SHAPED_PROGRAMS
            .iter()
            .any(|(_, _, dir)| link_pin(bpffs_dir, dir, iface).exists())
    }

    /// The shaped-pod tcx link pins `iface` lacks (none for a complete
    /// pair; both for a veth that has filters instead).
    pub fn tcx_pins_missing(bpffs_dir: &Path, iface: &str) -> Vec<PathBuf> {
        SHAPED_PROGRAMS
            .iter()
            .map(|(_, _, dir)| link_pin(bpffs_dir, dir, iface))
            .filter(|p| !p.exists())
            .collect()
    }

    /// Removes `iface`'s tcx link pins, if it has any (detaching the
    /// programs if the veth still exists). Filters need nothing: they go
    /// with the veth. Idempotent. Under the bpffs lock (shared), so it
    /// cannot interleave with [`PodDatapath::refresh_after_resize`]
    /// re-pinning the same veth's links, which would leave a stale pin.
    pub fn unlink(bpffs_dir: &Path, iface: &str) -> Result<(), DatapathError> {
        if !Self::tcx_linked(bpffs_dir, iface) {
            return Ok(());
        }
        let _shared = lock(bpffs_dir, FlockArg::LockShared)?;
        for (_, _, dir) in SHAPED_PROGRAMS {
            let pin = link_pin(bpffs_dir, dir, iface);
            bpffs::gone_ok(std::fs::remove_file(&pin)).map_err(io_pin(&pin))?;
        }
        Ok(())
    }
}

/// The node's bpffs lock. Exclusive: loading or dropping the pinned pod
/// program set, or resizing LB maps; shared: an ADD from opening the set
/// to attaching it, and a DEL removing link pins. So concurrent ADDs load
/// the set once, never attach one that a resize has made stale, and no
/// pin is removed while a resize switch re-pins it.
pub(crate) fn lock(bpffs_dir: &Path, how: FlockArg) -> Result<Flock<File>, DatapathError> {
    let file = File::open(bpffs_dir).map_err(io_pin(bpffs_dir))?;
    Flock::lock(file, how).map_err(|(_, e)| DatapathError::Pin {
        path: bpffs_dir.to_path_buf(),
        reason: format!("lock: {e}"),
    })
}

/// Present (a directory: bpffs holds nothing else) from a resize of the LB
/// maps until every pod veth runs programs loaded on the new ones.
pub(crate) const POD_PROGS_STALE: &str = "pod-progs-stale";

/// Inside [`POD_PROGS_STALE`]: the pinned pod program set was loaded after
/// the resize (a new resize removes it).
const NEW_SET_PINNED: &str = "new-set-pinned";

/// Leaves the marker [`PodDatapath::refresh_after_resize`] acts on (after
/// an LB map resize, under the exclusive bpffs lock).
pub(crate) fn mark_programs_stale(bpffs_dir: &Path) -> Result<(), DatapathError> {
    let marker = bpffs_dir.join(POD_PROGS_STALE);
    // A set pinned after an earlier resize is stale again now.
    let new_set = marker.join(NEW_SET_PINNED);
    bpffs::gone_ok(std::fs::remove_dir(&new_set)).map_err(io_pin(&new_set))?;
    std::fs::create_dir_all(&marker).map_err(io_pin(&marker))
}

/// Interface name -> MAC in the calling thread's netns.
fn host_macs() -> std::collections::HashMap<String, [u8; 6]> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Default::default();
    };
    addrs
        .filter_map(|a| {
            let mac = a.address?.as_link_addr()?.addr()?;
            Some((a.interface_name, mac))
        })
        .collect()
}

/// The name of interface `ifindex` in the calling thread's netns.
fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn link_pin(bpffs_dir: &Path, dir: &str, iface: &str) -> PathBuf {
    bpffs_dir.join(format!("{}{dir}_{iface}", link_pins::TC_PREFIX))
}

impl Endpoints {
    pub fn open(bpffs_dir: &Path) -> Result<Self, DatapathError> {
        let name = map_names::EP4_ENDPOINTS;
        let data = MapData::from_pin(bpffs_dir.join(name)).map_err(DatapathError::map(name))?;
        HashMap::try_from(aya::maps::Map::HashMap(data))
            .map(Self)
            .map_err(DatapathError::map(name))
    }

    /// The endpoint map if this node has one pinned (DEL and GC never
    /// create the datapath).
    pub fn open_existing(bpffs_dir: &Path) -> Result<Option<Self>, DatapathError> {
        if !bpffs_dir.join(map_names::EP4_ENDPOINTS).exists() {
            return Ok(None);
        }
        Self::open(bpffs_dir).map(Some)
    }

    pub fn set_endpoint(&mut self, ip: Ipv4Addr, ep: Endpoint) -> Result<(), DatapathError> {
        self.0
            .insert(u32::from_ne_bytes(ip.octets()), ep, 0)
            .map_err(DatapathError::map(map_names::EP4_ENDPOINTS))
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<Endpoint>, DatapathError> {
        match self.0.get(&u32::from_ne_bytes(ip.octets()), 0) {
            Ok(ep) => Ok(Some(ep)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DatapathError::map(map_names::EP4_ENDPOINTS)(e)),
        }
    }

    /// Removes `ip`'s entry; absent is fine.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        match self.0.remove(&u32::from_ne_bytes(ip.octets())) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(DatapathError::map(map_names::EP4_ENDPOINTS)(e)),
        }
    }

    /// Every endpoint entry (for GC).
    pub fn list(&self) -> Vec<(Ipv4Addr, Endpoint)> {
        self.0
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (Ipv4Addr::from(k.to_ne_bytes()), v))
            .collect()
    }
}
