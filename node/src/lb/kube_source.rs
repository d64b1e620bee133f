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
        let events = futures::stream::select(services, slices);
        publish_when_listed(events, svc_store, eps_store, self.origin, tx).await
    }
}

/// Publishes the stores' contents after each change (a burst coalesced),
/// but only once both have completed a list.
async fn publish_when_listed(
    events: impl futures::Stream<Item = Result<Seen, String>>,
    svc_store: reflector::Store<Service>,
    eps_store: reflector::Store<EndpointSlice>,
    origin: Arc<str>,
    tx: mpsc::Sender<Update>,
) -> anyhow::Result<()> {
    let mut events = std::pin::pin!(events);
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
                                origin: origin.clone(),
                                obj: Service::clone(s),
                            })
                            .collect(),
                        slices: eps_store
                            .state()
                            .iter()
                            .map(|s| Sourced {
                                origin: origin.clone(),
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

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;

    fn listed<K>(w: &mut reflector::store::Writer<K>, obj: K)
    where
        K: kube::Resource<DynamicType = ()> + Clone,
    {
        for ev in [Event::Init, Event::InitApply(obj), Event::InitDone] {
            w.apply_watcher_event(&ev);
        }
    }

    // Virtual time (start_paused): the runtime jumps to the next timer once
    // every task waits, so "long past the debounce" takes no wall time and
    // does not depend on the machine's load.
    #[tokio::test(start_paused = true)]
    async fn nothing_is_published_until_services_and_endpoint_slices_have_listed() {
        let (svc_store, mut svc_writer) = reflector::store::<Service>();
        let (eps_store, mut eps_writer) = reflector::store::<EndpointSlice>();
        let (events, events_rx) = futures::channel::mpsc::unbounded();
        let (tx, mut rx) = mpsc::channel(1);
        let source = tokio::spawn(publish_when_listed(
            events_rx,
            svc_store,
            eps_store,
            "test".into(),
            tx,
        ));
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }))
        .expect("a Service");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.10"]}]
        }))
        .expect("an EndpointSlice");

        // Services listed; the EndpointSlice watcher only failed so far.
        listed(&mut svc_writer, svc);
        events
            .unbounded_send(Ok(Seen::Services(true)))
            .expect("source running");
        events
            .unbounded_send(Err("watching EndpointSlices: refused".into()))
            .expect("source running");
        tokio::time::sleep(DEBOUNCE * 100).await;
        assert!(
            rx.try_recv().is_err(),
            "published Services without their EndpointSlices (would withdraw their backends)"
        );

        listed(&mut eps_writer, slice);
        events
            .unbounded_send(Ok(Seen::Slices(true)))
            .expect("source running");
        let update = rx.recv().await.expect("a snapshot once both listed");
        assert_eq!(update.snapshot.services.len(), 1);
        assert_eq!(update.snapshot.slices.len(), 1);
        source.abort();
    }
}
