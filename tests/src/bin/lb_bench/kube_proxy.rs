//! The baselines: service rules the way kube-proxy writes them.
//!
//! iptables mode: one `iptables-restore` payload for the nat table with
//! kube-proxy's chain structure (pkg/proxy/iptables/proxier.go): a
//! KUBE-SERVICES dispatch rule per service port (a linear chain, evaluated
//! for the first packet of every connection), a KUBE-SVC-* chain per
//! service port picking an endpoint with `statistic --mode random
//! --probability 1/(n-i)`, and a KUBE-SEP-* chain per endpoint doing the
//! DNAT, plus the masquerade plumbing (KUBE-MARK-MASQ, KUBE-POSTROUTING)
//! and the trailing KUBE-NODEPORTS jump. One deviation, so the socket LB
//! can run alongside in paired rounds: the PREROUTING jump into
//! KUBE-SERVICES only takes packets from the iptables client's veth.
//! kube-proxy's is unconditional, so every new connection on its node walks
//! the chain; a socket-LB connection already carries a pod address and, on
//! a sluice node (no kube-proxy), walks nothing. IPVS mode: an `ipvsadm -R`
//! payload with one virtual service per service port and a masq real server
//! per endpoint, the VIPs bound to a dummy interface (kube-ipvs0).
use std::{
    fmt::Write as _,
    hash::{Hash, Hasher},
};

use super::Svc;

/// kube-proxy names chains by a hash of the service port (and endpoint).
fn chain(prefix: &str, parts: impl Hash) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{prefix}{:016X}", h.finish())
}

/// The nat table payload for `iptables-restore --noflush`; `client_if` is
/// the node-side veth of the pod whose connections iptables balances.
pub fn iptables_nat(services: &[Svc], cluster_cidr: &str, client_if: &str) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A PREROUTING -i {client_if} -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    rules.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    for s in services {
        let name = format!("default/{}:http", s.name);
        let svc_chain = chain("KUBE-SVC-", (&name, "tcp"));
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {} -j {svc_chain}",
            s.vip, s.port
        );
        let _ = writeln!(
            rules,
            "-A {svc_chain} ! -s {cluster_cidr} -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
            s.vip, s.port
        );
        let n = s.endpoints.len();
        for (i, (ip, port)) in s.endpoints.iter().enumerate() {
            let sep = chain("KUBE-SEP-", (&name, "tcp", ip, port));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if i + 1 < n {
                let p = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{name} -> {ip}:{port}\" -m statistic --mode random --probability {p:.11} -j {sep}"
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{name} -> {ip}:{port}\" -j {sep}"
                );
            }
            let _ = writeln!(
                rules,
                "-A {sep} -s {ip}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ip}:{port}"
            );
        }
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    format!("*nat\n{chains}{rules}COMMIT\n")
}

/// Rules in a payload (for the report).
pub fn rule_count(payload: &str) -> usize {
    payload.lines().filter(|l| l.starts_with("-A ")).count()
}

/// The `ipvsadm -R` payload: round robin, masquerading (NAT) forwarding,
/// as kube-proxy's IPVS mode configures by default.
pub fn ipvsadm_restore(services: &[Svc]) -> String {
    let mut out = String::new();
    for s in services {
        let _ = writeln!(out, "-A -t {}:{} -s rr", s.vip, s.port);
        for (ip, port) in &s.endpoints {
            let _ = writeln!(out, "-a -t {}:{} -r {ip}:{port} -m -w 1", s.vip, s.port);
        }
    }
    out
}

/// `ip -batch` lines binding every VIP to kube-proxy's dummy interface, so
/// IPVS sees the traffic as local (LOCAL_IN).
pub fn ipvs_vip_batch(dev: &str, services: &[Svc]) -> String {
    let mut out = String::new();
    for s in services {
        let _ = writeln!(out, "addr add {}/32 dev {dev}", s.vip);
    }
    out
}
