//! Local pod endpoints (IPv4): what the pod datapath needs to hand a packet
//! straight to a pod on this node, skipping the host stack.
//!
//! The CNI plugin writes one entry per pod interface on ADD and removes it
//! on DEL; the programs on every pod's host-side veth read it. Byte order
//! as in [`crate::lb`]: the key is the address in network order
//! (`u32::from_ne_bytes(ip.octets())`).

/// Capacity of [`crate::map_names::EP4_ENDPOINTS`] (pods per node).
pub const MAX_ENDPOINTS: u32 = 65_536;

/// Deliver to this pod through its host-side veth's egress (`bpf_redirect`)
/// rather than straight into the pod (`bpf_redirect_peer`): a qdisc there
/// shapes the pod's incoming traffic (the CNI `bandwidth` plugin's ingress
/// rate) and must see pod-to-pod packets too.
pub const EP_F_VIA_QDISC: u32 = 1;

/// Value of [`crate::map_names::EP4_ENDPOINTS`], keyed by pod address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The host-side veth: `bpf_redirect_peer` on it delivers into the pod.
    pub ifindex: u32,
    /// `EP_F_*`.
    pub flags: u32,
    /// The pod interface's MAC: the destination of redirected frames.
    pub mac: [u8; 6],
    /// The host-side veth's MAC: what the pod knows as its gateway, so the
    /// source of redirected frames.
    pub host_mac: [u8; 6],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], u32 and byte-array fields, size 20 with no padding.
    unsafe impl aya::Pod for super::Endpoint {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_has_no_padding() {
        assert_eq!(core::mem::size_of::<super::Endpoint>(), 20);
    }
}
