//! Per-program counters (see `sluice_common::ProgStat`).
use aya_ebpf::{macros::map, maps::PerCpuArray};
use sluice_common::{Counter, ProgStat};

/// Pinned so counters survive agent restarts, like every other map.
#[map(name = "SLUICE_STATS")]
static SLUICE_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(ProgStat::COUNT, 0);

#[inline(always)]
pub fn count(stat: ProgStat, bytes: u64) {
    if let Some(c) = SLUICE_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
