//! Backend selection: session affinity first, then the service's Maglev table.
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use sluice_common::lb::{
    AffinityKey, AffinityValue, BACKEND_F_TERMINATING, Backend, SVC_F_AFFINITY, Service,
};

use crate::lb_maps::{LB4_AFFINITY, LB4_BACKENDS, LB4_MAGLEV};

/// Picks a backend for a new connection of `svc`. `hash` chooses the Maglev
/// slot (random on the socket path, a flow hash on tc); `client` keys
/// session affinity. `None` means the service has no usable backend and the
/// caller must reject.
#[inline(always)]
pub fn select_backend(svc: &Service, hash: u32, client: u64) -> Option<(u32, Backend)> {
    let now = if svc.flags & SVC_F_AFFINITY != 0 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    let akey = AffinityKey {
        svc_id: svc.svc_id,
        pad: 0,
        client,
    };
    if svc.flags & SVC_F_AFFINITY != 0 {
        // SAFETY: LRU values may be updated concurrently; we copy out.
        if let Some(a) = unsafe { LB4_AFFINITY.get(akey) } {
            let a = *a;
            let timeout_ns = svc.affinity_timeout_s as u64 * 1_000_000_000;
            if now.wrapping_sub(a.last_used_ns) < timeout_ns {
                // SAFETY: plain hash lookup, value copied.
                if let Some(be) = unsafe { LB4_BACKENDS.get(a.backend_id) } {
                    let be = *be;
                    if be.flags & BACKEND_F_TERMINATING == 0 {
                        let _ = LB4_AFFINITY.insert(
                            akey,
                            AffinityValue {
                                last_used_ns: now,
                                ..a
                            },
                            0,
                        );
                        return Some((a.backend_id, be));
                    }
                }
            }
        }
    }
    let table = LB4_MAGLEV.get(svc.svc_id)?;
    let m = *table.get(sluice_common::lb::maglev::SIZE_SLOT)?;
    if m == 0 {
        return None;
    }
    let slot = 1 + hash % m;
    let id = *table.get(slot)?;
    // SAFETY: plain hash lookup, value copied.
    let be = *unsafe { LB4_BACKENDS.get(id) }?;
    if svc.flags & SVC_F_AFFINITY != 0 {
        let _ = LB4_AFFINITY.insert(
            akey,
            AffinityValue {
                backend_id: id,
                pad: 0,
                last_used_ns: now,
            },
            0,
        );
    }
    Some((id, be))
}

/// A random slot hash for the socket path, where no flow tuple exists yet.
#[inline(always)]
pub fn random_hash() -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_prandom_u32() }
}
