//! Userspace handles on the pinned service load-balancer maps, shared by the
//! agent's reconciler (writes) and `sluice-agent bpf lb list` (reads).
//!
//! Everything is opened from the node's bpffs dir, never from a loaded
//! object, so a reader needs no program and a restarted agent sees exactly
//! what the kernel is forwarding with.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::maps::{ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuArray};
use sluice_common::{
    lb::{
        Backend, CtKey, CtValue, Frontend, LbCounter, Service, ServiceInfo, SockRevNatKey,
        SockRevNatValue, maglev,
    },
    map_names,
};

use crate::{DatapathError, LbMapSizes};

/// The LB maps of one node.
pub struct LbMaps {
    dir: PathBuf,
    pub services: HashMap<MapData, Frontend, Service>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub maglev: ArrayOfMaps<MapData, MapData>,
    /// Second handle on the outer map for deletes, which ArrayOfMaps lacks.
    maglev_outer: MapData,
    /// LB4_BACKENDS again, for batch writes (aya's typed map keeps its fd).
    backends_raw: MapData,
    pub svc_info: HashMap<MapData, u32, ServiceInfo>,
    pub svc_stats: PerCpuArray<MapData, LbCounter>,
    pub backend_stats: PerCpuArray<MapData, LbCounter>,
    pub sock_revnat: HashMap<MapData, SockRevNatKey, SockRevNatValue>,
    pub ct: HashMap<MapData, CtKey, CtValue>,
}

/// The map pinned as `name` under `dir`.
pub(crate) fn open_pinned(dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    open_pin(&dir.join(name), name)
}

/// The map pinned at `path` (its name for errors).
pub(crate) fn open_pin(path: &Path, name: &'static str) -> Result<Map, DatapathError> {
    let data = MapData::from_pin(path).map_err(DatapathError::map(name))?;
    Map::from_map_data(data).map_err(DatapathError::map(name))
}

impl LbMaps {
    /// Opens the maps pinned under `dir`. The data plane must have been
    /// loaded there with LB map sizes (the agent's load creates the
    /// userspace-only service info map); nothing is created here, so the
    /// CLI reading a node changes nothing.
    pub fn open(dir: &Path) -> Result<Self, DatapathError> {
        macro_rules! open {
            ($name:expr) => {
                open_pinned(dir, $name)?
                    .try_into()
                    .map_err(DatapathError::map($name))?
            };
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            services: open!(map_names::LB4_SERVICES),
            backends: open!(map_names::LB4_BACKENDS),
            maglev: open!(map_names::LB4_MAGLEV),
            maglev_outer: MapData::from_pin(dir.join(map_names::LB4_MAGLEV))
                .map_err(DatapathError::map(map_names::LB4_MAGLEV))?,
            backends_raw: MapData::from_pin(dir.join(map_names::LB4_BACKENDS))
                .map_err(DatapathError::map(map_names::LB4_BACKENDS))?,
            svc_info: open!(map_names::LB4_SVC_INFO),
            svc_stats: open!(map_names::LB4_SVC_STATS),
            backend_stats: open!(map_names::LB4_BACKEND_STATS),
            sock_revnat: open!(map_names::LB4_SOCK_REVNAT),
            ct: open!(map_names::CT4),
        })
    }

    /// What the pinned maps hold at most (set by the agent's
    /// `--bpf-lb-max-*` flags when it loaded the data plane).
    pub fn capacities(&self) -> Result<LbMapSizes, DatapathError> {
        LbMapSizes::pinned(&self.dir)
    }

    /// The bpffs dir these maps were opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Builds a Maglev table in a fresh inner map, not yet visible to the
    /// data plane (see [`LbMaps::commit_tables`]). `table` holds the backend
    /// id of each of the M slots; M is `table.len()`, and an empty table
    /// (M = 0) makes lookups find no backend.
    pub fn build_table(table: &[u32]) -> Result<BuiltTable, DatapathError> {
        let name = map_names::LB4_MAGLEV;
        let m = u32::try_from(table.len())
            .ok()
            .filter(|m| *m <= maglev::MAX_TABLE_SIZE)
            .ok_or_else(|| DatapathError::Table(format!("bad table size {}", table.len())))?;
        let obj = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            4,
            4,
            m + 1,
            maglev::INNER_FLAGS,
        );
        let inner =
            MapData::create(obj, "sluice_maglev", None).map_err(DatapathError::map(name))?;
        fill_table(&inner, m, table)?;
        Ok(BuiltTable(inner))
    }

    /// Points each service id's slot at its built table (`None`: an empty
    /// table, which rejects and frees the old one). Make-before-break: the
    /// tables are complete before any slot points at them, and each slot
    /// swap is atomic, so no lookup ever sees a partial table.
    ///
    /// One batch, not one write per service: the kernel waits for an RCU
    /// grace period (~10 ms) after every userspace write to a map-of-maps,
    /// which made 10 000 single writes take minutes. Callers bound a batch
    /// by [`table_batch_limit`] (each built table holds an fd).
    pub fn commit_tables(
        &mut self,
        tables: &[(u32, Option<&BuiltTable>)],
    ) -> Result<(), DatapathError> {
        if tables.is_empty() {
            return Ok(());
        }
        let empty = if tables.iter().any(|(_, t)| t.is_none()) {
            Some(Self::build_table(&[])?)
        } else {
            None
        };
        let fd_of = |t: &BuiltTable| t.0.fd().as_fd().as_raw_fd() as u32;
        let keys: Vec<u32> = tables.iter().map(|(id, _)| *id).collect();
        let fds: Vec<u32> = tables
            .iter()
            .map(|(_, t)| t.or(empty.as_ref()).map(fd_of).unwrap_or(u32::MAX))
            .collect();
        crate::sys::map_update_batch(self.maglev_outer.fd().as_fd(), &keys, &fds).map_err(|e| {
            DatapathError::Table(format!("installing {} Maglev tables: {e}", keys.len()))
        })
    }

    /// Writes backends (id -> value) in one syscall: 10 000 services of 10
    /// endpoints are 100 000 backends, one syscall each otherwise. Each
    /// element is replaced atomically, as by a single write; the batch as a
    /// whole is not.
    pub fn write_backends(&self, ids: &[u32], values: &[Backend]) -> Result<(), DatapathError> {
        if ids.is_empty() {
            return Ok(());
        }
        crate::sys::map_update_batch(self.backends_raw.fd().as_fd(), ids, values)
            .map_err(|e| DatapathError::Table(format!("writing {} backends: {e}", ids.len())))
    }

    /// Reads the table of `svc_id` (slot -> backend id), or `None` when the
    /// service has no table or an empty one.
    pub fn table(&self, svc_id: u32) -> Result<Option<Vec<u32>>, DatapathError> {
        let inner: MapData = match self.maglev.get(&svc_id, 0) {
            Ok(a) => a,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(DatapathError::map(map_names::LB4_MAGLEV)(e)),
        };
        read_table(&inner).map(|t| (!t.is_empty()).then_some(t))
    }
}

/// A Maglev table in its own inner map, built but not yet installed.
pub struct BuiltTable(MapData);

/// How many built tables to hold (one fd each) before committing: half the
/// open-file limit (the loader raises it to the hard limit), at most 16384.
/// Each commit waits for an RCU grace period (~30 ms here), so 10 000
/// services are one wait rather than three.
pub fn table_batch_limit() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let cur = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur as usize
    } else {
        1024
    };
    (cur / 2).clamp(64, 16384)
}

const ELEM: usize = 8; // array maps round each u32 value up to 8 bytes

fn mmap_len(entries: u32) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    (entries as usize * ELEM).div_ceil(page) * page
}

/// Maps a table's memory. Array maps store each value in an 8-byte slot
/// and an mmapable array starts its values at offset 0 of the mapping.
struct TableMapping {
    p: *mut libc::c_void,
    len: usize,
}

impl TableMapping {
    fn new(map: &MapData, entries: u32, write: bool) -> Result<Self, DatapathError> {
        let len = mmap_len(entries);
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping a map fd we hold, no larger than the kernel allows
        // (max_entries * elem_size rounded up to a page); unmapped on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DatapathError::Table(format!(
                "mmap of a Maglev table: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self { p, len })
    }

    fn slots(&self) -> *mut [u32; 2] {
        self.p.cast()
    }
}

impl Drop for TableMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.p, self.len) };
    }
}

/// Writes `[m, table...]` into a fresh `BPF_F_MMAPABLE` array: one memcpy
/// instead of `m + 1` update syscalls.
fn fill_table(inner: &MapData, m: u32, table: &[u32]) -> Result<(), DatapathError> {
    let map = TableMapping::new(inner, m + 1, true)?;
    // SAFETY: the mapping holds m + 1 >= table.len() + 1 slots and nothing
    // else references this fresh map yet.
    unsafe {
        *map.slots() = [m, 0];
        for (i, id) in table.iter().enumerate() {
            *map.slots().add(i + 1) = [*id, 0];
        }
    }
    Ok(())
}

fn read_table(inner: &MapData) -> Result<Vec<u32>, DatapathError> {
    let entries = inner
        .info()
        .map(|i| i.max_entries())
        .map_err(DatapathError::map(map_names::LB4_MAGLEV))?;
    if entries == 0 {
        return Ok(Vec::new());
    }
    let map = TableMapping::new(inner, entries, false)?;
    // SAFETY: the mapping holds `entries` slots; `m` is bounded by it.
    unsafe {
        let m = (*map.slots())[0].min(entries - 1) as usize;
        Ok((1..=m).map(|i| (*map.slots().add(i))[0]).collect())
    }
}
