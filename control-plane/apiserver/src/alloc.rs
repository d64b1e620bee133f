//! ClusterIP and NodePort allocation for Services.
//!
//! Each allocated IP or port is a key of its own in the store
//! (`/registry/allocations/{clusterips,nodeports}/<value>` holding the
//! owning Service's `ns/name`), claimed with a create-if-absent. The store's
//! compare-and-swap is the lock, so concurrent creates on any number of API
//! servers never hand out one value twice. A claim is made before the
//! Service is written and dropped if that write fails; a crash between the
//! two leaves an orphan that [`Allocator::repair`] removes at startup, like
//! upstream's repair controllers.
use std::{collections::HashSet, net::Ipv4Addr, ops::RangeInclusive};

use serde_json::{Value, json};
use sluice_store::{ListRequest, Store, StoreError};

use crate::registry::{self, Corrupt};

const IP_PREFIX: &str = "/registry/allocations/clusterips/";
const PORT_PREFIX: &str = "/registry/allocations/nodeports/";
const SERVICES_PREFIX: &str = "/registry/core/services/";

#[derive(Debug)]
pub enum AllocError {
    /// A requested value is taken or outside the range: 422 on the field.
    Invalid(String, String),
    /// Nothing left to hand out.
    Full(String),
    /// The random source failed.
    Random(getrandom::Error),
    Store(StoreError),
}

impl From<StoreError> for AllocError {
    fn from(e: StoreError) -> Self {
        AllocError::Store(e)
    }
}

/// An IPv4 CIDR as `--service-cidr` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR like 10.96.0.0/12");
        let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&bits) {
            return Err(format!("{s:?}: the prefix length must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - bits);
        if u32::from(ip) & !mask != 0 {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(Cidr {
            base: u32::from(ip),
            bits,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.bits)
    }
}

impl Cidr {
    fn size(&self) -> u32 {
        1u32 << (32 - self.bits)
    }

    /// Usable addresses: not the network or broadcast address.
    fn usable(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.base && v < self.base + self.size() - 1
    }

    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1 + n % (self.size() - 2))
    }
}

pub struct Allocator {
    pub cidr: Cidr,
    pub node_ports: RangeInclusive<u16>,
}

/// Allocation keys one Service write took; released if the write fails.
#[derive(Default, Debug)]
pub struct Claims(pub Vec<String>);

fn rand_u32() -> Result<u32, AllocError> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(AllocError::Random)?;
    Ok(u32::from_le_bytes(b))
}

/// What one repair pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Orphaned allocations deleted.
    pub removed: usize,
    /// Stored Services that could not be read: their allocations are kept.
    pub unparsable: usize,
}

/// The Service's allocated values (ClusterIP and node ports) as keys; an
/// ExternalName service holds none.
fn held(spec: &Value) -> HashSet<String> {
    let mut out = HashSet::new();
    if spec["type"] == "ExternalName" {
        return out;
    }
    if let Some(ip) = spec["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty() && *s != "None")
    {
        out.insert(format!("{IP_PREFIX}{ip}"));
    }
    for p in spec["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_i64() {
            out.insert(format!("{PORT_PREFIX}{n}"));
        }
    }
    out
}

fn needs_node_ports(spec: &Value) -> bool {
    match spec["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec["allocateLoadBalancerNodePorts"] != false,
        _ => false,
    }
}

impl Allocator {
    /// Fills in and claims the ClusterIP and node ports of a (defaulted,
    /// validated) Service `owner` = "ns/name". On update, `old` is the
    /// stored spec: its ClusterIP is kept, and a port keeps its node port.
    /// On error, everything claimed here is released again.
    pub async fn claim(
        &self,
        store: &dyn Store,
        owner: &str,
        spec: &mut Value,
        old: Option<&Value>,
    ) -> Result<Claims, AllocError> {
        let mut claims = Claims::default();
        match self.claim_inner(store, owner, spec, old, &mut claims).await {
            Ok(()) => Ok(claims),
            Err(e) => {
                self.release(store, owner, claims.0).await;
                Err(e)
            }
        }
    }

    async fn claim_inner(
        &self,
        store: &dyn Store,
        owner: &str,
        spec: &mut Value,
        old: Option<&Value>,
        claims: &mut Claims,
    ) -> Result<(), AllocError> {
        let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
        if ty == "ExternalName" {
            return Ok(());
        }
        let old_held = old.map(held).unwrap_or_default();
        // ClusterIP: kept from the stored object, requested, or allocated.
        let mut ip = spec["clusterIP"].as_str().unwrap_or_default().to_string();
        if ip.is_empty()
            && let Some(was) = old.and_then(|o| o["clusterIP"].as_str())
        {
            ip = was.to_string();
        }
        if ip != "None" {
            if ip.is_empty() {
                ip = self.allocate_ip(store, owner, claims).await?;
            } else {
                let addr: Ipv4Addr = ip.parse().map_err(|_| {
                    AllocError::Invalid(
                        "spec.clusterIPs[0]".into(),
                        format!("Invalid value: {ip:?}: must be a valid IPv4 address"),
                    )
                })?;
                if !self.cidr.usable(addr) {
                    return Err(AllocError::Invalid(
                        "spec.clusterIPs[0]".into(),
                        format!(
                            "Invalid value: {ip:?}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                            self.cidr
                        ),
                    ));
                }
                let key = format!("{IP_PREFIX}{ip}");
                if !old_held.contains(&key) && !self.take(store, owner, &key, claims).await? {
                    return Err(AllocError::Invalid(
                        "spec.clusterIPs[0]".into(),
                        format!(
                            "Invalid value: {ip:?}: failed to allocate IP {ip}: provided IP is already allocated"
                        ),
                    ));
                }
            }
        }
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);

        // Node ports.
        let want = needs_node_ports(spec);
        let old_ports: Vec<Value> = old
            .and_then(|o| o["ports"].as_array().cloned())
            .unwrap_or_default();
        let n = spec["ports"].as_array().map_or(0, Vec::len);
        for i in 0..n {
            let p = &spec["ports"][i];
            if !want {
                if let Some(m) = spec["ports"][i].as_object_mut() {
                    m.remove("nodePort");
                }
                continue;
            }
            let requested = p["nodePort"].as_i64();
            let port = match requested {
                Some(n) => {
                    if !(i64::from(*self.node_ports.start())..=i64::from(*self.node_ports.end()))
                        .contains(&n)
                    {
                        return Err(AllocError::Invalid(
                            format!("spec.ports[{i}].nodePort"),
                            format!(
                                "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}",
                                self.node_ports.start(),
                                self.node_ports.end()
                            ),
                        ));
                    }
                    let key = format!("{PORT_PREFIX}{n}");
                    let reused = old_held.contains(&key) || claims.0.contains(&key);
                    if !reused && !self.take(store, owner, &key, claims).await? {
                        return Err(AllocError::Invalid(
                            format!("spec.ports[{i}].nodePort"),
                            format!("Invalid value: {n}: provided port is already allocated"),
                        ));
                    }
                    n
                }
                None => {
                    // The same port (by name, else number and protocol)
                    // keeps the node port it had.
                    let same = |o: &&Value| {
                        if p["name"].as_str().is_some_and(|n| !n.is_empty()) {
                            o["name"] == p["name"]
                        } else {
                            o["port"] == p["port"] && o["protocol"] == p["protocol"]
                        }
                    };
                    match old_ports
                        .iter()
                        .find(same)
                        .and_then(|o| o["nodePort"].as_i64())
                    {
                        Some(n) => n,
                        None => self.allocate_port(store, owner, claims).await?,
                    }
                }
            };
            spec["ports"][i]["nodePort"] = json!(port);
        }
        Ok(())
    }

    /// Creates `key` for `owner`; true if it is now `owner`'s.
    async fn take(
        &self,
        store: &dyn Store,
        owner: &str,
        key: &str,
        claims: &mut Claims,
    ) -> Result<bool, AllocError> {
        match store.create(key, owner.as_bytes().to_vec()).await {
            Ok(_) => {
                claims.0.push(key.to_string());
                Ok(true)
            }
            // Taken, even if by an earlier incarnation of this Service or
            // a concurrent request for it: what the stored object holds
            // (`old`) is checked before coming here, anything else is not
            // ours to share.
            Err(StoreError::AlreadyExists(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Random probes first (cheap in a large range), then a scan of what is
    /// taken (certain in a nearly full one).
    async fn allocate_ip(
        &self,
        store: &dyn Store,
        owner: &str,
        claims: &mut Claims,
    ) -> Result<String, AllocError> {
        for _ in 0..16 {
            let ip = self.cidr.nth(rand_u32()?).to_string();
            if self
                .take(store, owner, &format!("{IP_PREFIX}{ip}"), claims)
                .await?
            {
                return Ok(ip);
            }
        }
        let taken = taken(store, IP_PREFIX).await?;
        let start = rand_u32()?;
        for k in 0..self.cidr.size() - 2 {
            let ip = self.cidr.nth(start.wrapping_add(k)).to_string();
            if !taken.contains(&ip)
                && self
                    .take(store, owner, &format!("{IP_PREFIX}{ip}"), claims)
                    .await?
            {
                return Ok(ip);
            }
        }
        Err(AllocError::Full(format!(
            "failed to allocate a serviceIP: range is full ({})",
            self.cidr
        )))
    }

    async fn allocate_port(
        &self,
        store: &dyn Store,
        owner: &str,
        claims: &mut Claims,
    ) -> Result<i64, AllocError> {
        let (lo, hi) = (
            u32::from(*self.node_ports.start()),
            u32::from(*self.node_ports.end()),
        );
        let span = hi - lo + 1;
        let taken = taken(store, PORT_PREFIX).await?;
        let start = rand_u32()?;
        for k in 0..span {
            let port = lo + start.wrapping_add(k) % span;
            if !taken.contains(&port.to_string())
                && self
                    .take(store, owner, &format!("{PORT_PREFIX}{port}"), claims)
                    .await?
            {
                return Ok(i64::from(port));
            }
        }
        Err(AllocError::Full(format!(
            "failed to allocate a nodePort: range is full ({lo}-{hi})"
        )))
    }

    /// Deletes `keys` if `owner` still holds them.
    pub async fn release(&self, store: &dyn Store, owner: &str, keys: Vec<String>) {
        for key in keys {
            if let Ok(Some(kv)) = store.get(&key).await
                && kv.value == owner.as_bytes()
                && let Err(e) = store.delete(&key, Some(kv.mod_revision)).await
            {
                tracing::warn!(%key, "releasing an allocation: {e}");
            }
        }
    }

    /// After a Service write: what the old spec held and the new does not.
    pub async fn release_dropped(
        &self,
        store: &dyn Store,
        owner: &str,
        old: &Value,
        new: Option<&Value>,
    ) {
        let keep = new.map(held).unwrap_or_default();
        let gone: Vec<String> = held(old).difference(&keep).cloned().collect();
        self.release(store, owner, gone).await;
    }

    /// One repair pass: removes allocations whose Service is gone or no
    /// longer uses them (left by a crash or an ambiguous store error
    /// between claim and write) once two passes in a row have seen them
    /// unchanged, so another server's claim that is still in flight is
    /// never taken away. `suspects` carries the previous pass's finds.
    /// A Service that is stored but cannot be read keeps everything
    /// allocated to it (freeing it would hand its IP to the next Service)
    /// and is reported.
    pub async fn repair(
        &self,
        store: &dyn Store,
        suspects: &mut std::collections::HashMap<String, i64>,
    ) -> Result<RepairReport, StoreError> {
        let mut removed = 0;
        let mut unparsable = HashSet::new();
        let mut now = std::collections::HashMap::new();
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            let page = store
                .list(ListRequest {
                    prefix,
                    ..Default::default()
                })
                .await?;
            for kv in page.kvs {
                let owner = String::from_utf8_lossy(&kv.value).into_owned();
                let used = match store.get(&format!("{SERVICES_PREFIX}{owner}")).await? {
                    None => false,
                    Some(svc) => match readable_service(&svc) {
                        Ok(spec) => held(&spec).contains(&kv.key),
                        Err(c) => {
                            tracing::error!(
                                key = %c.key, reason = %c.reason, allocation = %kv.key,
                                "allocation repair: the owning Service cannot be read; keeping its allocation"
                            );
                            unparsable.insert(c.key);
                            true
                        }
                    },
                };
                if used {
                    continue;
                }
                if suspects.get(&kv.key) != Some(&kv.mod_revision) {
                    now.insert(kv.key, kv.mod_revision);
                    continue;
                }
                match store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(_) => removed += 1,
                    Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        *suspects = now;
        Ok(RepairReport {
            removed,
            unparsable: unparsable.len(),
        })
    }

    /// Repairs every `every`, forever (the server's background task);
    /// `done` hears about every pass that completed.
    pub async fn repair_loop(
        &self,
        store: &dyn Store,
        every: std::time::Duration,
        done: impl Fn(&RepairReport),
    ) {
        let mut suspects = std::collections::HashMap::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match self.repair(store, &mut suspects).await {
                Ok(report) => {
                    if report.removed > 0 {
                        tracing::info!(released = report.removed, "allocations no Service holds");
                    }
                    done(&report);
                }
                Err(e) => tracing::warn!(error = %e, "allocation repair"),
            }
        }
    }
}

/// The spec of a stored Service, read through its type: a Service whose
/// spec cannot be trusted to say what it holds is not readable.
fn readable_service(kv: &sluice_store::KeyValue) -> Result<Value, Corrupt> {
    let corrupt = |reason: String| Corrupt {
        key: kv.key.clone(),
        reason,
    };
    let r = registry::services().ok_or_else(|| corrupt("services are not served".into()))?;
    let v = r.parse_stored(&kv.key, &kv.value)?;
    let typed = (r.decode)(&v).map_err(|e| corrupt(format!("not a Service: {e}")))?;
    Ok(typed.object["spec"].clone())
}

/// The values (last key segment) allocated under `prefix`.
async fn taken(store: &dyn Store, prefix: &str) -> Result<HashSet<String>, StoreError> {
    let page = store
        .list(ListRequest {
            prefix,
            ..Default::default()
        })
        .await?;
    Ok(page
        .kvs
        .into_iter()
        .filter_map(|kv| kv.key.strip_prefix(prefix).map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_name_the_bad_value() {
        let c: Cidr = "10.96.0.0/12".parse().expect("valid");
        assert_eq!(c.size(), 1 << 20);
        assert!(c.usable("10.96.0.1".parse().expect("ip")));
        assert!(!c.usable("10.96.0.0".parse().expect("ip")));
        assert!(!c.usable("10.111.255.255".parse().expect("ip")));
        assert!(!c.usable("10.112.0.1".parse().expect("ip")));
        assert!(
            "10.96.0.1/12"
                .parse::<Cidr>()
                .expect_err("host bits")
                .contains("10.96.0.1/12")
        );
        assert!("nope".parse::<Cidr>().is_err());
        let small: Cidr = "10.0.0.0/30".parse().expect("valid");
        let all: HashSet<Ipv4Addr> = (0..10).map(|n| small.nth(n)).collect();
        assert_eq!(
            all,
            ["10.0.0.1", "10.0.0.2"]
                .iter()
                .map(|s| s.parse().expect("ip"))
                .collect()
        );
    }

    #[tokio::test]
    async fn repair_removes_an_orphan_only_on_the_second_sighting() {
        use sluice_store::embedded::{Embedded, Options};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Embedded::open(&dir.path().join("s.redb"), Options::default()).expect("store");
        let svc = json!({"metadata": {"name": "web", "namespace": "ns"},
                         "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}});
        store
            .create(
                "/registry/core/services/ns/web",
                serde_json::to_vec(&svc).expect("json"),
            )
            .await
            .expect("service");
        for (key, owner) in [
            ("clusterips/10.96.0.5", "ns/web"),
            ("clusterips/10.96.0.6", "ns/gone"),
        ] {
            store
                .create(
                    &format!("/registry/allocations/{key}"),
                    owner.as_bytes().to_vec(),
                )
                .await
                .expect("claim");
        }
        let a = Allocator {
            cidr: "10.96.0.0/12".parse().expect("cidr"),
            node_ports: 30000..=32767,
        };
        let mut suspects = std::collections::HashMap::new();
        assert_eq!(
            a.repair(&store, &mut suspects)
                .await
                .expect("pass 1")
                .removed,
            0
        );
        assert_eq!(
            a.repair(&store, &mut suspects)
                .await
                .expect("pass 2")
                .removed,
            1
        );
        assert!(
            store
                .get("/registry/allocations/clusterips/10.96.0.6")
                .await
                .expect("get")
                .is_none()
        );
        assert!(
            store
                .get("/registry/allocations/clusterips/10.96.0.5")
                .await
                .expect("get")
                .is_some()
        );
    }

    /// A Service stored as garbage keeps its ClusterIP and NodePort
    /// through any number of repair passes (each reports it), so a later
    /// Service asking for that IP or port is refused instead of given a
    /// duplicate.
    #[tokio::test]
    async fn repair_keeps_what_an_unreadable_service_holds() {
        use sluice_store::embedded::{Embedded, Options};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Embedded::open(&dir.path().join("s.redb"), Options::default()).expect("store");
        let a = Allocator {
            cidr: "10.96.0.0/12".parse().expect("cidr"),
            node_ports: 30000..=32767,
        };
        // A real Service claims an IP and a node port...
        let mut spec = json!({"type": "NodePort", "clusterIP": "10.96.0.7",
                              "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30007}]});
        a.claim(&store, "ns/web", &mut spec, None)
            .await
            .expect("claim");
        // ...and what is stored under its key is not a Service.
        for garbage in [
            &b"\x00\xffnot json"[..],
            b"null",
            br#"{"metadata":{"name":"web"},"spec":{"ports":"80"}}"#,
        ] {
            let key = "/registry/core/services/ns/web";
            match store.get(key).await.expect("get") {
                Some(kv) => store
                    .update(key, garbage.to_vec(), kv.mod_revision)
                    .await
                    .map(|_| ()),
                None => store.create(key, garbage.to_vec()).await.map(|_| ()),
            }
            .expect("write garbage");
            let mut suspects = std::collections::HashMap::new();
            for pass in 0..3 {
                let report = a.repair(&store, &mut suspects).await.expect("repair");
                assert_eq!(
                    report,
                    RepairReport {
                        removed: 0,
                        unparsable: 1
                    },
                    "pass {pass} over {:?}",
                    String::from_utf8_lossy(garbage)
                );
            }
            let mut other = json!({"type": "NodePort", "clusterIP": "10.96.0.7",
                                   "ports": [{"port": 80, "protocol": "TCP"}]});
            match a.claim(&store, "ns/other", &mut other, None).await {
                Err(AllocError::Invalid(field, msg)) => {
                    assert_eq!(field, "spec.clusterIPs[0]");
                    assert!(msg.contains("already allocated"), "{msg}");
                }
                r => panic!("the unreadable Service's IP was handed out again: {r:?} {other}"),
            }
            let mut other = json!({"type": "NodePort", "clusterIP": "10.96.0.8",
                                   "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30007}]});
            match a.claim(&store, "ns/other", &mut other, None).await {
                Err(AllocError::Invalid(field, _)) => assert_eq!(field, "spec.ports[0].nodePort"),
                r => panic!("the unreadable Service's node port was handed out again: {r:?}"),
            }
        }
    }

    #[test]
    fn a_service_holds_its_ip_and_node_ports() {
        let spec = json!({"clusterIP": "10.96.0.9", "ports": [{"nodePort": 30001}, {"port": 1}]});
        let h = held(&spec);
        assert!(h.contains("/registry/allocations/clusterips/10.96.0.9"));
        assert!(h.contains("/registry/allocations/nodeports/30001"));
        assert_eq!(h.len(), 2);
        assert!(held(&json!({"clusterIP": "None"})).is_empty());
    }
}
