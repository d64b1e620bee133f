//! Per-packet service load balancing for traffic that never passes the
//! socket hooks: NodePort, ExternalIP and LoadBalancer traffic arriving on a
//! node's external interfaces (`tc_lb_ingress`), and ClusterIP traffic from
//! pods whose sockets the cgroup hooks do not see (`lb_flow` called by
//! `tc_pod_ingress` on the host side of a pod's veth, see `tc.rs`).
//!
//! Ingress: a packet to an external frontend gets its destination rewritten
//! to a backend (DNAT) and a conntrack pair is recorded; later packets of
//! the flow follow the forward entry. Egress: the backend's replies match
//! the reverse entry and get their source rewritten back to the frontend.
//! L3 and L4 checksums are patched incrementally.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::LruHashMap,
    programs::TcContext,
};
use sluice_common::lb::{
    BACKEND_F_TERMINATING, CT_DIR_FWD, CT_DIR_REV, CT_ENTRIES, CT_F_CLOSING, CtKey, CtValue,
    Frontend, PROTO_TCP, PROTO_UDP, SVC_F_AFFINITY, SVC_F_EXTERNAL,
};

use crate::{
    lb_maps::{LB4_BACKENDS, LB4_BE_STATS, LB4_SERVICES, LB4_SVC_STATS},
    select::select_backend,
};

#[map(name = "LB4_CT")]
pub static LB4_CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CT_ENTRIES, 0);

pub(crate) const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub(crate) const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub(crate) const IP_DST_OFF: usize = ETH_HLEN + 16;
/// Packets with IP options are passed untouched (rare; keeps offsets static).
const L4_OFF: usize = ETH_HLEN + 20;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// Backends tried for a new flow before giving up on a collision-free one.
const SELECT_TRIES: u32 = 8;
/// How long a UDP flow keeps its backend-side tuple reserved after its last
/// packet (TCP flows hold theirs until seen closing).
const TUPLE_GUARD_NS: u64 = 60_000_000_000;

#[derive(Clone, Copy)]
pub(crate) struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    pub len: u64,
}

impl Flow {
    /// This packet's own conntrack key in direction `dir`.
    #[inline(always)]
    pub fn key(&self, dir: u8) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            dir,
            pad: 0,
        }
    }
    /// A TCP SYN without ACK: the first packet of a connection.
    #[inline(always)]
    fn syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
    /// A TCP SYN-ACK: a server accepting a connection.
    #[inline(always)]
    fn syn_ack(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
    }
    /// A TCP FIN or RST: the connection is closing.
    #[inline(always)]
    pub fn closing(&self) -> bool {
        self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}

/// Reads a `T` at `off` through direct packet access (no helper call per
/// field, which cost ~30 ns each); `None` past the end of linear data.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds-checked above against data_end (the verifier checks
    // the same); unaligned because IP headers start at offset 14.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[inline(always)]
pub(crate) fn parse(ctx: &mut TcContext) -> Option<Flow> {
    // Headers are normally linear; pull them in when they are not (as
    // much of a TCP header as the packet has, at least a UDP header).
    if ctx.data() + L4_OFF + 20 > ctx.data_end() {
        let want = core::cmp::min(ctx.len() as usize, L4_OFF + 20);
        if want < L4_OFF + 8 {
            return None;
        }
        ctx.pull_data(want as u32).ok()?;
    }
    let ethertype: u16 = read(ctx, 12)?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let vihl: u8 = read(ctx, ETH_HLEN)?;
    if vihl != 0x45 {
        return None;
    }
    // Fragments other than the first carry no ports.
    let frag: u16 = read(ctx, ETH_HLEN + 6)?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return None;
    }
    let proto: u8 = read(ctx, ETH_HLEN + 9)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let tcp_flags = if proto == PROTO_TCP {
        read(ctx, L4_OFF + 13)?
    } else {
        0
    };
    Some(Flow {
        saddr: read(ctx, IP_SRC_OFF)?,
        daddr: read(ctx, IP_DST_OFF)?,
        sport: read(ctx, L4_OFF)?,
        dport: read(ctx, L4_OFF + 2)?,
        proto,
        tcp_flags,
        len: ctx.len() as u64,
    })
}

#[inline(always)]
fn l4_csum_off(proto: u8) -> usize {
    if proto == PROTO_TCP {
        L4_OFF + 16
    } else {
        L4_OFF + 6
    }
}

/// One address + port rewrite: destination (DNAT) or source (reverse NAT).
#[derive(Clone, Copy)]
pub(crate) struct Nat {
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
}

impl Nat {
    #[inline(always)]
    fn dst(f: &Flow, addr: u32, port: u16) -> Self {
        Self {
            addr_off: IP_DST_OFF,
            old_addr: f.daddr,
            new_addr: addr,
            port_off: L4_OFF + 2,
            old_port: f.dport,
            new_port: port,
        }
    }
    #[inline(always)]
    pub fn src(f: &Flow, addr: u32, port: u16) -> Self {
        Self {
            addr_off: IP_SRC_OFF,
            old_addr: f.saddr,
            new_addr: addr,
            port_off: L4_OFF,
            old_port: f.sport,
            new_port: port,
        }
    }
}

/// Applies `n`, fixing the IP header checksum and the L4 checksum (pseudo
/// header), then maps the result to a tc verdict.
#[inline(always)]
pub(crate) fn apply(ctx: &mut TcContext, proto: u8, n: Nat) -> i32 {
    match rewrite(ctx, proto, &n) {
        Ok(()) => TC_ACT_OK,
        Err(_) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn rewrite(ctx: &mut TcContext, proto: u8, n: &Nat) -> Result<(), i64> {
    let Nat {
        addr_off,
        old_addr,
        new_addr,
        port_off,
        old_port,
        new_port,
    } = *n;
    let csum = l4_csum_off(proto);
    let mangled = if proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    ctx.l4_csum_replace(
        csum,
        old_addr as u64,
        new_addr as u64,
        BPF_F_PSEUDO_HDR as u64 | mangled | 4,
    )?;
    ctx.l4_csum_replace(csum, old_port as u64, new_port as u64, mangled | 2)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)?;
    ctx.store(addr_off, &new_addr, 0)?;
    ctx.store(port_off, &new_port, 0)?;
    Ok(())
}

/// A cheap, well-mixed hash of the flow (murmur3 finalizer), so the same
/// flow picks the same Maglev slot on every node.
#[inline(always)]
fn flow_hash(f: &Flow) -> u32 {
    let mut h = f.saddr
        ^ f.daddr.rotate_left(7)
        ^ ((f.sport as u32) << 16 | f.dport as u32)
        ^ f.proto as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// How stale `last_seen_ns` may get before a packet refreshes it. The GC's
/// shortest timeout is a minute, so a second of slack costs nothing, and
/// most packets of a busy flow then do a lookup and no write.
const LAST_SEEN_SLACK_NS: u64 = 1_000_000_000;

/// The conntrack entry of `key`, refreshed in place (no re-insert: an LRU
/// update allocates a new element and is several times dearer), and
/// marked closing on a FIN or RST.
#[inline(always)]
pub(crate) fn tracked(key: &CtKey, now: u64, closing: bool) -> Option<CtValue> {
    let p = LB4_CT.get_ptr_mut(key)?;
    // SAFETY: the pointer is valid for this program run (RCU); the value is
    // plain data. A racing refresh from another CPU writes the same kind of
    // timestamp, so a torn order between them does not matter.
    unsafe {
        let ct = *p;
        if now.wrapping_sub(ct.last_seen_ns) > LAST_SEEN_SLACK_NS {
            (*p).last_seen_ns = now;
        }
        if closing && ct.flags & CT_F_CLOSING == 0 {
            (*p).flags |= CT_F_CLOSING;
        }
        Some(ct)
    }
}

/// The reverse-NAT entry for reply packet `f`, if the reply belongs to a
/// translated flow.
///
/// A reverse entry outlives its flow (until the GC expires it), and the
/// wire tuple it is keyed on can be taken by a connection that was never
/// translated: a client that talked to a ClusterIP from port P may next
/// connect from P straight to the backend's pod IP. Rewriting that
/// connection's replies to the ClusterIP would break it (the client sees
/// a SYN-ACK from an address it never called). A translated flow that
/// reuses the tuple re-records its entry, clearing the closing mark, on its
/// SYN (`lb_flow`), before the server can answer; so a SYN-ACK that meets
/// an entry still marked closing answers a connection that was not
/// translated. The stale entry is dropped and the packet left alone.
#[inline(always)]
pub(crate) fn reply_nat(f: &Flow, now: u64) -> Option<CtValue> {
    let key = f.key(CT_DIR_REV);
    let ct = tracked(&key, now, f.closing())?;
    if f.syn_ack() && ct.flags & CT_F_CLOSING != 0 {
        let _ = LB4_CT.remove(key);
        return None;
    }
    Some(ct)
}

/// Marks the reverse entry of a forward flow closing (the tuple check in
/// `tuple_taken` looks at reverse entries).
#[inline(always)]
fn mark_reply_closing(f: &Flow, ct: &CtValue) {
    if let Some(p) = LB4_CT.get_ptr_mut(reply_key(f, ct.nat_addr, ct.nat_port)) {
        // SAFETY: as in `tracked`.
        unsafe { (*p).flags |= CT_F_CLOSING };
    }
}

/// The conntrack key of the replies of flow `f` once DNATed to
/// `addr:port` (a backend).
#[inline(always)]
fn reply_key(f: &Flow, addr: u32, port: u16) -> CtKey {
    CtKey {
        saddr: addr,
        daddr: f.saddr,
        sport: port,
        dport: f.sport,
        proto: f.proto,
        dir: CT_DIR_REV,
        pad: 0,
    }
}

/// Whether the backend-side tuple (backend -> client port) of a new flow
/// to `addr:port` is held by a live flow to a different frontend: a TCP
/// flow not seen closing (however idle: connection pools idle for long),
/// or a UDP flow seen within the guard time.
#[inline(always)]
fn tuple_taken(f: &Flow, addr: u32, port: u16, now: u64) -> bool {
    // SAFETY: plain LRU lookup, value copied.
    match unsafe { LB4_CT.get(reply_key(f, addr, port)) } {
        Some(v) => {
            let ours = v.nat_addr == f.daddr && v.nat_port == f.dport;
            let live = if f.proto == PROTO_TCP {
                v.flags & CT_F_CLOSING == 0
            } else {
                now.wrapping_sub(v.last_seen_ns) < TUPLE_GUARD_NS
            };
            !ours && live
        }
        None => false,
    }
}

#[inline(always)]
fn count(svc_id: u32, backend_id: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = LB4_SVC_STATS.get_ptr_mut(svc_id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).conns += new_flow as u64;
        }
    }
    if let Some(c) = LB4_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).conns += new_flow as u64;
        }
    }
}

/// External interfaces: only frontends marked external (node ports,
/// external IPs, load-balancer IPs); a ClusterIP is not reachable from
/// outside the cluster.
#[classifier]
pub fn tc_lb_ingress(mut ctx: TcContext) -> i32 {
    lb_ingress(&mut ctx, SVC_F_EXTERNAL)
}

#[inline(always)]
fn lb_ingress(ctx: &mut TcContext, required_flags: u32) -> i32 {
    let Some(f) = parse(ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    lb_flow(ctx, &f, required_flags, now)
}

/// DNAT for a new or tracked flow; `TC_ACT_OK` also when `f` is not to a
/// frontend. `required_flags`: service flags a frontend must carry to be
/// balanced on this interface.
#[inline(always)]
pub(crate) fn lb_flow(ctx: &mut TcContext, f: &Flow, required_flags: u32, now: u64) -> i32 {
    let f = *f;
    let key = f.key(CT_DIR_FWD);
    // (backend id, address, port) a SYN on a tracked tuple keeps.
    let mut keep = None;
    if let Some(ct) = tracked(&key, now, f.closing()) {
        if f.closing() {
            mark_reply_closing(&f, &ct);
        }
        if !f.syn() {
            count(ct.svc_id, ct.backend_id, f.len, false);
            return apply(ctx, f.proto, Nat::dst(&f, ct.nat_addr, ct.nat_port));
        }
        // A SYN on a tracked tuple is a retransmission or a new connection
        // reusing the client port (TIME_WAIT reuse): keep the backend
        // unless its tuple now belongs to another live flow, and record
        // the flow afresh below (clearing the old flow's closing state).
        // SAFETY: plain hash lookup, value copied.
        let usable = unsafe { LB4_BACKENDS.get(ct.backend_id) }.is_some_and(|b| {
            b.addr == ct.nat_addr && b.port == ct.nat_port && b.flags & BACKEND_F_TERMINATING == 0
        });
        if usable && !tuple_taken(&f, ct.nat_addr, ct.nat_port, now) {
            keep = Some((ct.backend_id, ct.nat_addr, ct.nat_port));
        }
    }
    let fe = Frontend {
        addr: f.daddr,
        port: f.dport,
        proto: f.proto,
        pad: 0,
    };
    // SAFETY: plain hash lookup, value copied.
    let Some(svc) = unsafe { LB4_SERVICES.get(fe) }.copied() else {
        return TC_ACT_OK;
    };
    if svc.flags & required_flags != required_flags {
        return TC_ACT_OK;
    }
    // DNAT without source-port translation: two client sockets that share
    // a source port (allowed, they go to different frontends) must not
    // land on the same backend address, or they become one tuple on the
    // wire and break each other. Prefer a backend whose tuple is free.
    let hash = flow_hash(&f);
    let mut chosen = keep;
    let mut tries = if keep.is_some() { SELECT_TRIES } else { 0 };
    while tries < SELECT_TRIES {
        let h = hash ^ tries.wrapping_mul(0x9e37_79b9);
        tries += 1;
        let Some((id, be)) = select_backend(&svc, h, f.saddr as u64) else {
            // No usable backend: drop now rather than leave the client to
            // a host that has no such port open.
            return TC_ACT_SHOT;
        };
        // With session affinity every try returns the client's pinned
        // backend; that choice stands (a collision there is accepted).
        if svc.flags & SVC_F_AFFINITY != 0 || !tuple_taken(&f, be.addr, be.port, now) {
            chosen = Some((id, be.addr, be.port));
            break;
        }
    }
    // Every try collided (e.g. a one-backend service): drop the SYN; the
    // client retries, and the live flow it would break is left alone.
    let Some((backend_id, be_addr, be_port)) = chosen else {
        return TC_ACT_SHOT;
    };
    let fwd = CtValue {
        nat_addr: be_addr,
        nat_port: be_port,
        flags: 0,
        backend_id,
        svc_id: svc.svc_id,
        last_seen_ns: now,
    };
    let rev_key = reply_key(&f, be_addr, be_port);
    let rev = CtValue {
        nat_addr: f.daddr,
        nat_port: f.dport,
        ..fwd
    };
    if LB4_CT.insert(rev_key, rev, 0).is_err() || LB4_CT.insert(key, fwd, 0).is_err() {
        return TC_ACT_SHOT;
    }
    count(svc.svc_id, backend_id, f.len, true);
    apply(ctx, f.proto, Nat::dst(&f, be_addr, be_port))
}

#[classifier]
pub fn tc_lb_egress(mut ctx: TcContext) -> i32 {
    let Some(f) = parse(&mut ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(ct) = reply_nat(&f, now) else {
        return TC_ACT_OK;
    };
    apply(&mut ctx, f.proto, Nat::src(&f, ct.nat_addr, ct.nat_port))
}
