//! Socket-level service load balancing (cgroup sock_addr hooks, IPv4).
//!
//! connect4 and sendmsg4 rewrite a service frontend to a backend before the
//! kernel routes anything, so the packets carry the backend address from
//! the first byte and no per-packet NAT is needed. The frontend the socket
//! asked for is remembered per (socket cookie, backend) so getpeername4 and
//! recvmsg4 can show the service address again, and forgotten by
//! sock_release when the socket closes.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use aya_log_ebpf::debug;
use sluice_common::{
    ProgStat,
    lb::{Frontend, SockRevNatKey, SockRevNatValue},
};

use crate::{
    lb_maps::{LB4_SERVICES, LB4_SOCK_REVNAT, count_conn},
    select::{random_hash, select_backend},
    stats,
};

/// Allow the syscall to proceed (cgroup sock_addr return convention).
const ALLOW: i32 = 1;
/// Fail the syscall with the error set by bpf_set_retval.
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Runs on every connect() of an IPv4 socket in the node's cgroup subtree
/// (TCP, and UDP sockets that connect).
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
    // Removed by the verifier below --bpf-log-level debug.
    debug!(&ctx, "connect4 dst={:i}:{} proto={}", ip, port, proto);
    translate(&ctx)
}

/// Unconnected UDP: every sendto()/sendmsg() with a destination.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock4_sendmsg(ctx: SockAddrContext) -> i32 {
    stats::count(ProgStat::Sock4Sendmsg, 0);
    translate(&ctx)
}

/// Unconnected UDP replies: recvfrom() shows the service as the source.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock4_recvmsg(ctx: SockAddrContext) -> i32 {
    stats::count(ProgStat::Sock4Recvmsg, 0);
    reverse(&ctx);
    ALLOW
}

/// getpeername() on a translated socket returns the service address.
#[cgroup_sock_addr(getpeername4)]
pub fn sock4_getpeername(ctx: SockAddrContext) -> i32 {
    stats::count(ProgStat::Sock4Getpeername, 0);
    reverse(&ctx);
    ALLOW
}

/// A socket in the cgroup is closing: delete the reverse translation its
/// connect recorded (key: its cookie and its peer, the backend).
///
/// Without this, every closed connection's entry stays until the LRU
/// evicts it: under connection churn the map sits full, every connect pays
/// an eviction, and the entries evicted are the oldest ones, which are
/// those of long-lived connections, whose getpeername then shows the
/// backend instead of the service. Unconnected UDP sockets that sent to
/// several backends keep the other entries until the LRU takes them.
#[cgroup_sock(sock_release)]
pub fn sock4_release(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock for the program's lifetime.
    let (family, addr, port) = unsafe {
        let sk = &*ctx.sock;
        (sk.family, sk.dst_ip4, sk.dst_port)
    };
    if family == AF_INET && addr != 0 {
        // SAFETY: helper valid for cgroup_sock programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
        let _ = LB4_SOCK_REVNAT.remove(SockRevNatKey {
            cookie,
            addr,
            port,
            pad: 0,
        });
    }
    ALLOW
}

const AF_INET: u32 = 2;

#[inline(always)]
fn translate(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    let key = Frontend {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        proto: sa.protocol as u8,
        pad: 0,
    };
    // SAFETY: plain hash lookup, value copied.
    let Some(svc) = (unsafe { LB4_SERVICES.get(key) }).copied() else {
        return ALLOW;
    };
    // SAFETY: helpers valid for sock_addr programs; ctx is the program context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let Some((backend_id, be)) = select_backend(&svc, random_hash(), netns) else {
        debug!(
            ctx,
            "svc {:i}:{} has no backends: reject",
            u32::from_be(key.addr),
            u16::from_be(key.port)
        );
        // kube-proxy REJECTs such traffic; an immediate ECONNREFUSED beats a
        // connect that hangs until its timeout.
        // SAFETY: allowed for connect4/sendmsg4 (kernel >= 5.18).
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    };
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let rk = SockRevNatKey {
        cookie,
        addr: be.addr,
        port: be.port,
        pad: 0,
    };
    let rv = SockRevNatValue {
        addr: key.addr,
        port: key.port,
        pad: 0,
        svc_id: svc.svc_id,
    };
    // A full LRU evicts the oldest socket's entry; only its getpeername view is lost.
    let _ = LB4_SOCK_REVNAT.insert(rk, rv, 0);
    sa.user_ip4 = be.addr;
    sa.user_port = be.port as u32;
    count_conn(svc.svc_id, backend_id);
    debug!(
        ctx,
        "svc {:i}:{} -> backend {} {:i}:{}",
        u32::from_be(key.addr),
        u16::from_be(key.port),
        backend_id,
        u32::from_be(be.addr),
        u16::from_be(be.port)
    );
    ALLOW
}

#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    // SAFETY: as in `translate`.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let rk = SockRevNatKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        pad: 0,
    };
    // SAFETY: plain hash lookup, value copied.
    if let Some(v) = unsafe { LB4_SOCK_REVNAT.get(rk) }.copied() {
        sa.user_ip4 = v.addr;
        sa.user_port = v.port as u32;
    }
}
