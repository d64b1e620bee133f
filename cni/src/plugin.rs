//! The six CNI operations. Each one is complete or changes nothing: ADD
//! records what it created and undoes it on any failure; DEL and GC
//! release whatever exists and treat "already gone" as success.
use std::{
    collections::HashSet,
    fs::File,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net};
use rscni_plugin::{
    cni::Cni,
    error::Error,
    types::{Args, CNIResult, Interface, IpConfig, Route},
};
use sluice_common::endpoint::Endpoint;
use sluice_datapath::{DatapathError, Endpoints, POD_PROGRAMS, PodDatapath};

use crate::{
    config::{self, Conf},
    ipam::{IpamError, Store},
    net::{NetError, Netlink, fmt_mac, pod_mac},
};

/// sluice's plugin-specific error code (the spec reserves 100+ for
/// plugins): a netlink, datapath or consistency failure, with details.
const CODE_SLUICE: u32 = 100;

pub struct Sluice;

fn fail(msg: &str, details: impl std::fmt::Display) -> Error {
    Error::Custom(CODE_SLUICE, msg.into(), details.to_string())
}

fn ipam(e: IpamError) -> Error {
    match e {
        // A DEL frees an address: retrying can succeed.
        e @ IpamError::Exhausted(_) => Error::Custom(11, "Try again later".into(), e.to_string()),
        e @ IpamError::Io { .. } => Error::Custom(5, "I/O failure".into(), e.to_string()),
    }
}
fn netlink(e: NetError) -> Error {
    fail("netlink", e)
}
fn datapath(e: DatapathError) -> Error {
    fail("datapath", e)
}

fn env_err(var: &str, why: impl std::fmt::Display) -> Error {
    Error::Custom(
        4,
        "Invalid necessary environment variables".into(),
        format!("{var}: {why}"),
    )
}

/// The host-side veth of (network, container, ifname): derived, so DEL and
/// GC find it without any stored state; `sl` + 13 hex digits fits IFNAMSIZ.
pub fn host_ifname(network: &str, container_id: &str, ifname: &str) -> String {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{network}\0{container_id}\0{ifname}").as_bytes());
    format!("sl{:013x}", h & ((1 << 52) - 1))
}

fn conf(a: &Args) -> Result<Conf, Error> {
    config::parse(&a.config().name, &a.config().custom)
}

fn shaping(a: &Args) -> Result<config::Shaping, Error> {
    config::shaping(a.config().runtime_config.as_ref().map(|r| &r.custom))
}

fn ids(a: &Args) -> Result<(String, String), Error> {
    let cid = a
        .container_id()
        .ok_or_else(|| env_err("CNI_CONTAINERID", "missing"))?
        .to_string();
    let ifname = a
        .ifname()
        .ok_or_else(|| env_err("CNI_IFNAME", "missing"))?
        .to_string();
    Ok((cid, ifname))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| fail("runtime", e))
}

/// The node namespace must forward between pods and the outside (what
/// the reference bridge plugin also switches on).
fn enable_forwarding() -> Result<(), Error> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(p, "1").map_err(|e| fail("enable ip_forward", e))
}

/// What a failed ADD must undo, in reverse order of creation.
#[derive(Default)]
struct Undo {
    new_ip: Option<Ipv4Addr>,
    host_link: Option<u32>,
    /// Host veth with pinned tcx links (shaped pods only).
    linked: Option<String>,
    endpoint: Option<Ipv4Addr>,
    /// The datapath handle the endpoint was written through.
    dp: Option<PodDatapath>,
}

impl Undo {
    async fn run(mut self, c: &Conf, host: &Netlink) {
        // Dropped first: it holds the bpffs lock shared, and letting go
        // early keeps an agent's pod-program switch from waiting on us.
        if let Some(mut dp) = self.dp.take()
            && let Some(ip) = self.endpoint
        {
            let _ = dp.endpoints().remove_endpoint(ip);
        }
        if let Some(ifname) = &self.linked {
            let _ = PodDatapath::unlink(&c.bpffs, ifname);
        }
        // Deleting the veth also removes the tc filters on it.
        if let Some(index) = self.host_link {
            let _ = host.del_link(index).await;
        }
        if let Some(ip) = self.new_ip
            && let Ok(store) = Store::open(&c.data_dir, &c.network)
        {
            let _ = store.release(ip);
        }
    }
}

async fn add(a: &Args, c: &Conf) -> Result<CNIResult, Error> {
    let (cid, ifname) = ids(a)?;
    let netns_path = a
        .netns()
        .ok_or_else(|| env_err("CNI_NETNS", "missing"))?
        .clone();
    let ns = File::open(&netns_path)
        .map_err(|e| env_err("CNI_NETNS", format!("{}: {e}", netns_path.display())))?;
    let host = Netlink::current().map_err(netlink)?;
    let mut undo = Undo::default();
    let shape = shaping(a)?;
    let res = add_steps(c, &cid, &ifname, &ns, shape, &host, &mut undo).await;
    match res {
        Ok((ip, host_if, host_mac, mac)) => {
            let gw = c.gateway();
            Ok(CNIResult {
                interfaces: vec![
                    Interface {
                        name: host_if,
                        mac: fmt_mac(&host_mac),
                        mtu: Some(c.mtu),
                        sandbox: None,
                        socket_path: None,
                        pci_id: None,
                    },
                    Interface {
                        name: ifname,
                        mac: fmt_mac(&mac),
                        mtu: Some(c.mtu),
                        sandbox: Some(netns_path.display().to_string()),
                        socket_path: None,
                        pci_id: None,
                    },
                ],
                ips: vec![IpConfig {
                    interface: Some(1),
                    address: IpNet::V4(
                        Ipv4Net::new(ip, c.pod_cidr.prefix_len()).map_err(|e| fail("cidr", e))?,
                    ),
                    gateway: Some(IpAddr::V4(gw)),
                }],
                routes: vec![Route {
                    dst: "0.0.0.0/0".parse().map_err(|e| fail("route", e))?,
                    gw: Some(IpAddr::V4(gw)),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                }],
                dns: a.config().dns.clone(),
            })
        }
        Err(e) => {
            undo.run(c, &host).await;
            Err(e)
        }
    }
}

async fn add_steps(
    c: &Conf,
    cid: &str,
    ifname: &str,
    ns: &File,
    shape: config::Shaping,
    host: &Netlink,
    undo: &mut Undo,
) -> Result<(Ipv4Addr, String, [u8; 6], [u8; 6]), Error> {
    // The data plane first: if bpffs is unusable nothing else is created.
    // The handle holds the bpffs lock (shared), which would hold off an
    // agent's map resize for all of the netlink setup below: it is let go
    // here and the set reopened just before attaching (by then loaded and
    // pinned, so reopening is a few pin lookups).
    drop(PodDatapath::open(&c.bpffs).map_err(datapath)?);
    let ip = {
        let store = Store::open(&c.data_dir, &c.network).map_err(ipam)?;
        match store.find(cid, ifname).map_err(ipam)? {
            Some(ip) => ip,
            None => {
                let ip = store.allocate(c.pod_cidr, cid, ifname).map_err(ipam)?;
                undo.new_ip = Some(ip);
                ip
            }
        }
    };
    enable_forwarding()?;
    let host_if = host_ifname(&c.network, cid, ifname);
    let mac = pod_mac(ip);
    host.create_veth(&host_if, ifname, ns, mac, c.mtu)
        .await
        .map_err(|e| match e.errno() {
            Some(libc::EEXIST) => fail(
                "interface exists",
                format!("{ifname} in the pod namespace or {host_if} on the node already exists"),
            ),
            _ => netlink(e),
        })?;
    let hl = host
        .link(&host_if)
        .await
        .map_err(netlink)?
        .ok_or_else(|| fail("veth", format!("{host_if} vanished after creation")))?;
    undo.host_link = Some(hl.index);
    let gw = c.gateway();

    // Pod side: the address without a subnet route, the gateway on-link,
    // everything else through it (so pod-to-pod traffic meets the
    // programs on the host-side veth).
    let pod = Netlink::in_netns(ns).map_err(netlink)?;
    let pl = pod
        .link(ifname)
        .await
        .map_err(netlink)?
        .ok_or_else(|| fail("veth", format!("{ifname} missing in the pod namespace")))?;
    pod.add_addr(pl.index, ip, c.pod_cidr.prefix_len(), true)
        .await
        .map_err(netlink)?;
    pod.set_up(pl.index).await.map_err(netlink)?;
    // A second sluice interface in the same pod shares the gateway and
    // default route the first one installed.
    let gw_net = Ipv4Net::new(gw, 32).map_err(|e| fail("gateway", e))?;
    for (dst, via) in [(gw_net, None), (Ipv4Net::default(), Some(gw))] {
        match pod.add_route(dst, via, pl.index).await {
            Err(e) if e.errno() != Some(libc::EEXIST) => return Err(netlink(e)),
            _ => {}
        }
    }

    // Node side: the gateway address (answers the pod's ARP) and a route
    // to the pod.
    host.add_addr(hl.index, gw, 32, false)
        .await
        .map_err(netlink)?;
    host.set_up(hl.index).await.map_err(netlink)?;
    host.add_route(
        Ipv4Net::new(ip, 32).map_err(|e| fail("pod route", e))?,
        None,
        hl.index,
    )
    .await
    .map_err(netlink)?;

    if shape.egress {
        undo.linked = Some(host_if.clone());
    }
    let dp = undo
        .dp
        .insert(PodDatapath::open(&c.bpffs).map_err(datapath)?);
    dp.attach(&host_if, shape.egress).map_err(datapath)?;
    dp.endpoints()
        .set_endpoint(
            ip,
            Endpoint {
                ifindex: hl.index,
                flags: endpoint_flags(shape),
                mac,
                host_mac: hl.mac,
            },
        )
        .map_err(datapath)?;
    undo.endpoint = Some(ip);
    Ok((ip, host_if, hl.mac, mac))
}

fn endpoint_flags(shape: config::Shaping) -> u32 {
    if shape.ingress {
        sluice_common::endpoint::EP_F_VIA_QDISC
    } else {
        0
    }
}

/// Releases everything of one attachment; each part may already be gone.
///
/// The IPAM lock is not held across the veth deletion: deleting a device
/// waits out RCU grace periods after the kernel drops its own lock, so
/// parallel DELs overlap that wait unless we serialise them here. The
/// address is released last, under the lock, and only if (cid, ifname)
/// still holds it.
async fn release(c: &Conf, host: &Netlink, cid: &str, ifname: &str) -> Result<(), Error> {
    let ip = Store::open(&c.data_dir, &c.network)
        .and_then(|s| s.find(cid, ifname))
        .map_err(ipam)?;
    let host_if = host_ifname(&c.network, cid, ifname);
    if let Some(l) = host.link(&host_if).await.map_err(netlink)? {
        match host.del_link(l.index).await {
            Err(e) if e.errno() != Some(libc::ENODEV) => return Err(netlink(e)),
            _ => {}
        }
    }
    PodDatapath::unlink(&c.bpffs, &host_if).map_err(datapath)?;
    if let Some(ip) = ip {
        if let Some(mut eps) = Endpoints::open_existing(&c.bpffs).map_err(datapath)? {
            eps.remove_endpoint(ip).map_err(datapath)?;
        }
        let store = Store::open(&c.data_dir, &c.network).map_err(ipam)?;
        if store.find(cid, ifname).map_err(ipam)? == Some(ip) {
            store.release(ip).map_err(ipam)?;
        }
    }
    Ok(())
}

async fn del(a: &Args, c: &Conf) -> Result<(), Error> {
    let (cid, ifname) = ids(a)?;
    let host = Netlink::current().map_err(netlink)?;
    release(c, &host, &cid, &ifname).await
}

fn check_fail(what: impl std::fmt::Display) -> Error {
    fail("CHECK failed", what)
}

async fn check(a: &Args, c: &Conf) -> Result<(), Error> {
    let (cid, ifname) = ids(a)?;
    let prev = a.config().prev_result.as_ref().ok_or_else(|| {
        Error::Custom(
            7,
            "Invalid network config".into(),
            "prevResult: missing (CHECK needs the ADD result)".into(),
        )
    })?;
    let netns_path = a.netns().ok_or_else(|| env_err("CNI_NETNS", "missing"))?;
    let ns = File::open(netns_path)
        .map_err(|e| env_err("CNI_NETNS", format!("{}: {e}", netns_path.display())))?;
    let (idx, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            check_fail(format!(
                "prevResult lists no interface {ifname} in a sandbox"
            ))
        })?;
    let ipc = prev
        .ips
        .iter()
        .find(|i| i.interface == Some(idx as u32))
        .ok_or_else(|| check_fail(format!("prevResult lists no address for {ifname}")))?;
    let IpNet::V4(addr) = ipc.address else {
        return Err(check_fail(format!(
            "prevResult address {} is not IPv4",
            ipc.address
        )));
    };
    let ip = addr.addr();
    let store = Store::open(&c.data_dir, &c.network).map_err(ipam)?;
    match store.find(&cid, &ifname).map_err(ipam)? {
        Some(a) if a == ip => {}
        Some(other) => {
            return Err(check_fail(format!(
                "IPAM holds {other} for {cid}/{ifname}, prevResult says {ip}"
            )));
        }
        None => {
            return Err(check_fail(format!(
                "IPAM holds no address for {cid}/{ifname} (prevResult says {ip})"
            )));
        }
    }
    drop(store);
    let pod = Netlink::in_netns(&ns).map_err(netlink)?;
    let pl =
        pod.link(&ifname).await.map_err(netlink)?.ok_or_else(|| {
            check_fail(format!("interface {ifname} missing in the pod namespace"))
        })?;
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&fmt_mac(&pl.mac)) {
        return Err(check_fail(format!(
            "{ifname} has MAC {}, prevResult says {}",
            fmt_mac(&pl.mac),
            iface.mac
        )));
    }
    if !pl.up {
        return Err(check_fail(format!("{ifname} is down")));
    }
    let addrs = pod.addrs(pl.index).await.map_err(netlink)?;
    if !addrs.contains(&addr) {
        return Err(check_fail(format!(
            "{ifname} lacks address {addr} (has {addrs:?})"
        )));
    }
    let gw = c.gateway();
    let routes = pod.routes(None).await.map_err(netlink)?;
    if !routes.contains(&(Ipv4Net::default(), Some(gw))) {
        return Err(check_fail(format!(
            "pod namespace lacks the default route via {gw}"
        )));
    }
    let host_if = host_ifname(&c.network, &cid, &ifname);
    let host = Netlink::current().map_err(netlink)?;
    let hl = host
        .link(&host_if)
        .await
        .map_err(netlink)?
        .ok_or_else(|| check_fail(format!("host-side veth {host_if} missing")))?;
    if !hl.up {
        return Err(check_fail(format!("host-side veth {host_if} is down")));
    }
    let host_routes = host.routes(Some(hl.index)).await.map_err(netlink)?;
    if !host_routes.iter().any(|(d, _)| *d == Ipv4Net::from(ip)) {
        return Err(check_fail(format!(
            "node lacks the route {ip}/32 dev {host_if}"
        )));
    }
    // Shaped pods carry pinned tcx links instead of filters.
    let tcx = PodDatapath::tcx_linked(&c.bpffs, &host_if);
    if let Some(pin) = PodDatapath::tcx_pins_missing(&c.bpffs, &host_if)
        .first()
        .filter(|_| tcx)
    {
        return Err(check_fail(format!(
            "{host_if} is missing its tcx link pin {}",
            pin.display()
        )));
    }
    for (name, ty) in POD_PROGRAMS.into_iter().filter(|_| !tcx) {
        let egress = ty == aya::programs::TcAttachType::Egress;
        let names = host.bpf_filters(hl.index, egress).await.map_err(netlink)?;
        if !names.iter().any(|n| n == name) {
            return Err(check_fail(format!(
                "{name} not attached to {host_if} {} (tc bpf filters: {names:?})",
                if egress { "egress" } else { "ingress" }
            )));
        }
    }
    let dp = Endpoints::open(&c.bpffs).map_err(datapath)?;
    let want = Endpoint {
        ifindex: hl.index,
        flags: endpoint_flags(shaping(a)?),
        mac: pl.mac,
        host_mac: hl.mac,
    };
    match dp.endpoint(ip).map_err(datapath)? {
        Some(ep) if ep == want => Ok(()),
        Some(ep) => Err(check_fail(format!(
            "endpoint map entry for {ip} is ifindex {} mac {}, want ifindex {} mac {}",
            ep.ifindex,
            fmt_mac(&ep.mac),
            want.ifindex,
            fmt_mac(&want.mac)
        ))),
        None => Err(check_fail(format!("endpoint map has no entry for {ip}"))),
    }
}

async fn gc(a: &Args, c: &Conf) -> Result<(), Error> {
    let valid: HashSet<(String, String)> = a
        .config()
        .valid_attachments
        .iter()
        .flatten()
        .map(|v| (v.container_id.clone(), v.ifname.clone()))
        .collect();
    let host = Netlink::current().map_err(netlink)?;
    let allocs = Store::open(&c.data_dir, &c.network)
        .and_then(|s| s.list())
        .map_err(ipam)?;
    for al in allocs {
        if valid.contains(&(al.container_id.clone(), al.ifname.clone())) {
            continue;
        }
        release(c, &host, &al.container_id, &al.ifname).await?;
    }
    // Endpoint entries of this pod CIDR that no allocation backs (e.g. an
    // ADD killed between map write and rollback). Listed afresh under the
    // lock: an ADD running meanwhile allocates before it writes its entry.
    if let Some(mut eps) = Endpoints::open_existing(&c.bpffs).map_err(datapath)? {
        let store = Store::open(&c.data_dir, &c.network).map_err(ipam)?;
        let held: HashSet<Ipv4Addr> = store.list().map_err(ipam)?.iter().map(|a| a.ip).collect();
        for (ip, _) in eps.list() {
            if c.pod_cidr.contains(&ip) && !held.contains(&ip) {
                eps.remove_endpoint(ip).map_err(datapath)?;
            }
        }
    }
    Ok(())
}

/// Ready when the IPAM store can be locked and written and the bpffs
/// directory is (or can be created on) a bpf filesystem.
fn status(c: &Conf) -> Result<(), Error> {
    let unavailable = |d: String| Error::Custom(50, "Plugin not available".into(), d);
    Store::open(&c.data_dir, &c.network).map_err(|e| unavailable(e.to_string()))?;
    let mut p = c.bpffs.as_path();
    while !p.exists() {
        p = p
            .parent()
            .ok_or_else(|| unavailable(format!("bpffs {}: no such path", c.bpffs.display())))?;
    }
    match sluice_datapath::node::fs_magic(p) {
        Ok(sluice_datapath::node::BPF_FS_MAGIC) => Ok(()),
        Ok(_) => Err(unavailable(format!(
            "bpffs {}: {} is not on a bpf filesystem",
            c.bpffs.display(),
            p.display()
        ))),
        Err(e) => Err(unavailable(format!("bpffs {}: {e}", c.bpffs.display()))),
    }
}

impl Cni for Sluice {
    fn add(&self, a: Args) -> Result<CNIResult, Error> {
        let c = conf(&a)?;
        runtime()?.block_on(add(&a, &c))
    }
    fn del(&self, a: Args) -> Result<(), Error> {
        let c = conf(&a)?;
        runtime()?.block_on(del(&a, &c))
    }
    fn check(&self, a: Args) -> Result<(), Error> {
        let c = conf(&a)?;
        runtime()?.block_on(check(&a, &c))
    }
    fn status(&self, a: Args) -> Result<(), Error> {
        status(&conf(&a)?)
    }
    fn gc(&self, a: Args) -> Result<(), Error> {
        let c = conf(&a)?;
        runtime()?.block_on(gc(&a, &c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_short_and_distinct() {
        let a = host_ifname("net", "c1", "eth0");
        assert_eq!(a, host_ifname("net", "c1", "eth0"));
        assert_eq!(a.len(), 15);
        assert_ne!(a, host_ifname("net", "c1", "eth1"));
        assert_ne!(a, host_ifname("net", "c2", "eth0"));
    }
}
