//! The tc path's conntrack from userspace: garbage collection of idle
//! entries (the LRU only evicts under pressure) and `bpf ct list`.
use std::net::Ipv4Addr;

use serde::Serialize;
use sluice_common::lb::{CT_DIR_FWD, CT_F_CLOSING, CtKey, CtValue, PROTO_TCP};
use sluice_datapath::{DatapathError, LbMaps};

use super::model::proto_name;

/// Idle timeouts (Cilium's defaults for established TCP, closing TCP and
/// UDP). A TCP flow counts as closing once the tc path saw a FIN or RST.
pub const TCP_TIMEOUT_S: u64 = 21_600;
pub const TCP_CLOSING_TIMEOUT_S: u64 = 10;
pub const UDP_TIMEOUT_S: u64 = 60;

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn expired(k: &CtKey, v: &CtValue, now: u64) -> bool {
    let timeout = if k.proto != PROTO_TCP {
        UDP_TIMEOUT_S
    } else if v.flags & CT_F_CLOSING != 0 {
        TCP_CLOSING_TIMEOUT_S
    } else {
        TCP_TIMEOUT_S
    };
    now.saturating_sub(v.last_seen_ns) > timeout * 1_000_000_000
}

fn err(source: aya::maps::MapError) -> DatapathError {
    DatapathError::map(sluice_common::map_names::CT4)(source)
}

/// Deletes idle entries; returns how many.
pub fn gc(maps: &mut LbMaps) -> Result<usize, DatapathError> {
    let now = monotonic_ns();
    let mut dead = Vec::new();
    for item in maps.ct.iter() {
        let (k, v) = item.map_err(err)?;
        if expired(&k, &v, now) {
            dead.push(k);
        }
    }
    for k in &dead {
        super::reconcile::absent_ok(maps.ct.remove(k)).map_err(err)?;
    }
    Ok(dead.len())
}

#[derive(Serialize)]
pub struct CtRow {
    pub direction: &'static str,
    pub protocol: &'static str,
    pub src: String,
    pub dst: String,
    /// Forward: the backend the destination is rewritten to. Reverse: the
    /// frontend the source is rewritten back to.
    pub nat: String,
    pub service_id: u32,
    pub backend_id: u32,
    pub idle_s: u64,
    /// A FIN or RST was seen (TCP): the short timeout applies.
    pub closing: bool,
}

fn ep(addr: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(addr.to_ne_bytes()),
        u16::from_be(port)
    )
}

pub fn list(maps: &LbMaps) -> Result<Vec<CtRow>, DatapathError> {
    let now = monotonic_ns();
    let mut rows = Vec::new();
    for item in maps.ct.iter() {
        let (k, v) = item.map_err(err)?;
        rows.push(CtRow {
            direction: if k.dir == CT_DIR_FWD { "fwd" } else { "rev" },
            protocol: proto_name(k.proto),
            src: ep(k.saddr, k.sport),
            dst: ep(k.daddr, k.dport),
            nat: ep(v.nat_addr, v.nat_port),
            service_id: v.svc_id,
            backend_id: v.backend_id,
            idle_s: now.saturating_sub(v.last_seen_ns) / 1_000_000_000,
            closing: v.flags & CT_F_CLOSING != 0,
        });
    }
    rows.sort_by(|a, b| (a.direction, &a.src, &a.dst).cmp(&(b.direction, &b.src, &b.dst)));
    Ok(rows)
}

pub fn render_table(rows: &[CtRow]) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "{:<4} {:<5} {:<22} {:<22} {:<22} {:>5} {:>7} {:>7} STATE\n",
        "DIR", "PROTO", "SRC", "DST", "NAT", "SVC", "BACKEND", "IDLE_S"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<4} {:<5} {:<22} {:<22} {:<22} {:>5} {:>7} {:>7} {}",
            r.direction,
            r.protocol,
            r.src,
            r.dst,
            r.nat,
            r.service_id,
            r.backend_id,
            r.idle_s,
            if r.closing { "closing" } else { "open" }
        );
    }
    s
}
