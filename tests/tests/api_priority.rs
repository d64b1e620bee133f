//! scheduling.k8s.io/v1 PriorityClasses and the Priority admission of
//! Pods, through kube-rs and kubectl against the API server alone: the
//! built-in system classes, upstream's rules for user classes, one global
//! default, and a Pod's `spec.priority` filled from its class. (That the
//! scheduler then preempts by it: tests/tests/scheduler.rs.) No root
//! needed.
use k8s_openapi::api::{core::v1::Pod, scheduling::v1::PriorityClass};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use sluice_tests::api_server::ApiServer;

fn class(name: &str, value: i32, global_default: bool) -> PriorityClass {
    serde_json::from_value(json!({
        "metadata": {"name": name}, "value": value, "globalDefault": global_default,
    }))
    .expect("PriorityClass")
}

fn pod(name: &str, class: Option<&str>) -> Pod {
    let mut p = json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "localhost/busybox:1.35"}]},
    });
    if let Some(c) = class {
        p["spec"]["priorityClassName"] = json!(c);
    }
    serde_json::from_value(p).expect("Pod")
}

/// The API Status of a failed call: code, reason, message.
fn status<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason, s.message),
        other => panic!("expected an API Status, got {other:?}"),
    }
}

struct Server {
    classes: Api<PriorityClass>,
    pods: Api<Pod>,
    server: ApiServer,
}

async fn server() -> Server {
    let server = ApiServer::api_only(&[]);
    let client = server.client().await;
    Server {
        classes: Api::all(client.clone()),
        pods: Api::namespaced(client, "default"),
        server,
    }
}

/// Every cluster has upstream's two system classes, which cannot be
/// deleted, and `kubectl get priorityclasses` prints them with upstream's
/// columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_classes_exist_print_like_upstream_and_stay() {
    let s = server().await;
    for (name, value) in [
        ("system-cluster-critical", 2_000_000_000),
        ("system-node-critical", 2_000_001_000),
    ] {
        let pc = s.classes.get(name).await.expect("a built-in class");
        assert_eq!(pc.value, value, "{name}");
        assert_eq!(pc.global_default, Some(false), "{name}");
        let (code, _, message) = status(s.classes.delete(name, &DeleteParams::default()).await);
        assert_eq!(code, 403, "{message}");
        assert!(s.classes.get_opt(name).await.expect("get").is_some());
    }
    let out = tokio::task::block_in_place(|| s.server.kubectl_ok(&["get", "priorityclasses"]));
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"],
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("system-node-critical "))
        .unwrap_or_else(|| panic!("no system-node-critical row: {out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..3], ["2000001000", "false"], "{out}");
    assert_eq!(cells[4], "PreemptLowerPriority", "{out}");
}

/// User classes go up to one billion; `system-` names are the system's.
#[tokio::test]
async fn user_classes_stay_below_the_system_ones() {
    let s = server().await;
    let pp = PostParams::default();
    s.classes
        .create(&pp, &class("billion", 1_000_000_000, false))
        .await
        .expect("the highest user value");
    for (c, field) in [
        (class("too-high", 1_000_000_001, false), "value"),
        (class("system-mine", 5, false), "metadata.name"),
    ] {
        let name = c.metadata.name.clone().unwrap_or_default();
        let (code, reason, message) = status(s.classes.create(&pp, &c).await);
        assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
        assert!(
            message.contains(&format!("{field}: Forbidden")),
            "{message}"
        );
        assert!(s.classes.get_opt(&name).await.expect("get").is_none());
    }
}

/// At most one class is the global default: a second is refused and
/// not created.
#[tokio::test]
async fn a_second_global_default_is_refused() {
    let s = server().await;
    let pp = PostParams::default();
    s.classes
        .create(&pp, &class("first", 100, true))
        .await
        .expect("the first default");
    let (code, _, message) = status(s.classes.create(&pp, &class("second", 200, true)).await);
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("PriorityClass first is already marked as default"),
        "{message}"
    );
    assert!(s.classes.get_opt("second").await.expect("get").is_none());
}

/// A pod's priority comes from its class, and its preemption policy
/// with it.
#[tokio::test]
async fn a_pod_takes_its_priority_from_its_class() {
    let s = server().await;
    s.classes
        .create(&PostParams::default(), &class("batch", 42, false))
        .await
        .expect("a class");
    let p = s
        .pods
        .create(&PostParams::default(), &pod("p", Some("batch")))
        .await
        .expect("a pod of the class");
    let spec = p.spec.expect("spec");
    assert_eq!(spec.priority, Some(42));
    assert_eq!(
        spec.preemption_policy.as_deref(),
        Some("PreemptLowerPriority")
    );
}

/// A pod naming a class that does not exist is refused like upstream
/// (403, "no PriorityClass with name ... was found") and not created.
#[tokio::test]
async fn a_pod_of_an_unknown_class_is_forbidden() {
    let s = server().await;
    let (code, _, message) = status(
        s.pods
            .create(&PostParams::default(), &pod("p", Some("nope")))
            .await,
    );
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("no PriorityClass with name nope was found"),
        "{message}"
    );
    assert!(s.pods.get_opt("p").await.expect("get").is_none());
}

/// A pod naming no class gets 0, or the global default's value and name
/// once there is one.
#[tokio::test]
async fn a_pod_without_a_class_gets_the_global_default() {
    let s = server().await;
    let pp = PostParams::default();
    let before = s.pods.create(&pp, &pod("before", None)).await.expect("pod");
    assert_eq!(before.spec.and_then(|s| s.priority), Some(0));
    s.classes
        .create(&pp, &class("everyone", 7, true))
        .await
        .expect("a default class");
    let after = s.pods.create(&pp, &pod("after", None)).await.expect("pod");
    let spec = after.spec.expect("spec");
    assert_eq!(spec.priority, Some(7));
    assert_eq!(spec.priority_class_name.as_deref(), Some("everyone"));
}
