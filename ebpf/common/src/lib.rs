//! Map keys, values and names shared by sluice's eBPF programs and its userspace.
//!
//! This crate is the single place where a map's layout is defined: both sides
//! compile against the same `#[repr(C)]` types, so a layout change cannot
//! reach only one of them. It is `no_std` so the eBPF crate can use it; the
//! `user` feature adds `aya::Pod` impls for the userspace side.
#![no_std]

/// Names of the maps in the eBPF object. Pinned maps appear under the node's
/// bpffs directory with exactly these names.
pub mod map_names {
    /// Per-CPU packet/byte counters per program, indexed by [`super::ProgStat`].
    pub const PROG_STATS: &str = "SLUICE_STATS";
    /// Service frontends: [`crate::lb::Frontend`] -> [`crate::lb::Service`].
    pub const LB4_SERVICES: &str = "LB4_SERVICES";
    /// Backends by id: `u32` -> [`crate::lb::Backend`].
    pub const LB4_BACKENDS: &str = "LB4_BACKENDS";
    /// Maglev tables: array of maps indexed by service id; see [`crate::lb::maglev`].
    pub const LB4_MAGLEV: &str = "LB4_MAGLEV";
    /// ClientIP session affinity: [`crate::lb::AffinityKey`] -> [`crate::lb::AffinityValue`] (LRU).
    pub const LB4_AFFINITY: &str = "LB4_AFFINITY";
    /// Socket-LB reverse translation: [`crate::lb::SockRevNatKey`] -> [`crate::lb::SockRevNatValue`] (LRU).
    pub const LB4_SOCK_REVNAT: &str = "LB4_SOCK_REVNAT";
    /// Per-CPU [`crate::lb::LbCounter`] per service id.
    pub const LB4_SVC_STATS: &str = "LB4_SVC_STATS";
    /// Per-CPU [`crate::lb::LbCounter`] per backend id.
    pub const LB4_BACKEND_STATS: &str = "LB4_BE_STATS";
    /// Userspace-only bookkeeping per service id ([`crate::lb::ServiceInfo`]); the
    /// programs never read it. It lets `bpf lb list` and a restarted agent
    /// name what the kernel maps hold without any state outside bpffs.
    pub const LB4_SVC_INFO: &str = "LB4_SVC_INFO";
    /// tc-path conntrack: [`crate::lb::CtKey`] -> [`crate::lb::CtValue`] (LRU).
    pub const CT4: &str = "LB4_CT";
    /// Local pods: pod address -> [`crate::endpoint::Endpoint`] (written by the CNI plugin).
    pub const EP4_ENDPOINTS: &str = "EP4_ENDPOINTS";
    /// One `u32` slot, set (sticky) the first time a pod's traffic is
    /// DNATed on its veth (it bypassed the socket hooks). Until then no
    /// reply to a local pod can need reverse NAT there, and pod-to-pod
    /// packets skip that conntrack lookup.
    pub const POD_DNAT_SEEN: &str = "POD_DNAT_SEEN";
}

/// Pin paths (relative to the node's bpffs dir) of the program links, so
/// the programs stay attached while the agent restarts.
pub mod link_pins {
    pub const SOCK4_CONNECT: &str = "links/sock4_connect";
    pub const SOCK4_SENDMSG: &str = "links/sock4_sendmsg";
    pub const SOCK4_RECVMSG: &str = "links/sock4_recvmsg";
    pub const SOCK4_GETPEERNAME: &str = "links/sock4_getpeername";
    pub const SOCK4_RELEASE: &str = "links/sock4_release";
    /// Per LB interface (external or pod-facing): `links/tc_ingress_<ifname>`,
    /// `links/tc_egress_<ifname>`.
    pub const TC_PREFIX: &str = "links/tc_";
}

pub mod endpoint;
pub mod lb;

/// Names of the programs in the eBPF object (their Rust function names).
pub mod prog_names {
    /// cgroup/connect4: socket-level service translation at connect() time.
    pub const SOCK4_CONNECT: &str = "sock4_connect";
    /// cgroup/sendmsg4: unconnected UDP sends to a service.
    pub const SOCK4_SENDMSG: &str = "sock4_sendmsg";
    /// cgroup/recvmsg4: reverse translation of unconnected UDP replies.
    pub const SOCK4_RECVMSG: &str = "sock4_recvmsg";
    /// cgroup/getpeername4: report the service address, not the backend.
    pub const SOCK4_GETPEERNAME: &str = "sock4_getpeername";
    /// cgroup/sock_release: forget a closing socket's reverse translation.
    pub const SOCK4_RELEASE: &str = "sock4_release";
    /// tc ingress on a pod's host-side veth (traffic from the pod): service
    /// DNAT for every frontend, then an in-kernel hand-off to a local pod.
    pub const TC_POD_INGRESS: &str = "tc_pod_ingress";
    /// The same for a pod whose outgoing traffic is shaped by a qdisc on
    /// the veth's ingress (CNI `bandwidth` plugin's egress rate): attached
    /// with tcx ahead of that qdisc, it never redirects and hands every
    /// packet on (TCX_NEXT), so the shaping applies.
    pub const TC_POD_SHAPED: &str = "tc_pod_shaped";
    /// tc ingress on a node's external interface: DNAT to service backends.
    pub const TC_LB_INGRESS: &str = "tc_lb_ingress";
    /// tc egress on an LB interface (external or pod-facing): reverse NAT of replies.
    pub const TC_LB_EGRESS: &str = "tc_lb_egress";
}

/// Index into the [`map_names::PROG_STATS`] per-CPU array. One slot per
/// program so an operator can see which hook is seeing traffic.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgStat {
    Sock4Connect = 0,
    TcPodIngress = 1,
    Sock4Sendmsg = 2,
    Sock4Recvmsg = 3,
    Sock4Getpeername = 4,
}

impl ProgStat {
    /// Number of slots in the stats array; keep in sync with the variants.
    pub const COUNT: u32 = 5;
    pub const ALL: [ProgStat; 5] = [
        ProgStat::Sock4Connect,
        ProgStat::TcPodIngress,
        ProgStat::Sock4Sendmsg,
        ProgStat::Sock4Recvmsg,
        ProgStat::Sock4Getpeername,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ProgStat::Sock4Connect => prog_names::SOCK4_CONNECT,
            ProgStat::TcPodIngress => prog_names::TC_POD_INGRESS,
            ProgStat::Sock4Sendmsg => prog_names::SOCK4_SENDMSG,
            ProgStat::Sock4Recvmsg => prog_names::SOCK4_RECVMSG,
            ProgStat::Sock4Getpeername => prog_names::SOCK4_GETPEERNAME,
        }
    }
}

/// One counter slot: how many times a program ran and over how many bytes
/// (bytes are 0 for socket hooks, which see no packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    /// Sums per-CPU slots into one total.
    pub fn sum<'a>(slots: impl IntoIterator<Item = &'a Counter>) -> Counter {
        slots
            .into_iter()
            .fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets.wrapping_add(c.packets),
                bytes: acc.bytes.wrapping_add(c.bytes),
            })
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only u64 fields, no padding.
    unsafe impl aya::Pod for super::Counter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_layout_matches_kernel_expectation() {
        // The kernel copies value_size bytes per CPU; the layout must have no
        // padding and a fixed size, or per-CPU slots would be misread.
        assert_eq!(core::mem::size_of::<Counter>(), 16);
        assert_eq!(core::mem::align_of::<Counter>(), 8);
    }

    #[test]
    fn counter_sum_adds_slots() {
        let slots = [
            Counter {
                packets: 1,
                bytes: 10,
            },
            Counter {
                packets: 2,
                bytes: 20,
            },
        ];
        assert_eq!(
            Counter::sum(&slots),
            Counter {
                packets: 3,
                bytes: 30
            }
        );
    }

    #[test]
    fn prog_stat_indices_are_dense() {
        for (i, s) in ProgStat::ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32);
        }
        assert_eq!(ProgStat::ALL.len() as u32, ProgStat::COUNT);
    }
}
