//! The EndpointSlice controller (upstream pkg/controller/endpointslice):
//! every Service with a selector gets discovery.k8s.io/v1 EndpointSlices
//! listing the Pods it selects, at most [`MAX_ENDPOINTS_PER_SLICE`] each.
//! The decisions are [`reconciler`]'s; this file watches, queues and
//! writes.
//!
//! Slices of a deleted Service are left to the garbage collector through
//! their ownerReference, as upstream does.
mod reconciler;

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::Instrument;

pub use reconciler::{
    CONTROLLER_NAME, Changes, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, MAX_ENDPOINTS_PER_SLICE,
    NodeTopology, reconcile,
};

use crate::informer::{Change, WriteTracker, follow, mirror};
use crate::pod_endpoint as pe;
use crate::workqueue::WorkQueue;
use crate::{Context, api_error, events};

/// Upstream's `--concurrent-service-endpoint-syncs` default.
const WORKERS: usize = 5;
const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// (namespace, name) of a Service.
type ServiceKey = (String, String);

struct Shared {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    queue: WorkQueue<ServiceKey>,
    written: WriteTracker<ServiceKey>,
    recorder: Recorder,
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (services, services_w) = reflector::store();
    let pods = ctx.pods.store();
    let (slices, slices_w) = reflector::store();
    let (nodes, nodes_w) = reflector::store();
    let sh = Arc::new(Shared {
        client: client.clone(),
        services,
        pods,
        slices,
        nodes,
        queue: WorkQueue::default(),
        written: WriteTracker::default(),
        recorder: Recorder::new(client.clone(), Reporter::from("endpointslice-controller")),
    });

    let watch_services = mirror(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        services_w,
        |svc, _| sh.queue.add(key_of(svc)),
        || enqueue_all(&sh),
    );
    let watch_pods = follow(
        "Pod",
        ctx.pods.subscribe(),
        |pod, _| {
            for key in services_for_pod(&sh, pod) {
                sh.queue.add(key);
            }
        },
        || enqueue_all(&sh),
    );
    let watch_slices = mirror(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={CONTROLLER_NAME}")),
        slices_w,
        |slice, change| {
            let Some(key) = service_of(slice) else { return };
            sh.written.observed(
                &key,
                &slice.name_any(),
                slice.resource_version().as_deref(),
                change == Change::Deleted,
            );
            sh.queue.add(key);
        },
        || {
            sh.written.clear();
            enqueue_all(&sh);
        },
    );
    let watch_nodes = mirror(
        Api::<Node>::all(client),
        watcher::Config::default(),
        nodes_w,
        |_, _| {},
        || {},
    );
    let workers = async {
        for ready in [
            sh.services.wait_until_ready().await,
            sh.pods.wait_until_ready().await,
            sh.slices.wait_until_ready().await,
            sh.nodes.wait_until_ready().await,
        ] {
            if ready.is_err() {
                return;
            }
        }
        tracing::info!("endpointslice controller synced its caches; starting workers");
        join_all((0..WORKERS).map(|_| worker(&sh))).await;
    };
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {}
        _ = futures::future::join5(watch_services, watch_pods, watch_slices, watch_nodes, workers) => {}
    }
    Ok(())
}

fn key_of(svc: &Service) -> ServiceKey {
    (svc.namespace().unwrap_or_default(), svc.name_any())
}

fn service_of(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice.labels().get(LABEL_SERVICE_NAME)?;
    Some((slice.namespace().unwrap_or_default(), name.clone()))
}

fn enqueue_all(sh: &Shared) {
    for svc in sh.services.state() {
        sh.queue.add(key_of(&svc));
    }
}

/// The Services a Pod change may concern: those selecting it now, and
/// those whose slices list it (it may have stopped matching).
fn services_for_pod(sh: &Shared, pod: &Pod) -> Vec<ServiceKey> {
    let ns = pod.namespace();
    let mut keys: Vec<ServiceKey> = sh
        .services
        .state()
        .iter()
        .filter(|s| s.namespace() == ns && pe::selector(s).is_some_and(|sel| pe::selects(sel, pod)))
        .map(|s| key_of(s))
        .collect();
    let name = pod.metadata.name.as_deref();
    keys.extend(
        sh.slices
            .state()
            .iter()
            .filter(|s| {
                s.namespace() == ns
                    && s.endpoints.iter().any(|e| {
                        e.target_ref
                            .as_ref()
                            .is_some_and(|r| r.name.as_deref() == name)
                    })
            })
            .filter_map(|s| service_of(s)),
    );
    keys.sort();
    keys.dedup();
    keys
}

async fn worker(sh: &Shared) {
    loop {
        let key = sh.queue.get().await;
        let span =
            tracing::info_span!("sync_endpointslices", service = %format!("{}/{}", key.0, key.1));
        match sync(sh, &key).instrument(span.clone()).await {
            Ok(Synced::Done) => sh.queue.forget(&key),
            Ok(Synced::Retry(why)) => {
                span.in_scope(|| tracing::debug!(why, "retrying"));
                sh.queue.add_rate_limited(key.clone());
            }
            Err(e) => {
                span.in_scope(
                    || tracing::warn!(error = %e, "syncing EndpointSlices failed; retrying"),
                );
                sh.queue.add_rate_limited(key.clone());
            }
        }
        sh.queue.done(&key);
    }
}

enum Synced {
    Done,
    Retry(&'static str),
}

async fn sync(sh: &Shared, key: &ServiceKey) -> Result<Synced, kube::Error> {
    let (ns, name) = key;
    let Some(svc) = sh.services.get(&ObjectRef::new(name).within(ns)) else {
        sh.written.forget(key);
        return Ok(Synced::Done);
    };
    let Some(selector) = pe::selector(&svc) else {
        return Ok(Synced::Done);
    };
    let in_store = |slice: &str| {
        sh.slices
            .get(&ObjectRef::new(slice).within(ns))
            .and_then(|s| s.resource_version())
    };
    if sh.written.is_stale(key, in_store) {
        // The slice watch requeues the Service once it shows our writes.
        return Ok(Synced::Retry(
            "waiting for the store to show our last writes",
        ));
    }
    let pods: Vec<Arc<Pod>> = sh
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_ref() == Some(ns) && pe::selects(selector, p))
        .collect();
    let slices: Vec<Arc<EndpointSlice>> = sh
        .slices
        .state()
        .into_iter()
        .filter(|s| {
            s.namespace().as_ref() == Some(ns)
                && s.labels().get(LABEL_SERVICE_NAME) == Some(name)
                && s.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let slice_refs: Vec<&EndpointSlice> = slices.iter().map(AsRef::as_ref).collect();
    let changes = reconcile(
        &svc,
        &pod_refs,
        &slice_refs,
        |node| {
            sh.nodes.get(&ObjectRef::new(node)).map(|n| NodeTopology {
                zone: n.labels().get(LABEL_ZONE).cloned(),
            })
        },
        MAX_ENDPOINTS_PER_SLICE,
    );
    let trigger = pe::last_change_trigger_time(&svc, pod_refs.iter().copied());
    if let Err(e) = write(
        sh,
        key,
        changes.create,
        changes.update,
        changes.delete,
        trigger,
    )
    .await
    {
        if api_error::is_namespace_terminating(&e) {
            return Ok(Synced::Done);
        }
        events::publish(
            &sh.recorder,
            &svc.object_ref(&()),
            EventType::Warning,
            "FailedToUpdateEndpointSlices",
            "Sync",
            format!("Error updating Endpoint Slices for Service {ns}/{name}: {e}"),
        )
        .await;
        return Err(e);
    }
    if !changes.pods_on_unknown_nodes.is_empty() {
        tracing::info!(pods = ?changes.pods_on_unknown_nodes, "pods on nodes not known yet left out");
        return Ok(Synced::Retry("pods on unknown nodes"));
    }
    Ok(Synced::Done)
}

async fn write(
    sh: &Shared,
    key: &ServiceKey,
    create: Vec<EndpointSlice>,
    update: Vec<EndpointSlice>,
    delete: Vec<EndpointSlice>,
    trigger: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Result<(), kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(sh.client.clone(), &key.0);
    let annotate = |mut s: EndpointSlice| {
        let a = s.metadata.annotations.get_or_insert_with(Default::default);
        match &trigger {
            Some(t) => a.insert(pe::LAST_CHANGE_TRIGGER_TIME.into(), pe::format_time(t)),
            None => a.remove(pe::LAST_CHANGE_TRIGGER_TIME),
        };
        s
    };
    for slice in create {
        let made = api.create(&PostParams::default(), &annotate(slice)).await?;
        tracing::debug!(
            slice = made.name_any(),
            endpoints = made.endpoints.len(),
            "created"
        );
        sh.written
            .wrote(key, &made.name_any(), made.resource_version());
    }
    for slice in update {
        let name = slice.name_any();
        let made = api
            .replace(&name, &PostParams::default(), &annotate(slice))
            .await?;
        tracing::debug!(slice = name, endpoints = made.endpoints.len(), "updated");
        sh.written.wrote(key, &name, made.resource_version());
    }
    for slice in delete {
        let name = slice.name_any();
        let dp = DeleteParams {
            preconditions: slice.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(e) if api_error::is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        tracing::debug!(slice = name, "deleted");
        sh.written.deleted(key, &name);
    }
    Ok(())
}

#[cfg(test)]
mod edge_tests {
    use super::*;

    #[allow(dead_code)]
    fn run_can_be_spawned(ctx: Context) {
        tokio::spawn(run(ctx));
    }

    #[test]
    fn a_slice_maps_back_to_its_service_by_label() {
        let mut s = EndpointSlice {
            address_type: "IPv4".into(),
            ..Default::default()
        };
        assert_eq!(service_of(&s), None);
        s.metadata.namespace = Some("ns".into());
        s.metadata.labels = Some([(LABEL_SERVICE_NAME.to_string(), "web".to_string())].into());
        assert_eq!(service_of(&s), Some(("ns".into(), "web".into())));
    }
}
