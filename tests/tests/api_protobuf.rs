//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`): the
//! real kubectl's `create` subcommands send them (client-go's typed
//! clients), against the real sluice-server without scheduler and
//! controllers; objects are read back with kube-rs. No root needed.
use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::Deployment,
        batch::v1::Job,
        core::v1::{ConfigMap, Namespace, Pod, Secret, Service},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::Api;
use sluice_tests::api_server::{API_ONLY, ApiServer};

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// `kubectl ARGS`, checking that it succeeded and that its request body
/// was protobuf (so the test covers the protobuf path, not JSON).
fn kubectl_protobuf(s: &ApiServer, args: &[&str]) {
    // Before the args: after a `--` it would be the container's.
    let verbose = [&["-v=8"][..], args].concat();
    let out = tokio::task::block_in_place(|| s.kubectl(&verbose));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl {args:?} failed: {log}");
    assert!(
        log.contains(&format!("Content-Type: {PROTOBUF}")),
        "kubectl {args:?} sent no protobuf body: {log}"
    );
}

fn kubectl_ok(s: &ApiServer, args: &[&str]) -> String {
    tokio::task::block_in_place(|| s.kubectl_ok(args))
}

async fn server() -> (ApiServer, kube::Client) {
    let s = tokio::task::block_in_place(|| ApiServer::start_with(API_ONLY));
    let c = s.client().await;
    (s, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_namespace() {
    let (s, c) = server().await;
    kubectl_protobuf(&s, &["create", "namespace", "pb"]);
    let ns = Api::<Namespace>::all(c).get("pb").await.expect("namespace");
    assert!(ns.metadata.uid.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_configmap_keeps_empty_values() {
    let (s, c) = server().await;
    kubectl_protobuf(
        &s,
        &[
            "create",
            "configmap",
            "c",
            "--from-literal=a=b",
            "--from-literal=empty=",
        ],
    );
    let cm = Api::<ConfigMap>::namespaced(c, "default")
        .get("c")
        .await
        .expect("configmap");
    let want: BTreeMap<String, String> = [("a", "b"), ("empty", "")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(cm.data, Some(want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_secret_keeps_its_bytes() {
    let (s, c) = server().await;
    kubectl_protobuf(
        &s,
        &["create", "secret", "generic", "s", "--from-literal=k=v"],
    );
    let secret = Api::<Secret>::namespaced(c, "default")
        .get("s")
        .await
        .expect("secret");
    let data = secret.data.expect("data");
    assert_eq!(data.get("k"), Some(&ByteString(b"v".to_vec())));
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_deployment_keeps_zero_replicas() {
    let (s, c) = server().await;
    kubectl_protobuf(
        &s,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx:1.27",
            "--port=8080",
            "--replicas=0",
        ],
    );
    let d = Api::<Deployment>::namespaced(c, "default")
        .get("web")
        .await
        .expect("deployment");
    let spec = d.spec.expect("spec");
    // A pointer's zero: left out it would default to 1.
    assert_eq!(spec.replicas, Some(0));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.containers[0].image.as_deref(), Some("nginx:1.27"));
    let ports = pod.containers[0].ports.clone().expect("ports");
    assert_eq!(ports[0].container_port, 8080);
    // Go's unset (empty, zero) fields are unset here too, so defaulting applied.
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(ports[0].host_port, None);
    assert_eq!(
        pod.containers[0].termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_service_has_an_int_target_port() {
    let (s, c) = server().await;
    kubectl_protobuf(
        &s,
        &["create", "service", "clusterip", "svc", "--tcp=80:8080"],
    );
    let svc = Api::<Service>::namespaced(c, "default")
        .get("svc")
        .await
        .expect("service");
    let spec = svc.spec.expect("spec");
    let port = &spec.ports.expect("ports")[0];
    assert_eq!(port.port, 80);
    assert_eq!(port.target_port, Some(IntOrString::Int(8080)));
    assert_eq!(port.node_port, None);
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert!(spec.cluster_ip.is_some_and(|ip| !ip.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_job_keeps_its_command() {
    let (s, c) = server().await;
    kubectl_protobuf(
        &s,
        &["create", "job", "j", "--image=busybox", "--", "sleep", "1"],
    );
    let job = Api::<Job>::namespaced(c, "default")
        .get("j")
        .await
        .expect("job");
    let pod = job.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(
        pod.containers[0].command,
        Some(vec!["sleep".to_string(), "1".to_string()])
    );
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
}

/// `kubectl expose` and `kubectl run` send JSON; with a Deployment made
/// in protobuf they complete the first-steps sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_expose_and_run_after_a_protobuf_create() {
    let (s, c) = server().await;
    kubectl_protobuf(&s, &["create", "deployment", "web", "--image=nginx:1.27"]);
    kubectl_ok(
        &s,
        &[
            "expose",
            "deployment",
            "web",
            "--port",
            "80",
            "--target-port",
            "8080",
        ],
    );
    kubectl_ok(&s, &["run", "p", "--image=nginx:1.27"]);
    let svc = Api::<Service>::namespaced(c.clone(), "default")
        .get("web")
        .await
        .expect("service");
    let spec = svc.spec.expect("spec");
    assert_eq!(
        spec.selector,
        Some(
            [("app".to_string(), "web".to_string())]
                .into_iter()
                .collect()
        )
    );
    assert_eq!(
        spec.ports.expect("ports")[0].target_port,
        Some(IntOrString::Int(8080))
    );
    let pod = Api::<Pod>::namespaced(c, "default")
        .get("p")
        .await
        .expect("pod");
    assert_eq!(
        pod.spec.expect("spec").containers[0].image.as_deref(),
        Some("nginx:1.27")
    );
}

/// The same command's object in protobuf and in JSON (`--dry-run=client
/// -o json | kubectl create -f -`) is stored the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protobuf_deployment_is_stored_like_its_json() {
    let (s, c) = server().await;
    kubectl_ok(&s, &["create", "namespace", "js"]);
    let create = [
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--port=8080",
    ];
    kubectl_protobuf(&s, &create);
    let mut dry_run = create.to_vec();
    dry_run.extend(["--dry-run=client", "-o", "json"]);
    let json = kubectl_ok(&s, &dry_run);
    let path = s.data.0.join("web.json");
    std::fs::write(&path, json).expect("write web.json");
    let file = path.display().to_string();
    kubectl_ok(&s, &["create", "-n", "js", "-f", &file]);
    let get = |ns: &str| {
        let api = Api::<Deployment>::namespaced(c.clone(), ns);
        async move { api.get("web").await.expect("deployment").spec }
    };
    assert_eq!(get("default").await, get("js").await);
}

/// POSTs `body` as protobuf to `path`; the error Status's code and message.
async fn post_protobuf(c: &kube::Client, path: &str, body: Vec<u8>) -> (u16, String) {
    let req = http::Request::post(path)
        .header("content-type", PROTOBUF)
        .body(body)
        .expect("request");
    match c.request::<serde_json::Value>(req).await {
        Err(kube::Error::Api(s)) => (s.code, s.message.clone()),
        other => panic!("expected an error Status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_protobuf_body_is_a_bad_request() {
    let (_s, c) = server().await;
    let (code, msg) = post_protobuf(
        &c,
        "/api/v1/namespaces/default/configmaps",
        b"garbage".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("prefix"), "{msg}");
    let (code, msg) = post_protobuf(
        &c,
        "/api/v1/namespaces/default/configmaps",
        b"k8s\0\x0a\xff\xff\xff".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("runtime.Unknown"), "{msg}");
}

/// A runtime.Unknown envelope: typeMeta {apiVersion, kind}, raw.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
        let len = u8::try_from(bytes.len()).expect("short field");
        [&[(n << 3) | 2, len][..], bytes].concat()
    }
    let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
    [b"k8s\0".to_vec(), field(1, &type_meta), field(2, raw)].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kind_is_a_bad_request() {
    let (_s, c) = server().await;
    let (code, msg) = post_protobuf(
        &c,
        "/api/v1/namespaces/default/configmaps",
        envelope("v1", "Gadget", b""),
    )
    .await;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("Gadget"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_not_the_urls_is_a_bad_request() {
    let (_s, c) = server().await;
    // A ConfigMap {metadata: {name: "x"}} sent to the Secrets endpoint.
    let (code, msg) = post_protobuf(
        &c,
        "/api/v1/namespaces/default/secrets",
        envelope("v1", "ConfigMap", b"\x0a\x03\x0a\x01x"),
    )
    .await;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("ConfigMap"), "{msg}");
}

/// client-go's typed Delete sends its DeleteOptions in protobuf too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protobuf_delete_options_body_is_read() {
    let (s, c) = server().await;
    kubectl_ok(&s, &["create", "configmap", "c", "--from-literal=a=b"]);
    // DeleteOptions {dryRun: ["All"]} (field 5): nothing is deleted.
    let req = http::Request::delete("/api/v1/namespaces/default/configmaps/c")
        .header("content-type", PROTOBUF)
        .body(envelope("v1", "DeleteOptions", b"\x2a\x03All"))
        .expect("request");
    c.request::<serde_json::Value>(req)
        .await
        .expect("dry-run delete");
    Api::<ConfigMap>::namespaced(c, "default")
        .get("c")
        .await
        .expect("still there after a dry-run delete");
}
