//! Defaulting and validation, as upstream's registry strategies do them,
//! for the fields sluice acts on: names, ports, Service types and
//! policies, pod templates and workload selectors. Runs on every create,
//! update and patch before anything is stored, so an invalid object is
//! answered with 422 and its field paths and leaves the store untouched.
use serde_json::{Value, json};

use crate::registry::{Resource, Sub};

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
    if r.kind == "Job" {
        generate_job_selector(obj);
    }
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
        "Job" => default_job(obj),
        "CronJob" => default_cron_job(obj),
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
pub fn deletion_grace(r: &Resource) -> Option<crate::handlers::delete::Grace> {
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
    if has(crate::handlers::delete::ORPHAN) && has(crate::handlers::delete::FOREGROUND) {
        c.push((
            "metadata.finalizers".into(),
            format!(
                "Invalid value: {fins}: finalizer {} and {} cannot be both set",
                crate::handlers::delete::ORPHAN,
                crate::handlers::delete::FOREGROUND
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
        "Job" => job(obj, old, &mut c),
        "CronJob" => cron_job(obj, old, &mut c),
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

// batch/v1, as upstream's pkg/registry/batch and pkg/apis/batch (v1
// defaults, validation) treat Jobs and CronJobs.

/// The labels a Job's generated selector rests on: its name and its uid,
/// each under the legacy and the prefixed key (upstream sets both).
const JOB_NAME_LABELS: [&str; 2] = ["job-name", "batch.kubernetes.io/job-name"];
const JOB_UID_LABELS: [&str; 2] = ["controller-uid", "batch.kubernetes.io/controller-uid"];

/// The largest completions or parallelism of an Indexed Job (upstream's
/// bound keeps `status.completedIndexes` small).
const MAX_INDEXED: i64 = 100_000;

/// Upstream's generateSelector, on create: unless the user manages the
/// selector (`manualSelector: true`), the Job's pods carry its name and
/// uid and are selected by the uid alone, so no two Jobs ever claim each
/// other's pods.
fn generate_job_selector(obj: &mut Value) {
    // Upstream defaults (labels from the template as the user wrote it)
    // before it generates.
    default_job_labels(obj);
    let (name, uid) = (
        obj["metadata"]["name"].clone(),
        obj["metadata"]["uid"].clone(),
    );
    let spec = &mut obj["spec"];
    if !spec.is_object() || spec["manualSelector"] == true {
        return;
    }
    let labels = &mut spec["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for k in JOB_NAME_LABELS {
        set_default(labels, k, name.clone());
    }
    for k in JOB_UID_LABELS {
        set_default(labels, k, uid.clone());
    }
    let matched = &mut spec["selector"]["matchLabels"];
    if !matched.is_object() {
        *matched = json!({});
    }
    set_default(matched, JOB_UID_LABELS[1], uid);
}

/// A Job without labels of its own takes its pod template's.
fn default_job_labels(obj: &mut Value) {
    let template = &obj["spec"]["template"]["metadata"]["labels"];
    if map_is_empty(&obj["metadata"]["labels"]) && !map_is_empty(template) {
        obj["metadata"]["labels"] = template.clone();
    }
}

fn map_is_empty(v: &Value) -> bool {
    v.as_object().is_none_or(|m| m.is_empty())
}

/// Upstream's SetDefaults_Job: a Job with neither completions nor
/// parallelism runs one pod to one completion; completions alone unset
/// means "until any pod succeeds".
fn default_job(obj: &mut Value) {
    default_job_labels(obj);
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    set_default(spec, "parallelism", json!(1));
    let backoff = if spec["backoffLimitPerIndex"].is_null() {
        6
    } else {
        i64::from(i32::MAX)
    };
    set_default(spec, "backoffLimit", json!(backoff));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let replacement = if spec["podFailurePolicy"].is_null() {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    set_default(spec, "podReplacementPolicy", json!(replacement));
    default_pod_spec(&mut spec["template"]["spec"]);
}

/// Upstream's SetDefaults_CronJob. The job template's own fields stay
/// unset: each Job is defaulted when it is created.
fn default_cron_job(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    set_default(spec, "concurrencyPolicy", json!("Allow"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "successfulJobsHistoryLimit", json!(3));
    set_default(spec, "failedJobsHistoryLimit", json!(1));
    default_pod_spec(&mut spec["jobTemplate"]["spec"]["template"]["spec"]);
}

fn nonnegative(c: &mut Causes, spec: &Value, at: &str, field: &str) {
    if let Some(n) = spec[field].as_i64()
        && n < 0
    {
        c.push((
            format!("{at}.{field}"),
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
}

fn supported(c: &mut Causes, field: String, v: &Value, allowed: &[&str]) {
    if let Some(s) = v.as_str()
        && !allowed.contains(&s)
    {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        c.push((
            field,
            format!(
                "Unsupported value: {s:?}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
}

/// What a Job and a CronJob's job template share (upstream's
/// validateJobSpec), the pod spec aside.
fn job_spec(spec: &Value, at: &str, c: &mut Causes) {
    for f in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        nonnegative(c, spec, at, f);
    }
    supported(
        c,
        format!("{at}.completionMode"),
        &spec["completionMode"],
        &["NonIndexed", "Indexed"],
    );
    if spec["completionMode"] == "Indexed" {
        if spec["completions"].is_null() {
            c.push((
                format!("{at}.completions"),
                "Required value: when completion mode is Indexed".into(),
            ));
        }
        for f in ["completions", "parallelism"] {
            if let Some(n) = spec[f].as_i64()
                && n > MAX_INDEXED
            {
                c.push((
                    format!("{at}.{f}"),
                    format!(
                        "Invalid value: {n}: must be less than or equal to {MAX_INDEXED} when completion mode is Indexed"
                    ),
                ));
            }
        }
    }
    supported(
        c,
        format!("{at}.podReplacementPolicy"),
        &spec["podReplacementPolicy"],
        &["TerminatingOrFailed", "Failed"],
    );
    let restart = &spec["template"]["spec"]["restartPolicy"];
    if !matches!(restart.as_str(), Some("OnFailure" | "Never")) {
        c.push((
            format!("{at}.template.spec.restartPolicy"),
            format!(
                "Unsupported value: {:?}: supported values: \"OnFailure\", \"Never\"",
                restart.as_str().unwrap_or_default()
            ),
        ));
    }
}

/// `labels[key]` of a pod template must be `want` (upstream's
/// ValidateHasLabel).
fn has_label(c: &mut Causes, labels: &Value, key: &str, want: &Value) {
    let field = format!("spec.template.metadata.labels[{key}]");
    let want_s = want.as_str().unwrap_or_default();
    match &labels[key] {
        Value::Null => c.push((field, format!("Required value: must be '{want_s}'"))),
        got if got != want => c.push((field, format!("Invalid value: {got}: must be '{want_s}'"))),
        _ => {}
    }
}

fn job(obj: &Value, old: Option<&Value>, c: &mut Causes) {
    let spec = &obj["spec"];
    job_spec(spec, "spec", c);
    // Selector present, matching the template, immutable; the pod spec.
    workload(obj, old, c);
    if spec["manualSelector"] != true {
        let (name, uid) = (&obj["metadata"]["name"], &obj["metadata"]["uid"]);
        let labels = &spec["template"]["metadata"]["labels"];
        for k in JOB_NAME_LABELS {
            has_label(c, labels, k, name);
        }
        for k in JOB_UID_LABELS {
            has_label(c, labels, k, uid);
        }
        let expected: serde_json::Map<String, Value> = JOB_NAME_LABELS
            .iter()
            .map(|k| (k.to_string(), name.clone()))
            .chain(JOB_UID_LABELS.iter().map(|k| (k.to_string(), uid.clone())))
            .collect();
        let sel = crate::selector::Selector::labels(&crate::selector::to_string(&spec["selector"]));
        if let Ok(sel) = sel
            && !sel.matches(&json!({"metadata": {"labels": expected}}))
        {
            c.push((
                "spec.selector".into(),
                format!(
                    "Invalid value: {}: `selector` not auto-generated",
                    spec["selector"]
                ),
            ));
        }
    }
    let Some(old) = old else { return };
    let was = &old["spec"];
    let immutable = |c: &mut Causes, f: &str| {
        if spec[f] != was[f] {
            c.push((
                format!("spec.{f}"),
                format!("Invalid value: {}: field is immutable", spec[f]),
            ));
        }
    };
    immutable(c, "completionMode");
    // Indexed Jobs may scale while completions and parallelism stay equal
    // (upstream's elastic Indexed Jobs).
    let elastic = spec["completionMode"] == "Indexed"
        && spec["completions"] == spec["parallelism"]
        && was["completions"] == was["parallelism"];
    if !elastic {
        immutable(c, "completions");
    }
    // A suspended Job that never started may still have its scheduling
    // directives changed (upstream's mutable scheduling directives).
    let fresh = was["suspend"] == true && old["status"]["startTime"].is_null();
    let strip = |t: &Value| {
        let mut t = t.clone();
        if fresh {
            for (part, f) in [
                ("metadata", "labels"),
                ("metadata", "annotations"),
                ("spec", "nodeSelector"),
                ("spec", "tolerations"),
                ("spec", "affinity"),
                ("spec", "schedulingGates"),
            ] {
                if let Some(m) = t[part].as_object_mut() {
                    m.remove(f);
                }
            }
        }
        t
    };
    if strip(&spec["template"]) != strip(&was["template"]) {
        c.push((
            "spec.template".into(),
            "Invalid value: field is immutable".into(),
        ));
    }
}

/// A CronJob's Job is named `<name>-<minutes since the epoch>`: 11
/// characters more must still make a DNS-1035 label.
const MAX_CRON_JOB_NAME: usize = 52;

fn cron_job(obj: &Value, old: Option<&Value>, c: &mut Causes) {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if old.is_none() && name.len() > MAX_CRON_JOB_NAME {
        c.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: must be no more than {MAX_CRON_JOB_NAME} characters"),
        ));
    }
    let spec = &obj["spec"];
    let tz = &spec["timeZone"];
    match spec["schedule"].as_str().unwrap_or_default() {
        "" => required(c, "spec.schedule"),
        s => {
            let problem = if s.contains("TZ") {
                Some(
                    if tz.is_null() {
                        "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
                    } else {
                        "cannot use both timeZone field and TZ or CRON_TZ in schedule"
                    }
                    .to_string(),
                )
            } else {
                schedule_problem(s)
            };
            if let Some(p) = problem {
                c.push(("spec.schedule".into(), format!("Invalid value: {s:?}: {p}")));
            }
        }
    }
    if let Some(z) = tz.as_str() {
        let problem = if z.is_empty() {
            Some("timeZone must be nil or non-empty string".to_string())
        } else if z.eq_ignore_ascii_case("local") {
            Some("timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones".to_string())
        } else if z.parse::<chrono_tz::Tz>().is_err() {
            Some(format!("unknown time zone {z}"))
        } else {
            None
        };
        if let Some(p) = problem {
            c.push(("spec.timeZone".into(), format!("Invalid value: {z:?}: {p}")));
        }
    }
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        nonnegative(c, spec, "spec", f);
    }
    supported(
        c,
        "spec.concurrencyPolicy".into(),
        &spec["concurrencyPolicy"],
        &["Allow", "Forbid", "Replace"],
    );
    let template = &spec["jobTemplate"]["spec"];
    job_spec(template, "spec.jobTemplate.spec", c);
    pod_spec(
        &template["template"]["spec"],
        "spec.jobTemplate.spec.template.spec",
        c,
    );
    if !template["selector"].is_null() {
        c.push((
            "spec.jobTemplate.spec.selector".into(),
            format!(
                "Invalid value: {}: `selector` will be auto-generated",
                template["selector"]
            ),
        ));
    }
    if template["manualSelector"] == true {
        c.push((
            "spec.jobTemplate.spec.manualSelector".into(),
            "Unsupported value: true: supported values: \"nil\", \"false\"".into(),
        ));
    }
}

/// Why `schedule` is not one the CronJob controller can run, in
/// upstream's grammar (robfig/cron's ParseStandard: five fields of
/// numbers, `*`, `?`, ranges, steps, lists, month and weekday names, or
/// a `@hourly`-style descriptor). croner computes the times (the
/// controller uses it the same way); it also knows `L`, `W`, `#` and
/// seconds, which upstream refuses, so the grammar is checked here first.
fn schedule_problem(schedule: &str) -> Option<String> {
    const DESCRIPTORS: [&str; 7] = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let s = schedule.trim();
    if s.starts_with('@') {
        if !DESCRIPTORS.contains(&s.to_ascii_lowercase().as_str()) {
            return Some(format!("unrecognized descriptor: {s}"));
        }
    } else {
        let fields: Vec<&str> = s.split_whitespace().collect();
        if fields.len() != 5 {
            return Some(format!(
                "expected exactly 5 fields, found {}: {s}",
                fields.len()
            ));
        }
        for (i, field) in fields.iter().enumerate() {
            for atom in field.split([',', '-', '/']) {
                let lower = atom.to_ascii_lowercase();
                let ok = matches!(atom, "*" | "?")
                    || (!atom.is_empty() && atom.chars().all(|ch| ch.is_ascii_digit()))
                    || (i == 3 && MONTHS.contains(&lower.as_str()))
                    || (i == 4 && DAYS.contains(&lower.as_str()));
                if !ok {
                    return Some(format!(
                        "failed to parse {field:?}: {atom:?} is not allowed"
                    ));
                }
            }
        }
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .sloppy_ranges(true)
        .build()
        .parse(s)
        .err()
        .map(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

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

    fn batch(plural: &str) -> &'static Resource {
        find("batch", "v1", plural).expect("registered")
    }

    fn job_manifest() -> Value {
        json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"metadata": {"labels": {"app": "pi"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "perl:5"}]}}}})
    }

    /// Create, as the API server runs the steps.
    fn create(r: &Resource, mut obj: Value) -> (Value, Vec<String>) {
        prepare_create(r, &mut obj);
        default(r, &mut obj);
        let fields = validate(r, &obj, None).into_iter().map(|x| x.0).collect();
        (obj, fields)
    }

    #[test]
    fn a_job_gets_a_selector_from_its_uid_and_its_pods_the_labels() {
        let (j, fields) = create(batch("jobs"), job_manifest());
        assert!(fields.is_empty(), "{fields:?}");
        assert_eq!(
            j["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"],
            json!({"app": "pi", "controller-uid": "u-1", "batch.kubernetes.io/controller-uid": "u-1",
                   "job-name": "pi", "batch.kubernetes.io/job-name": "pi"})
        );
        // The Job's own labels are the template's as written, before generation.
        assert_eq!(j["metadata"]["labels"], json!({"app": "pi"}));
    }

    #[test]
    fn a_manual_selector_is_left_alone() {
        let mut m = job_manifest();
        m["spec"]["manualSelector"] = json!(true);
        m["spec"]["selector"] = json!({"matchLabels": {"app": "pi"}});
        let (j, fields) = create(batch("jobs"), m);
        assert!(fields.is_empty(), "{fields:?}");
        assert_eq!(j["spec"]["selector"], json!({"matchLabels": {"app": "pi"}}));
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"],
            json!({"app": "pi"})
        );
        // Without manualSelector, a selector of the user's is refused.
        let mut m = job_manifest();
        m["spec"]["selector"] = json!({"matchLabels": {"app": "pi"}});
        let (_, fields) = create(batch("jobs"), m);
        assert_eq!(fields, ["spec.selector"]);
    }

    #[test]
    fn jobs_get_upstreams_defaults() {
        let (j, _) = create(batch("jobs"), job_manifest());
        let spec = &j["spec"];
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(
            spec["template"]["spec"]["schedulerName"],
            "default-scheduler"
        );
        // Parallelism alone: completions stay unset ("until any pod succeeds").
        let mut m = job_manifest();
        m["spec"]["parallelism"] = json!(3);
        let (j, _) = create(batch("jobs"), m);
        assert!(j["spec"]["completions"].is_null());
        assert_eq!(j["spec"]["parallelism"], 3);
    }

    #[test]
    fn a_job_must_not_restart_always() {
        let mut m = job_manifest();
        m["spec"]["template"]["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("restartPolicy");
        let (_, fields) = create(batch("jobs"), m.clone());
        assert_eq!(fields, ["spec.template.spec.restartPolicy"]);
        m["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        assert!(create(batch("jobs"), m).1.is_empty());
    }

    #[test]
    fn job_errors_name_their_fields() {
        let mut m = job_manifest();
        m["spec"]["parallelism"] = json!(-1);
        m["spec"]["backoffLimit"] = json!(-2);
        m["spec"]["completionMode"] = json!("Indexed");
        m["spec"]["completions"] = Value::Null;
        m["spec"]["activeDeadlineSeconds"] = json!(-3);
        let (_, fields) = create(batch("jobs"), m);
        assert_eq!(
            fields,
            [
                "spec.parallelism",
                "spec.activeDeadlineSeconds",
                "spec.backoffLimit",
                "spec.completions"
            ]
        );
        let mut m = job_manifest();
        m["spec"]["completionMode"] = json!("Sometimes");
        assert_eq!(create(batch("jobs"), m).1, ["spec.completionMode"]);
    }

    #[test]
    fn a_jobs_template_and_completions_are_immutable() {
        let r = batch("jobs");
        let (old, _) = create(r, job_manifest());
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:6");
        new["spec"]["completions"] = json!(4);
        let fields: Vec<String> = validate(r, &new, Some(&old))
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(fields, ["spec.completions", "spec.template"]);
        // Suspended and never started: scheduling directives may change.
        let mut old = old;
        old["spec"]["suspend"] = json!(true);
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["nodeSelector"] = json!({"zone": "a"});
        assert!(validate(r, &new, Some(&old)).is_empty());
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:6");
        assert!(!validate(r, &new, Some(&old)).is_empty());
    }

    fn cron_manifest(schedule: &str) -> Value {
        json!({"metadata": {"name": "tick", "uid": "u-2"},
            "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {
                "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}})
    }

    #[test]
    fn cron_jobs_get_upstreams_defaults() {
        let (cj, fields) = create(batch("cronjobs"), cron_manifest("*/5 * * * *"));
        assert!(fields.is_empty(), "{fields:?}");
        let spec = &cj["spec"];
        assert_eq!(spec["concurrencyPolicy"], "Allow");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["successfulJobsHistoryLimit"], 3);
        assert_eq!(spec["failedJobsHistoryLimit"], 1);
        assert!(spec["jobTemplate"]["spec"]["parallelism"].is_null());
    }

    #[test]
    fn cron_schedules_follow_upstreams_grammar() {
        for ok in [
            "* * * * *",
            "*/5 * * * *",
            "0 9-17 * * MON-FRI",
            "30 6-16/4 * * 1-5",
            "0 0 1,15 jan,jul ?",
            "5/15 * * * *",
            "@hourly",
            "@Daily",
        ] {
            assert_eq!(schedule_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "0 * * * * *",
            "61 * * * *",
            "0 0 L * *",
            "0 0 * * 5#2",
            "0 0 * JAN-FOO *",
            "@every 5m",
            "@sometimes",
        ] {
            assert!(schedule_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn cron_job_errors_name_their_fields() {
        let r = batch("cronjobs");
        assert_eq!(create(r, cron_manifest("61 * * * *")).1, ["spec.schedule"]);
        assert_eq!(
            create(r, cron_manifest("TZ=UTC * * * * *")).1,
            ["spec.schedule"]
        );
        let mut m = cron_manifest("@daily");
        m["spec"]["timeZone"] = json!("Mars/Olympus");
        m["spec"]["concurrencyPolicy"] = json!("Sometimes");
        m["spec"]["startingDeadlineSeconds"] = json!(-1);
        m["spec"]["jobTemplate"]["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        m["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        assert_eq!(
            create(r, m).1,
            [
                "spec.timeZone",
                "spec.startingDeadlineSeconds",
                "spec.concurrencyPolicy",
                "spec.jobTemplate.spec.template.spec.restartPolicy",
                "spec.jobTemplate.spec.selector"
            ]
        );
        let mut m = cron_manifest("@daily");
        m["spec"]["timeZone"] = json!("Europe/Berlin");
        assert!(create(r, m).1.is_empty());
        let mut m = cron_manifest("@daily");
        m["metadata"]["name"] = json!("a".repeat(53));
        assert_eq!(create(r, m).1, ["metadata.name"]);
    }
}
