//! The EndpointSlice controller's decisions, without I/O: from a Service,
//! the Pods of its namespace and the EndpointSlices this controller
//! manages for it, the slices to create, update and delete. Upstream's
//! k8s.io/endpointslice reconciler, step for step, except that its random
//! map order is replaced by a deterministic one (endpoints ordered by
//! address, slices by name).
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::pod_endpoint::{self as pe, Family, non_empty};

/// Upstream's `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The value of [`LABEL_MANAGED_BY`] on the slices this controller owns.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// What the controller needs to know of a Pod's Node.
#[derive(Clone, Debug, Default)]
pub struct NodeTopology {
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
}

#[derive(Debug, Default)]
pub struct Changes {
    /// With `generateName`; the API names them.
    pub create: Vec<EndpointSlice>,
    /// Whole objects carrying the resourceVersion they were read at.
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
    /// Pods left out because their Node is not known (yet): the sync must
    /// be retried, as upstream does.
    pub pods_on_unknown_nodes: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// Decides the changes for `service`. `pods` may hold any Pods (those of
/// other namespaces or not selected are ignored); `existing` the slices
/// labelled for the Service (ones not managed by this controller are
/// ignored, never changed); `node` looks a Node up by name.
pub fn reconcile(
    service: &Service,
    pods: &[&Pod],
    existing: &[&EndpointSlice],
    node: impl Fn(&str) -> Option<NodeTopology>,
    max_per_slice: usize,
) -> Changes {
    let mut out = Changes::default();
    let Some(selector) = pe::selector(service) else {
        return out;
    };
    let max = max_per_slice.max(1);
    let pods: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.metadata.namespace == service.metadata.namespace && pe::selects(selector, p))
        .collect();
    let families = pe::families(service);

    let mut by_family: BTreeMap<Family, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in existing.iter().copied().filter(|s| managed_by_us(s)) {
        match Family::from_address_type(&slice.address_type).filter(|f| families.contains(f)) {
            Some(f) => by_family.entry(f).or_default().push(slice),
            // The Service no longer has this family.
            None => out.delete.push(slice.clone()),
        }
    }
    for family in families {
        let existing = by_family.remove(&family).unwrap_or_default();
        by_address_type(service, &pods, existing, family, &node, max, &mut out);
    }
    out
}

fn managed_by_us(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == CONTROLLER_NAME)
}

fn owned_by(slice: &EndpointSlice, service: &Service) -> bool {
    slice.metadata.owner_references.iter().flatten().any(|o| {
        Some(&o.uid) == service.metadata.uid.as_ref()
            && o.kind == "Service"
            && o.api_version == "v1"
    })
}

/// Identity of an endpoint within a Service: its addresses, hostname and
/// Pod. Everything else (conditions, node, zone) may change in place.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EndpointKey {
    addresses: Vec<String>,
    hostname: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

fn endpoint_key(ep: &Endpoint) -> EndpointKey {
    let mut addresses = ep.addresses.clone();
    addresses.sort();
    let r = ep.target_ref.as_ref();
    EndpointKey {
        addresses,
        hostname: non_empty(&ep.hostname).map(Into::into),
        namespace: r.and_then(|r| non_empty(&r.namespace)).map(Into::into),
        name: r.and_then(|r| non_empty(&r.name)).map(Into::into),
    }
}

/// Upstream's EndpointsEqualBeyondHash: what [`EndpointKey`] leaves out.
fn same_beyond_key(a: &Endpoint, b: &Endpoint) -> bool {
    let cond = |e: &Endpoint| {
        let c = e.conditions.clone().unwrap_or_default();
        (c.ready, c.serving, c.terminating)
    };
    let target = |e: &Endpoint| {
        e.target_ref.as_ref().map(|r| {
            (
                non_empty(&r.kind).map(String::from),
                non_empty(&r.namespace).map(String::from),
                non_empty(&r.name).map(String::from),
                non_empty(&r.uid).map(String::from),
            )
        })
    };
    non_empty(&a.node_name) == non_empty(&b.node_name)
        && non_empty(&a.zone) == non_empty(&b.zone)
        && cond(a) == cond(b)
        && target(a) == target(b)
}

/// Slices group endpoints with identical ports; this identifies a group
/// whatever the order of the ports and however the API spells defaults.
type PortKey = Vec<(Option<String>, Option<i32>, String, Option<String>)>;

fn port_key(ports: Option<&Vec<EndpointPort>>) -> PortKey {
    let mut k: PortKey = ports
        .into_iter()
        .flatten()
        .map(|p| {
            (
                non_empty(&p.name).map(Into::into),
                p.port,
                pe::protocol(p.protocol.as_deref()).to_string(),
                non_empty(&p.app_protocol).map(Into::into),
            )
        })
        .collect();
    k.sort();
    k
}

/// The Pod's ports for the Service; a Service port whose (named) target
/// the Pod does not have is left out for this Pod.
fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<EndpointPort> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            let number = pe::find_port(pod, sp)?;
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(number),
                protocol: Some(pe::protocol(sp.protocol.as_deref()).to_string()),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

fn endpoint(pod: &Pod, node: Option<&NodeTopology>, service: &Service, family: Family) -> Endpoint {
    let serving = pe::is_ready(pod);
    let terminating = pe::is_terminating(pod);
    // Never "ready" while terminating, unless the Service publishes
    // everything.
    let ready = pe::publish_not_ready(service) || (serving && !terminating);
    Endpoint {
        addresses: pe::ips_of(pod, family),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        node_name: pe::node_name(pod).map(Into::into),
        zone: node.and_then(|n| n.zone.clone()).filter(|z| !z.is_empty()),
        hostname: pe::hostname(pod, service),
        ..Default::default()
    }
}

/// The slice's labels: the Service's own (minus the reserved ones), the
/// headless marker, and the two that tie the slice to the Service and to
/// this controller.
fn slice_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = service
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| {
            ![LABEL_SERVICE_NAME, LABEL_MANAGED_BY, pe::LABEL_HEADLESS].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if pe::is_headless(service) {
        labels.insert(pe::LABEL_HEADLESS.into(), String::new());
    }
    labels.insert(
        LABEL_SERVICE_NAME.into(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    labels
}

/// `<service>-`, or the bare name when the dash would make the prefix too
/// long for a name.
fn generate_name(service: &str) -> String {
    if service.len() < 253 {
        format!("{service}-")
    } else {
        service.to_string()
    }
}

fn new_slice(service: &Service, ports: Vec<EndpointPort>, family: Family) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(
                service.metadata.name.as_deref().unwrap_or_default(),
            )),
            namespace: service.metadata.namespace.clone(),
            labels: Some(slice_labels(service)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: service.metadata.name.clone().unwrap_or_default(),
                uid: service.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: family.address_type().into(),
        endpoints: Vec::new(),
        ports: Some(ports),
    }
}

/// Upstream's placeholderSliceCompare: the fields that make a slice the
/// empty placeholder.
fn is_placeholder(slice: &EndpointSlice, placeholder: &EndpointSlice) -> bool {
    slice.metadata.namespace == placeholder.metadata.namespace
        && slice.metadata.labels.clone().unwrap_or_default()
            == placeholder.metadata.labels.clone().unwrap_or_default()
        && slice.address_type == placeholder.address_type
        && slice.ports.as_ref().is_none_or(Vec::is_empty)
        && slice.endpoints.is_empty()
}

type Desired = BTreeMap<PortKey, (Vec<EndpointPort>, BTreeMap<EndpointKey, Endpoint>)>;

fn by_address_type(
    service: &Service,
    pods: &[&Pod],
    existing: Vec<&EndpointSlice>,
    family: Family,
    node: &impl Fn(&str) -> Option<NodeTopology>,
    max: usize,
    out: &mut Changes,
) {
    let mut create = Vec::new();
    let mut update = Vec::new();
    let mut delete = Vec::new();

    let mut existing_by_ports: BTreeMap<PortKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in &existing {
        if owned_by(slice, service) {
            existing_by_ports
                .entry(port_key(slice.ports.as_ref()))
                .or_default()
                .push(slice);
        } else {
            // A slice left by an earlier Service of the same name.
            delete.push((*slice).clone());
        }
    }

    let mut desired: Desired = BTreeMap::new();
    for pod in pods {
        if !pe::should_be_endpoint(pod, true) {
            continue;
        }
        let ports = endpoint_ports(service, pod);
        let (_, endpoints) = desired
            .entry(port_key(Some(&ports)))
            .or_insert_with(|| (ports, BTreeMap::new()));
        let topology = pe::node_name(pod).and_then(node);
        if topology.is_none() && !pe::publish_not_ready(service) {
            out.pods_on_unknown_nodes
                .push(pod.metadata.name.clone().unwrap_or_default());
            continue;
        }
        let ep = endpoint(pod, topology.as_ref(), service, family);
        if !ep.addresses.is_empty() {
            endpoints.insert(endpoint_key(&ep), ep);
        }
    }

    for (key, slices) in &existing_by_ports {
        if !desired.contains_key(key) {
            delete.extend(slices.iter().map(|s| (*s).clone()));
        }
    }
    for (key, (ports, endpoints)) in desired {
        let slices = existing_by_ports.remove(&key).unwrap_or_default();
        by_ports(
            service,
            &slices,
            endpoints,
            ports,
            family,
            max,
            &mut create,
            &mut update,
            &mut delete,
        );
    }

    // A Service with no endpoints still gets one (empty) slice, so that
    // consumers can tell "no endpoints" from "not processed yet".
    if existing.len() == delete.len() && create.is_empty() {
        let placeholder = new_slice(service, Vec::new(), family);
        if delete.len() == 1 && is_placeholder(&delete[0], &placeholder) {
            delete.clear();
        } else {
            create.push(placeholder);
        }
    }

    // Rather than delete one slice and create another, rewrite the one
    // that would go (if it is this Service's, of this address type).
    let mut i = 0;
    while i < delete.len() && !create.is_empty() {
        let old = &delete[i];
        if Family::from_address_type(&old.address_type) == Some(family) && owned_by(old, service) {
            let old = delete.remove(i);
            let mut slice = create.pop().expect("checked non-empty");
            slice.metadata.name = old.metadata.name;
            slice.metadata.uid = old.metadata.uid;
            slice.metadata.resource_version = old.metadata.resource_version;
            slice.metadata.creation_timestamp = old.metadata.creation_timestamp;
            slice.metadata.annotations = old.metadata.annotations;
            update.push(slice);
        } else {
            i += 1;
        }
    }

    // Creating slices for a Service being deleted would race the garbage
    // collector.
    if service.metadata.deletion_timestamp.is_some() {
        create.clear();
    }
    out.create.extend(create);
    out.update.extend(update);
    out.delete.extend(delete);
}

/// Upstream's reconcileByPortMapping for one group of identical ports:
/// 1. keep, in each existing slice, the endpoints still desired (updated
///    in place when their conditions, node or zone changed);
/// 2. top up the slices already being updated, fullest first;
/// 3. place what is left in the unchanged slice it fills best, else in
///    new slices.
#[allow(clippy::too_many_arguments)]
fn by_ports(
    service: &Service,
    existing: &[&EndpointSlice],
    mut desired: BTreeMap<EndpointKey, Endpoint>,
    ports: Vec<EndpointPort>,
    family: Family,
    max: usize,
    create: &mut Vec<EndpointSlice>,
    update: &mut Vec<EndpointSlice>,
    delete: &mut Vec<EndpointSlice>,
) {
    let labels = slice_labels(service);
    let mut existing: Vec<&EndpointSlice> = existing.to_vec();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut unchanged: Vec<EndpointSlice> = Vec::new();
    let mut updating: Vec<EndpointSlice> = Vec::new();
    for slice in existing {
        let mut kept = Vec::new();
        let mut changed = false;
        for ep in &slice.endpoints {
            if let Some(want) = desired.remove(&endpoint_key(ep)) {
                changed |= !same_beyond_key(&want, ep);
                kept.push(want);
            }
        }
        let labels_changed = slice.metadata.labels.as_ref() != Some(&labels);
        if changed || kept.len() != slice.endpoints.len() {
            if kept.is_empty() {
                delete.push(slice.clone());
            } else {
                let mut s = slice.clone();
                s.endpoints = kept;
                s.metadata.labels = Some(labels.clone());
                updating.push(s);
            }
        } else if labels_changed {
            let mut s = slice.clone();
            s.metadata.labels = Some(labels.clone());
            updating.push(s);
        } else {
            unchanged.push(slice.clone());
        }
    }

    if !desired.is_empty() && !updating.is_empty() {
        updating.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
        for slice in &mut updating {
            while slice.endpoints.len() < max {
                let Some((_, ep)) = desired.pop_first() else {
                    break;
                };
                slice.endpoints.push(ep);
            }
        }
    }

    while !desired.is_empty() {
        let fit = if desired.len() < max {
            slice_to_fill(&unchanged, desired.len(), max)
        } else {
            None
        };
        let mut slice = match fit {
            Some(i) => unchanged.remove(i),
            None => new_slice(service, ports.clone(), family),
        };
        while slice.endpoints.len() < max {
            let Some((_, ep)) = desired.pop_first() else {
                break;
            };
            slice.endpoints.push(ep);
        }
        if slice.metadata.name.is_some() {
            updating.push(slice);
        } else {
            create.push(slice);
        }
    }
    update.extend(updating);
}

/// The slice that `n` more endpoints bring closest to full without
/// overflowing it.
fn slice_to_fill(slices: &[EndpointSlice], n: usize, max: usize) -> Option<usize> {
    slices
        .iter()
        .enumerate()
        .filter(|(_, s)| s.endpoints.len() + n <= max)
        .min_by_key(|(_, s)| max - (s.endpoints.len() + n))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests;
