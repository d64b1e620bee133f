//! From Kubernetes objects to the desired LB state of one node.
//!
//! Pure: no maps, no I/O, so every rule kube-proxy users rely on (port
//! resolution, traffic policies, terminating endpoints, frontends per
//! service type) is unit-tested here. Whatever the source (manifests dir or
//! API server), a snapshot of Services and EndpointSlices goes through
//! [`desired`], and the reconciler only diffs its output against the maps.
//!
//! An object that fails validation is skipped whole and reported with its
//! origin; objects around it are still programmed.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use sluice_common::lb::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, Frontend, PROTO_TCP, PROTO_UDP, SVC_F_AFFINITY,
    SVC_F_EXTERNAL, SVC_F_NODEPORT,
};

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// An object and where it came from (a file path, or the API server).
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub origin: Arc<str>,
    pub obj: T,
}

/// One consistent view of the objects a source knows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Sourced<Service>>,
    pub slices: Vec<Sourced<EndpointSlice>>,
    /// Problems found while reading (parse errors), reported with the rest.
    pub errors: Vec<ObjectError>,
}

/// A rejected object: where, which, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    pub origin: Arc<str>,
    /// `Service ns/name`, `EndpointSlice ns/name`, or empty for a whole file.
    pub object: String,
    pub message: String,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.object, self.message)
        }
    }
}

/// What this node needs to know about itself.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// Matched against `endpoints[].nodeName` for traffic policy Local.
    pub name: String,
    /// Addresses NodePort frontends are opened on.
    pub node_ips: Vec<Ipv4Addr>,
}

/// A backend as the data plane sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

impl BackendAddr {
    /// The name Maglev hashes: stable across nodes and restarts.
    pub fn maglev_name(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// One backend set of one service port: a Maglev table and the frontends
/// that use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    /// `ns/name:port/PROTO`, `/ext` appended for an external-only set.
    pub name: String,
    /// Frontend -> `SVC_F_*` flags.
    pub frontends: BTreeMap<Frontend, u32>,
    /// Backends that receive new connections (the Maglev table's set).
    pub table: BTreeSet<BackendAddr>,
    pub affinity_timeout_s: u32,
}

/// The whole desired LB state of the node.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// By [`DesiredService::name`].
    pub services: BTreeMap<String, DesiredService>,
    /// Every backend any service still knows (including terminating ones,
    /// so existing flows and `bpf lb list` keep them) with `BACKEND_F_*`.
    pub backends: BTreeMap<BackendAddr, u8>,
    pub errors: Vec<ObjectError>,
}

fn proto_of(p: Option<&str>) -> Result<u8, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(PROTO_TCP),
        "UDP" => Ok(PROTO_UDP),
        other => Err(format!("protocol {other:?} is not supported (TCP, UDP)")),
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    }
}

fn port_u16(v: i32, field: &str) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{field}: port {v} out of range (1-65535)"))
}

fn ipv4(s: &str, field: &str) -> Result<Ipv4Addr, String> {
    s.parse()
        .map_err(|_| format!("{field}: {s:?} is not an IPv4 address"))
}

/// A service port after validation.
struct PortSpec {
    name: String,
    port: u16,
    proto: u8,
    node_port: Option<u16>,
}

/// A validated service, before endpoints are attached.
struct SvcSpec {
    key: String, // ns/name
    cluster_ips: Vec<Ipv4Addr>,
    external_ips: Vec<Ipv4Addr>,
    lb_ips: Vec<Ipv4Addr>,
    node_ports: bool,
    ports: Vec<PortSpec>,
    affinity_timeout_s: u32,
    etp_local: bool,
    itp_local: bool,
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

fn validate_service(svc: &Service) -> Result<Option<SvcSpec>, String> {
    let name = svc.metadata.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    let spec = svc.spec.as_ref().ok_or("spec is required")?;
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    match ty {
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        // Resolved by DNS, never by the proxy.
        "ExternalName" => return Ok(None),
        other => return Err(format!("spec.type: unknown service type {other:?}")),
    }
    let mut cluster_ips = Vec::new();
    let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(v), _) if !v.is_empty() => v.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => vec![],
    };
    for ip in ips {
        if ip == "None" || ip.is_empty() {
            continue; // headless: DNS only
        }
        if ip.contains(':') {
            continue; // IPv6 family of a dual-stack service: not yet
        }
        cluster_ips.push(ipv4(ip, "spec.clusterIP")?);
    }
    let mut external_ips = Vec::new();
    for ip in spec.external_ips.iter().flatten() {
        if !ip.contains(':') {
            external_ips.push(ipv4(ip, "spec.externalIPs")?);
        }
    }
    let mut lb_ips = Vec::new();
    if ty == "LoadBalancer" {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            if let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.contains(':')) {
                lb_ips.push(ipv4(ip, "status.loadBalancer.ingress.ip")?);
            }
        }
    }
    let node_ports = matches!(ty, "NodePort" | "LoadBalancer");
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let proto =
            proto_of(p.protocol.as_deref()).map_err(|e| format!("{field}.protocol: {e}"))?;
        let port = port_u16(p.port, &format!("{field}.port"))?;
        if let Some(tp) = &p.target_port
            && let k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(v) = tp
        {
            port_u16(*v, &format!("{field}.targetPort"))?;
        }
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(v) => Some(port_u16(v, &format!("{field}.nodePort"))?),
        };
        if node_ports && node_port.is_none() && ty == "NodePort" {
            return Err(format!(
                "{field}.nodePort: required for type NodePort (nothing allocates it in manifests mode)"
            ));
        }
        if !seen.insert((port, proto)) {
            return Err(format!(
                "{field}: duplicate port {port}/{}",
                proto_name(proto)
            ));
        }
        ports.push(PortSpec {
            name: p.name.clone().unwrap_or_default(),
            port,
            proto,
            node_port,
        });
    }
    let affinity_timeout_s = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let t = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S as i32);
        if !(1..=86_400).contains(&t) {
            return Err(format!(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} out of range (1-86400)"
            ));
        }
        t as u32
    } else {
        0
    };
    Ok(Some(SvcSpec {
        key: ns_name(&svc.metadata),
        cluster_ips,
        external_ips,
        lb_ips,
        node_ports,
        ports,
        affinity_timeout_s,
        etp_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        itp_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
    }))
}

/// An endpoint after validation, for one slice port.
#[derive(Clone, Copy)]
struct Ep {
    addr: BackendAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// (service port name, proto) -> endpoints.
type SlicePorts = HashMap<(String, u8), Vec<Ep>>;

fn validate_slice(
    slice: &EndpointSlice,
    node: &NodeInfo,
) -> Result<Option<(String, SlicePorts)>, String> {
    let labels = slice.metadata.labels.as_ref();
    let svc_name = labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .ok_or_else(|| format!("metadata.labels: missing {SERVICE_NAME_LABEL}"))?;
    if slice.address_type != "IPv4" {
        return Ok(None); // IPv6/FQDN slices: not handled by the IPv4 data plane
    }
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    let mut out: SlicePorts = HashMap::new();
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let proto =
            proto_of(p.protocol.as_deref()).map_err(|e| format!("{field}.protocol: {e}"))?;
        let port = match p.port {
            Some(v) => port_u16(v, &format!("{field}.port"))?,
            None => continue, // "all ports": not meaningful for a ClusterIP proxy
        };
        ports.push((p.name.clone().unwrap_or_default(), proto, port));
    }
    let mut eps = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let Some(addr) = ep.addresses.first() else {
            continue;
        };
        let ip = ipv4(addr, &format!("endpoints[{i}].addresses[0]"))?;
        let c = ep.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        let local = !node.name.is_empty() && ep.node_name.as_deref() == Some(node.name.as_str());
        eps.push((ip, ready, serving, terminating, local));
    }
    for (name, proto, port) in ports {
        let list = out.entry((name, proto)).or_default();
        for &(ip, ready, serving, terminating, local) in &eps {
            list.push(Ep {
                addr: BackendAddr { ip, port, proto },
                ready,
                serving,
                terminating,
                local,
            });
        }
    }
    Ok(Some((format!("{ns}/{svc_name}"), out)))
}

/// The endpoints that get new connections, following kube-proxy: ready
/// ones; if there are none, serving-and-terminating ones (so a rolling
/// update of the last replica does not drop traffic on the floor).
fn usable(eps: &[Ep], local_only: bool) -> BTreeSet<BackendAddr> {
    let pool: Vec<&Ep> = eps.iter().filter(|e| !local_only || e.local).collect();
    let ready: BTreeSet<_> = pool
        .iter()
        .filter(|e| e.ready && !e.terminating)
        .map(|e| e.addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    pool.iter()
        .filter(|e| e.serving && e.terminating)
        .map(|e| e.addr)
        .collect()
}

fn service_port_name(p: &PortSpec, svc_key: &str) -> String {
    let port = if p.name.is_empty() {
        p.port.to_string()
    } else {
        p.name.clone()
    };
    format!("{svc_key}:{port}/{}", proto_name(p.proto))
}

/// Computes the desired state. Deterministic: services are processed in
/// (namespace, name) order, so on a conflict (a duplicate ClusterIP, two
/// services claiming one frontend) the first keeps it and the later one is
/// rejected, every time.
pub fn desired(snap: &Snapshot, node: &NodeInfo) -> Desired {
    let mut out = Desired {
        errors: snap.errors.clone(),
        ..Default::default()
    };
    // Valid services by ns/name.
    let mut specs: BTreeMap<String, (Arc<str>, SvcSpec)> = BTreeMap::new();
    for s in &snap.services {
        let object = format!("Service {}", ns_name(&s.obj.metadata));
        match validate_service(&s.obj) {
            Ok(Some(spec)) => {
                if specs.contains_key(&spec.key) {
                    out.errors.push(ObjectError {
                        origin: s.origin.clone(),
                        object,
                        message: "defined more than once; the first definition is used".into(),
                    });
                    continue;
                }
                specs.insert(spec.key.clone(), (s.origin.clone(), spec));
            }
            Ok(None) => {}
            Err(message) => out.errors.push(ObjectError {
                origin: s.origin.clone(),
                object,
                message,
            }),
        }
    }
    // Endpoints per service.
    let mut eps: HashMap<String, SlicePorts> = HashMap::new();
    for s in &snap.slices {
        let object = format!("EndpointSlice {}", ns_name(&s.obj.metadata));
        match validate_slice(&s.obj, node) {
            Ok(Some((svc, ports))) => {
                if !specs.contains_key(&svc) {
                    out.errors.push(ObjectError {
                        origin: s.origin.clone(),
                        object,
                        message: format!("Service {svc} not found (missing or invalid)"),
                    });
                    continue;
                }
                let e = eps.entry(svc).or_default();
                for (k, v) in ports {
                    e.entry(k).or_default().extend(v);
                }
            }
            Ok(None) => {}
            Err(message) => out.errors.push(ObjectError {
                origin: s.origin.clone(),
                object,
                message,
            }),
        }
    }
    let empty = SlicePorts::new();
    let mut owner: HashMap<Frontend, String> = HashMap::new();
    for (key, (origin, spec)) in &specs {
        let sp = eps.get(key).unwrap_or(&empty);
        let mut mine: Vec<DesiredService> = Vec::new();
        let mut backends: BTreeMap<BackendAddr, u8> = BTreeMap::new();
        for p in &spec.ports {
            let list: &[Ep] = sp
                .get(&(p.name.clone(), p.proto))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for e in list.iter().filter(|e| e.ready || e.serving) {
                let mut f = 0;
                if e.terminating || !e.ready {
                    f |= BACKEND_F_TERMINATING;
                }
                if e.local {
                    f |= BACKEND_F_LOCAL;
                }
                *backends.entry(e.addr).or_default() |= f;
            }
            let affinity = if spec.affinity_timeout_s > 0 {
                SVC_F_AFFINITY
            } else {
                0
            };
            let internal: BTreeMap<Frontend, u32> = spec
                .cluster_ips
                .iter()
                .map(|ip| (Frontend::new(ip.octets(), p.port, p.proto), affinity))
                .collect();
            let mut external: BTreeMap<Frontend, u32> = BTreeMap::new();
            for ip in spec.external_ips.iter().chain(&spec.lb_ips) {
                external.insert(
                    Frontend::new(ip.octets(), p.port, p.proto),
                    affinity | SVC_F_EXTERNAL,
                );
            }
            if let (true, Some(np)) = (spec.node_ports, p.node_port) {
                for ip in &node.node_ips {
                    external.insert(
                        Frontend::new(ip.octets(), np, p.proto),
                        affinity | SVC_F_EXTERNAL | SVC_F_NODEPORT,
                    );
                }
            }
            let int_set = usable(list, spec.itp_local);
            let ext_set = usable(list, spec.etp_local);
            let name = service_port_name(p, key);
            if external.is_empty() || int_set == ext_set {
                let mut frontends = internal;
                frontends.extend(external);
                mine.push(DesiredService {
                    name,
                    frontends,
                    table: int_set,
                    affinity_timeout_s: spec.affinity_timeout_s,
                });
            } else {
                mine.push(DesiredService {
                    name: name.clone(),
                    frontends: internal,
                    table: int_set,
                    affinity_timeout_s: spec.affinity_timeout_s,
                });
                mine.push(DesiredService {
                    name: format!("{name}/ext"),
                    frontends: external,
                    table: ext_set,
                    affinity_timeout_s: spec.affinity_timeout_s,
                });
            }
        }
        // All of this service's frontends must be free, or none is taken.
        let conflict = mine
            .iter()
            .flat_map(|d| d.frontends.keys())
            .find_map(|f| owner.get(f).map(|o| (*f, o.clone())));
        if let Some((f, other)) = conflict {
            out.errors.push(ObjectError {
                origin: origin.clone(),
                object: format!("Service {key}"),
                message: format!(
                    "frontend {}:{}/{} is already used by Service {other} (duplicate ClusterIP or external IP)",
                    Ipv4Addr::from(f.octets()),
                    f.host_port(),
                    proto_name(f.proto)
                ),
            });
            continue;
        }
        for d in mine {
            for f in d.frontends.keys() {
                owner.insert(*f, key.clone());
            }
            out.services.insert(d.name.clone(), d);
        }
        for (b, f) in backends {
            *out.backends.entry(b).or_default() |= f;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Sourced<Service> {
        Sourced {
            origin: "test.yaml".into(),
            obj: serde_yaml::from_str(yaml).expect("test yaml"),
        }
    }
    fn slice(yaml: &str) -> Sourced<EndpointSlice> {
        Sourced {
            origin: "test.yaml".into(),
            obj: serde_yaml::from_str(yaml).expect("test yaml"),
        }
    }
    fn node() -> NodeInfo {
        NodeInfo {
            name: "node-a".into(),
            node_ips: vec![Ipv4Addr::new(192, 0, 2, 10)],
        }
    }
    fn be(ip: [u8; 4], port: u16) -> BackendAddr {
        BackendAddr {
            ip: Ipv4Addr::from(ip),
            port,
            proto: PROTO_TCP,
        }
    }

    const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: web-port, protocol: TCP}
"#;

    const WEB_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.244.0.2]
  nodeName: node-a
- addresses: [10.244.0.3]
  conditions: {ready: true}
  nodeName: node-b
- addresses: [10.244.0.4]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-b
- addresses: [10.244.0.5]
  conditions: {ready: false, serving: false}
"#;

    #[test]
    fn cluster_ip_with_named_target_port_and_terminating_endpoint() {
        let snap = Snapshot {
            services: vec![svc(WEB)],
            slices: vec![slice(WEB_SLICE)],
            errors: vec![],
        };
        let d = desired(&snap, &node());
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let s = &d.services["default/web:http/TCP"];
        assert_eq!(
            s.frontends.keys().copied().collect::<Vec<_>>(),
            vec![Frontend::new([10, 96, 0, 10], 80, PROTO_TCP)]
        );
        // Named target port resolved through the slice's port: 8080.
        assert_eq!(
            s.table,
            [be([10, 244, 0, 2], 8080), be([10, 244, 0, 3], 8080)].into()
        );
        // The terminating endpoint stays known (existing flows), flagged;
        // the not-serving one is gone.
        assert_eq!(
            d.backends[&be([10, 244, 0, 4], 8080)],
            BACKEND_F_TERMINATING
        );
        assert_eq!(d.backends[&be([10, 244, 0, 2], 8080)], BACKEND_F_LOCAL);
        assert!(!d.backends.contains_key(&be([10, 244, 0, 5], 8080)));
    }

    #[test]
    fn only_terminating_endpoints_still_serve() {
        let s = WEB_SLICE.replace(
            "conditions: {ready: true}",
            "conditions: {ready: false, serving: false}",
        );
        let s = s.replace("- addresses: [10.244.0.2]\n  nodeName: node-a\n", "");
        let snap = Snapshot {
            services: vec![svc(WEB)],
            slices: vec![slice(&s)],
            errors: vec![],
        };
        let d = desired(&snap, &node());
        assert_eq!(
            d.services["default/web:http/TCP"].table,
            [be([10, 244, 0, 4], 8080)].into()
        );
    }

    #[test]
    fn no_endpoints_gives_an_empty_table_not_a_missing_service() {
        let snap = Snapshot {
            services: vec![svc(WEB)],
            slices: vec![],
            errors: vec![],
        };
        let d = desired(&snap, &node());
        assert!(d.services["default/web:http/TCP"].table.is_empty());
    }

    #[test]
    fn nodeport_with_local_policy_splits_internal_and_external_sets() {
        let np = WEB.replace(
            "spec:\n  clusterIP",
            "spec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  externalIPs: [198.51.100.7]\n  clusterIP",
        )
        .replace("protocol: TCP}", "protocol: TCP, nodePort: 30080}");
        let snap = Snapshot {
            services: vec![svc(&np)],
            slices: vec![slice(WEB_SLICE)],
            errors: vec![],
        };
        let d = desired(&snap, &node());
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let int = &d.services["default/web:http/TCP"];
        let ext = &d.services["default/web:http/TCP/ext"];
        assert_eq!(int.table.len(), 2);
        assert_eq!(ext.table, [be([10, 244, 0, 2], 8080)].into());
        assert_eq!(
            ext.frontends
                .get(&Frontend::new([192, 0, 2, 10], 30080, PROTO_TCP)),
            Some(&(SVC_F_EXTERNAL | SVC_F_NODEPORT))
        );
        assert_eq!(
            ext.frontends
                .get(&Frontend::new([198, 51, 100, 7], 80, PROTO_TCP)),
            Some(&SVC_F_EXTERNAL)
        );
    }

    #[test]
    fn affinity_and_multiple_ports() {
        let y = WEB.replace(
            "  ports:\n",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  ports:\n  - {name: dns, port: 53, protocol: UDP}\n",
        );
        let snap = Snapshot {
            services: vec![svc(&y)],
            slices: vec![],
            errors: vec![],
        };
        let d = desired(&snap, &node());
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let dns = &d.services["default/web:dns/UDP"];
        assert_eq!(dns.affinity_timeout_s, 60);
        assert_eq!(
            dns.frontends.values().copied().collect::<Vec<_>>(),
            vec![SVC_F_AFFINITY]
        );
        assert!(d.services.contains_key("default/web:http/TCP"));
    }

    #[test]
    fn duplicate_cluster_ip_rejects_the_later_service_only() {
        let other = WEB.replace("name: web,", "name: zzz,");
        let snap = Snapshot {
            services: vec![svc(&other), svc(WEB)],
            slices: vec![],
            errors: vec![],
        };
        let d = desired(&snap, &node());
        assert!(d.services.contains_key("default/web:http/TCP"));
        assert!(!d.services.keys().any(|k| k.starts_with("default/zzz")));
        assert_eq!(d.errors.len(), 1);
        assert_eq!(d.errors[0].object, "Service default/zzz");
        assert!(
            d.errors[0].message.contains("10.96.0.10:80/TCP"),
            "{}",
            d.errors[0]
        );
    }

    #[test]
    fn bad_objects_are_reported_and_skipped() {
        let bad_port = WEB
            .replace("name: web,", "name: bad,")
            .replace("port: 80", "port: 70000")
            .replace("10.96.0.10", "10.96.0.11");
        let orphan = WEB_SLICE.replace("service-name: web", "service-name: nope");
        let snap = Snapshot {
            services: vec![svc(WEB), svc(&bad_port)],
            slices: vec![slice(WEB_SLICE), slice(&orphan)],
            errors: vec![],
        };
        let d = desired(&snap, &node());
        assert_eq!(d.services.len(), 1, "{:?}", d.services.keys());
        let msgs: Vec<String> = d.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("Service default/bad") && m.contains("70000")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("EndpointSlice default/web-abc") && m.contains("default/nope")),
            "{msgs:?}"
        );
    }
}
