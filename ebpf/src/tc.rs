//! The pod datapath: the classifier on the host side of every pod veth.
//!
//! A packet leaving a pod is first service-balanced (DNAT for any frontend,
//! ClusterIPs included, for sockets the cgroup hooks did not translate),
//! then, when its destination is a pod on this node, handed straight to
//! that pod with `bpf_redirect_peer`: no host routing, no neighbour lookup,
//! no bridge, no iptables. Everything else goes up the host stack.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_redirect_peer},
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use sluice_common::{
    ProgStat,
    endpoint::{EP_F_VIA_QDISC, Endpoint, MAX_ENDPOINTS},
    lb::CT_DIR_REV,
};

use crate::{
    stats,
    tc_lb::{ETH_HLEN, IP_CSUM_OFF, IP_DST_OFF, Nat, apply, lb_flow, parse, read, tracked},
};

/// Written by the CNI plugin (ADD inserts, DEL removes).
#[map(name = "EP4_ENDPOINTS")]
pub static EP4_ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Host side of a pod veth, traffic leaving the pod.
///
/// Pod-to-pod packets (the common case) cost two map lookups: the
/// destination endpoint and the reverse conntrack entry. A local pod's
/// address is never a service frontend (frontends are ClusterIPs, node IPs
/// and external IPs), so such packets skip the service lookup entirely.
#[classifier]
pub fn tc_pod_ingress(mut ctx: TcContext) -> i32 {
    pod_ingress(&mut ctx, true)
}

/// [`tc_pod_ingress`] for a pod with egress shaping: service and reverse
/// NAT as usual, but every packet continues to the ingress qdisc behind
/// this tcx program (TC_ACT_UNSPEC is tcx's "next"), whose redirect to an
/// ifb device does the shaping; the host stack then forwards it.
#[classifier]
pub fn tc_pod_shaped(mut ctx: TcContext) -> i32 {
    match pod_ingress(&mut ctx, false) {
        TC_ACT_OK => TC_ACT_UNSPEC,
        verdict => verdict,
    }
}

#[inline(always)]
fn pod_ingress(ctx: &mut TcContext, redirect: bool) -> i32 {
    stats::count(ProgStat::TcPodIngress, ctx.len() as u64);
    let Some(f) = parse(ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: plain hash lookup, value copied.
    if let Some(ep) = unsafe { EP4_ENDPOINTS.get(f.daddr) }.copied() {
        // Possibly a backend's reply to a local client: restore the
        // frontend as source here, because the redirect below skips the
        // client veth's egress program. Replies leaving the node keep
        // their reverse NAT on the outgoing interface (a node address as
        // source must not re-enter the host stack: it would be dropped as
        // martian).
        if let Some(ct) = tracked(&f.key(CT_DIR_REV), now, f.closing()) {
            let verdict = apply(ctx, f.proto, Nat::src(&f, ct.nat_addr, ct.nat_port));
            if verdict != TC_ACT_OK {
                return verdict;
            }
        }
        return if redirect {
            redirect_to(ctx, &ep)
        } else {
            TC_ACT_OK
        };
    }
    let verdict = lb_flow(ctx, &f, 0, now);
    if verdict != TC_ACT_OK || !redirect {
        return verdict;
    }
    // After DNAT the destination may be a local backend.
    let Some(daddr) = read::<u32>(ctx, IP_DST_OFF) else {
        return TC_ACT_OK;
    };
    // SAFETY: plain hash lookup, value copied.
    match unsafe { EP4_ENDPOINTS.get(daddr) }.copied() {
        Some(ep) => redirect_to(ctx, &ep),
        None => TC_ACT_OK,
    }
}

/// Hands the packet to local pod `ep`, as a router would: TTL decremented,
/// Ethernet addresses rewritten to gateway -> pod. TTL expiring: up the
/// host stack (which answers with ICMP time exceeded).
#[inline(always)]
fn redirect_to(ctx: &mut TcContext, ep: &Endpoint) -> i32 {
    // TTL and protocol share one checksummed 16-bit word; in memory order
    // TTL is the first byte, so on this little-endian target the word read
    // as u16 has TTL in its low byte.
    let Some(word) = read::<u16>(ctx, ETH_HLEN + 8) else {
        return TC_ACT_OK;
    };
    if word & 0xff <= 1 {
        return TC_ACT_OK;
    }
    let new = word - 1;
    if ctx
        .l3_csum_replace(IP_CSUM_OFF, word as u64, new as u64, 2)
        .is_err()
        || ctx.store(ETH_HLEN + 8, &new, 0).is_err()
    {
        return TC_ACT_SHOT;
    }
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&ep.mac);
    eth[6..].copy_from_slice(&ep.host_mac);
    if ctx.store(0, &eth, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: helpers; an unknown ifindex makes them return TC_ACT_SHOT.
    unsafe {
        if ep.flags & EP_F_VIA_QDISC != 0 {
            bpf_redirect(ep.ifindex, 0) as i32
        } else {
            bpf_redirect_peer(ep.ifindex, 0) as i32
        }
    }
}
