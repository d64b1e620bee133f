//! Defaulting and validation, as upstream's registry strategies do them,
//! for the fields sluice acts on: names, ports, Service types and
//! policies, pod templates and workload selectors. Runs on every create,
//! update and patch before anything is stored, so an invalid object is
//! answered with 422 and its field paths and leaves the store untouched.
use serde_json::{Value, json};

use crate::resources::{Resource, Sub};

/// `(field path, message)` pairs, upstream's `field.ErrorList` as text.
pub type Causes = Vec<(String, String)>;

/// Server-owned state a client cannot set on create: the status of
/// objects with a status subresource starts empty (or at its initial
/// phase), as upstream's PrepareForCreate does. Nodes keep theirs
/// (kubelets register with it).
pub fn prepare_create(r: &Resource, obj: &mut Value) {
    if !r.has(Sub::Status) || r.kind == "Node" {
        return;
    }
    obj["status"] = match r.kind {
        "Pod" => json!({"phase": "Pending"}),
        "Namespace" => json!({"phase": "Active"}),
        "Service" => json!({"loadBalancer": {}}),
        _ => json!({}),
    };
}

fn set_default(obj: &mut Value, field: &str, v: Value) {
    if obj.get(field).is_none_or(Value::is_null) {
        obj[field] = v;
    }
}

/// Fills unset fields with upstream's defaults.
pub fn default(r: &Resource, obj: &mut Value) {
    match r.kind {
        "Namespace" => {
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
        }
        "Pod" => {
            default_pod_spec(&mut obj["spec"]);
            default_toleration_seconds(&mut obj["spec"]);
        }
        "Service" => default_service(&mut obj["spec"]),
        "Secret" => {
            // stringData is write-only: merged into data, never stored.
            use base64::Engine as _;
            set_default(obj, "type", json!("Opaque"));
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                for (k, v) in sd {
                    let b = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    obj["data"][k] = json!(b);
                }
            }
        }
        "Deployment" => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(spec, "strategy", json!({}));
            set_default(&mut spec["strategy"], "type", json!("RollingUpdate"));
            if spec["strategy"]["type"] == "RollingUpdate" {
                set_default(&mut spec["strategy"], "rollingUpdate", json!({}));
                let ru = &mut spec["strategy"]["rollingUpdate"];
                set_default(ru, "maxUnavailable", json!("25%"));
                set_default(ru, "maxSurge", json!("25%"));
            }
            default_pod_spec(&mut spec["template"]["spec"]);
        }
        "ReplicaSet" => {
            set_default(&mut obj["spec"], "replicas", json!(1));
            default_pod_spec(&mut obj["spec"]["template"]["spec"]);
        }
        "StatefulSet" => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            default_pod_spec(&mut spec["template"]["spec"]);
        }
        "DaemonSet" => {
            let spec = &mut obj["spec"];
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            default_pod_spec(&mut spec["template"]["spec"]);
        }
        _ => {}
    }
}

fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        let Some(cs) = spec[list].as_array_mut() else {
            continue;
        };
        for c in cs.iter_mut().filter(|c| c.is_object()) {
            let image = c["image"].as_str().unwrap_or_default();
            // Upstream: `:latest` or no tag means always pull.
            let tag = image.rsplit('/').next().unwrap_or_default();
            let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
            set_default(
                c,
                "imagePullPolicy",
                json!(if latest { "Always" } else { "IfNotPresent" }),
            );
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "resources", json!({}));
            for p in c["ports"].as_array_mut().into_iter().flatten() {
                set_default(p, "protocol", json!("TCP"));
            }
        }
    }
}

/// How long a pod stays bound to a node that went not-ready or
/// unreachable before the node lifecycle controller evicts it (upstream's
/// DefaultTolerationSeconds admission plugin, `--default-not-ready-
/// toleration-seconds` and `--default-unreachable-toleration-seconds`).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// Upstream's DefaultTolerationSeconds: every pod tolerates the not-ready
/// and unreachable NoExecute taints for [`DEFAULT_TOLERATION_SECONDS`]
/// unless it already says how it tolerates them (a toleration with that
/// key or no key, and effect NoExecute or none).
fn default_toleration_seconds(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    let tolerates = |spec: &Value, key: &str| {
        spec["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| {
                t["key"].as_str().is_none_or(|k| k.is_empty() || k == key)
                    && t["effect"]
                        .as_str()
                        .is_none_or(|e| e.is_empty() || e == "NoExecute")
            })
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if tolerates(spec, key) {
            continue;
        }
        let t = json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                       "tolerationSeconds": DEFAULT_TOLERATION_SECONDS});
        match spec["tolerations"].as_array_mut() {
            Some(ts) => ts.push(t),
            None => spec["tolerations"] = json!([t]),
        }
    }
}

/// Upstream's graceful deletion (the kind's CheckGracefulDelete): the
/// grace period a delete grants, for kinds deleted in two steps. Pods:
/// the one asked for, else their terminationGracePeriodSeconds, but 0
/// when never scheduled or already finished (nothing runs to stop).
pub fn deletion_grace(r: &Resource) -> Option<crate::api::delete::Grace> {
    (r.group.is_empty() && r.kind == "Pod").then_some(pod_deletion_grace as _)
}

fn pod_deletion_grace(pod: &Value, asked: Option<i64>) -> i64 {
    let unscheduled = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Failed" | "Succeeded")
    );
    if unscheduled || finished {
        return 0;
    }
    asked
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(0)
}

/// Metadata rules every kind shares on update (upstream's
/// ValidateObjectMetaUpdate): an object being deleted takes no new
/// finalizers (only the server's own delete sets the garbage collector's).
pub fn validate_meta_update(new: &Value, old: &Value) -> Causes {
    let mut c = Causes::new();
    if old["metadata"]["deletionTimestamp"].is_null() {
        return c;
    }
    let names = |o: &Value| -> Vec<String> {
        o["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect()
    };
    let before = names(old);
    let added: Vec<String> = names(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if !added.is_empty() {
        c.push((
            "metadata.finalizers".into(),
            format!(
                "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
            ),
        ));
    }
    c
}

/// Metadata rules every kind shares (upstream's ValidateObjectMeta): the
/// garbage collector cannot both orphan and delete the dependents.
pub fn validate_meta(obj: &Value) -> Causes {
    let fins = &obj["metadata"]["finalizers"];
    let has = |f: &str| fins.as_array().into_iter().flatten().any(|x| x == f);
    let mut c = Causes::new();
    if has(crate::api::delete::ORPHAN) && has(crate::api::delete::FOREGROUND) {
        c.push((
            "metadata.finalizers".into(),
            format!(
                "Invalid value: {fins}: finalizer {} and {} cannot be both set",
                crate::api::delete::ORPHAN,
                crate::api::delete::FOREGROUND
            ),
        ));
    }
    c
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
pub fn drop_type_dependent(r: &Resource, new: &mut Value, old: &Value) {
    if r.kind != "Service" || !r.group.is_empty() {
        return;
    }
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

/// Upstream's rule for the object's name: most kinds take a DNS-1123
/// subdomain; namespaces a DNS-1123 label; services a DNS-1035 label.
pub fn name_problem(r: &Resource, name: &str) -> Option<String> {
    let label = matches!(r.kind, "Namespace" | "Service");
    if name.is_empty() {
        return Some("Required value: name or generateName is required".into());
    }
    let max = if label { 63 } else { 253 };
    if name.len() > max {
        return Some(format!(
            "Invalid value: {name:?}: must be no more than {max} characters"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let first_ok = if r.kind == "Service" {
        name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
    } else {
        alnum(name.chars().next())
    };
    if name.chars().all(ok_char) && first_ok && alnum(name.chars().last()) {
        return None;
    }
    Some(match r.kind {
        "Service" => format!(
            "Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"
        ),
        "Namespace" => format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ),
        _ => format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ),
    })
}

/// Validates a (defaulted) object; `old` is the stored object on update.
pub fn validate(r: &Resource, obj: &Value, old: Option<&Value>) -> Causes {
    let mut c = validate_meta(obj);
    if let Some(old) = old {
        c.extend(validate_meta_update(obj, old));
    }
    match r.kind {
        "Pod" => pod_spec(&obj["spec"], "spec", &mut c),
        "Service" => service(&obj["spec"], old.map(|o| &o["spec"]), &mut c),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            workload(obj, old, &mut c);
        }
        "EndpointSlice" => endpoint_slice(obj, &mut c),
        _ => {}
    }
    c
}

fn required(c: &mut Causes, field: &str) {
    c.push((field.into(), "Required value".into()));
}

fn port_range(c: &mut Causes, field: String, v: &Value, min: i64) {
    match v.as_i64() {
        Some(p) if (min..=65535).contains(&p) => {}
        _ => c.push((
            field,
            format!("Invalid value: {v}: must be between {min} and 65535, inclusive"),
        )),
    }
}

/// An IANA service name (what a named port may be).
fn port_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && n.chars().any(|c| c.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

fn protocol(c: &mut Causes, field: String, v: &Value) {
    match v.as_str() {
        None | Some("TCP" | "UDP" | "SCTP") => {}
        Some(p) => c.push((
            field,
            format!("Unsupported value: {p:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
        )),
    }
}

fn pod_spec(spec: &Value, at: &str, c: &mut Causes) {
    let containers = spec["containers"].as_array().filter(|a| !a.is_empty());
    let Some(containers) = containers else {
        required(c, &format!("{at}.containers"));
        return;
    };
    let mut names = Vec::new();
    for (list, items) in [
        ("initContainers", spec["initContainers"].as_array()),
        ("containers", Some(containers)),
    ] {
        for (i, ct) in items.into_iter().flatten().enumerate() {
            let f = format!("{at}.{list}[{i}]");
            match ct["name"].as_str().unwrap_or_default() {
                "" => required(c, &format!("{f}.name")),
                n if names.contains(&n) => {
                    c.push((format!("{f}.name"), format!("Duplicate value: {n:?}")))
                }
                n => names.push(n),
            }
            if ct["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                required(c, &format!("{f}.image"));
            }
            for (j, p) in ct["ports"].as_array().into_iter().flatten().enumerate() {
                let pf = format!("{f}.ports[{j}]");
                port_range(c, format!("{pf}.containerPort"), &p["containerPort"], 1);
                if !p["hostPort"].is_null() {
                    port_range(c, format!("{pf}.hostPort"), &p["hostPort"], 0);
                }
                protocol(c, format!("{pf}.protocol"), &p["protocol"]);
            }
        }
    }
}

fn service(spec: &Value, old: Option<&Value>, c: &mut Causes) {
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

fn workload(obj: &Value, old: Option<&Value>, c: &mut Causes) {
    let spec = &obj["spec"];
    if let Some(n) = spec["replicas"].as_i64()
        && n < 0
    {
        c.push((
            "spec.replicas".into(),
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
    let sel = &spec["selector"];
    let empty = sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && sel["matchExpressions"]
            .as_array()
            .is_none_or(|m| m.is_empty());
    if empty {
        required(c, "spec.selector");
    } else {
        let selector = crate::selector::Selector::labels(&crate::selector::to_string(sel));
        let template = json!({"metadata": {"labels": spec["template"]["metadata"]["labels"]}});
        match selector {
            Ok(s) if s.matches(&template) => {}
            Ok(_) => c.push((
                "spec.template.metadata.labels".into(),
                format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    spec["template"]["metadata"]["labels"]
                ),
            )),
            Err(e) => c.push(("spec.selector".into(), format!("Invalid value: {e}"))),
        }
    }
    if let Some(old) = old
        && old["spec"]["selector"] != *sel
    {
        c.push((
            "spec.selector".into(),
            format!("Invalid value: {sel}: field is immutable"),
        ));
    }
    pod_spec(&spec["template"]["spec"], "spec.template.spec", c);
}

fn endpoint_slice(obj: &Value, c: &mut Causes) {
    match obj["addressType"].as_str() {
        Some("IPv4" | "IPv6" | "FQDN") => {}
        Some(t) => c.push((
            "addressType".into(),
            format!("Unsupported value: {t:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""),
        )),
        None => required(c, "addressType"),
    }
    for (i, e) in obj["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if e["addresses"].as_array().is_none_or(|a| a.is_empty()) {
            required(c, &format!("endpoints[{i}].addresses"));
        }
    }
    for (i, p) in obj["ports"].as_array().into_iter().flatten().enumerate() {
        if !p["port"].is_null() {
            port_range(c, format!("ports[{i}].port"), &p["port"], 1);
        }
        protocol(c, format!("ports[{i}].protocol"), &p["protocol"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    fn kind(plural: &str) -> &'static Resource {
        find("", "v1", plural)
            .or_else(|| find("apps", "v1", plural))
            .expect("registered")
    }

    #[test]
    fn services_get_upstream_defaults() {
        let r = kind("services");
        let mut s = json!({"spec": {"ports": [{"port": 80}], "sessionAffinity": "ClientIP"}});
        default(r, &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
        assert!(s["spec"]["externalTrafficPolicy"].is_null());
        assert_eq!(
            s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
        assert!(validate(r, &s, None).is_empty());
    }

    #[test]
    fn service_errors_name_their_fields() {
        let r = kind("services");
        let mut s = json!({"spec": {"ports": [
            {"name": "a", "port": 70000},
            {"port": 81, "targetPort": "Not_A_Name"},
            {"name": "c", "port": 82, "nodePort": 30001}]}});
        default(r, &mut s);
        let fields: Vec<String> = validate(r, &s, None).into_iter().map(|x| x.0).collect();
        assert_eq!(
            fields,
            [
                "spec.ports[0].port",
                "spec.ports[0].targetPort",
                "spec.ports[1].name",
                "spec.ports[1].targetPort",
                "spec.ports[2].nodePort"
            ]
        );
        let old = json!({"spec": {"clusterIP": "10.96.0.5"}});
        let new = json!({"spec": {"clusterIP": "10.96.0.6", "ports": [{"port": 1}]}});
        assert!(
            validate(r, &new, Some(&old))
                .iter()
                .any(|(_, m)| m.contains("immutable"))
        );
    }

    #[test]
    fn deployments_default_and_check_selector_and_template() {
        let r = kind("deployments");
        let mut d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}},
                         "spec": {"containers": [{"name": "c", "image": "img:1"}, {"name": "c"}]}}}});
        default(r, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c0 = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c0["imagePullPolicy"], "IfNotPresent");
        let fields: Vec<String> = validate(r, &d, None).into_iter().map(|x| x.0).collect();
        assert_eq!(
            fields,
            [
                "spec.template.metadata.labels",
                "spec.template.spec.containers[1].name",
                "spec.template.spec.containers[1].image"
            ]
        );
    }

    #[test]
    fn a_type_change_drops_what_only_the_old_type_used() {
        let r = kind("services");
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"],
            "externalTrafficPolicy": "Cluster", "ports": [{"port": 80, "nodePort": 30001}]}});
        let mut new = json!({"spec": {"type": "ClusterIP", "externalTrafficPolicy": "Cluster",
            "ports": [{"port": 80, "nodePort": 30001}]}});
        drop_type_dependent(r, &mut new, &old);
        default(r, &mut new);
        assert!(validate(r, &new, Some(&old)).is_empty(), "{new}");
        assert_eq!(
            new["spec"]["clusterIP"], "10.96.0.7",
            "an omitted ClusterIP is kept"
        );
        assert!(new["spec"]["ports"][0]["nodePort"].is_null());
        // A node port the client sets anew on a ClusterIP service is still an error.
        let mut fresh =
            json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30999}]}});
        drop_type_dependent(r, &mut fresh, &old);
        assert!(!validate(r, &fresh, Some(&old)).is_empty());
        let mut ext = json!({"spec": {"type": "ExternalName", "externalName": "db.example.com",
            "clusterIP": "10.96.0.7", "ports": [{"port": 80, "nodePort": 30001}]}});
        drop_type_dependent(r, &mut ext, &old);
        assert!(ext["spec"]["clusterIP"].is_null(), "{ext}");
        assert!(validate(r, &ext, Some(&old)).is_empty(), "{ext}");
    }

    #[test]
    fn pods_tolerate_not_ready_and_unreachable_for_300_s() {
        let r = kind("pods");
        let mut p = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        default(r, &mut p);
        let ts = p["spec"]["tolerations"].as_array().expect("tolerations");
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let t = ts.iter().find(|t| t["key"] == key).expect(key);
            assert_eq!(t["effect"], "NoExecute");
            assert_eq!(t["operator"], "Exists");
            assert_eq!(t["tolerationSeconds"], 300);
        }
        // Defaulting again adds nothing.
        default(r, &mut p);
        assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        // A pod's own toleration of a key (or of every NoExecute taint) stands.
        let mut p = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
        ]}});
        default(r, &mut p);
        let ts = p["spec"]["tolerations"].as_array().expect("tolerations");
        assert_eq!(ts.len(), 2, "{ts:?}");
        assert_eq!(ts[0]["tolerationSeconds"], 5);
        let mut p = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default(r, &mut p);
        assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(1));
        // Templates are not pods: they get none.
        let mut d = json!({"spec": {"template": {"spec": {"containers": []}}}});
        default(kind("deployments"), &mut d);
        assert!(d["spec"]["template"]["spec"]["tolerations"].is_null());
    }

    #[test]
    fn only_scheduled_running_pods_delete_gracefully() {
        let grace = deletion_grace(kind("pods")).expect("pods are graceful");
        let bound = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 30}});
        assert_eq!(grace(&bound, None), 30);
        assert_eq!(grace(&bound, Some(3)), 3);
        assert_eq!(
            grace(
                &json!({"spec": {"terminationGracePeriodSeconds": 30}}),
                None
            ),
            0
        );
        let done = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 30},
                          "status": {"phase": "Succeeded"}});
        assert_eq!(grace(&done, None), 0);
        assert!(deletion_grace(kind("configmaps")).is_none());
    }

    #[test]
    fn an_object_being_deleted_takes_no_new_finalizers() {
        let r = kind("configmaps");
        let old = json!({"metadata": {"name": "a", "deletionTimestamp": "2030-01-01T00:00:00Z",
                                      "finalizers": ["a.io/x"]}});
        let new = json!({"metadata": {"name": "a", "finalizers": ["a.io/x", "b.io/y"]}});
        let c = validate(r, &new, Some(&old));
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].1.contains("b.io/y"), "{c:?}");
        let fewer = json!({"metadata": {"name": "a", "finalizers": []}});
        assert!(validate(r, &fewer, Some(&old)).is_empty());
        let both =
            json!({"metadata": {"name": "a", "finalizers": ["orphan", "foregroundDeletion"]}});
        assert_eq!(validate(r, &both, None)[0].0, "metadata.finalizers");
    }

    #[test]
    fn secret_string_data_becomes_data() {
        let r = kind("secrets");
        let mut s = json!({"data": {"a": "eA=="}, "stringData": {"b": "s3cret", "a": "y"}});
        default(r, &mut s);
        assert_eq!(
            s,
            json!({"type": "Opaque", "data": {"a": "eQ==", "b": "czNjcmV0"}})
        );
    }

    #[test]
    fn names_follow_the_kinds_rule() {
        let (ns, svc, cm) = (kind("namespaces"), kind("services"), kind("configmaps"));
        assert_eq!(name_problem(cm, "web-1.a"), None);
        assert!(name_problem(ns, "web-1.a").is_some());
        assert!(name_problem(svc, "1web").is_some_and(|p| p.contains("DNS-1035")));
        assert_eq!(name_problem(cm, "1web"), None);
        assert!(name_problem(cm, "").is_some());
        assert!(name_problem(cm, "Web").is_some_and(|p| p.contains("RFC 1123")));
        assert!(name_problem(cm, &"a".repeat(254)).is_some());
        assert!(name_problem(ns, &"a".repeat(64)).is_some());
    }
}
