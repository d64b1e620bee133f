//! tc (tcx) classifiers for pod veths and node interfaces.
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use sluice_common::ProgStat;

use crate::stats;

/// Host side of a pod veth, traffic leaving the pod. Counts and passes; the
/// endpoint redirect lands here with the CNI datapath.
#[classifier]
pub fn tc_pod_ingress(ctx: TcContext) -> i32 {
    stats::count(ProgStat::TcPodIngress, ctx.len() as u64);
    TC_ACT_OK
}
