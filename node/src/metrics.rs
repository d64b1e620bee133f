//! Prometheus `/metrics` for the agent (`--metrics-addr`).
//!
//! Reconcile-side metrics are updated by the reconcile loop. Kernel-side
//! counters (per-service connections/packets/bytes) are read from the
//! pinned per-CPU maps at scrape time, so a scrape always shows what the
//! data plane counted, including while the agent was down.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use sluice_datapath::LbMaps;

use crate::lb::reconcile::ApplyStats;

pub struct Metrics {
    registry: Registry,
    /// Change seen (file event / watch event) -> maps updated.
    pub programming_latency: Histogram,
    pub reconcile_errors: IntCounter,
    pub object_errors: IntGauge,
    services: IntGauge,
    backends: IntGauge,
    frontends: IntGauge,
    map_fill: prometheus::GaugeVec,
    svc_conns: IntCounterVec,
    svc_packets: IntCounterVec,
    svc_bytes: IntCounterVec,
    svc_backends: IntGaugeVec,
    /// 1 while some pod veth may still run programs on LB maps replaced by
    /// a resize (the switch is being retried), else 0.
    pub pod_programs_stale: IntGauge,
    /// Capacities the fill ratios divide by, read once: they change only
    /// when an agent restarts with other `--bpf-lb-max-*` flags.
    caps: sluice_datapath::LbMapSizes,
    /// Read-only handle for scrape-time counters; the lock also serialises
    /// concurrent scrapes (counter vecs are reset and refilled).
    maps: Mutex<LbMaps>,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> anyhow::Result<T> {
    r.register(Box::new(c.clone()))
        .context("registering a metric")?;
    Ok(c)
}

impl Metrics {
    pub fn new(maps: LbMaps) -> anyhow::Result<Self> {
        let caps = maps.capacities()?;
        let r = Registry::new_custom(Some("sluice".into()), None)?;
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        Ok(Self {
            programming_latency: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "lb_programming_latency_seconds",
                        "Time from a Service/EndpointSlice change being seen to the LB maps being updated",
                    )
                    .buckets(buckets),
                )?,
            )?,
            reconcile_errors: reg(
                &r,
                IntCounter::new("lb_reconcile_errors_total", format!(
                    "Failed applies of the service state to the LB maps (each retried after {} s, or sooner by a newer source state)",
                    crate::run::RETRY.as_secs()
                ))?,
            )?,
            object_errors: reg(
                &r,
                IntGauge::new("lb_rejected_objects", "Services/EndpointSlices currently skipped as invalid")?,
            )?,
            services: reg(&r, IntGauge::new("lb_services", "Programmed service ids (backend sets)")?)?,
            backends: reg(&r, IntGauge::new("lb_backends", "Programmed backends")?)?,
            frontends: reg(&r, IntGauge::new("lb_frontends", "Programmed frontends")?)?,
            map_fill: reg(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new("lb_map_fill_ratio", "Entries / capacity of the LB maps"),
                    &["map"],
                )?,
            )?,
            svc_conns: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("lb_service_connections_total", "Connections translated per service (socket LB)"),
                    &["service"],
                )?,
            )?,
            svc_packets: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("lb_service_packets_total", "Packets load-balanced per service (tc path)"),
                    &["service"],
                )?,
            )?,
            svc_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("lb_service_bytes_total", "Bytes load-balanced per service (tc path)"),
                    &["service"],
                )?,
            )?,
            svc_backends: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("lb_service_backends", "Backends receiving new connections per service"),
                    &["service"],
                )?,
            )?,
            pod_programs_stale: reg(
                &r,
                IntGauge::new(
                    "pod_programs_stale",
                    "1 while pod veths may run programs on LB maps a resize replaced (switch being retried)",
                )?,
            )?,
            registry: r,
            caps,
            maps: Mutex::new(maps),
        })
    }

    /// Records the outcome of one successful apply.
    pub fn applied(&self, st: &ApplyStats) {
        self.services.set(st.services as i64);
        self.backends.set(st.backends as i64);
        self.frontends.set(st.frontends as i64);
        for (map, n, cap) in [
            (
                sluice_common::map_names::LB4_SERVICES,
                st.frontends,
                self.caps.frontends,
            ),
            (
                sluice_common::map_names::LB4_BACKENDS,
                st.backends,
                self.caps.backends,
            ),
            (
                sluice_common::map_names::LB4_MAGLEV,
                st.services,
                self.caps.services,
            ),
        ] {
            self.map_fill
                .with_label_values(&[map])
                .set(n as f64 / f64::from(cap));
        }
    }

    /// Text exposition, with per-service counters refreshed from the maps.
    pub fn render(&self) -> anyhow::Result<String> {
        {
            let maps = self
                .maps
                .lock()
                .map_err(|_| anyhow::anyhow!("metrics lock poisoned"))?;
            let rows = crate::lb::list::service_counters(&maps)?;
            self.svc_conns.reset();
            self.svc_packets.reset();
            self.svc_bytes.reset();
            self.svc_backends.reset();
            for (_, info, c) in rows {
                let l = [info.name_str()];
                self.svc_conns.with_label_values(&l).inc_by(c.conns);
                self.svc_packets.with_label_values(&l).inc_by(c.packets);
                self.svc_bytes.with_label_values(&l).inc_by(c.bytes);
                self.svc_backends
                    .with_label_values(&l)
                    .set(i64::from(info.table_backends));
            }
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8(buf)?)
    }
}

/// Binds `addr` (so a taken port is a startup error, not a silent gap) and
/// serves `/metrics` in the background. Returns the bound address.
pub async fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    use axum::{http::StatusCode, routing::get};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}: bind"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                match tokio::task::spawn_blocking(move || m.render()).await {
                    Ok(Ok(body)) => (StatusCode::OK, body),
                    Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    Ok(bound)
}
