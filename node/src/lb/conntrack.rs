//! The tc path's conntrack from userspace: garbage collection of idle
//! entries (the LRU only evicts under pressure) and `bpf ct list`.
use std::{net::Ipv4Addr, time::Duration};

use serde::Serialize;
use sluice_common::lb::{CT_DIR_FWD, CT_F_CLOSING, CtKey, CtValue, PROTO_TCP};
use sluice_datapath::{DatapathError, LbMaps};

use super::model::proto_name;

/// Idle times after which the GC removes a flow's entries (flags
/// `--bpf-ct-timeout-regular-{tcp,tcp-fin,any}`; the defaults are Cilium's).
/// A TCP flow counts as closing once the tc path saw a FIN or RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(21_600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

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

fn expired(k: &CtKey, v: &CtValue, now: u64, t: &Timeouts) -> bool {
    let timeout = if k.proto != PROTO_TCP {
        t.udp
    } else if v.flags & CT_F_CLOSING != 0 {
        t.tcp_closing
    } else {
        t.tcp
    };
    u128::from(now.saturating_sub(v.last_seen_ns)) > timeout.as_nanos()
}

fn err(source: aya::maps::MapError) -> DatapathError {
    DatapathError::map(sluice_common::map_names::CT4)(source)
}

/// Deletes idle entries; returns how many.
pub fn gc(maps: &mut LbMaps, t: &Timeouts) -> Result<usize, DatapathError> {
    let now = monotonic_ns();
    let mut dead = Vec::new();
    for item in maps.ct.iter() {
        let (k, v) = item.map_err(err)?;
        if expired(&k, &v, now, t) {
            dead.push(k);
        }
    }
    let mut removed = 0;
    for k in &dead {
        let current = match maps.ct.get(k, 0) {
            Ok(v) => Some(v),
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(e) => return Err(err(e)),
        };
        if still_expired(k, current, now, t) {
            super::reconcile::absent_ok(maps.ct.remove(k)).map_err(err)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether entry `k`, seen expired by the scan, may be deleted now that
/// it reads `current`.
///
/// The scan of a busy map takes long enough (tens of ms) for a client to
/// reuse an expired flow's tuple: the datapath then re-records the entry
/// with a fresh timestamp, and deleting it would strip a live connection
/// of its NAT (the bench's CRR saw "connected, no greeting" about once
/// per 10^5 connections). Reading the entry again just before deleting it
/// shrinks that window from the whole scan to one syscall.
fn still_expired(k: &CtKey, current: Option<CtValue>, now: u64, t: &Timeouts) -> bool {
    current.is_some_and(|v| expired(k, &v, now, t))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(proto: u8) -> CtKey {
        CtKey {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto,
            dir: CT_DIR_FWD,
            pad: 0,
        }
    }

    fn value(last_seen_s: u64, flags: u16) -> CtValue {
        CtValue {
            nat_addr: 5,
            nat_port: 6,
            flags,
            backend_id: 7,
            svc_id: 8,
            last_seen_ns: last_seen_s * 1_000_000_000,
        }
    }

    #[test]
    fn an_entry_refreshed_after_the_scan_is_kept() {
        let now = 1_000 * 1_000_000_000;
        let k = key(PROTO_TCP);
        let t = &Timeouts::default();
        // Seen by the scan: closing and idle for 20 s.
        assert!(expired(&k, &value(980, CT_F_CLOSING), now, t));
        // Re-recorded by a new flow on the same tuple before the delete.
        assert!(!still_expired(&k, Some(value(999, 0)), now, t));
        // Refreshed only (still closing, but touched a second ago).
        assert!(!still_expired(&k, Some(value(999, CT_F_CLOSING)), now, t));
        // Unchanged: deleted; already gone: nothing to delete.
        assert!(still_expired(&k, Some(value(980, CT_F_CLOSING)), now, t));
        assert!(!still_expired(&k, None, now, t));
    }

    #[test]
    fn each_kind_of_flow_expires_after_its_own_timeout() {
        let now = 1_000 * 1_000_000_000;
        let t = &Timeouts {
            tcp: Duration::from_secs(30),
            tcp_closing: Duration::from_secs(5),
            udp: Duration::from_secs(10),
        };
        let (tcp, udp) = (key(PROTO_TCP), key(sluice_common::lb::PROTO_UDP));
        assert!(!expired(&tcp, &value(980, 0), now, t));
        assert!(expired(&tcp, &value(969, 0), now, t));
        assert!(expired(&tcp, &value(994, CT_F_CLOSING), now, t));
        assert!(!expired(&tcp, &value(996, CT_F_CLOSING), now, t));
        assert!(expired(&udp, &value(989, 0), now, t));
        assert!(!expired(&udp, &value(991, 0), now, t));
    }
}
