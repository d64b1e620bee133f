//! The Endpoints controller's decisions, without I/O: from a Service (or
//! its absence), the Pods of its namespace and the Endpoints object of the
//! same name, the one write to make, if any. Upstream's
//! pkg/controller/endpoint syncService, with RepackSubsets' canonical form
//! and the truncation to [`MAX_CAPACITY`] addresses.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::pod_endpoint::{self as pe, Family, non_empty};

/// Marks the Endpoints this controller wrote (upstream since 1.33), so
/// that only those are removed when their Service is gone.
pub const LABEL_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpoint-controller";
/// Set to [`TRUNCATED`] when the Service had more than [`MAX_CAPACITY`]
/// addresses.
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
pub const TRUNCATED: &str = "truncated";
pub const MAX_CAPACITY: usize = 1000;

#[derive(Debug, PartialEq)]
pub enum Write {
    Create(Endpoints),
    /// The whole object, carrying the resourceVersion it was read at.
    Update(Endpoints),
    /// The Service is gone and these Endpoints were ours.
    Delete {
        name: String,
    },
}

/// Decides the write for the Service named `name`: `service` is None when
/// it does not exist. `pods` may hold any Pods (unselected ones are
/// ignored); `trigger` is the change that prompted this sync (the
/// `endpoints.kubernetes.io/last-change-trigger-time` annotation).
pub fn reconcile(
    name: &str,
    service: Option<&Service>,
    pods: &[&Pod],
    existing: Option<&Endpoints>,
    trigger: Option<&Time>,
) -> Option<Write> {
    let Some(service) = service else {
        // Endpoints written by hand for a Service that never existed, or
        // by someone else, are not ours to remove.
        return existing
            .filter(|e| managed_by_us(e))
            .map(|_| Write::Delete {
                name: name.to_string(),
            });
    };
    let selector = pe::selector(service)?;
    let publish = pe::publish_not_ready(service);
    let family = primary_family(service);
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();

    let mut flat: Vec<Entry> = Vec::new();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.namespace == service.metadata.namespace && pe::selects(selector, p))
    {
        if !pe::should_be_endpoint(pod, publish) {
            continue;
        }
        let Some(address) = address(pod, service, family) else {
            continue;
        };
        let ready = publish || pe::is_ready(pod);
        if ports.is_empty() {
            // A headless Service may have no ports: its addresses alone.
            if pe::is_headless(service) {
                flat.push((None, address, ready));
            }
            continue;
        }
        for sp in &ports {
            let Some(number) = pe::find_port(pod, sp) else {
                continue;
            };
            let port = EndpointPort {
                name: sp.name.clone(),
                port: number,
                protocol: Some(pe::protocol(sp.protocol.as_deref()).to_string()),
                app_protocol: sp.app_protocol.clone(),
            };
            flat.push((Some(port), address.clone(), ready));
        }
    }
    let mut subsets = repack(flat);
    let truncated = truncate(&mut subsets, MAX_CAPACITY);
    let labels = labels(service);

    if let Some(current) = existing {
        let unchanged = canonical(current.subsets.as_deref().unwrap_or_default())
            == canonical(&subsets)
            && current.metadata.labels.clone().unwrap_or_default() == labels
            && current
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(OVER_CAPACITY))
                .is_some()
                == truncated;
        if unchanged {
            return None;
        }
    }
    let mut eps = existing.cloned().unwrap_or_else(|| Endpoints {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: service.metadata.namespace.clone(),
            ..Default::default()
        },
        subsets: None,
    });
    eps.subsets = Some(subsets);
    eps.metadata.labels = Some(labels);
    let annotations = eps
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    match trigger {
        Some(t) => annotations.insert(pe::LAST_CHANGE_TRIGGER_TIME.into(), pe::format_time(t)),
        None => annotations.remove(pe::LAST_CHANGE_TRIGGER_TIME),
    };
    if truncated {
        annotations.insert(OVER_CAPACITY.into(), TRUNCATED.into());
    } else {
        annotations.remove(OVER_CAPACITY);
    }
    Some(if existing.is_some() {
        Write::Update(eps)
    } else {
        Write::Create(eps)
    })
}

pub fn managed_by_us(e: &Endpoints) -> bool {
    e.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == CONTROLLER_NAME)
}

/// The Service's labels, the headless marker, and this controller's mark.
fn labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.remove(pe::LABEL_HEADLESS);
    if pe::is_headless(service) {
        labels.insert(pe::LABEL_HEADLESS.into(), String::new());
    }
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    labels
}

/// Endpoints carry one address per Pod: of the Service's first family,
/// or (without families, headless) of the family of the Pod's IP.
fn primary_family(service: &Service) -> Option<Family> {
    let families = service.spec.as_ref().and_then(|s| s.ip_families.as_ref());
    if let Some(first) = families.and_then(|f| f.first()) {
        return Family::from_address_type(first);
    }
    if pe::is_headless(service) {
        return None;
    }
    pe::families(service).first().copied()
}

fn address(pod: &Pod, service: &Service, family: Option<Family>) -> Option<EndpointAddress> {
    let ip = match family {
        Some(f) => pe::ips_of(pod, f).into_iter().next()?,
        None => pe::ips(pod).first()?.to_string(),
    };
    Some(EndpointAddress {
        ip,
        node_name: pe::node_name(pod).map(Into::into),
        hostname: pe::hostname(pod, service),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    })
}

/// (port, or none for a headless Service without ports; address; ready)
type Entry = (Option<EndpointPort>, EndpointAddress, bool);

type PortKey = (Option<String>, i32, String, Option<String>);
/// An address is the same address when its IP and Pod are.
type AddressKey = (String, Option<String>);
/// An address's readiness by address.
type AddressSet = BTreeMap<AddressKey, (EndpointAddress, bool)>;

fn port_key(p: &EndpointPort) -> PortKey {
    (
        non_empty(&p.name).map(Into::into),
        p.port,
        pe::protocol(p.protocol.as_deref()).to_string(),
        non_empty(&p.app_protocol).map(Into::into),
    )
}

fn address_key(a: &EndpointAddress) -> AddressKey {
    (
        a.ip.clone(),
        a.target_ref
            .as_ref()
            .and_then(|r| non_empty(&r.uid))
            .map(Into::into),
    )
}

/// Upstream's RepackSubsets: one subset per distinct set of addresses,
/// with every port those addresses share; an address not ready on some
/// port is not ready there. Addresses and ports sorted, subsets in a
/// stable order, so equal endpoints always compare equal.
fn repack(entries: Vec<Entry>) -> Vec<EndpointSubset> {
    let mut ports: BTreeMap<Option<PortKey>, (Option<EndpointPort>, AddressSet)> = BTreeMap::new();
    for (port, address, ready) in entries {
        let (_, addrs) = ports
            .entry(port.as_ref().map(port_key))
            .or_insert_with(|| (port.clone(), BTreeMap::new()));
        let slot = addrs
            .entry(address_key(&address))
            .or_insert((address, ready));
        slot.1 &= ready;
    }
    // Group the ports by the exact (address, readiness) set they have.
    let mut groups: BTreeMap<Vec<(AddressKey, bool)>, EndpointSubset> = BTreeMap::new();
    for (_, (port, addrs)) in ports {
        let set: Vec<(AddressKey, bool)> =
            addrs.iter().map(|(k, (_, r))| (k.clone(), *r)).collect();
        let subset = groups.entry(set).or_insert_with(|| {
            let (ready, not_ready): (Vec<_>, Vec<_>) = addrs.into_values().partition(|(_, r)| *r);
            let list = |v: Vec<(EndpointAddress, bool)>| {
                (!v.is_empty()).then(|| v.into_iter().map(|(a, _)| a).collect())
            };
            EndpointSubset {
                addresses: list(ready),
                not_ready_addresses: list(not_ready),
                ports: None,
            }
        });
        if let Some(port) = port {
            subset.ports.get_or_insert_with(Vec::new).push(port);
        }
    }
    groups.into_values().collect()
}

/// Upstream's truncateEndpoints: keep at most `max` addresses, ready ones
/// first, each subset keeping its share (rounded up, the last subsets
/// absorbing the rounding). True when anything was cut.
fn truncate(subsets: &mut [EndpointSubset], max: usize) -> bool {
    let count = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if ready + not_ready <= max {
        return false;
    }
    let cut_ready = ready > max;
    let (budget, total) = if cut_ready {
        (max, ready)
    } else {
        (max - ready, not_ready)
    };
    let mut left = budget;
    for s in subsets.iter_mut() {
        let here = if cut_ready {
            count(&s.addresses)
        } else {
            count(&s.not_ready_addresses)
        };
        let share = (here * budget).div_ceil(total).min(left);
        let list = if cut_ready {
            s.not_ready_addresses = None;
            &mut s.addresses
        } else {
            &mut s.not_ready_addresses
        };
        if let Some(v) = list {
            v.truncate(share);
            left -= v.len();
            if v.is_empty() {
                *list = None;
            }
        }
    }
    true
}

/// What makes two subset lists the same endpoints, however they are
/// ordered, grouped or spelled by the API.
type Canonical = BTreeSet<(
    Option<PortKey>,
    AddressKey,
    bool,
    Option<String>,
    Option<String>,
    Option<ObjRef>,
)>;
type ObjRef = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn canonical(subsets: &[EndpointSubset]) -> Canonical {
    let mut out = Canonical::new();
    for s in subsets {
        let ports: Vec<Option<PortKey>> = match s.ports.as_deref() {
            None | Some([]) => vec![None],
            Some(p) => p.iter().map(|p| Some(port_key(p))).collect(),
        };
        let addrs = s
            .addresses
            .iter()
            .flatten()
            .map(|a| (a, true))
            .chain(s.not_ready_addresses.iter().flatten().map(|a| (a, false)));
        for (a, ready) in addrs {
            let r = a.target_ref.as_ref().map(|r| {
                (
                    non_empty(&r.kind).map(String::from),
                    non_empty(&r.namespace).map(String::from),
                    non_empty(&r.name).map(String::from),
                    non_empty(&r.uid).map(String::from),
                )
            });
            for p in &ports {
                out.insert((
                    p.clone(),
                    address_key(a),
                    ready,
                    non_empty(&a.hostname).map(Into::into),
                    non_empty(&a.node_name).map(Into::into),
                    r.clone(),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
