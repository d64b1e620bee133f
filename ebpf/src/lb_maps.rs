//! Service load-balancer maps (layouts in `sluice_common::lb`). All of them
//! are pinned under the node's bpffs dir so a restarted agent, and the
//! programs still attached while it is down, share them.
use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use sluice_common::lb::{
    AFFINITY_ENTRIES, AffinityKey, AffinityValue, Backend, Frontend, LbCounter, MAX_BACKENDS,
    MAX_FRONTENDS, MAX_SERVICES, SOCK_REVNAT_ENTRIES, Service, SockRevNatKey, SockRevNatValue,
    maglev,
};

#[map(name = "LB4_SERVICES")]
pub static LB4_SERVICES: HashMap<Frontend, Service> = HashMap::pinned(MAX_FRONTENDS, 0);

#[map(name = "LB4_BACKENDS")]
pub static LB4_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(MAX_BACKENDS, 0);

/// The inner template's size is irrelevant (`BPF_F_INNER_MAP`); its flags
/// must equal those of every table the agent inserts.
pub type MaglevTable =
    Array<u32, { maglev::MAX_TABLE_SIZE as usize + 1 }, { maglev::INNER_FLAGS as usize }>;

/// Pinned by the loader (`map_pin_path`): BTF map definitions carry no
/// pinning attribute.
#[btf_map(name = "LB4_MAGLEV")]
pub static LB4_MAGLEV: ArrayOfMaps<MaglevTable, { MAX_SERVICES as usize }> = ArrayOfMaps::new();

#[map(name = "LB4_AFFINITY")]
pub static LB4_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(AFFINITY_ENTRIES, 0);

#[map(name = "LB4_SOCK_REVNAT")]
pub static LB4_SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(SOCK_REVNAT_ENTRIES, 0);

#[map(name = "LB4_SVC_STATS")]
pub static LB4_SVC_STATS: PerCpuArray<LbCounter> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map(name = "LB4_BE_STATS")]
pub static LB4_BE_STATS: PerCpuArray<LbCounter> = PerCpuArray::pinned(MAX_BACKENDS, 0);

/// Counts one translated connection (socket path) against a service and a backend.
#[inline(always)]
pub fn count_conn(svc_id: u32, backend_id: u32) {
    if let Some(c) = LB4_SVC_STATS.get_ptr_mut(svc_id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { (*c).conns += 1 };
    }
    if let Some(c) = LB4_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe { (*c).conns += 1 };
    }
}
