//! What a Pod contributes to the endpoints of a Service, shared by the
//! EndpointSlice and the (legacy) Endpoints controllers, as upstream's
//! k8s.io/endpointslice/util is.
use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `endpoints.kubernetes.io/last-change-trigger-time`.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Set by the API on headless Services' EndpointSlices and Endpoints.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// The address families whose endpoints a Service gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The EndpointSlice `addressType`.
    pub fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn from_address_type(t: &str) -> Option<Self> {
        match t {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv6() { Family::V6 } else { Family::V4 }
    }
}

/// The selector a controller acts on: None for a Service without one
/// (its endpoints are written by hand) and for ExternalName Services,
/// which get no endpoints (upstream issue 105986). An empty selector is
/// no selector: the API does not keep an empty map apart from none.
pub fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

pub fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

pub fn publish_not_ready(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

fn cluster_ip(service: &Service) -> Option<&str> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty())
}

/// A Service without a cluster IP ("None" or unset) is headless.
pub fn is_headless(service: &Service) -> bool {
    cluster_ip(service).is_none_or(|ip| ip == "None")
}

/// Upstream's getAddressTypesForService: `spec.ipFamilies` when the API
/// set it, else the family of the cluster IP, else (headless, no
/// families) both.
pub fn families(service: &Service) -> Vec<Family> {
    let mut out: Vec<Family> = service
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    if !out.is_empty() {
        return out;
    }
    match cluster_ip(service).filter(|ip| *ip != "None") {
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(ip) => vec![Family::of(&ip)],
            Err(_) => vec![Family::V4],
        },
        None => vec![Family::V4, Family::V6],
    }
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// When the Pod's readiness last changed (its Ready condition's
/// lastTransitionTime).
pub fn ready_changed_at(pod: &Pod) -> Option<&Time> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The Pod's IPs, normalised (parsed and printed again, as upstream does
/// for irregular forms), `status.podIPs` first and `status.podIP` when
/// the kubelet only set that.
pub fn ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = status
        .pod_ips
        .as_ref()
        .into_iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    let raw = if listed.is_empty() {
        status.pod_ip.as_deref().into_iter().collect()
    } else {
        listed
    };
    raw.into_iter()
        .filter_map(|ip| ip.trim().parse().ok())
        .collect()
}

pub fn ips_of(pod: &Pod, family: Family) -> Vec<String> {
    ips(pod)
        .iter()
        .filter(|ip| Family::of(ip) == family)
        .map(ToString::to_string)
        .collect()
}

/// Upstream's ShouldPodBeInEndpoints: never a Pod that finished (phase
/// Succeeded/Failed) or has no IP yet; a terminating one only when asked.
pub fn should_be_endpoint(pod: &Pod, include_terminating: bool) -> bool {
    !is_terminal(pod) && !ips(pod).is_empty() && (include_terminating || !is_terminating(pod))
}

/// The Pod's DNS hostname under the Service, set when the Pod names the
/// Service as its subdomain (headless-Service DNS, StatefulSets).
pub fn hostname(pod: &Pod, service: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == service.metadata.name.as_deref()
        && pod.metadata.namespace == service.metadata.namespace)
        .then(|| host.to_string())
}

pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Protocol with the API's default.
pub fn protocol(p: Option<&str>) -> &str {
    match p {
        Some(p) if !p.is_empty() => p,
        _ => "TCP",
    }
}

/// Upstream's FindPort: the Pod port a Service port targets. A number is
/// taken as is; a name is looked up among the ports of the Pod's
/// containers (and of its sidecars, restartable init containers) with the
/// same protocol. An unset targetPort is the Service port (the API
/// defaults it so).
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let name = match &port.target_port {
        None => return Some(port.port),
        Some(IntOrString::Int(n)) => return Some(*n),
        Some(IntOrString::String(name)) => name,
    };
    let proto = protocol(port.protocol.as_deref());
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name.as_str()) && protocol(p.protocol.as_deref()) == proto
        })
        .map(|p| p.container_port)
}

/// The value of [`LAST_CHANGE_TRIGGER_TIME`]: the latest change among the
/// inputs (the Service's creation, the Pods' readiness transitions).
/// Upstream remembers the previous sync to report the earliest change not
/// yet written; this is the same value when one change triggers a sync,
/// without keeping state.
pub fn last_change_trigger_time<'a>(
    service: &'a Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Option<Time> {
    pods.into_iter()
        .filter_map(ready_changed_at)
        .chain(service.metadata.creation_timestamp.as_ref())
        .max_by_key(|t| t.0)
        .cloned()
}

/// RFC 3339 with nanoseconds, as upstream writes it.
pub fn format_time(t: &Time) -> String {
    t.0.to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Nanos, true)
}

/// An empty string is no value: the API may return either.
pub fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

#[cfg(test)]
pub mod testing {
    //! Builders for the objects the endpoint controllers read.
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service,
        ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use k8s_openapi::chrono::{TimeZone, Utc};

    pub fn time(secs: i64) -> Time {
        Time(
            Utc.timestamp_opt(1_700_000_000 + secs, 0)
                .single()
                .expect("valid time"),
        )
    }

    pub fn service(name: &str, selector: &[(&str, &str)], ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(time(0)),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(
                    selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ports: Some(ports),
                cluster_ip: Some("10.96.0.10".into()),
                ip_families: Some(vec!["IPv4".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn port(name: &str, port: i32, target: Option<IntOrString>) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            protocol: Some("TCP".into()),
            target_port: target,
            ..Default::default()
        }
    }

    /// A Running, Ready Pod with `ip` on node "node-a".
    pub fn pod(name: &str, labels: &[(&str, &str)], ip: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(time(10)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    pub fn set_ready(pod: &mut Pod, ready: bool) {
        let status = pod.status.get_or_insert_with(Default::default);
        for c in status.conditions.iter_mut().flatten() {
            if c.type_ == "Ready" {
                c.status = if ready { "True" } else { "False" }.into();
            }
        }
    }

    pub fn set_container_port(pod: &mut Pod, name: &str, number: i32) {
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers[0].ports = Some(vec![ContainerPort {
                name: Some(name.into()),
                container_port: number,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodIP};

    #[test]
    fn a_service_without_selector_or_of_type_external_name_has_no_selector() {
        let mut s = service("s", &[("app", "a")], vec![]);
        assert!(selector(&s).is_some());
        s.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert!(selector(&s).is_none());
        let mut s = service("s", &[], vec![]);
        assert!(selector(&s).is_none(), "an empty selector selects nothing");
        s.spec.as_mut().unwrap().selector = None;
        assert!(selector(&s).is_none());
    }

    #[test]
    fn a_selector_needs_every_label() {
        let s = service("s", &[("app", "a"), ("tier", "web")], vec![]);
        let sel = selector(&s).unwrap();
        assert!(selects(
            sel,
            &pod(
                "p",
                &[("app", "a"), ("tier", "web"), ("x", "y")],
                "10.0.0.1"
            )
        ));
        assert!(!selects(sel, &pod("p", &[("app", "a")], "10.0.0.1")));
        assert!(!selects(
            sel,
            &pod("p", &[("app", "b"), ("tier", "web")], "10.0.0.1")
        ));
    }

    #[test]
    fn families_come_from_ip_families_then_the_cluster_ip_then_both_for_headless() {
        let mut s = service("s", &[("a", "b")], vec![]);
        s.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        assert_eq!(families(&s), [Family::V4, Family::V6]);
        s.spec.as_mut().unwrap().ip_families = None;
        assert_eq!(families(&s), [Family::V4]);
        s.spec.as_mut().unwrap().cluster_ip = Some("fd00::10".into());
        assert_eq!(families(&s), [Family::V6]);
        s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert_eq!(families(&s), [Family::V4, Family::V6]);
    }

    #[test]
    fn terminal_pods_and_pods_without_ip_are_never_endpoints_terminating_ones_on_request() {
        let mut p = pod("p", &[], "10.0.0.1");
        assert!(should_be_endpoint(&p, false));
        p.metadata.deletion_timestamp = Some(time(20));
        assert!(!should_be_endpoint(&p, false));
        assert!(should_be_endpoint(&p, true));
        let mut p = pod("p", &[], "10.0.0.1");
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!should_be_endpoint(&p, true));
        p.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(!should_be_endpoint(&p, true));
        let mut p = pod("p", &[], "10.0.0.1");
        p.status.as_mut().unwrap().pod_ip = None;
        p.status.as_mut().unwrap().pod_ips = None;
        assert!(!should_be_endpoint(&p, true));
    }

    #[test]
    fn ips_prefer_pod_ips_fall_back_to_pod_ip_and_are_normalised() {
        let mut p = pod("p", &[], "10.0.0.1");
        p.status.as_mut().unwrap().pod_ips = Some(vec![
            PodIP {
                ip: "10.0.0.2".into(),
            },
            PodIP {
                ip: "fd00:0::2".into(),
            },
        ]);
        assert_eq!(ips_of(&p, Family::V4), ["10.0.0.2"]);
        assert_eq!(ips_of(&p, Family::V6), ["fd00::2"]);
        p.status.as_mut().unwrap().pod_ips = None;
        assert_eq!(ips_of(&p, Family::V4), ["10.0.0.1"]);
    }

    #[test]
    fn find_port_takes_numbers_as_is_and_looks_names_up_by_name_and_protocol() {
        let mut p = pod("p", &[], "10.0.0.1");
        assert_eq!(
            find_port(&p, &port("x", 80, None)),
            Some(80),
            "unset target is the port"
        );
        assert_eq!(
            find_port(&p, &port("x", 80, Some(IntOrString::Int(9000)))),
            Some(9000)
        );
        let named = port("x", 80, Some(IntOrString::String("http".into())));
        assert_eq!(find_port(&p, &named), Some(8080));
        let mut udp = named.clone();
        udp.protocol = Some("UDP".into());
        assert_eq!(find_port(&p, &udp), None, "same name, other protocol");
        let missing = port("x", 80, Some(IntOrString::String("metrics".into())));
        assert_eq!(find_port(&p, &missing), None);
        // A sidecar's named port counts; a plain init container's does not.
        let init = |restart: Option<&str>| Container {
            name: "side".into(),
            restart_policy: restart.map(Into::into),
            ports: Some(vec![ContainerPort {
                name: Some("metrics".into()),
                container_port: 9090,
                ..Default::default()
            }]),
            ..Default::default()
        };
        p.spec.as_mut().unwrap().init_containers = Some(vec![init(None)]);
        assert_eq!(find_port(&p, &missing), None);
        p.spec.as_mut().unwrap().init_containers = Some(vec![init(Some("Always"))]);
        assert_eq!(find_port(&p, &missing), Some(9090));
    }

    #[test]
    fn hostname_is_set_only_when_the_pod_names_the_service_as_subdomain() {
        let s = service("db", &[("a", "b")], vec![]);
        let mut p = pod("db-0", &[], "10.0.0.1");
        p.spec.as_mut().unwrap().hostname = Some("db-0".into());
        assert_eq!(hostname(&p, &s), None);
        p.spec.as_mut().unwrap().subdomain = Some("db".into());
        assert_eq!(hostname(&p, &s).as_deref(), Some("db-0"));
        p.metadata.namespace = Some("other".into());
        assert_eq!(hostname(&p, &s), None);
    }

    #[test]
    fn the_trigger_time_is_the_latest_readiness_change_or_the_service_creation() {
        let s = service("s", &[("a", "b")], vec![]);
        assert_eq!(last_change_trigger_time(&s, []), Some(time(0)));
        let a = pod("a", &[], "10.0.0.1");
        let mut b = pod("b", &[], "10.0.0.2");
        b.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(time(30));
        assert_eq!(last_change_trigger_time(&s, [&a, &b]), Some(time(30)));
        assert_eq!(format_time(&time(30)), "2023-11-14T22:13:50.000000000Z");
    }
}
