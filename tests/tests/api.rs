//! sluice-server end to end with the machine's kubectl (the dispatcher
//! picks the kubectl matching the server's reported version), on the
//! embedded store and on a real etcd. No root needed.
//!
//! kubectl's typed generators (`kubectl create configmap ...`) send
//! protobuf, which sluice-server does not speak yet; manifests (`create
//! -f`, `apply -f`, `replace -f`, `delete -f`) and patches go as JSON.
//! kubectl runs with its default `--validate=strict`: it finds
//! `fieldValidation` in the server's OpenAPI v3 and leaves the checking to
//! the server.
use std::time::Duration;

use serde_json::Value;
use sluice_tests::{
    Daemon,
    api_server::{ApiServer, old_kubectl},
    etcd::EtcdCluster,
    topology::TempDir,
};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: team
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: team
data:
  mode: fast
---
apiVersion: v1
kind: Secret
metadata:
  name: token
  namespace: team
stringData:
  key: s3cret
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: team
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: team
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox
      - name: sidecar
        image: busybox
"#;

fn write(dir: &TempDir, name: &str, body: &str) -> String {
    let p = dir.0.join(name);
    std::fs::write(&p, body).expect("write manifest");
    p.display().to_string()
}

/// Runs kubectl expecting a refusal whose message contains `needle`.
fn refused(s: &ApiServer, args: &[&str], needle: &str) {
    let out = s.kubectl(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(needle),
        "kubectl {args:?} should fail with {needle:?}: {err}"
    );
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("kubectl output is not JSON ({e}): {s}"))
}

fn round_trip(s: &ApiServer) {
    let files = TempDir::new();
    let all = write(&files, "all.yaml", MANIFEST);
    let out = s.kubectl_ok(&["apply", "-f", &all]);
    for created in [
        "namespace/team created",
        "configmap/settings created",
        "secret/token created",
        "service/web created",
        "deployment.apps/web created",
    ] {
        assert!(out.contains(created), "{out}");
    }

    let cm = json(&s.kubectl_ok(&["get", "configmap", "settings", "-n", "team", "-o", "json"]));
    assert_eq!(cm["data"]["mode"], "fast");
    assert!(!cm["metadata"]["uid"].as_str().unwrap_or("").is_empty());
    let rv: i64 = cm["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("numeric resourceVersion");
    let deploy = json(&s.kubectl_ok(&["get", "deploy", "web", "-n", "team", "-o", "json"]));
    assert_eq!(deploy["metadata"]["generation"], 1);
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let yaml = s.kubectl_ok(&["get", "svc", "web", "-n", "team", "-o", "yaml"]);
    assert!(yaml.contains("targetPort: 8080"), "{yaml}");
    // Server-side printing: upstream's columns.
    let wide = s.kubectl_ok(&["get", "deploy", "-n", "team", "-o", "wide"]);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR",
            "AGE"
        ],
        "{wide}"
    );
    assert!(
        wide.contains("web,sidecar") && wide.contains("app=web"),
        "{wide}"
    );
    let svc = s.kubectl_ok(&["get", "svc", "web", "-n", "team"]);
    assert!(
        svc.starts_with("NAME") && svc.contains("CLUSTER-IP") && svc.contains("80/TCP"),
        "{svc}"
    );
    let secret = json(&s.kubectl_ok(&["get", "secret", "token", "-n", "team", "-o", "json"]));
    assert_eq!(
        secret["data"]["key"], "czNjcmV0",
        "stringData lands in data"
    );

    // A watch sees the coming update.
    let mut watch = Daemon::from_command("kubectl-watch", {
        let mut c = std::process::Command::new("kubectl");
        c.arg("--kubeconfig").arg(s.kubeconfig()).args([
            "get",
            "configmap",
            "-n",
            "team",
            "-w",
            "-o",
            "json",
        ]);
        c
    });
    watch.wait_for_line("initial state", Duration::from_secs(10), |l| {
        l.contains("\"fast\"")
    });
    // /metrics counts requests by verb/resource/code, open watches, and
    // store operations.
    let metrics = s.kubectl_ok(&["get", "--raw", "/metrics"]);
    for want in [
        r#"apiserver_request_total{code="201",resource="configmaps",subresource="",verb="POST"} 1"#,
        r#"apiserver_registered_watchers{resource="configmaps"} 1"#,
        r#"sluice_store_request_duration_seconds_count{operation="create",result="ok"}"#,
        r#"apiserver_request_duration_seconds_bucket{resource="deployments",subresource="",verb="GET""#,
    ] {
        assert!(metrics.contains(want), "no {want} in\n{metrics}");
    }

    // replace = PUT; the object changes, resourceVersion moves on.
    let changed = write(
        &files,
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: team\ndata:\n  mode: careful\n",
    );
    s.kubectl_ok(&["replace", "-f", &changed]);
    let cm = json(&s.kubectl_ok(&["get", "cm", "settings", "-n", "team", "-o", "json"]));
    assert_eq!(cm["data"]["mode"], "careful");
    let rv2: i64 = cm["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("numeric resourceVersion");
    assert!(rv2 > rv, "resourceVersion {rv} -> {rv2}");
    watch.wait_for_line("the update", Duration::from_secs(10), |l| {
        l.contains("\"careful\"")
    });
    drop(watch);

    // A stale resourceVersion is a 409, and nothing changes.
    let stale = write(
        &files,
        "stale.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: team\n  resourceVersion: \"{rv}\"\ndata:\n  mode: stale\n"
        ),
    );
    refused(
        s,
        &["replace", "-f", &stale],
        "the object has been modified",
    );
    let cm = json(&s.kubectl_ok(&["get", "cm", "settings", "-n", "team", "-o", "json"]));
    assert_eq!(cm["data"]["mode"], "careful");

    // Creating it again: 409 AlreadyExists.
    refused(s, &["create", "-f", &changed], "already exists");

    // A bad name is a 422 naming the field; nothing is stored.
    let bad = write(
        &files,
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n  namespace: team\n",
    );
    let out = s.kubectl(&["create", "-f", &bad]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is invalid") && err.contains("metadata.name"),
        "{err}"
    );
    let names = s.kubectl_ok(&["get", "cm", "-n", "team", "-o", "name"]);
    assert_eq!(names.trim(), "configmap/settings");

    // An unknown namespace is a 404.
    let lost = write(
        &files,
        "lost.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: nope\n",
    );
    refused(s, &["create", "-f", &lost], "namespaces \"nope\" not found");

    // Lists page with limit/continue.
    for i in 0..5 {
        let f = write(
            &files,
            &format!("p{i}.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: page-{i}\n  namespace: team\n"
            ),
        );
        s.kubectl_ok(&["create", "-f", &f]);
    }
    let paged = s.kubectl_ok(&["get", "cm", "-n", "team", "--chunk-size=2", "-o", "name"]);
    assert_eq!(paged.lines().count(), 6, "{paged}");

    // Label and field selectors.
    s.kubectl_ok(&[
        "label",
        "cm",
        "page-1",
        "page-3",
        "-n",
        "team",
        "parity=odd",
    ]);
    let odd = s.kubectl_ok(&["get", "cm", "-n", "team", "-l", "parity=odd", "-o", "name"]);
    assert_eq!(odd.trim(), "configmap/page-1\nconfigmap/page-3");
    let not_odd = s.kubectl_ok(&["get", "cm", "-n", "team", "-l", "parity!=odd", "-o", "name"]);
    assert_eq!(not_odd.lines().count(), 4, "{not_odd}");
    let one = s.kubectl_ok(&[
        "get",
        "cm",
        "-n",
        "team",
        "--field-selector",
        "metadata.name=page-2",
        "-o",
        "name",
    ]);
    assert_eq!(one.trim(), "configmap/page-2");
    let out = s.kubectl(&["get", "cm", "-n", "team", "-l", "parity in odd"]);
    assert!(
        !out.status.success(),
        "a malformed selector must be refused"
    );

    // No token, no access.
    let anon = write(
        &files,
        "anon.kubeconfig",
        &std::fs::read_to_string(s.kubeconfig())
            .expect("kubeconfig")
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("token:") {
                    "    token: wrong"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let out = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &anon, "get", "cm", "-n", "team"])
        .output()
        .expect("kubectl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && (err.contains("Unauthorized") || err.contains("logged in")),
        "{err}"
    );

    // delete -f removes what create -f made (the namespace goes first and
    // takes its contents at once, so the later deletes find nothing).
    s.kubectl_ok(&["delete", "-f", &all, "--ignore-not-found"]);
    let out = s.kubectl(&["get", "ns", "team"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = s.kubectl(&["get", "deploy", "web", "-n", "team"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "{err}");
}

fn deployment(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n  namespace: default\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: api}}\n  template:\n    metadata:\n      labels: {{app: api}}\n    spec:\n      containers:\n      - name: web\n        image: {image}\n        ports:\n        - containerPort: 8080\n"
    )
}

/// Client-side `kubectl apply` (strategic merge patch) keeps a container
/// someone else added; merge and JSON patches work; server-side apply is
/// refused with a clear message and changes nothing.
fn apply_and_patch(s: &ApiServer) {
    let files = TempDir::new();
    let f = write(&files, "api.yaml", &deployment("web:v1"));
    let out = s.kubectl_ok(&["apply", "-f", &f]);
    assert!(out.contains("deployment.apps/api created"), "{out}");
    s.kubectl_ok(&[
        "patch",
        "deployment",
        "api",
        "--type=strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"logger","image":"log:v1"}]}}}}"#,
    ]);
    let f = write(&files, "api.yaml", &deployment("web:v2"));
    let out = s.kubectl_ok(&["apply", "-f", &f]);
    assert!(out.contains("deployment.apps/api configured"), "{out}");
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    let containers: Vec<(String, String)> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["image"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        containers,
        vec![
            ("web".into(), "web:v2".into()),
            ("logger".into(), "log:v1".into())
        ],
        "apply changed web and kept the sidecar"
    );
    assert_eq!(d["metadata"]["generation"], 3, "one bump per spec change");

    s.kubectl_ok(&[
        "patch",
        "deploy",
        "api",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"gold"}}}"#,
    ]);
    s.kubectl_ok(&[
        "patch",
        "deploy",
        "api",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
    ]);
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    assert_eq!(
        (
            d["metadata"]["labels"]["tier"].clone(),
            d["spec"]["replicas"].clone()
        ),
        (Value::from("gold"), Value::from(5))
    );
    let out = s.kubectl(&[
        "patch",
        "deploy",
        "api",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
    ]);
    assert!(
        !out.status.success(),
        "a failing JSON patch test op must be refused"
    );

    let rv = d["metadata"]["resourceVersion"].clone();
    refused(
        s,
        &["apply", "--server-side", "-f", &f],
        "server-side apply is not supported",
    );
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    assert_eq!(
        d["metadata"]["resourceVersion"], rv,
        "a refused apply changed the object"
    );
    s.kubectl_ok(&["delete", "deploy", "api"]);
}

/// Finalizers hold a delete until they are removed; deleting a namespace
/// takes its contents; the system namespaces stay.
fn deletion(s: &ApiServer) {
    let files = TempDir::new();
    let f = write(
        &files,
        "held.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scratch\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: scratch\n  finalizers: [example.com/hold]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: free\n  namespace: scratch\n",
    );
    s.kubectl_ok(&["create", "-f", &f]);
    s.kubectl_ok(&["delete", "cm", "held", "-n", "scratch", "--wait=false"]);
    let held = json(&s.kubectl_ok(&["get", "cm", "held", "-n", "scratch", "-o", "json"]));
    assert!(
        held["metadata"]["deletionTimestamp"].is_string(),
        "a finalized object is only marked: {held}"
    );
    s.kubectl_ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "scratch",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let out = s.kubectl(&["get", "cm", "held", "-n", "scratch"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "removing the last finalizer completes the delete"
    );
    // deletecollection honours the selector.
    for (name, label) in [("d1", "yes"), ("d2", "yes"), ("keep", "no")] {
        let f = write(
            &files,
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: scratch\n  labels: {{drop: \"{label}\"}}\n"
            ),
        );
        s.kubectl_ok(&["create", "-f", &f]);
    }
    s.kubectl_ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/scratch/configmaps?labelSelector=drop%3Dyes",
    ]);
    let left = s.kubectl_ok(&["get", "cm", "-n", "scratch", "-o", "name"]);
    assert_eq!(left.trim(), "configmap/free\nconfigmap/keep", "{left}");
    s.kubectl_ok(&["delete", "namespace", "scratch"]);
    let out = s.kubectl(&["get", "cm", "free", "-n", "scratch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    refused(s, &["delete", "namespace", "default"], "may not be deleted");
}

/// Nothing a refused request carried may be stored.
fn assert_absent(s: &ApiServer, kind: &str, name: &str) {
    let out = s.kubectl(&["get", kind, name]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{kind}/{name} was stored by a refused request"
    );
}

/// kubectl's default validation is the server's: unknown fields, bad
/// names and bad ports are refused with the field named, nothing stored;
/// `--validate=warn` stores without the unknown field and says so.
fn validation(s: &ApiServer) {
    let files = TempDir::new();
    let unknown = write(
        &files,
        "unknown.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: odd\ncolour: red\ndata:\n  a: b\n",
    );
    refused(
        s,
        &["apply", "-f", &unknown],
        r#"strict decoding error: unknown field "colour""#,
    );
    assert_absent(s, "cm", "odd");
    let deep = write(
        &files,
        "deep.yaml",
        &deployment("web:v1").replace(
            "image: web:v1",
            "image: web:v1\n        imagePullPolice: Always",
        ),
    );
    refused(
        s,
        &["create", "-f", &deep],
        r#"unknown field "spec.template.spec.containers[0].imagePullPolice""#,
    );
    assert_absent(s, "deploy", "api");
    let out = s.kubectl(&["apply", "-f", &unknown, "--validate=warn"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"unknown field "colour""#));
    let cm = json(&s.kubectl_ok(&["get", "cm", "odd", "-o", "json"]));
    assert!(
        cm.get("colour").is_none(),
        "unknown fields are never stored"
    );
    s.kubectl_ok(&["delete", "cm", "odd"]);

    for (file, body, field) in [
        (
            "port.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: badport\nspec:\n  ports:\n  - port: 70000\n",
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535",
        ),
        (
            "name.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: 9lives\nspec:\n  ports:\n  - port: 80\n",
            "metadata.name: Invalid value: \"9lives\": a DNS-1035 label",
        ),
        (
            "noports.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: noports\nspec:\n  selector: {a: b}\n",
            "spec.ports: Required value",
        ),
        (
            "sel.yaml",
            &deployment("x:1").replace("labels: {app: api}", "labels: {app: other}"),
            "`selector` does not match template `labels`",
        ),
    ] {
        let f = write(&files, file, body);
        refused(s, &["apply", "--validate=strict", "-f", &f], field);
    }
    for (kind, name) in [
        ("svc", "badport"),
        ("svc", "9lives"),
        ("svc", "noports"),
        ("deploy", "api"),
    ] {
        assert_absent(s, kind, name);
    }
}

/// Status, scale and binding each change only their part.
fn subresources(s: &ApiServer) {
    let files = TempDir::new();
    let f = write(&files, "api.yaml", &deployment("web:v1"));
    s.kubectl_ok(&["apply", "-f", &f]);
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate", "defaulted");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    // The status door changes status only...
    s.kubectl_ok(&[
        "patch",
        "deploy",
        "api",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":1,"readyReplicas":1},"spec":{"replicas":7}}"#,
    ]);
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    assert_eq!(
        (
            d["spec"]["replicas"].clone(),
            d["status"]["readyReplicas"].clone()
        ),
        (1.into(), 1.into())
    );
    // ...and the main door cannot change status.
    s.kubectl_ok(&[
        "patch",
        "deploy",
        "api",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":9},"metadata":{"labels":{"x":"y"}}}"#,
    ]);
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    assert_eq!(d["status"]["readyReplicas"], 1);
    assert_eq!(d["metadata"]["labels"]["x"], "y");

    let out = s.kubectl_ok(&["scale", "deploy", "api", "--replicas=4"]);
    assert!(out.contains("scaled"), "{out}");
    let scale = json(&s.kubectl_ok(&["get", "deploy", "api", "--subresource=scale", "-o", "json"]));
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=api");
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 4);
    // kubectl checks --current-replicas against the Scale the server
    // reports, then writes with that Scale's resourceVersion.
    refused(
        s,
        &[
            "scale",
            "deploy",
            "api",
            "--replicas=2",
            "--current-replicas=3",
        ],
        "Expected replicas to be 3, was 4",
    );
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 4, "a failed precondition scaled");
    // The server's own precondition: a Scale write with a stale
    // resourceVersion is a 409 and changes nothing.
    let stale = write(
        &files,
        "scale.json",
        &format!(
            r#"{{"apiVersion":"autoscaling/v1","kind":"Scale","metadata":{{"name":"api","namespace":"default","resourceVersion":"{}"}},"spec":{{"replicas":2}}}}"#,
            scale["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .expect("numeric resourceVersion")
                - 1
        ),
    );
    refused(
        s,
        &[
            "replace",
            "--raw",
            "/apis/apps/v1/namespaces/default/deployments/api/scale",
            "-f",
            &stale,
        ],
        "the object has been modified",
    );
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 4, "a stale Scale write scaled");
    s.kubectl_ok(&["delete", "-f", &f]);

    // Binding: once, and only once.
    let pod = write(
        &files,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: solo\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
    );
    s.kubectl_ok(&["create", "-f", &pod]);
    let p = json(&s.kubectl_ok(&["get", "pod", "solo", "-o", "json"]));
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(p["spec"]["restartPolicy"], "Always");
    let bind = |node: &str| {
        let b = write(
            &files,
            "bind.json",
            &format!(
                r#"{{"apiVersion":"v1","kind":"Binding","metadata":{{"name":"solo"}},"target":{{"kind":"Node","name":"{node}"}}}}"#
            ),
        );
        s.kubectl(&[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/solo/binding",
            "-f",
            &b,
        ])
    };
    assert!(bind("n1").status.success());
    let again = bind("n2");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already assigned"));
    let p = json(&s.kubectl_ok(&["get", "pod", "solo", "-o", "json"]));
    assert_eq!(p["spec"]["nodeName"], "n1");
    // Bound: deleted gracefully unless forced (no kubelet here).
    s.kubectl_ok(&["delete", "pod", "solo", "--grace-period=0", "--force"]);
}

/// ClusterIPs from the service CIDR and NodePorts from their range,
/// never twice (not even under concurrent creates), released on delete.
fn allocation(s: &ApiServer) {
    let files = TempDir::new();
    let svc = |name: &str, extra: &str| {
        write(
            &files,
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  selector: {{app: x}}\n  ports:\n  - port: 80\n{extra}"
            ),
        )
    };
    let names: Vec<String> = (0..12).map(|i| format!("par-{i}")).collect();
    let files_for: Vec<String> = names.iter().map(|n| svc(n, "")).collect();
    std::thread::scope(|scope| {
        for f in &files_for {
            scope.spawn(move || s.kubectl_ok(&["create", "-f", f]));
        }
    });
    let list = json(&s.kubectl_ok(&["get", "svc", "-o", "json"]));
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for item in list["items"].as_array().expect("items") {
        let ip: std::net::Ipv4Addr = item["spec"]["clusterIP"]
            .as_str()
            .and_then(|i| i.parse().ok())
            .expect("a ClusterIP");
        let o = ip.octets();
        assert!(
            o[0] == 10 && (96..112).contains(&o[1]),
            "{ip} outside 10.96.0.0/12"
        );
        assert!(ips.insert(ip), "{ip} handed out twice");
        let port = item["spec"]["ports"][0]["nodePort"]
            .as_i64()
            .expect("a nodePort");
        assert!((30000..=32767).contains(&port));
        assert!(ports.insert(port), "nodePort {port} handed out twice");
    }
    assert_eq!(ips.len(), 12);

    // A taken IP or port is refused by name; nothing stored.
    let first = list["items"][0]["spec"].clone();
    let (ip, port) = (
        first["clusterIP"].as_str().expect("ip").to_string(),
        first["ports"][0]["nodePort"].clone(),
    );
    let dup = svc("dup", &format!("    nodePort: {port}\n  clusterIP: {ip}\n"));
    let out = s.kubectl(&["create", "-f", &dup]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provided IP is already allocated"), "{err}");
    assert_absent(s, "svc", "dup");
    let out = s.kubectl(&[
        "create",
        "-f",
        &svc("dup2", &format!("    nodePort: {port}\n")),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("provided port is already allocated"));
    assert_absent(s, "svc", "dup2");
    let out = s.kubectl(&["create", "-f", &svc("far", "  clusterIP: 10.0.0.1\n")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the valid range"));
    assert_absent(s, "svc", "far");

    // Deleting frees both for the next taker.
    let owner = list["items"][0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    s.kubectl_ok(&["delete", "svc", &owner]);
    s.kubectl_ok(&["create", "-f", &dup]);
    let d = json(&s.kubectl_ok(&["get", "svc", "dup", "-o", "json"]));
    assert_eq!(d["spec"]["clusterIP"], ip.as_str());
    // Switching to ClusterIP gives the node port back (the server drops
    // what only NodePort used); the IP stays.
    s.kubectl_ok(&[
        "patch",
        "svc",
        "dup",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    let d = json(&s.kubectl_ok(&["get", "svc", "dup", "-o", "json"]));
    assert_eq!(d["spec"]["clusterIP"], ip.as_str());
    assert!(d["spec"]["ports"][0]["nodePort"].is_null());
    s.kubectl_ok(&[
        "create",
        "-f",
        &svc("reuse", &format!("    nodePort: {port}\n")),
    ]);
    for n in names
        .iter()
        .filter(|n| **n != owner)
        .chain([&"dup".to_string(), &"reuse".to_string()])
    {
        s.kubectl_ok(&["delete", "svc", n]);
    }
}

/// Debian's kubectl 1.20 (OpenAPI v2 only, no server-side validation):
/// apply with its default validation, apply a change keeping a sidecar,
/// scale, get, delete.
fn old_client(s: &ApiServer) {
    let old = old_kubectl();
    let run = |args: &[&str]| s.kubectl_bin_ok(&old, args);
    let version = run(&["version", "--client", "--short"]);
    assert!(version.contains("v1.20"), "{version}");
    let files = TempDir::new();
    let all = write(&files, "all.yaml", &MANIFEST.replace("team", "old-team"));
    let out = run(&["apply", "-f", &all]);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    s.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "old-team",
        "--type=strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"logger","image":"log:v1"}]}}}}"#,
    ]);
    let changed = write(
        &files,
        "all.yaml",
        &MANIFEST.replace("team", "old-team").replace(
            "image: busybox\n      - name: sidecar",
            "image: busybox:1.36\n      - name: sidecar",
        ),
    );
    let out = run(&["apply", "-f", &changed]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    run(&["scale", "deploy", "web", "-n", "old-team", "--replicas=3"]);
    let d = json(&run(&[
        "get", "deploy", "web", "-n", "old-team", "-o", "json",
    ]));
    let names: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["web", "sidecar", "logger"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.36"
    );
    assert_eq!(d["spec"]["replicas"], 3);
    run(&["delete", "-f", &all, "--ignore-not-found"]);
    let out = s.kubectl(&["get", "ns", "old-team"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn kubectl_round_trip_on_the_embedded_store() {
    let s = ApiServer::api_only(&[]);
    round_trip(&s);
    apply_and_patch(&s);
    deletion(&s);
    validation(&s);
    subresources(&s);
    allocation(&s);
    old_client(&s);
    // Credentials are private to the owner.
    use std::os::unix::fs::PermissionsExt as _;
    for f in [
        "admin.kubeconfig",
        "pki/admin.token",
        "pki/server.key",
        "pki/ca.key",
    ] {
        let mode = std::fs::metadata(s.data.0.join(f))
            .expect("credential file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f} is {mode:o}");
    }
}

#[test]
fn kubectl_round_trip_on_etcd() {
    let c = EtcdCluster::start(1);
    let s = ApiServer::api_only(&c.endpoints());
    round_trip(&s);
    apply_and_patch(&s);
    deletion(&s);
    validation(&s);
    subresources(&s);
    allocation(&s);
    old_client(&s);
}

/// Runs `cmd` to its end; panics (after ending it by its PID) if it is
/// still running after `ceiling`, which only catches a hang.
fn run_to_end(mut cmd: std::process::Command, ceiling: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + ceiling;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {ceiling:?}; stdout so far:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kubectl_cmd(s: &ApiServer, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("kubectl");
    c.arg("--kubeconfig").arg(s.kubeconfig()).args(args);
    c
}

fn configmap(s: &ApiServer, name: &str, value: &str) -> Value {
    let files = TempDir::new();
    let f = write(
        &files,
        "cm.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  v: \"{value}\"\n"
        ),
    );
    s.kubectl_ok(&["apply", "-f", &f]);
    json(&s.kubectl_ok(&["get", "cm", name, "-o", "json"]))
}

fn rv_of(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric resourceVersion in {obj}"))
}

/// A watch with `timeoutSeconds=2` delivers events and then ends by itself
/// (kubectl exits cleanly); without the timeout it would run for 30 min.
#[test]
fn a_watch_ends_after_its_timeout() {
    let s = ApiServer::api_only(&[]);
    configmap(&s, "timed", "1");
    let out = run_to_end(
        kubectl_cmd(
            &s,
            &[
                "get",
                "--raw",
                "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=2",
            ],
        ),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the watch ended with an error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = stdout.lines().map(json).collect();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "timed"),
        "the watch was not serving before it ended: {stdout}"
    );
}

/// A quiet watch with `allowWatchBookmarks=true` gets a BOOKMARK carrying
/// a resourceVersion at or after the one it started from.
#[test]
fn a_watch_that_allows_bookmarks_gets_one() {
    let s = ApiServer::api_only(&[]);
    let rv = rv_of(&configmap(&s, "marked", "1"));
    let mut watch = Daemon::from_command(
        "kubectl-watch",
        kubectl_cmd(
            &s,
            &[
                "get",
                "--raw",
                &format!(
                    "/api/v1/namespaces/default/configmaps?watch=true&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=300"
                ),
            ],
        ),
    );
    let line = watch.wait_for_line("a BOOKMARK", Duration::from_secs(60), |l| {
        l.contains("\"BOOKMARK\"")
    });
    let ev = json(&line);
    assert_eq!(ev["type"], "BOOKMARK");
    assert_eq!(ev["object"]["kind"], "ConfigMap");
    assert!(rv_of(&ev["object"]) >= rv, "{line} is before {rv}");
}

/// `resourceVersionMatch=Exact` lists the objects as they were at that
/// revision: the old value, not a later one, and nothing created since.
#[test]
fn an_exact_list_shows_the_past() {
    let s = ApiServer::api_only(&[]);
    let rv = rv_of(&configmap(&s, "then", "old"));
    configmap(&s, "then", "new");
    configmap(&s, "later", "1");
    let list = |q: &str| {
        let l = json(&s.kubectl_ok(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/configmaps{q}"),
        ]));
        let items: Vec<(String, String)> = l["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    i["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    i["data"]["v"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        (rv_of(&l), items)
    };
    let (now_rv, now) = list("");
    assert_eq!(
        now,
        [("later".into(), "1".into()), ("then".into(), "new".into())]
    );
    let (at, then) = list(&format!("?resourceVersion={rv}&resourceVersionMatch=Exact"));
    assert_eq!(then, [("then".to_string(), "old".to_string())]);
    assert_eq!(at, rv, "the list is not at the revision asked for");
    assert!(now_rv > rv);
}

/// Bytes in etcd that are not an object of their kind are a 500 naming
/// the key on get, list, update, patch and delete, and nothing is written
/// over them; other objects are served as before.
#[test]
fn a_corrupt_stored_object_is_an_error_naming_its_key() {
    use sluice_store::Store as _;
    let etcd = EtcdCluster::start(1);
    let s = ApiServer::api_only(&etcd.endpoints());
    configmap(&s, "victim", "1");
    configmap(&s, "bystander", "1");
    let key = "/registry/core/configmaps/default/victim";
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = rt
        .block_on(sluice_store::etcd::Etcd::connect(
            &etcd.endpoints(),
            sluice_store::etcd::Options::default(),
        ))
        .expect("etcd client");
    let read = || {
        rt.block_on(store.get(key))
            .expect("etcd get")
            .expect("the key is there")
    };
    let garbage = b"\x00{\"metadata\": truncated".to_vec();
    rt.block_on(store.update(key, garbage.clone(), read().mod_revision))
        .expect("write garbage");
    let written = read().mod_revision;

    let files = TempDir::new();
    let update = write(
        &files,
        "victim.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: victim\n  namespace: default\ndata:\n  v: \"2\"\n",
    );
    let corrupt = format!("the object stored under {key} is corrupt");
    for args in [
        &["get", "cm", "victim"][..],
        &["get", "cm"],
        &["replace", "-f", &update],
        &[
            "patch",
            "cm",
            "victim",
            "--type=merge",
            "-p",
            r#"{"data":{"v":"3"}}"#,
        ],
        &["delete", "cm", "victim"],
    ] {
        let out = s.kubectl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("InternalError") && err.contains(&corrupt),
            "kubectl {args:?}: {err}"
        );
        let kv = read();
        assert_eq!(
            (kv.mod_revision, &kv.value),
            (written, &garbage),
            "kubectl {args:?} wrote over the corrupt object"
        );
    }
    // The same paths serve an intact object (the server is up and reading).
    let b = json(&s.kubectl_ok(&["get", "cm", "bystander", "-o", "json"]));
    assert_eq!(b["data"]["v"], "1");
}
