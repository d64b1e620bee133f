//! Service load-balancer map layouts (IPv4).
//!
//! Byte order: addresses and ports are stored exactly as the kernel hands
//! them to socket hooks and packet headers, i.e. in network order. A
//! `u32` address holds the four octets in memory order
//! (`u32::from_ne_bytes(ip.octets())`) and a `u16` port holds
//! `port.to_be()`. Userspace converts once, with the helpers below, so the
//! programs never swap bytes on the hot path.
//!
//! Ids: a *service id* names one backend set of one service port (its
//! Maglev table, its counters); several frontends (ClusterIP, each NodePort
//! address, ExternalIPs, LoadBalancer IPs) point at the same service id. A
//! service port whose internal and external traffic policies select
//! different endpoints gets two service ids. A *backend id* names one
//! (address, port, protocol). Both are allocated by the agent, dense and
//! small, so they can index arrays.

/// Capacity of [`crate::map_names::LB4_SERVICES`] (frontends).
pub const MAX_FRONTENDS: u32 = 262_144;
/// Capacity of service ids (Maglev outer array, per-service counters).
pub const MAX_SERVICES: u32 = 65_536;
/// Capacity of backend ids.
pub const MAX_BACKENDS: u32 = 262_144;
/// Entries in the socket reverse-translation LRU (one per live client socket
/// that talked to a service).
pub const SOCK_REVNAT_ENTRIES: u32 = 262_144;
/// Entries in the session-affinity LRU.
pub const AFFINITY_ENTRIES: u32 = 65_536;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Frontend flag: the service uses ClientIP session affinity.
pub const SVC_F_AFFINITY: u32 = 1 << 0;
/// Frontend flag: reached from outside the node (NodePort, ExternalIP,
/// LoadBalancer ingress); selects the external-traffic-policy backend set.
pub const SVC_F_EXTERNAL: u32 = 1 << 1;
/// Frontend flag: a NodePort frontend (a node IP and the node port).
pub const SVC_F_NODEPORT: u32 = 1 << 2;

/// Backend flag: the endpoint is terminating (kept for listing and existing
/// flows; never in a Maglev table unless nothing else can serve).
pub const BACKEND_F_TERMINATING: u8 = 1 << 0;
/// Backend flag: the endpoint runs on this node.
pub const BACKEND_F_LOCAL: u8 = 1 << 1;

/// Maglev inner tables. Each service id owns one `u32` array created by the
/// agent with exactly `1 + M` entries: slot 0 holds `M` (the prime table
/// size) and slots `1..=M` hold backend ids. Carrying `M` inside the table
/// makes a table swap atomic: a program that looked up the new inner map
/// also sees the new size. `BPF_F_INNER_MAP` lets inner arrays differ in
/// size; `BPF_F_MMAPABLE` lets the agent fill a table with one memcpy
/// instead of `M` syscalls.
pub mod maglev {
    /// `BPF_F_MMAPABLE`
    pub const F_MMAPABLE: u32 = 1 << 10;
    /// `BPF_F_INNER_MAP`
    pub const F_INNER_MAP: u32 = 1 << 12;
    /// Flags every inner table (and the template in the object) is created with.
    pub const INNER_FLAGS: u32 = F_INNER_MAP | F_MMAPABLE;
    /// Slot holding the table size.
    pub const SIZE_SLOT: u32 = 0;
    /// Largest table size the agent will create (a prime).
    pub const MAX_TABLE_SIZE: u32 = 16_381;
}

/// Key of [`crate::map_names::LB4_SERVICES`]: what a client addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// Network order.
    pub addr: u32,
    /// Network order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub pad: u8,
}

impl Frontend {
    pub const fn new(octets: [u8; 4], port: u16, proto: u8) -> Self {
        Self {
            addr: u32::from_ne_bytes(octets),
            port: port.to_be(),
            proto,
            pad: 0,
        }
    }
    pub const fn octets(&self) -> [u8; 4] {
        self.addr.to_ne_bytes()
    }
    pub const fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Value of [`crate::map_names::LB4_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index of the Maglev table and counters.
    pub svc_id: u32,
    /// `SVC_F_*`.
    pub flags: u32,
    /// ClientIP affinity timeout in seconds (0 when affinity is off).
    pub affinity_timeout_s: u32,
    pub pad: u32,
}

/// Value of [`crate::map_names::LB4_BACKENDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// Network order.
    pub addr: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_F_*`.
    pub flags: u8,
}

impl Backend {
    pub const fn new(octets: [u8; 4], port: u16, proto: u8, flags: u8) -> Self {
        Self {
            addr: u32::from_ne_bytes(octets),
            port: port.to_be(),
            proto,
            flags,
        }
    }
    pub const fn octets(&self) -> [u8; 4] {
        self.addr.to_ne_bytes()
    }
    pub const fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Key of [`crate::map_names::LB4_AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityKey {
    pub svc_id: u32,
    pub pad: u32,
    /// The client: the netns cookie on the socket path (the client address
    /// is not known before the socket is bound), the source IPv4 on tc.
    pub client: u64,
}

/// Value of [`crate::map_names::LB4_AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub pad: u32,
    /// bpf_ktime_get_ns() of the last selection.
    pub last_used_ns: u64,
}

/// Key of [`crate::map_names::LB4_SOCK_REVNAT`]: a socket and the backend it
/// was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatKey {
    pub cookie: u64,
    /// Backend address, network order.
    pub addr: u32,
    /// Backend port, network order.
    pub port: u16,
    pub pad: u16,
}

/// Value of [`crate::map_names::LB4_SOCK_REVNAT`]: the frontend the socket
/// asked for, restored by getpeername4/recvmsg4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatValue {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
    pub svc_id: u32,
}

/// Per-CPU counters per service id and per backend id. Socket LB sees no
/// packets, so it counts `conns` (connects and unconnected sends it
/// translated); the tc path counts packets and bytes as well.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbCounter {
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl LbCounter {
    pub fn sum<'a>(slots: impl IntoIterator<Item = &'a LbCounter>) -> LbCounter {
        slots
            .into_iter()
            .fold(LbCounter::default(), |a, c| LbCounter {
                conns: a.conns.wrapping_add(c.conns),
                packets: a.packets.wrapping_add(c.packets),
                bytes: a.bytes.wrapping_add(c.bytes),
            })
    }
}

/// Entries in the tc-path conntrack LRU.
pub const CT_ENTRIES: u32 = 262_144;
/// Conntrack key direction: client -> frontend (translated to the backend).
pub const CT_DIR_FWD: u8 = 0;
/// Conntrack key direction: backend -> client (source restored to the frontend).
pub const CT_DIR_REV: u8 = 1;

/// Key of [`crate::map_names::CT4`]: a flow as seen on the wire before
/// translation (forward) or the backend's reply (reverse).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub pad: u16,
}

/// Value of [`crate::map_names::CT4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// Forward: the backend to rewrite the destination to. Reverse: the
    /// frontend to rewrite the source back to. Network order.
    pub nat_addr: u32,
    pub nat_port: u16,
    /// `CT_F_*`.
    pub flags: u16,
    pub backend_id: u32,
    pub svc_id: u32,
    /// bpf_ktime_get_ns() of the last packet (CLOCK_MONOTONIC).
    pub last_seen_ns: u64,
}

/// Conntrack flag: a TCP FIN or RST was seen; the flow is closing, its
/// backend-side tuple may be reused, and the GC's short timeout applies.
pub const CT_F_CLOSING: u16 = 1 << 0;

/// Length of [`ServiceInfo::name`].
pub const SVC_NAME_LEN: usize = 104;

/// Value of [`crate::map_names::LB4_SVC_INFO`] (userspace only).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `namespace/name:port/PROTO` plus `/ext` for an external-only backend
    /// set; NUL padded.
    pub name: [u8; SVC_NAME_LEN],
    /// Backend ids in the table (0: connects are rejected).
    pub table_backends: u32,
    /// Maglev table size M (0 when there is no table).
    pub table_size: u32,
    /// Digest of the table's inputs (Maglev version, M, its backends in
    /// order with their ids), so a restarted agent can tell whether a
    /// pinned table is already the one it wants without computing it.
    pub digest: u64,
    pub flags: u32,
    pub pad: u32,
}

impl Default for ServiceInfo {
    fn default() -> Self {
        Self {
            name: [0; SVC_NAME_LEN],
            table_backends: 0,
            table_size: 0,
            digest: 0,
            flags: 0,
            pad: 0,
        }
    }
}

impl ServiceInfo {
    /// The name as text (up to the first NUL; lossy on bad UTF-8 is not
    /// needed because the agent only writes ASCII names).
    pub fn name_str(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(SVC_NAME_LEN);
        core::str::from_utf8(&self.name[..end]).unwrap_or("<invalid>")
    }

    /// Stores `name`, truncated to fit (Kubernetes names are at most 63+253
    /// bytes, so very long names are cut; the id stays the identity).
    pub fn set_name(&mut self, name: &str) {
        self.name = [0; SVC_NAME_LEN];
        let n = name.len().min(SVC_NAME_LEN);
        self.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] with explicit padding fields, so
    // every byte is initialised and any bit pattern is valid.
    unsafe impl aya::Pod for super::Frontend {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::SockRevNatKey {}
    unsafe impl aya::Pod for super::SockRevNatValue {}
    unsafe impl aya::Pod for super::LbCounter {}
    unsafe impl aya::Pod for super::ServiceInfo {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        // Hash keys are compared bytewise by the kernel: implicit padding
        // would make equal keys differ. Sizes are the sum of the fields.
        assert_eq!(size_of::<Frontend>(), 8);
        assert_eq!(size_of::<Service>(), 16);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<SockRevNatKey>(), 16);
        assert_eq!(size_of::<SockRevNatValue>(), 12);
        assert_eq!(size_of::<LbCounter>(), 24);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(size_of::<CtValue>(), 24);
        assert_eq!(size_of::<ServiceInfo>(), SVC_NAME_LEN + 4 + 4 + 8 + 4 + 4);
    }

    #[test]
    fn frontend_is_network_order() {
        let f = Frontend::new([10, 96, 0, 1], 80, PROTO_TCP);
        // In memory: the octets in order, then the port big-endian.
        let bytes: [u8; 8] = unsafe { core::mem::transmute(f) };
        assert_eq!(bytes, [10, 96, 0, 1, 0, 80, 6, 0]);
        assert_eq!(f.octets(), [10, 96, 0, 1]);
        assert_eq!(f.host_port(), 80);
    }

    #[test]
    fn service_info_name_round_trips_and_truncates() {
        let mut i = ServiceInfo::default();
        i.set_name("default/web:http/TCP");
        assert_eq!(i.name_str(), "default/web:http/TCP");
        let long = [b'x'; 300];
        i.set_name(core::str::from_utf8(&long).unwrap());
        assert_eq!(i.name_str().len(), SVC_NAME_LEN);
    }
}
