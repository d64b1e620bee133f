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
    maps::{Array, HashMap},
    programs::TcContext,
};
use sluice_common::{
    ProgStat,
    endpoint::{EP_F_VIA_QDISC, Endpoint, MAX_ENDPOINTS},
};

use crate::{
    stats,
    tc_lb::{ETH_HLEN, IP_CSUM_OFF, IP_DST_OFF, Nat, apply, lb_flow, parse, read, reply_nat},
};

/// Written by the CNI plugin (ADD inserts, DEL removes).
#[map(name = "EP4_ENDPOINTS")]
pub static EP4_ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// See `map_names::POD_DNAT_SEEN`: read on every pod-to-pod packet, written
/// once per node, so its cache line stays shared.
#[map(name = "POD_DNAT_SEEN")]
static POD_DNAT_SEEN: Array<u32> = Array::pinned(1, 0);

/// Host side of a pod veth, traffic leaving the pod.
///
/// Pod-to-pod packets (the common case) cost one hash lookup, the
/// destination endpoint: a local pod's address is never a service frontend
/// (frontends are ClusterIPs, node IPs and external IPs), so they skip the
/// service lookup, and they skip the reverse conntrack lookup too until
/// some pod on the node has had a connection DNATed here.
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
    let now = || unsafe { bpf_ktime_get_ns() };
    // SAFETY: plain hash lookup, value copied.
    if let Some(ep) = unsafe { EP4_ENDPOINTS.get(f.daddr) }.copied() {
        // Possibly a backend's reply to a local client: restore the
        // frontend as source here, because the redirect below skips the
        // client veth's egress program. Replies leaving the node keep
        // their reverse NAT on the outgoing interface (a node address as
        // source must not re-enter the host stack: it would be dropped as
        // martian).
        let dnat_seen = POD_DNAT_SEEN.get(0).is_some_and(|v| *v != 0);
        if let Some(ct) = dnat_seen.then(|| reply_nat(&f, now())).flatten() {
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
    let verdict = lb_flow(ctx, &f, 0, now());
    if verdict != TC_ACT_OK {
        return verdict;
    }
    // After DNAT the destination may be a local backend.
    let Some(daddr) = read::<u32>(ctx, IP_DST_OFF) else {
        return TC_ACT_OK;
    };
    if daddr != f.daddr
        && let Some(seen) = POD_DNAT_SEEN.get_ptr_mut(0)
    {
        // SAFETY: a valid array slot; a racing write stores the same value.
        unsafe {
            if *seen == 0 {
                *seen = 1;
            }
        }
    }
    if !redirect {
        return TC_ACT_OK;
    }
    // SAFETY: plain hash lookup, value copied.
    match unsafe { EP4_ENDPOINTS.get(daddr) }.copied() {
        Some(ep) => redirect_to(ctx, &ep),
        None => TC_ACT_OK,
    }
}

/// Hands the packet to local pod `ep`.
///
/// Straight into the pod (`bpf_redirect_peer`), the packet is not written
/// at all: the kernel marks it PACKET_HOST on the peer (skb_scrub_packet),
/// so the Ethernet addresses need no rewrite, and skipping the TTL
/// decrement keeps the hand-off invisible (a local delivery cannot loop).
/// Writing would cost far more than the rest of the program: TCP transmits
/// clones, and the first write to a clone copies its header (measured with
/// bpf_stats: ~680 ns per run with the rewrite, most of the program).
///
/// Through the veth's egress (`EP_F_VIA_QDISC`, shaped pods) the pod's
/// stack classifies the frame by destination MAC, so there it is rewritten
/// as a router would (gateway -> pod, TTL decremented; TTL expiring: up
/// the host stack, which answers with ICMP time exceeded).
#[inline(always)]
fn redirect_to(ctx: &mut TcContext, ep: &Endpoint) -> i32 {
    if ep.flags & EP_F_VIA_QDISC == 0 {
        // SAFETY: helper; an unknown ifindex makes it return TC_ACT_SHOT.
        return unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 };
    }
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
    // SAFETY: helper; an unknown ifindex makes it return TC_ACT_SHOT.
    unsafe { bpf_redirect(ep.ifindex, 0) as i32 }
}
