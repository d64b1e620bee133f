//! `--kubeconfig FILE`: Services and EndpointSlices from an API server
//! (sluice-server or any Kubernetes), through kube-rs watchers feeding
//! reflector stores. After every change (a burst coalesced), the stores'
//! whole contents go out as one snapshot, so the reconciler downstream is
//! the same level-triggered one the manifests source feeds.
//!
//! Nothing is published until both stores have completed their first
//! list: an agent restarted against the API must not withdraw services
//! because one watcher is slower than the other. When the API server goes
//! away, the watchers back off and re-list; meanwhile the last programmed
//! state keeps forwarding.
use std::{path::Path, sync::Arc, time::Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::mpsc;

use super::{
    model::{Snapshot, Sourced},
    source::{DEBOUNCE, ServiceSource, Update},
};

pub struct KubeSource {
    pub client: Client,
    /// Names the API server in object errors ("Service ns/a from <origin>").
    pub origin: Arc<str>,
}

impl KubeSource {
    /// A client from a kubeconfig file; the error names the file.
    pub async fn from_kubeconfig(path: &Path) -> anyhow::Result<Self> {
        let kc = Kubeconfig::read_from(path)
            .with_context(|| format!("--kubeconfig {}", path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("--kubeconfig {}", path.display()))?;
        let origin: Arc<str> = config.cluster_url.to_string().into();
        let client = Client::try_from(config).context("building the API client")?;
        Ok(Self { client, origin })
    }
}

/// Which watcher an event came from.
enum Seen {
    Services(bool),
    Slices(bool),
}

fn changed<K>(ev: &watcher::Event<K>) -> bool {
    // Init/InitApply are the middle of a (re-)list: the store swaps in the
    // new state at InitDone, so that is when to publish.
    matches!(
        ev,
        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
    )
}

/// A backed-off watcher of every `K` feeding `writer`, its events told
/// apart by `seen`.
fn follow<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
    seen: fn(bool) -> Seen,
    what: &'static str,
) -> impl futures::Stream<Item = Result<Seen, String>> + Send
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .map(move |ev| match ev {
        Ok(ev) => Ok(seen(changed(&ev))),
        Err(e) => Err(format!("watching {what}: {e}")),
    })
}

impl ServiceSource for KubeSource {
    async fn run(self, tx: mpsc::Sender<Update>) -> anyhow::Result<()> {
        let (svc_store, svc_writer) = reflector::store::<Service>();
        let (eps_store, eps_writer) = reflector::store::<EndpointSlice>();
        let services = follow(&self.client, svc_writer, Seen::Services, "Services");
        let slices = follow(&self.client, eps_writer, Seen::Slices, "EndpointSlices");
        let mut events = std::pin::pin!(futures::stream::select(services, slices));
        let (mut svc_ready, mut eps_ready) = (false, false);
        let mut pending: Option<Instant> = None;
        loop {
            let next = match pending {
                // Coalesce a burst (bounded: a steady trickle of events
                // still publishes every DEBOUNCE), then publish.
                Some(first) => match tokio::time::timeout_at(
                    tokio::time::Instant::from_std(first + DEBOUNCE),
                    events.next(),
                )
                .await
                {
                    Ok(ev) => ev,
                    Err(_) => {
                        let seen_at = pending.take().unwrap_or_else(Instant::now);
                        let snapshot = Snapshot {
                            services: svc_store
                                .state()
                                .iter()
                                .map(|s| Sourced {
                                    origin: self.origin.clone(),
                                    obj: Service::clone(s),
                                })
                                .collect(),
                            slices: eps_store
                                .state()
                                .iter()
                                .map(|s| Sourced {
                                    origin: self.origin.clone(),
                                    obj: EndpointSlice::clone(s),
                                })
                                .collect(),
                            errors: Vec::new(),
                        };
                        tracing::info!(
                            services = snapshot.services.len(),
                            slices = snapshot.slices.len(),
                            "API state read"
                        );
                        if tx.send(Update { snapshot, seen_at }).await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                },
                None => tokio::select! {
                    ev = events.next() => ev,
                    _ = tx.closed() => return Ok(()),
                },
            };
            let Some(ev) = next else {
                anyhow::bail!("the API watch streams ended");
            };
            let publish = match ev {
                Ok(Seen::Services(c)) => {
                    svc_ready |= c;
                    c
                }
                Ok(Seen::Slices(c)) => {
                    eps_ready |= c;
                    c
                }
                Err(e) => {
                    // default_backoff() retries; say so once per failure.
                    tracing::warn!("{e}; retrying");
                    false
                }
            };
            if publish && svc_ready && eps_ready && pending.is_none() {
                pending = Some(Instant::now());
            }
        }
    }
}
