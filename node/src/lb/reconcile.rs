//! Level-triggered reconciler: desired LB state -> pinned maps, writing only
//! the differences.
//!
//! State lives in the kernel, not here: on start the reconciler reads the
//! pinned maps (service ids and their names from the info map, backend ids
//! from the backend map, the frontends), so a restarted agent keeps every id, rewrites no
//! unchanged table, and never empties a map the data plane is forwarding
//! with. Order of writes keeps the data plane consistent at every step:
//! backends first, then tables, then frontends; removals in reverse.
use std::collections::{BTreeSet, HashMap};

use aya::maps::PerCpuValues;
use sluice_common::lb::{Backend, Frontend, LbCounter, Service, ServiceInfo};
use sluice_datapath::{BuiltTable, DatapathError, LbMaps, table_batch_limit};
use xxhash_rust::xxh3::xxh3_64;

use super::{
    maglev,
    model::{BackendAddr, Desired},
};

/// Dense ids, smallest free first, so arrays indexed by id stay compact.
/// Ids start at 1; 0 is never handed out, so a zeroed value means "none".
#[derive(Debug)]
struct IdPool {
    /// Every id >= `next` is unused.
    next: u32,
    /// Unused ids below `next`.
    free: BTreeSet<u32>,
    max: u32,
}

impl IdPool {
    fn new(max: u32) -> Self {
        Self {
            next: 1,
            free: BTreeSet::new(),
            max,
        }
    }
    /// Marks an id found in the pinned maps as used.
    fn take(&mut self, id: u32) {
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.remove(&id);
        }
    }
    fn alloc(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        (self.next < self.max).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
    fn free(&mut self, id: u32) {
        self.free.insert(id);
    }
}

/// What one `apply` changed, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub services: usize,
    pub backends: usize,
    pub frontends: usize,
    pub tables_written: usize,
    /// Maglev tables computed: only those whose inputs differ from what
    /// the pinned info says its table was built from.
    pub tables_computed: usize,
    pub frontends_written: usize,
    pub backends_written: usize,
    pub removed: usize,
}

impl ApplyStats {
    pub fn changed(&self) -> bool {
        self.tables_written + self.frontends_written + self.backends_written + self.removed > 0
    }
}

pub struct Reconciler {
    maps: LbMaps,
    svc_ids: HashMap<String, u32>,
    infos: HashMap<u32, ServiceInfo>,
    backend_ids: HashMap<BackendAddr, (u32, Backend)>,
    /// `LB4_SERVICES` as this process last read or wrote it (only the
    /// agent writes it): diffing against it saves reading the whole map
    /// back on every apply (two syscalls per frontend).
    frontends: HashMap<Frontend, Service>,
    svc_pool: IdPool,
    backend_pool: IdPool,
}

fn addr_of(b: &Backend) -> BackendAddr {
    BackendAddr {
        ip: b.octets().into(),
        port: b.host_port(),
        proto: b.proto,
    }
}

impl Reconciler {
    /// Adopts whatever the pinned maps hold.
    pub fn load(maps: LbMaps) -> Result<Self, DatapathError> {
        let caps = maps.capacities()?;
        let mut r = Self {
            maps,
            svc_ids: HashMap::new(),
            infos: HashMap::new(),
            backend_ids: HashMap::new(),
            frontends: HashMap::new(),
            svc_pool: IdPool::new(caps.services),
            backend_pool: IdPool::new(caps.backends),
        };
        let name = sluice_common::map_names::LB4_SVC_INFO;
        for item in r.maps.svc_info.iter() {
            let (id, info) = item.map_err(DatapathError::map(name))?;
            r.svc_ids.insert(info.name_str().to_string(), id);
            r.infos.insert(id, info);
            r.svc_pool.take(id);
        }
        let name = sluice_common::map_names::LB4_SERVICES;
        for item in r.maps.services.iter() {
            let (f, v) = item.map_err(DatapathError::map(name))?;
            r.frontends.insert(f, v);
        }
        let name = sluice_common::map_names::LB4_BACKENDS;
        for item in r.maps.backends.iter() {
            let (id, be) = item.map_err(DatapathError::map(name))?;
            r.backend_ids.insert(addr_of(&be), (id, be));
            r.backend_pool.take(id);
        }
        Ok(r)
    }

    /// Number of services and backends currently programmed.
    pub fn sizes(&self) -> (usize, usize) {
        (self.svc_ids.len(), self.backend_ids.len())
    }

    /// Makes the maps match `desired`. Idempotent: a second call with the
    /// same input writes nothing.
    pub fn apply(&mut self, desired: &Desired) -> Result<ApplyStats, DatapathError> {
        let mut st = ApplyStats {
            services: desired.services.len(),
            backends: desired.backends.len(),
            ..Default::default()
        };
        // 1. Backends (new ones and flag changes) before anything points at
        // them, in one batch. Ids are recorded only once it is written; a
        // changed backend whose write failed still looks stale to the retry.
        let (mut addrs, mut ids, mut values) = (Vec::new(), Vec::new(), Vec::new());
        let mut fresh = Vec::new();
        for (addr, flags) in &desired.backends {
            let want = Backend::new(addr.ip.octets(), addr.port, addr.proto, *flags);
            let id = match self.backend_ids.get(addr) {
                Some((_, have)) if *have == want => continue,
                Some((id, _)) => *id,
                None => match self.backend_pool.alloc() {
                    Some(id) => {
                        fresh.push(id);
                        id
                    }
                    None => {
                        for id in fresh {
                            self.backend_pool.free(id);
                        }
                        return Err(DatapathError::Table(format!(
                            "more than {} backends (--bpf-lb-max-backends)",
                            self.backend_pool.max
                        )));
                    }
                },
            };
            addrs.push(*addr);
            ids.push(id);
            values.push(want);
        }
        if let Err(e) = self.maps.write_backends(&ids, &values) {
            // Part of the batch may have landed: take the new entries out
            // again (nothing points at them yet) so no id is leaked.
            for id in fresh {
                let _ = self.maps.backends.remove(&id);
                self.backend_pool.free(id);
            }
            return Err(e);
        }
        for ((addr, id), want) in addrs.into_iter().zip(&ids).zip(&values) {
            self.backend_ids.insert(addr, (*id, *want));
        }
        st.backends_written = ids.len();
        // 2. Tables. Decide which services need a new one, then build and
        // install those in batches (see LbMaps::commit_tables).
        let mut work: Vec<TableWork> = Vec::new();
        let mut frontends: HashMap<Frontend, Service> = HashMap::new();
        for (name, ds) in &desired.services {
            let id = match self.svc_ids.get(name) {
                Some(id) => *id,
                None => {
                    let id = self.svc_pool.alloc().ok_or_else(|| {
                        DatapathError::Table(format!(
                            "more than {} service ids (--bpf-lb-max-services)",
                            self.svc_pool.max
                        ))
                    })?;
                    self.svc_ids.insert(name.clone(), id);
                    id
                }
            };
            // Step 1 gave every backend an id; `TableWork` pairs them with
            // `ds.table` by position, so a gap would shift every slot.
            let ids = ds
                .table
                .iter()
                .map(|a| {
                    self.backend_ids.get(a).map(|(id, _)| *id).ok_or_else(|| {
                        DatapathError::Table(format!(
                            "{name}: backend {} has no id",
                            a.maglev_name()
                        ))
                    })
                })
                .collect::<Result<Vec<u32>, _>>()?;
            let flags = ds.frontends.values().fold(0, |a, f| a | f);
            // Every service is checked: its info (a digest of its table's
            // inputs) is cheap, and equal to the pinned one when nothing
            // changed, and only then is nothing computed or written.
            work.push(TableWork {
                id,
                name,
                addrs: &ds.table,
                ids,
                flags,
            });
            for (f, fl) in &ds.frontends {
                frontends.insert(
                    *f,
                    Service {
                        svc_id: id,
                        flags: *fl,
                        affinity_timeout_s: ds.affinity_timeout_s,
                        pad: 0,
                    },
                );
            }
        }
        // Tables are built and installed a batch at a time: each built table
        // holds an fd until installed. The Maglev tables are computed on
        // every CPU (~20 us each, about half of building a 10-endpoint
        // service's table); the maps are created on one thread, since map creation and
        // mmap serialize in the kernel (several threads did not help).
        // They are computed a few hundred at a time, so only those few are
        // ever held in memory beside their maps.
        let threads = super::parallel::cpus();
        for chunk in work.chunks(table_batch_limit()) {
            let mut built = Vec::with_capacity(chunk.len());
            for part in chunk.chunks(COMPUTE_AT_ONCE) {
                // A pinned info with the same digest describes the same
                // table: it is not computed again (a restarted agent would
                // otherwise recompute every table just to compare them).
                let infos: Vec<ServiceInfo> = part.iter().map(TableWork::info).collect();
                let stale: Vec<&TableWork> = part
                    .iter()
                    .zip(&infos)
                    .filter(|(w, info)| !same_table(self.infos.get(&w.id), info))
                    .map(|(w, _)| w)
                    .collect();
                st.tables_computed += stale.len();
                let mut tables =
                    super::parallel::map_runs(&super::parallel::even_runs(&stale, threads), |w| {
                        w.table()
                    })
                    .into_iter();
                for (w, info) in part.iter().zip(infos) {
                    let pinned = self.infos.get(&w.id);
                    if pinned == Some(&info) {
                        built.push((info, None, Write::Nothing));
                        continue;
                    }
                    if same_table(pinned, &info) {
                        // Only the flags changed (they live in the info
                        // and the frontends, not in the table).
                        built.push((info, None, Write::Info));
                        continue;
                    }
                    let table = tables.next().ok_or_else(|| {
                        DatapathError::Table(format!("no table computed for {}", w.name))
                    })?;
                    let table = table.as_deref().map(LbMaps::build_table).transpose()?;
                    built.push((info, table, Write::Table));
                }
            }
            let mut pending = Vec::new();
            for (w, (info, table, write)) in chunk.iter().zip(built) {
                match write {
                    Write::Nothing => {}
                    Write::Info => self.write_info(w.id, info)?,
                    Write::Table => {
                        pending.push((w.id, table, info));
                        st.tables_written += 1;
                    }
                }
            }
            // Infos are recorded only once their tables are installed: a
            // failed install leaves these services looking stale, so the
            // retry rebuilds them.
            self.install_tables(&mut pending)?;
        }
        st.frontends = frontends.len();
        // 3. Frontends: add/change, then remove stale ones.
        let name = sluice_common::map_names::LB4_SERVICES;
        for (f, v) in &frontends {
            if self.frontends.get(f) != Some(v) {
                self.maps
                    .services
                    .insert(*f, *v, 0)
                    .map_err(DatapathError::map(name))?;
                self.frontends.insert(*f, *v);
                st.frontends_written += 1;
            }
        }
        let gone: Vec<Frontend> = (self.frontends.keys())
            .filter(|f| !frontends.contains_key(f))
            .copied()
            .collect();
        for f in gone {
            absent_ok(self.maps.services.remove(&f)).map_err(DatapathError::map(name))?;
            self.frontends.remove(&f);
            st.removed += 1;
        }
        // 4. Services no longer wanted: info, table, counters, id. The info
        // goes first: a pinned info must only ever describe the table in
        // its slot, or an agent that crashed in between and sees the
        // service again would trust the digest and keep an emptied table.
        // (A table left behind by such a crash belongs to an id nothing
        // knows or points at; the next owner of the id replaces it.)
        let stale: Vec<(String, u32)> = self
            .svc_ids
            .iter()
            .filter(|(n, _)| !desired.services.contains_key(*n))
            .map(|(n, id)| (n.clone(), *id))
            .collect();
        for (_, id) in &stale {
            absent_ok(self.maps.svc_info.remove(id))
                .map_err(DatapathError::map(sluice_common::map_names::LB4_SVC_INFO))?;
        }
        let emptied: Vec<(u32, Option<&BuiltTable>)> =
            stale.iter().map(|(_, id)| (*id, None)).collect();
        for chunk in emptied.chunks(table_batch_limit()) {
            self.maps.commit_tables(chunk)?;
        }
        for (n, id) in stale {
            zero_counter(&mut self.maps.svc_stats, id)
                .map_err(DatapathError::map(sluice_common::map_names::LB4_SVC_STATS))?;
            self.svc_ids.remove(&n);
            self.infos.remove(&id);
            self.svc_pool.free(id);
            st.removed += 1;
        }
        // 5. Backends nothing refers to any more.
        let stale: Vec<(BackendAddr, u32)> = self
            .backend_ids
            .iter()
            .filter(|(a, _)| !desired.backends.contains_key(*a))
            .map(|(a, (id, _))| (*a, *id))
            .collect();
        for (a, id) in stale {
            absent_ok(self.maps.backends.remove(&id))
                .map_err(DatapathError::map(sluice_common::map_names::LB4_BACKENDS))?;
            zero_counter(&mut self.maps.backend_stats, id).map_err(DatapathError::map(
                sluice_common::map_names::LB4_BACKEND_STATS,
            ))?;
            self.backend_ids.remove(&a);
            self.backend_pool.free(id);
            st.removed += 1;
        }
        Ok(st)
    }
}

/// Maglev tables computed before their maps are built: enough to keep
/// every CPU busy for a while (~5 ms), few enough to hold (~1 MB).
const COMPUTE_AT_ONCE: usize = 256;

/// What a service's new info needs written.
enum Write {
    Nothing,
    /// The info alone: the pinned table is already the one wanted.
    Info,
    /// A new table, then its info.
    Table,
}

/// Whether `pinned` describes the table `info` wants: the same inputs
/// (digest) and so the same size and backends.
fn same_table(pinned: Option<&ServiceInfo>, info: &ServiceInfo) -> bool {
    pinned.is_some_and(|p| {
        p.digest == info.digest
            && p.table_size == info.table_size
            && p.table_backends == info.table_backends
    })
}

/// A wanted service, whose table may need rebuilding.
struct TableWork<'a> {
    id: u32,
    name: &'a str,
    addrs: &'a BTreeSet<BackendAddr>,
    /// Backend ids of `addrs`, in order.
    ids: Vec<u32>,
    flags: u32,
}

impl TableWork<'_> {
    /// The service's info, with the digest of its table's inputs: the
    /// Maglev version, M and each backend (address, id) in order. Those fix
    /// the table: `maglev::build` hashes the addresses' names, and a
    /// backend id keeps its address for as long as any table refers to it
    /// (ids are freed only once no table does).
    fn info(&self) -> ServiceInfo {
        let m = if self.ids.is_empty() {
            0
        } else {
            maglev::table_size_for(self.ids.len())
        };
        let mut input = Vec::with_capacity(8 + 11 * self.ids.len());
        input.extend_from_slice(&maglev::VERSION.to_le_bytes());
        input.extend_from_slice(&m.to_le_bytes());
        for (a, id) in self.addrs.iter().zip(&self.ids) {
            input.extend_from_slice(&a.ip.octets());
            input.extend_from_slice(&a.port.to_le_bytes());
            input.push(a.proto);
            input.extend_from_slice(&id.to_le_bytes());
        }
        let mut info = ServiceInfo {
            table_backends: self.ids.len() as u32,
            table_size: m,
            digest: xxh3_64(&input),
            flags: self.flags,
            ..Default::default()
        };
        info.set_name(self.name);
        info
    }

    /// The Maglev table (slot -> backend id); `None` for a service without
    /// backends.
    fn table(&self) -> Option<Vec<u32>> {
        if self.ids.is_empty() {
            return None;
        }
        let names: Vec<String> = self.addrs.iter().map(BackendAddr::maglev_name).collect();
        let slots = maglev::build(&names, maglev::table_size_for(names.len()));
        Some(slots.iter().map(|&i| self.ids[i as usize]).collect())
    }
}

impl Reconciler {
    /// Installs built tables in one batch, then records their info: a
    /// service's info (table size, digest) only ever describes a table the
    /// data plane already uses.
    fn install_tables(
        &mut self,
        pending: &mut Vec<(u32, Option<BuiltTable>, ServiceInfo)>,
    ) -> Result<(), DatapathError> {
        let slots: Vec<(u32, Option<&BuiltTable>)> =
            pending.iter().map(|(id, t, _)| (*id, t.as_ref())).collect();
        self.maps.commit_tables(&slots)?;
        for (id, _, info) in pending.drain(..) {
            self.write_info(id, info)?;
        }
        Ok(())
    }

    /// Pins `info` as service `id`'s and remembers it.
    fn write_info(&mut self, id: u32, info: ServiceInfo) -> Result<(), DatapathError> {
        self.maps
            .svc_info
            .insert(id, info, 0)
            .map_err(DatapathError::map(sluice_common::map_names::LB4_SVC_INFO))?;
        self.infos.insert(id, info);
        Ok(())
    }
}

/// Deleting what is already gone is success (idempotent removal).
pub fn absent_ok(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        r => r,
    }
}

/// A freed id must not inherit its previous owner's counters.
fn zero_counter(
    map: &mut aya::maps::PerCpuArray<aya::maps::MapData, LbCounter>,
    id: u32,
) -> Result<(), aya::maps::MapError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| aya::maps::MapError::IoError(e))?;
    let zeros = PerCpuValues::try_from(vec![LbCounter::default(); cpus])
        .map_err(aya::maps::MapError::IoError)?;
    map.set(id, zeros, 0)
}

#[cfg(test)]
mod tests {
    use super::IdPool;

    #[test]
    fn ids_are_dense_and_reused() {
        let mut p = IdPool::new(5);
        p.take(2);
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), Some(3));
        p.free(1);
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), Some(4));
        assert_eq!(p.alloc(), None);
    }
}
