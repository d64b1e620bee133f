//! Capacities of the service LB maps, and changing them on a node whose
//! maps are already pinned.
//!
//! aya reuses a pinned map whatever its size, so a new capacity would
//! silently not apply. Here a pinned map whose capacity differs is moved
//! aside (renamed in bpffs) before the object is loaded; the loader then
//! creates and pins the map at the new size, and its entries are copied
//! over before any new program is attached. Programs a previous agent left
//! attached keep forwarding with the old map until their links are replaced,
//! so a resize, like any restart, drops no connection. A node too full for
//! the smaller capacity is refused before anything moves.
//!
//! An agent killed mid-resize leaves the moved-aside pin behind; the next
//! load puts it back first, so the old state, not a half-copied map, wins.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::maps::{ArrayOfMaps, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray};
use sluice_common::{
    lb::{
        Backend, Frontend, LbCounter, MAX_BACKENDS, MAX_FRONTENDS, MAX_SERVICES, Service,
        ServiceInfo,
    },
    map_names::{
        LB4_BACKEND_STATS, LB4_BACKENDS, LB4_MAGLEV, LB4_SERVICES, LB4_SVC_INFO, LB4_SVC_STATS,
    },
};

use crate::{
    DatapathError,
    lb::{open_pin, table_batch_limit},
};

/// How many entries the agent-sized LB maps hold (Cilium's
/// `--bpf-lb-map-max` family). Every map keyed by a service id is sized by
/// `services`, every one keyed by a backend id by `backends`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbMapSizes {
    /// Frontends (LB4_SERVICES): ClusterIP, NodePort, ExternalIP and
    /// LoadBalancer addresses times ports.
    pub frontends: u32,
    /// Service ids: one per service port (two when its traffic policies
    /// differ).
    pub services: u32,
    /// Backend ids: one per distinct (address, port, protocol).
    pub backends: u32,
}

impl Default for LbMapSizes {
    fn default() -> Self {
        Self {
            frontends: MAX_FRONTENDS,
            services: MAX_SERVICES,
            backends: MAX_BACKENDS,
        }
    }
}

/// Which capacity a map follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbCapacity {
    Frontends,
    Services,
    Backends,
}

impl std::fmt::Display for LbCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Frontends => "frontends",
            Self::Services => "services",
            Self::Backends => "backends",
        })
    }
}

/// The maps an [`LbMapSizes`] governs. LB4_SVC_INFO is userspace-only (not
/// in the object); the others are created by the loader.
const SIZED: [(&str, LbCapacity); 6] = [
    (LB4_SERVICES, LbCapacity::Frontends),
    (LB4_BACKENDS, LbCapacity::Backends),
    (LB4_BACKEND_STATS, LbCapacity::Backends),
    (LB4_MAGLEV, LbCapacity::Services),
    (LB4_SVC_STATS, LbCapacity::Services),
    (LB4_SVC_INFO, LbCapacity::Services),
];

impl LbMapSizes {
    pub fn get(&self, which: LbCapacity) -> u32 {
        match which {
            LbCapacity::Frontends => self.frontends,
            LbCapacity::Services => self.services,
            LbCapacity::Backends => self.backends,
        }
    }

    /// (map name, capacity) of each map the loader creates from the object.
    pub(crate) fn object_maps(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        SIZED
            .iter()
            .filter(|(name, _)| *name != LB4_SVC_INFO)
            .map(|(name, which)| (*name, self.get(*which)))
    }

    /// The capacities of the maps pinned under `dir`.
    pub fn pinned(dir: &Path) -> Result<Self, DatapathError> {
        let cap = |name: &'static str| {
            MapInfo::from_pin(dir.join(name))
                .map(|i| i.max_entries())
                .map_err(DatapathError::map(name))
        };
        Ok(Self {
            frontends: cap(LB4_SERVICES)?,
            services: cap(LB4_MAGLEV)?,
            backends: cap(LB4_BACKENDS)?,
        })
    }
}

fn aside(pin: &Path) -> PathBuf {
    let mut s = pin.as_os_str().to_owned();
    // bpffs refuses names with a dot.
    s.push("_RESIZING");
    PathBuf::from(s)
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Pin {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Pins moved aside by [`prepare`]: copied into the new maps and dropped by
/// [`Resize::finish`], or put back by [`Resize::abort`].
#[must_use = "finish or abort the resize"]
pub(crate) struct Resize {
    dir: PathBuf,
    moved: Vec<(&'static str, LbCapacity)>,
}

/// Before the object is loaded: undoes an interrupted resize, refuses
/// capacities too small for what is pinned (nothing moved), then moves
/// aside every pinned map whose capacity changes.
pub(crate) fn prepare(dir: &Path, sizes: &LbMapSizes) -> Result<Resize, DatapathError> {
    let mut restored = false;
    for (name, _) in SIZED {
        let (pin, old) = (dir.join(name), aside(&dir.join(name)));
        if old.exists() {
            tracing::warn!(
                map = name,
                "restoring a map left aside by an interrupted resize"
            );
            if pin.exists() {
                std::fs::remove_file(&pin).map_err(|e| pin_err(&pin, e))?;
            }
            std::fs::rename(&old, &pin).map_err(|e| pin_err(&old, e))?;
            restored = true;
        }
    }
    if restored {
        // While no agent held the lock, a CNI ADD may have loaded pod
        // programs on the maps just replaced: have them switched.
        crate::pod::mark_programs_stale(dir)?;
    }
    let mut moved = Vec::new();
    for (name, which) in SIZED {
        let pin = dir.join(name);
        if !pin.exists() {
            continue;
        }
        let have = MapInfo::from_pin(&pin)
            .map_err(DatapathError::map(name))?
            .max_entries();
        let want = sizes.get(which);
        if have == want {
            continue;
        }
        let need = entries_needed(&pin, name)?;
        if need > want {
            return Err(DatapathError::MapSize {
                which,
                want,
                need,
                map: name,
                dir: dir.to_path_buf(),
            });
        }
        tracing::info!(map = name, from = have, to = want, "resizing pinned LB map");
        moved.push((name, which));
    }
    let mut r = Resize {
        dir: dir.to_path_buf(),
        moved: Vec::new(),
    };
    for (name, which) in moved {
        let pin = dir.join(name);
        if let Err(e) = std::fs::rename(&pin, aside(&pin)) {
            r.abort();
            return Err(pin_err(&pin, e));
        }
        r.moved.push((name, which));
    }
    Ok(r)
}

/// Smallest capacity that holds what the pinned map holds: its entry count
/// for frontends, one past its largest id for id-keyed maps. Service ids in
/// use are those in LB4_SVC_INFO: LB4_MAGLEV keeps an empty table in the
/// slot of every removed service, and tables past the new capacity belong
/// to no service. Counters are not state: those of ids past the new
/// capacity are dropped.
fn entries_needed(pin: &Path, name: &'static str) -> Result<u32, DatapathError> {
    let map = open_pin(pin, name)?;
    let e = DatapathError::map(name);
    fn max_id_plus_one(
        mut ids: impl Iterator<Item = Result<u32, MapError>>,
    ) -> Result<u32, MapError> {
        ids.try_fold(0u32, |n, id| Ok(n.max(id?.saturating_add(1))))
    }
    Ok(match name {
        LB4_SERVICES => {
            let m = HashMap::<_, Frontend, Service>::try_from(map).map_err(&e)?;
            m.keys()
                .try_fold(0u32, |n, k| k.map(|_| n + 1))
                .map_err(&e)?
        }
        LB4_BACKENDS => {
            let m = HashMap::<_, u32, Backend>::try_from(map).map_err(&e)?;
            max_id_plus_one(m.keys()).map_err(&e)?
        }
        LB4_SVC_INFO => {
            let m = HashMap::<_, u32, ServiceInfo>::try_from(map).map_err(&e)?;
            max_id_plus_one(m.keys()).map_err(&e)?
        }
        _ => 0,
    })
}

impl Resize {
    /// After the object is loaded (new maps pinned): creates LB4_SVC_INFO
    /// if missing, copies every moved map's entries into its new map and
    /// drops the old pins. On failure everything is put back as it was.
    pub(crate) fn finish(self, sizes: &LbMapSizes) -> Result<(), DatapathError> {
        let res = ensure_svc_info(&self.dir, sizes.services)
            .and_then(|()| self.check_created(sizes))
            .and_then(|()| {
                self.moved
                    .iter()
                    .try_for_each(|(name, _)| copy(&self.dir, name))
            })
            .and_then(|()| self.mark_pod_programs_stale());
        match res {
            Ok(()) => {
                for (name, _) in &self.moved {
                    let old = aside(&self.dir.join(name));
                    std::fs::remove_file(&old).map_err(|e| pin_err(&old, e))?;
                }
                Ok(())
            }
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    /// The loader reuses whatever is pinned: make sure every map now pinned
    /// has the size asked for (another loader could only have pinned one
    /// in the window if it ignored the bpffs lock).
    fn check_created(&self, sizes: &LbMapSizes) -> Result<(), DatapathError> {
        for (name, which) in SIZED {
            let pin = self.dir.join(name);
            let have = MapInfo::from_pin(&pin)
                .map_err(DatapathError::map(name))?
                .max_entries();
            if have != sizes.get(which) {
                return Err(pin_err(
                    &pin,
                    format!(
                        "pinned with {have} entries, not the {} asked for",
                        sizes.get(which)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Programs loaded before the resize (the CNI's pinned pod set and its
    /// copies on pod veths) use the old maps until the agent switches them
    /// (`PodDatapath::refresh_after_resize`). Marked before the old pins
    /// go, so a crash in between still leads to the switch.
    fn mark_pod_programs_stale(&self) -> Result<(), DatapathError> {
        if self.moved.iter().all(|(name, _)| *name == LB4_SVC_INFO) {
            return Ok(());
        }
        crate::pod::mark_programs_stale(&self.dir)
    }

    /// Puts the moved pins back, replacing any new map pinned meanwhile.
    pub(crate) fn abort(&self) {
        for (name, _) in &self.moved {
            let pin = self.dir.join(name);
            let _ = std::fs::remove_file(&pin);
            if let Err(e) = std::fs::rename(aside(&pin), &pin) {
                tracing::error!(map = name, "putting back a resized map's old pin: {e}");
            }
        }
    }
}

/// Creates and pins the userspace-only service info map when missing.
fn ensure_svc_info(dir: &Path, services: u32) -> Result<(), DatapathError> {
    let pin = dir.join(LB4_SVC_INFO);
    if pin.exists() {
        return Ok(());
    }
    let m = HashMap::<MapData, u32, ServiceInfo>::create(services, 0)
        .map_err(DatapathError::map(LB4_SVC_INFO))?;
    m.pin(&pin).map_err(|e| pin_err(&pin, e))
}

/// Copies the moved-aside `name` into the newly pinned one.
fn copy(dir: &Path, name: &'static str) -> Result<(), DatapathError> {
    let (pin, old_pin) = (dir.join(name), aside(&dir.join(name)));
    let e = DatapathError::map(name);
    let (old, new) = (
        open_pin(&old_pin, name)?,
        MapData::from_pin(&pin).map_err(&e)?,
    );
    match name {
        LB4_SERVICES => copy_hash::<Frontend, Service>(old, &new, name),
        LB4_BACKENDS => copy_hash::<u32, Backend>(old, &new, name),
        LB4_SVC_INFO => copy_hash::<u32, ServiceInfo>(old, &new, name),
        LB4_MAGLEV => {
            // One batch per chunk: every single write to a map-of-maps
            // waits for an RCU grace period. Each inner map held is an fd.
            let old = ArrayOfMaps::<_, MapData>::try_from(old).map_err(&e)?;
            let cap = new.info().map_err(&e)?.max_entries().min(old.len());
            let mut chunk: Vec<(u32, MapData)> = Vec::new();
            for i in 0..cap {
                match old.get(&i, 0) {
                    Ok(inner) => chunk.push((i, inner)),
                    Err(MapError::KeyNotFound) => {}
                    Err(err) => return Err(e(err)),
                }
                if chunk.len() >= table_batch_limit() || (i + 1 == cap && !chunk.is_empty()) {
                    let keys: Vec<u32> = chunk.iter().map(|(i, _)| *i).collect();
                    let fds: Vec<u32> = chunk.iter().map(|(_, m)| raw_fd(m)).collect();
                    crate::sys::map_update_batch(new.fd().as_fd(), &keys, &fds)
                        .map_err(|err| copy_err(name, err))?;
                    chunk.clear();
                }
            }
            Ok(())
        }
        LB4_SVC_STATS | LB4_BACKEND_STATS => {
            let old = PerCpuArray::<_, LbCounter>::try_from(old).map_err(&e)?;
            let mut new =
                PerCpuArray::<_, LbCounter>::try_from(Map::from_map_data(new).map_err(&e)?)
                    .map_err(&e)?;
            for i in 0..old.len().min(new.len()) {
                let v = old.get(&i, 0).map_err(&e)?;
                if v.iter().any(|c| *c != LbCounter::default()) {
                    new.set(i, v, 0).map_err(&e)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn raw_fd(m: &MapData) -> u32 {
    m.fd().as_fd().as_raw_fd() as u32
}

fn copy_err(name: &'static str, e: std::io::Error) -> DatapathError {
    DatapathError::Table(format!("copying {name} into its resized map: {e}"))
}

fn copy_hash<K: aya::Pod, V: aya::Pod>(
    old: Map,
    new: &MapData,
    name: &'static str,
) -> Result<(), DatapathError> {
    let old = HashMap::<_, K, V>::try_from(old).map_err(DatapathError::map(name))?;
    let (keys, values): (Vec<K>, Vec<V>) = old
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(DatapathError::map(name))?
        .into_iter()
        .unzip();
    if keys.is_empty() {
        return Ok(());
    }
    crate::sys::map_update_batch(new.fd().as_fd(), &keys, &values).map_err(|e| copy_err(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_map_is_sized_and_info_is_not() {
        let s = LbMapSizes {
            frontends: 3,
            services: 5,
            backends: 7,
        };
        let got: Vec<_> = s.object_maps().collect();
        assert_eq!(
            got,
            [
                (LB4_SERVICES, 3),
                (LB4_BACKENDS, 7),
                (LB4_BACKEND_STATS, 7),
                (LB4_MAGLEV, 5),
                (LB4_SVC_STATS, 5),
            ]
        );
    }

    #[test]
    fn aside_pin_is_a_sibling() {
        assert_eq!(
            aside(Path::new("/sys/fs/bpf/sluice/LB4_MAGLEV")),
            Path::new("/sys/fs/bpf/sluice/LB4_MAGLEV_RESIZING")
        );
    }
}
