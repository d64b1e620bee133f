//! `sluice-agent bpf lb list`: what the kernel is load balancing with, read
//! from the pinned maps alone (works while the agent is down).
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use serde::Serialize;
use sluice_common::lb::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, Backend, LbCounter, SVC_F_AFFINITY, SVC_F_EXTERNAL,
    SVC_F_NODEPORT, ServiceInfo,
};
use sluice_datapath::{DatapathError, LbMaps};

use super::model::proto_name;

#[derive(Serialize)]
pub struct FrontendRow {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: &'static str,
    /// ClusterIP, NodePort or External (ExternalIP / LoadBalancer ingress).
    pub kind: &'static str,
    pub affinity_timeout_s: Option<u32>,
}

#[derive(Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    /// Maglev slots this backend owns (0: not receiving new connections).
    pub slots: u32,
    pub terminating: bool,
    pub local: bool,
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct ServiceRow {
    pub name: String,
    pub id: u32,
    pub maglev_table_size: u32,
    pub frontends: Vec<FrontendRow>,
    pub backends: Vec<BackendRow>,
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
}

fn sum(stats: &aya::maps::PerCpuArray<aya::maps::MapData, LbCounter>, id: u32) -> LbCounter {
    stats
        .get(&id, 0)
        .map(|v| LbCounter::sum(v.iter()))
        .unwrap_or_default()
}

/// Per service id: name, backends in its table, counters. Reads only the
/// info and stats maps (no Maglev table), so a metrics scrape stays cheap
/// with many services.
pub fn service_counters(
    maps: &LbMaps,
) -> Result<Vec<(u32, ServiceInfo, LbCounter)>, DatapathError> {
    maps.svc_info
        .iter()
        .map(|item| {
            let (id, info) =
                item.map_err(DatapathError::map(sluice_common::map_names::LB4_SVC_INFO))?;
            Ok((id, info, sum(&maps.svc_stats, id)))
        })
        .collect()
}

pub fn collect(maps: &LbMaps) -> Result<Vec<ServiceRow>, DatapathError> {
    use sluice_common::map_names as n;
    let backends: HashMap<u32, Backend> = maps
        .backends
        .iter()
        .collect::<Result<_, _>>()
        .map_err(DatapathError::map(n::LB4_BACKENDS))?;
    let mut rows: BTreeMap<u32, ServiceRow> = BTreeMap::new();
    for (id, info, c) in service_counters(maps)? {
        let mut slots: BTreeMap<u32, u32> = BTreeMap::new();
        for b in maps.table(id)?.unwrap_or_default() {
            *slots.entry(b).or_default() += 1;
        }
        let backend_rows = slots
            .iter()
            .map(|(bid, n)| {
                let b = backends.get(bid).copied().unwrap_or_default();
                let bc = sum(&maps.backend_stats, *bid);
                BackendRow {
                    id: *bid,
                    address: b.octets().into(),
                    port: b.host_port(),
                    slots: *n,
                    terminating: b.flags & BACKEND_F_TERMINATING != 0,
                    local: b.flags & BACKEND_F_LOCAL != 0,
                    conns: bc.conns,
                    packets: bc.packets,
                    bytes: bc.bytes,
                }
            })
            .collect();
        rows.insert(
            id,
            ServiceRow {
                name: info.name_str().to_string(),
                id,
                maglev_table_size: info.table_size,
                frontends: Vec::new(),
                backends: backend_rows,
                conns: c.conns,
                packets: c.packets,
                bytes: c.bytes,
            },
        );
    }
    for item in maps.services.iter() {
        let (f, s) = item.map_err(DatapathError::map(n::LB4_SERVICES))?;
        if let Some(row) = rows.get_mut(&s.svc_id) {
            row.frontends.push(FrontendRow {
                address: f.octets().into(),
                port: f.host_port(),
                protocol: proto_name(f.proto),
                kind: if s.flags & SVC_F_NODEPORT != 0 {
                    "NodePort"
                } else if s.flags & SVC_F_EXTERNAL != 0 {
                    "External"
                } else {
                    "ClusterIP"
                },
                affinity_timeout_s: (s.flags & SVC_F_AFFINITY != 0).then_some(s.affinity_timeout_s),
            });
        }
    }
    let mut out: Vec<ServiceRow> = rows.into_values().collect();
    for r in &mut out {
        r.frontends.sort_by_key(|f| (f.kind, f.address, f.port));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Human-readable listing: one block per service.
pub fn render_table(rows: &[ServiceRow]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if rows.is_empty() {
        s.push_str("no services programmed\n");
    }
    for r in rows {
        let _ = writeln!(
            s,
            "{}  (id {}, maglev {}, {} backends, {} conns)",
            r.name,
            r.id,
            r.maglev_table_size,
            r.backends.len(),
            r.conns
        );
        for f in &r.frontends {
            let aff = f
                .affinity_timeout_s
                .map(|t| format!("  affinity ClientIP {t}s"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  frontend  {}:{}/{}  {}{aff}",
                f.address, f.port, f.protocol, f.kind
            );
        }
        if r.backends.is_empty() {
            let _ = writeln!(s, "  (no backends: connections are rejected)");
        }
        for b in &r.backends {
            let mut state = String::new();
            if b.terminating {
                state.push_str("  terminating");
            }
            if b.local {
                state.push_str("  local");
            }
            let _ = writeln!(
                s,
                "  backend   {}:{}  id {}  slots {}  conns {}{state}",
                b.address, b.port, b.id, b.slots, b.conns
            );
        }
    }
    s
}
