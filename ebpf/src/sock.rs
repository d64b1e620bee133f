//! Socket-level hooks (cgroup/connect4 and friends).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use aya_log_ebpf::debug;
use sluice_common::ProgStat;

use crate::stats;

/// Allow the syscall to proceed (cgroup sock_addr return convention).
const ALLOW: i32 = 1;

/// Runs on every connect() of an IPv4 socket in the node's cgroup subtree.
/// Service translation hooks in here; the debug log is compiled out by the
/// verifier unless the agent runs with --bpf-log-level debug.
#[cgroup_sock_addr(connect4)]
pub fn sock4_connect(ctx: SockAddrContext) -> i32 {
    stats::count(ProgStat::Sock4Connect, 0);
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    let (ip, port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (
            u32::from_be(sa.user_ip4),
            u16::from_be(sa.user_port as u16),
            sa.protocol,
        )
    };
    debug!(&ctx, "connect4 dst={:i}:{} proto={}", ip, port, proto);
    ALLOW
}
