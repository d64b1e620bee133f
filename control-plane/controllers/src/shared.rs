//! One watch and one store per resource for the whole controller manager
//! (client-go's shared informers): with 10 000 pods, one Pod cache instead
//! of one per controller is the difference between hundreds of MiB and a
//! gigabyte. Each controller subscribes to the stream of watch events and
//! reads the shared store; the store has every event applied before any
//! subscriber sees it.
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// What a subscriber receives: the watcher's own events, so a controller
/// uses them exactly as it would its own watch (never an `Err`).
pub type Subscription<K> = UnboundedReceiver<Result<watcher::Event<K>, watcher::Error>>;

type Sender<K> = UnboundedSender<Result<watcher::Event<K>, watcher::Error>>;

/// Subscribers, and whether the store holds a complete list.
struct Hub<K> {
    /// False until the first list completes and during every relist.
    listed: bool,
    active: Vec<Sender<K>>,
    /// Joined while no complete list was there: replayed at the next one.
    waiting: Vec<Sender<K>>,
}

pub struct SharedInformer<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    api: Api<K>,
    store: Store<K>,
    writer: Mutex<Option<Writer<K>>>,
    hub: Mutex<Hub<K>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K> SharedInformer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    pub fn new(api: Api<K>) -> Arc<Self> {
        let (store, writer) = reflector::store();
        Arc::new(Self {
            api,
            store,
            writer: Mutex::new(Some(writer)),
            hub: Mutex::new(Hub {
                listed: false,
                active: Vec::new(),
                waiting: Vec::new(),
            }),
        })
    }

    /// The shared store (ready once the first list is complete).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every event from now on. A subscriber that joins after a list first
    /// gets that list replayed (`Init`, one `InitApply` per object,
    /// `InitDone`), as client-go replays adds to a late event handler, so
    /// subscribing early or late sees the same state.
    pub fn subscribe(&self) -> Subscription<K> {
        let (tx, rx) = unbounded();
        let mut hub = lock(&self.hub);
        if hub.listed {
            self.replay(&tx);
            hub.active.push(tx);
        } else {
            hub.waiting.push(tx);
        }
        rx
    }

    fn replay(&self, tx: &Sender<K>) {
        let _ = tx.unbounded_send(Ok(watcher::Event::Init));
        for o in self.store.state() {
            let _ = tx.unbounded_send(Ok(watcher::Event::InitApply((*o).clone())));
        }
        let _ = tx.unbounded_send(Ok(watcher::Event::InitDone));
    }

    fn dispatch(&self, event: watcher::Event<K>) {
        let mut hub = lock(&self.hub);
        if matches!(event, watcher::Event::Init) {
            hub.listed = false;
        }
        let done = matches!(event, watcher::Event::InitDone);
        // A dropped subscriber (its controller ended) is let go.
        hub.active
            .retain(|tx| tx.unbounded_send(Ok(event.clone())).is_ok());
        if done {
            hub.listed = true;
            let waiting = std::mem::take(&mut hub.waiting);
            for tx in waiting {
                self.replay(&tx);
                hub.active.push(tx);
            }
        }
    }

    /// Runs the one watch until the caller drops the future. Runs once:
    /// a second call returns at once.
    pub async fn run(self: Arc<Self>) {
        let Some(writer) = lock(&self.writer).take() else {
            tracing::error!("a shared informer was run twice");
            return;
        };
        let kind = K::kind(&K::DynamicType::default()).into_owned();
        let events = watcher(self.api.clone(), watcher::Config::default())
            .default_backoff()
            // The store holds every object of the kind: keep it small.
            .modify(|o| o.meta_mut().managed_fields = None);
        let mut events = std::pin::pin!(reflector::reflector(writer, events));
        while let Some(event) = events.next().await {
            match event {
                Ok(e) => self.dispatch(e),
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying with backoff"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "d"}}))
            .expect("pod")
    }

    /// An informer whose store is fed by hand (what `run` does through
    /// the reflector) so the hub's replay rules can be checked without an
    /// API server.
    fn informer() -> (Arc<SharedInformer<Pod>>, Writer<Pod>) {
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:1".parse().expect("url"),
        ))
        .expect("client");
        let inf = SharedInformer::new(Api::all(client));
        let w = lock(&inf.writer).take().expect("writer");
        (inf, w)
    }

    fn feed(inf: &SharedInformer<Pod>, w: &mut Writer<Pod>, e: watcher::Event<Pod>) {
        w.apply_watcher_event(&e);
        inf.dispatch(e);
    }

    fn drain(rx: &mut Subscription<Pod>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(Ok(e))) = rx.next().now_or_never() {
            out.push(match e {
                watcher::Event::Init => "init".to_string(),
                watcher::Event::InitApply(p) => {
                    format!("list {}", p.metadata.name.unwrap_or_default())
                }
                watcher::Event::InitDone => "done".to_string(),
                watcher::Event::Apply(p) => {
                    format!("apply {}", p.metadata.name.unwrap_or_default())
                }
                watcher::Event::Delete(p) => {
                    format!("delete {}", p.metadata.name.unwrap_or_default())
                }
            });
        }
        out
    }

    #[tokio::test]
    async fn an_early_subscriber_gets_the_first_list_once_it_is_complete() {
        let (inf, mut w) = informer();
        let mut rx = inf.subscribe();
        feed(&inf, &mut w, watcher::Event::Init);
        feed(&inf, &mut w, watcher::Event::InitApply(pod("a")));
        assert!(
            drain(&mut rx).is_empty(),
            "nothing before the list is whole"
        );
        feed(&inf, &mut w, watcher::Event::InitDone);
        assert_eq!(drain(&mut rx), ["init", "list a", "done"]);
        feed(&inf, &mut w, watcher::Event::Apply(pod("b")));
        assert_eq!(drain(&mut rx), ["apply b"]);
    }

    #[tokio::test]
    async fn a_late_subscriber_gets_the_store_replayed_then_live_events() {
        let (inf, mut w) = informer();
        feed(&inf, &mut w, watcher::Event::Init);
        feed(&inf, &mut w, watcher::Event::InitApply(pod("a")));
        feed(&inf, &mut w, watcher::Event::InitDone);
        feed(&inf, &mut w, watcher::Event::Apply(pod("b")));
        feed(&inf, &mut w, watcher::Event::Delete(pod("a")));
        let mut rx = inf.subscribe();
        assert_eq!(drain(&mut rx), ["init", "list b", "done"]);
        feed(&inf, &mut w, watcher::Event::Delete(pod("b")));
        assert_eq!(drain(&mut rx), ["delete b"]);
    }

    #[tokio::test]
    async fn every_subscriber_sees_a_relist() {
        let (inf, mut w) = informer();
        let mut first = inf.subscribe();
        feed(&inf, &mut w, watcher::Event::Init);
        feed(&inf, &mut w, watcher::Event::InitDone);
        let mut second = inf.subscribe();
        drain(&mut first);
        drain(&mut second);
        feed(&inf, &mut w, watcher::Event::Init);
        feed(&inf, &mut w, watcher::Event::InitApply(pod("c")));
        feed(&inf, &mut w, watcher::Event::InitDone);
        for rx in [&mut first, &mut second] {
            assert_eq!(drain(rx), ["init", "list c", "done"]);
        }
    }
}
