//! sluice-server end to end with the machine's kubectl (the dispatcher
//! picks the kubectl matching the server's reported version), on the
//! embedded store and on a real etcd. No root needed.
//!
//! kubectl's typed generators (`kubectl create configmap ...`) send
//! protobuf, which sluice-server does not speak yet; manifests (`create
//! -f`, `apply -f`, `replace -f`, `delete -f`) and patches go as JSON.
//! OpenAPI is not served yet, hence `--validate=false`.
use std::time::Duration;

use serde_json::Value;
use sluice_tests::{Daemon, api_server::ApiServer, etcd::EtcdCluster, topology::TempDir};

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

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("kubectl output is not JSON ({e}): {s}"))
}

fn round_trip(s: &ApiServer) {
    let files = TempDir::new();
    let all = write(&files, "all.yaml", MANIFEST);
    let out = s.kubectl_ok(&["create", "-f", &all, "--validate=false"]);
    for created in [
        "namespace/team created",
        "configmap/settings created",
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

    // replace = PUT; the object changes, resourceVersion moves on.
    let changed = write(
        &files,
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: team\ndata:\n  mode: careful\n",
    );
    s.kubectl_ok(&["replace", "-f", &changed, "--validate=false"]);
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
    let out = s.kubectl(&["replace", "-f", &stale, "--validate=false"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the object has been modified"),
        "{err}"
    );
    let cm = json(&s.kubectl_ok(&["get", "cm", "settings", "-n", "team", "-o", "json"]));
    assert_eq!(cm["data"]["mode"], "careful");

    // Creating it again: 409 AlreadyExists.
    let out = s.kubectl(&["create", "-f", &changed, "--validate=false"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already exists"),
        "{err}"
    );

    // A bad name is a 422 naming the field; nothing is stored.
    let bad = write(
        &files,
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n  namespace: team\n",
    );
    let out = s.kubectl(&["create", "-f", &bad, "--validate=false"]);
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
    let out = s.kubectl(&["create", "-f", &lost, "--validate=false"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("namespaces \"nope\" not found"),
        "{err}"
    );

    // Lists page with limit/continue.
    for i in 0..5 {
        let f = write(
            &files,
            &format!("p{i}.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: page-{i}\n  namespace: team\n"
            ),
        );
        s.kubectl_ok(&["create", "-f", &f, "--validate=false"]);
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
    let out = s.kubectl_ok(&["apply", "-f", &f, "--validate=false"]);
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
    let out = s.kubectl_ok(&["apply", "-f", &f, "--validate=false"]);
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
    let out = s.kubectl(&["apply", "--server-side", "-f", &f, "--validate=false"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("server-side apply is not supported"),
        "{err}"
    );
    let d = json(&s.kubectl_ok(&["get", "deploy", "api", "-o", "json"]));
    assert_eq!(
        d["metadata"]["resourceVersion"], rv,
        "a refused apply changed the object"
    );
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
    s.kubectl_ok(&["create", "-f", &f, "--validate=false"]);
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
        s.kubectl_ok(&["create", "-f", &f, "--validate=false"]);
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
    let out = s.kubectl(&["delete", "namespace", "default"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("may not be deleted"),
        "{err}"
    );
}

#[test]
fn kubectl_round_trip_on_the_embedded_store() {
    let s = ApiServer::start(&[]);
    round_trip(&s);
    apply_and_patch(&s);
    deletion(&s);
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
    let s = ApiServer::start(&c.endpoints());
    round_trip(&s);
    apply_and_patch(&s);
    deletion(&s);
}
