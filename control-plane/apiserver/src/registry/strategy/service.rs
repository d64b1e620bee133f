//! Services (core/v1): upstream's defaults, the type-dependent fields a
//! type change drops, port and policy validation, and the ClusterIP and
//! NodePort allocation (alloc.rs) as the create/update/delete hooks.
use async_trait::async_trait;
use serde_json::{Value, json};

use super::{
    Causes, NameRule, Strategy,
    fields::{port_name_ok, port_range, protocol, required, set_default},
};
use crate::{
    alloc::Claims,
    handlers::Api,
    http::status::ApiError,
    registry::{
        Resource,
        table::{Column, labels, or_none, s},
    },
};

pub struct Service;

pub static SERVICE: Service = Service;

#[async_trait]
impl Strategy for Service {
    fn initial_status(&self) -> Value {
        json!({"loadBalancer": {}})
    }

    fn prepare_update(&self, new: &mut Value, old: &Value) {
        drop_type_dependent(new, old);
    }

    fn default(&self, obj: &mut Value) {
        default_service(&mut obj["spec"]);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        validate_service(&obj["spec"], old.map(|o| &o["spec"]), &mut c);
        c
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035
    }

    async fn claim(
        &self,
        api: &Api,
        r: &Resource,
        owner: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Claims, ApiError> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.alloc
            .claim(
                api.store.as_ref(),
                owner,
                &mut obj["spec"],
                old.map(|o| &o["spec"]),
            )
            .await
            .map_err(|e| ApiError::alloc(r, &name, e))
    }

    async fn release(&self, api: &Api, owner: &str, gone: &Value, kept: Option<&Value>) {
        api.alloc
            .release_dropped(
                api.store.as_ref(),
                owner,
                &gone["spec"],
                kept.map(|k| &k["spec"]),
            )
            .await;
    }

    fn extra_columns(&self) -> Vec<Column> {
        vec![
            Column {
                name: "Type",
                priority: 0,
                cell: |o| Value::from(s(&o["spec"]["type"])),
            },
            Column {
                name: "Cluster-IP",
                priority: 0,
                cell: |o| or_none(s(&o["spec"]["clusterIP"])),
            },
            Column {
                name: "External-IP",
                priority: 0,
                cell: |o| {
                    let mut ips: Vec<String> = o["status"]["loadBalancer"]["ingress"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|i| s(&i["ip"]))
                        .filter(|i| !i.is_empty())
                        .collect();
                    ips.extend(
                        o["spec"]["externalIPs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(s),
                    );
                    if o["spec"]["type"] == "LoadBalancer" && ips.is_empty() {
                        Value::from("<pending>")
                    } else {
                        or_none(ips.join(","))
                    }
                },
            },
            Column {
                name: "Port(s)",
                priority: 0,
                cell: |o| {
                    or_none(
                        o["spec"]["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|p| {
                                let node = p["nodePort"]
                                    .as_i64()
                                    .map(|n| format!(":{n}"))
                                    .unwrap_or_default();
                                format!("{}{node}/{}", s(&p["port"]), s(&p["protocol"]))
                            })
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                },
            },
            Column {
                name: "Selector",
                priority: 1,
                cell: |o| or_none(labels(&o["spec"]["selector"])),
            },
        ]
    }
}

fn default_service(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec["type"].as_str().unwrap_or_default().to_string();
    if ty == "ExternalName" {
        return;
    }
    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if spec["sessionAffinity"] == "ClientIP" {
        set_default(spec, "sessionAffinityConfig", json!({}));
        set_default(&mut spec["sessionAffinityConfig"], "clientIP", json!({}));
        set_default(
            &mut spec["sessionAffinityConfig"]["clientIP"],
            "timeoutSeconds",
            json!(10800),
        );
    }
    set_default(spec, "ipFamilies", json!(["IPv4"]));
    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    for p in spec["ports"].as_array_mut().into_iter().flatten() {
        set_default(p, "protocol", json!("TCP"));
        if p.get("targetPort").is_none_or(Value::is_null) {
            p["targetPort"] = p["port"].clone();
        }
    }
}

/// On a Service update, what the server filled in for the old type and
/// the new type has no use for goes (upstream's dropTypeDependentFields):
/// node ports and externalTrafficPolicy when leaving NodePort or
/// LoadBalancer, the ClusterIP when becoming ExternalName. Only values
/// unchanged from the stored object are dropped; a value the client set
/// anew is still validated. An omitted ClusterIP keeps the stored one.
fn drop_type_dependent(new: &mut Value, old: &Value) {
    let (spec, was) = (&mut new["spec"], &old["spec"]);
    if !spec.is_object() {
        return;
    }
    if spec["clusterIP"].as_str().is_none_or(str::is_empty) && !was["clusterIP"].is_null() {
        spec["clusterIP"] = was["clusterIP"].clone();
        spec["clusterIPs"] = was["clusterIPs"].clone();
    }
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    let unchanged = |spec: &Value, f: &str| !spec[f].is_null() && spec[f] == was[f];
    let drop = |spec: &mut Value, f: &str| {
        if unchanged(spec, f)
            && let Some(m) = spec.as_object_mut()
        {
            m.remove(f);
        }
    };
    if ty == "ClusterIP" || ty == "ExternalName" {
        let old_ports: Vec<i64> = was["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_i64())
            .collect();
        for p in spec["ports"].as_array_mut().into_iter().flatten() {
            if p["nodePort"]
                .as_i64()
                .is_some_and(|n| old_ports.contains(&n))
                && let Some(m) = p.as_object_mut()
            {
                m.remove("nodePort");
            }
        }
        for f in [
            "externalTrafficPolicy",
            "healthCheckNodePort",
            "allocateLoadBalancerNodePorts",
        ] {
            drop(spec, f);
        }
    }
    if ty == "ExternalName" {
        for f in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
        ] {
            drop(spec, f);
        }
    }
}

fn validate_service(spec: &Value, old: Option<&Value>, c: &mut Causes) {
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        c.push((
            "spec.type".into(),
            format!(
                "Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
            ),
        ));
        return;
    }
    let headless = spec["clusterIP"] == "None";
    let ports = spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if ty == "ExternalName" {
        if spec["externalName"].as_str().is_none_or(str::is_empty) {
            required(c, "spec.externalName");
        }
    } else if ports.is_empty() && !headless {
        required(c, "spec.ports");
    }
    let mut seen: Vec<(i64, &str)> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        port_range(c, format!("{f}.port"), &p["port"], 1);
        protocol(c, format!("{f}.protocol"), &p["protocol"]);
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            required(c, &format!("{f}.name"));
        } else if !name.is_empty() && names.contains(&name) {
            c.push((format!("{f}.name"), format!("Duplicate value: {name:?}")));
        }
        names.push(name);
        let key = (
            p["port"].as_i64().unwrap_or(0),
            p["protocol"].as_str().unwrap_or("TCP"),
        );
        if seen.contains(&key) {
            c.push((
                f.clone(),
                format!("Duplicate value: {{port: {}, protocol: {}}}", key.0, key.1),
            ));
        }
        seen.push(key);
        match &p["targetPort"] {
            Value::Null => {}
            Value::String(s) if port_name_ok(s) => {}
            Value::String(s) => c.push((
                format!("{f}.targetPort"),
                format!(
                    "Invalid value: {s:?}: must be an IANA service name (at most 15 lower case letters, digits and '-', with a letter)"
                ),
            )),
            v => port_range(c, format!("{f}.targetPort"), v, 1),
        }
        if !p["nodePort"].is_null() {
            if ty == "ClusterIP" || ty == "ExternalName" {
                c.push((
                    format!("{f}.nodePort"),
                    format!("Forbidden: may not be used when `type` is '{ty}'"),
                ));
            } else {
                port_range(c, format!("{f}.nodePort"), &p["nodePort"], 1);
            }
        }
    }
    for (field, allowed) in [
        ("sessionAffinity", &["None", "ClientIP"][..]),
        ("externalTrafficPolicy", &["Cluster", "Local"][..]),
        ("internalTrafficPolicy", &["Cluster", "Local"][..]),
    ] {
        if let Some(v) = spec[field].as_str()
            && !allowed.contains(&v)
        {
            c.push((
                format!("spec.{field}"),
                format!("Unsupported value: {v:?}: supported values: {allowed:?}"),
            ));
        }
    }
    if !spec["externalTrafficPolicy"].is_null() && !matches!(ty, "NodePort" | "LoadBalancer") {
        c.push((
            "spec.externalTrafficPolicy".into(),
            "Invalid value: may only be set when `type` is 'NodePort' or 'LoadBalancer'".into(),
        ));
    }
    if let Some(t) = spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"].as_i64()
        && !(1..=86400).contains(&t)
    {
        c.push((
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
            format!("Invalid value: {t}: must be greater than 0 and less than 86400"),
        ));
    }
    for (i, ip) in spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if ip
            .as_str()
            .and_then(|s| s.parse::<std::net::IpAddr>().ok())
            .is_none()
        {
            c.push((
                format!("spec.externalIPs[{i}]"),
                format!("Invalid value: {ip}: must be a valid IP address"),
            ));
        }
    }
    match spec["clusterIP"].as_str() {
        None | Some("" | "None") => {}
        Some(ip) if ip.parse::<std::net::Ipv4Addr>().is_err() => c.push((
            "spec.clusterIPs[0]".into(),
            format!("Invalid value: {ip:?}: must be a valid IPv4 address"),
        )),
        Some(_) => {}
    }
    if let Some(old) = old
        && let Some(was) = old["clusterIP"].as_str().filter(|s| !s.is_empty())
        && ty != "ExternalName"
        && spec["clusterIP"].as_str().is_some_and(|now| now != was)
    {
        c.push((
            "spec.clusterIPs[0]".into(),
            format!("Invalid value: {:?}: field is immutable", spec["clusterIP"]),
        ));
    }
}
