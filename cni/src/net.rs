//! rtnetlink operations the plugin needs, on the node's namespace or on a
//! pod's. A netlink socket belongs to the namespace it was created in, so
//! a pod's connection is opened after a `setns` of the creating thread,
//! which then returns to where it was.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use futures_util::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use nix::sched::{CloneFlags, setns};
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
    packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla, NlasIterator},
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressFlags},
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags},
        route::{RouteAddress, RouteAttribute, RouteScope},
        tc::{TcAttribute, TcHandle, TcMessage, TcOption},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    /// The errno of a netlink error (e.g. `EEXIST`), if it is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(-m.raw_code()),
            _ => None,
        }
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}

/// What the plugin reads back about an interface.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    pub up: bool,
    pub mtu: u32,
}

/// A netlink connection bound to one network namespace.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace. Must run inside a
    /// tokio runtime (the connection task is spawned on it).
    pub fn current() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
            op: "netlink socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A connection in the namespace `ns` (an open netns file).
    pub fn in_netns(ns: &File) -> Result<Self, NetError> {
        let io = |op: &str| {
            let op = op.to_string();
            move |e: nix::Error| NetError::Io {
                op,
                source: e.into(),
            }
        };
        let here = File::open("/proc/thread-self/ns/net").map_err(|source| NetError::Io {
            op: "open own netns".into(),
            source,
        })?;
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(io("setns into the pod namespace"))?;
        let conn = Self::current();
        setns(&here, CloneFlags::CLONE_NEWNET).map_err(io("setns back"))?;
        conn
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => {
                return Ok(None);
            }
            Err(e) => return Err(nl(format!("get link {name}"))(e)),
        };
        let mut link = Link {
            index: msg.header.index,
            mac: [0; 6],
            up: msg.header.flags.contains(LinkFlags::Up),
            mtu: 0,
        };
        for a in &msg.attributes {
            match a {
                LinkAttribute::Address(m) if m.len() == 6 => link.mac.copy_from_slice(m),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                _ => {}
            }
        }
        Ok(Some(link))
    }

    /// Creates a veth pair whose peer is created directly inside `peer_ns`
    /// under its final name, MAC and MTU (one request: nothing to rename,
    /// nothing half-made in the node's namespace if it fails).
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: &File,
        peer_mac: [u8; 6],
        mtu: u32,
    ) -> Result<(), NetError> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .address(peer_mac.to_vec())
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("create veth {host} <-> {peer}")))
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("set link {index} up")))
    }

    pub async fn del_link(&self, index: u32) -> Result<(), NetError> {
        self.handle
            .clone()
            .link()
            .del(index)
            .execute()
            .await
            .map_err(nl(format!("delete link {index}")))
    }

    /// Adds `ip/prefix`; with `no_prefix_route` the kernel adds no subnet
    /// route (pods reach every other address through the gateway).
    pub async fn add_addr(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
        no_prefix_route: bool,
    ) -> Result<(), NetError> {
        let mut req = self.handle.address().add(index, IpAddr::V4(ip), prefix);
        if no_prefix_route {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        }
        req.execute()
            .await
            .map_err(nl(format!("add address {ip}/{prefix} to link {index}")))
    }

    pub async fn addrs(&self, index: u32) -> Result<Vec<Ipv4Net>, NetError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl("list addresses"))? {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a
                    && let Ok(net) = Ipv4Net::new(*ip, m.header.prefix_len)
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// Adds a route to `dst` out of `oif`, via `gw` or on-link.
    pub async fn add_route(
        &self,
        dst: Ipv4Net,
        gw: Option<Ipv4Addr>,
        oif: u32,
    ) -> Result<(), NetError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .output_interface(oif);
        b = match gw {
            Some(gw) => b.gateway(gw),
            None => b.scope(RouteScope::Link),
        };
        self.handle
            .route()
            .add(b.build())
            .execute()
            .await
            .map_err(nl(format!("add route {dst} dev {oif}")))
    }

    /// IPv4 routes (out of `oif` when given): (destination, gateway).
    pub async fn routes(
        &self,
        oif: Option<u32>,
    ) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>)>, NetError> {
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl("list routes"))? {
            let (mut dst, mut gw, mut out_if) = (Ipv4Addr::UNSPECIFIED, None, 0);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(i) => out_if = *i,
                    _ => {}
                }
            }
            if oif.is_none_or(|o| o == out_if)
                && let Ok(net) = Ipv4Net::new(dst, m.header.destination_prefix_length)
            {
                out.push((net, gw));
            }
        }
        Ok(out)
    }

    /// Names of the cls_bpf filters on `index`'s clsact ingress (or
    /// egress) hook. rtnetlink has no filter dump by parent and leaves the
    /// `bpf` options undecoded, so both are done here.
    pub async fn bpf_filters(&self, index: u32, egress: bool) -> Result<Vec<String>, NetError> {
        /// TCA_BPF_NAME in linux/pkt_cls.h.
        const TCA_BPF_NAME: u16 = 7;
        let mut msg = TcMessage::default();
        msg.header.index = index as i32;
        msg.header.parent = TcHandle {
            major: u16::MAX,
            minor: if egress {
                TcHandle::MIN_EGRESS
            } else {
                TcHandle::MIN_INGRESS
            },
        };
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let op = || format!("list tc filters of link {index}");
        let mut resp = self.handle.clone().request(req).map_err(nl(op()))?;
        let mut names = Vec::new();
        while let Some(m) = resp.next().await {
            let f = match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(f)) => f,
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(nl(op())(rtnetlink::Error::NetlinkError(e)));
                }
                _ => continue,
            };
            if !f.attributes.contains(&TcAttribute::Kind("bpf".into())) {
                continue;
            }
            for a in &f.attributes {
                let TcAttribute::Options(opts) = a else {
                    continue;
                };
                for o in opts {
                    let TcOption::Other(nested) = o else { continue };
                    let mut buf = vec![0; nested.value_len()];
                    nested.emit_value(&mut buf);
                    for nla in NlasIterator::new(&buf[..]).flatten() {
                        if nla.kind() == TCA_BPF_NAME {
                            let v = nla.value();
                            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
                            names.push(String::from_utf8_lossy(&v[..end]).into_owned());
                        }
                    }
                }
            }
        }
        Ok(names)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The pod interface MAC derived from its address (`0a:58` + the IPv4
/// octets, as kubenet and OVN-Kubernetes do): stable across a re-ADD and
/// locally administered, so it never collides with a real NIC.
pub fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}
