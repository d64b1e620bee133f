//! Prometheus `/metrics` for sluice-server, named like upstream's so
//! existing dashboards read them: requests and their latency by verb,
//! resource, subresource and code; open watches by resource; and the
//! latency of every store operation (through [`MeteredStore`], a `Store`
//! that times the one it wraps).
use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use sluice_store::{KeyValue, ListRequest, ListResult, Store, StoreError, WatchStream};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    watchers: IntGaugeVec,
    store_latency: HistogramVec,
    unparsable: IntGauge,
}

/// Keeps a watch counted while it is open.
pub struct WatchGuard {
    gauge: prometheus::IntGauge,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are constants and unique: registering cannot fail.
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!("registering a metric: {e}");
    }
    c
}

impl Metrics {
    pub fn new() -> prometheus::Result<Arc<Self>> {
        let r = Registry::new();
        let request_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        Ok(Arc::new(Self {
            requests: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "apiserver_request_total",
                        "Requests by verb, resource, subresource and HTTP code",
                    ),
                    &["verb", "resource", "subresource", "code"],
                )?,
            ),
            latency: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "apiserver_request_duration_seconds",
                        "Request latency (for WATCH: until the stream starts)",
                    )
                    .buckets(request_buckets.clone()),
                    &["verb", "resource", "subresource"],
                )?,
            ),
            watchers: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new("apiserver_registered_watchers", "Open watches by resource"),
                    &["resource"],
                )?,
            ),
            store_latency: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "sluice_store_request_duration_seconds",
                        "State store operation latency by operation and outcome",
                    )
                    .buckets(request_buckets),
                    &["operation", "result"],
                )?,
            ),
            unparsable: registered(
                &r,
                IntGauge::new(
                    "sluice_alloc_repair_unparsable_objects",
                    "Stored Services the last allocation repair pass could not read (their allocations are kept)",
                )?,
            ),
            registry: r,
        }))
    }

    /// After an allocation repair pass.
    pub fn repair_pass(&self, report: &crate::alloc::RepairReport) {
        self.unparsable
            .set(i64::try_from(report.unparsable).unwrap_or(i64::MAX));
    }

    pub fn observe(&self, req: &RequestLabels, code: u16, started: Instant) {
        let code = code.to_string();
        self.requests
            .with_label_values(&[req.verb, &req.resource, &req.subresource, &code])
            .inc();
        self.latency
            .with_label_values(&[req.verb, &req.resource, &req.subresource])
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn watch_opened(&self, resource: &str) -> WatchGuard {
        let gauge = self.watchers.with_label_values(&[resource]);
        gauge.inc();
        WatchGuard { gauge }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

/// What a request is, for its labels: upstream's verbs (LIST and WATCH
/// are GETs of a collection, DELETECOLLECTION a DELETE of one).
pub struct RequestLabels {
    pub verb: &'static str,
    pub resource: String,
    pub subresource: String,
}

impl RequestLabels {
    pub fn of(method: &axum::http::Method, path: &str, watch: bool) -> Self {
        use axum::http::Method;
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let rest: &[&str] = match segs.as_slice() {
            ["api", "v1", rest @ ..] => rest,
            ["apis", _, _, rest @ ..] => rest,
            _ => &[],
        };
        let (resource, named, sub) = match rest {
            ["namespaces", _, plural, rest @ ..] if !matches!(*plural, "status" | "finalize") => {
                (*plural, !rest.is_empty(), rest.get(1).copied())
            }
            [plural, rest @ ..] => (*plural, !rest.is_empty(), rest.get(1).copied()),
            [] => ("", false, None),
        };
        let verb = match (method.clone(), named) {
            (Method::GET, false) if watch => "WATCH",
            (Method::GET, false) => "LIST",
            (Method::GET, true) => "GET",
            (Method::POST, _) => "POST",
            (Method::PUT, _) => "PUT",
            (Method::PATCH, _) => "PATCH",
            (Method::DELETE, false) => "DELETECOLLECTION",
            (Method::DELETE, true) => "DELETE",
            _ => "OTHER",
        };
        // Only served names become label values: a client cannot mint
        // new time series with made-up paths.
        let known = |n: &str| crate::registry::RESOURCES.iter().any(|r| r.plural == n);
        let sub = sub.unwrap_or_default();
        Self {
            verb,
            resource: if known(resource) { resource } else { "unknown" }.to_string(),
            subresource: if sub.is_empty() || crate::registry::Sub::parse(sub).is_some() {
                sub
            } else {
                "unknown"
            }
            .to_string(),
        }
    }
}

/// A store that records how long each operation of the one it wraps took.
pub struct MeteredStore {
    pub inner: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

impl MeteredStore {
    fn record<T>(&self, op: &str, started: Instant, r: &Result<T, StoreError>) {
        let result = match r {
            Ok(_) => "ok",
            Err(StoreError::NotFound(_) | StoreError::AlreadyExists(_)) => "absent_or_exists",
            Err(StoreError::Conflict { .. }) => "conflict",
            Err(_) => "error",
        };
        self.metrics
            .store_latency
            .with_label_values(&[op, result])
            .observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn current_revision(&self) -> Result<i64, StoreError> {
        let t = Instant::now();
        let r = self.inner.current_revision().await;
        self.record("current_revision", t, &r);
        r
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.record("get", t, &r);
        r
    }

    async fn list(&self, req: ListRequest<'_>) -> Result<ListResult, StoreError> {
        let t = Instant::now();
        let r = self.inner.list(req).await;
        self.record("list", t, &r);
        r
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let t = Instant::now();
        let r = self.inner.create(key, value).await;
        self.record("create", t, &r);
        r
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        let t = Instant::now();
        let r = self.inner.update(key, value, expected).await;
        self.record("update", t, &r);
        r
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError> {
        let t = Instant::now();
        let r = self.inner.delete(key, expected).await;
        self.record("delete", t, &r);
        r
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream, StoreError> {
        let t = Instant::now();
        let r = self.inner.watch(prefix, after).await;
        self.record("watch", t, &r);
        r
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.compact(revision).await;
        self.record("compact", t, &r);
        r
    }

    async fn compacted_revision(&self) -> Result<i64, StoreError> {
        let t = Instant::now();
        let r = self.inner.compacted_revision().await;
        self.record("compacted_revision", t, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    #[test]
    fn requests_are_labelled_like_upstream() {
        let l = |m: Method, p: &str, w: bool| {
            let r = RequestLabels::of(&m, p, w);
            (r.verb, r.resource, r.subresource)
        };
        assert_eq!(
            l(Method::GET, "/api/v1/namespaces/a/pods", false),
            ("LIST", "pods".into(), "".into())
        );
        assert_eq!(
            l(Method::GET, "/api/v1/pods", true),
            ("WATCH", "pods".into(), "".into())
        );
        assert_eq!(
            l(
                Method::PATCH,
                "/apis/apps/v1/namespaces/a/deployments/web/scale",
                false
            ),
            ("PATCH", "deployments".into(), "scale".into())
        );
        assert_eq!(
            l(Method::GET, "/api/v1/namespaces/a", false),
            ("GET", "namespaces".into(), "".into())
        );
        assert_eq!(
            l(Method::PUT, "/api/v1/namespaces/a/status", false),
            ("PUT", "namespaces".into(), "status".into())
        );
        assert_eq!(
            l(Method::DELETE, "/api/v1/namespaces/a/configmaps", false),
            ("DELETECOLLECTION", "configmaps".into(), "".into())
        );
    }
}
