//! `sluice-server` composes the API server with the scheduler and the
//! controller manager (like k3s): in-process by default, each with its own
//! credential; `--disable` turns them off, and `sluice-server scheduler` /
//! `sluice-server controllers` run one alone against a server. No root
//! needed.
use std::{process::Command, time::Duration};

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::{Api, api::PostParams};
use serde_json::json;
use sluice_tests::{
    Daemon,
    api_server::ApiServer,
    bin,
    cluster::{FakeNodes, NodeSpec},
};

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(60);

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "localhost/busybox:1.35"}]},
    }))
    .expect("Pod")
}

/// Waits until the pod has a node and returns it.
async fn bound_node(pods: &Api<Pod>, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let p = pods.get(name).await.expect("get pod");
        if let Some(node) = p.spec.and_then(|s| s.node_name) {
            return node;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} was never bound"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("Namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

/// Waits until namespace `ns` has its `default` ServiceAccount.
async fn default_service_account(client: &kube::Client, ns: &str) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + HANG;
    while sas.get_opt("default").await.expect("get sa").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "namespace {ns} never got its default ServiceAccount"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_in_process_scheduler_binds_a_pod() {
    let s = ApiServer::start(&[]);
    let client = s.client().await;
    let nodes = FakeNodes::new(client.clone());
    nodes.add(&NodeSpec::new("n1")).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("p"))
        .await
        .expect("create pod");
    assert_eq!(bound_node(&pods, "p").await, "n1");
}

#[tokio::test]
async fn the_in_process_controllers_give_a_new_namespace_its_default_service_account() {
    let s = ApiServer::start(&[]);
    let client = s.client().await;
    create_namespace(&client, "fresh").await;
    default_service_account(&client, "fresh").await;
}

/// With the scheduler disabled the server binds nothing itself; a
/// scheduler started alone with the server's scheduler credential does.
#[tokio::test]
async fn a_standalone_scheduler_binds_for_a_server_that_runs_none() {
    let s = ApiServer::start_with(&["--disable", "scheduler"]);
    let client = s.client().await;
    let nodes = FakeNodes::new(client.clone());
    nodes.add(&NodeSpec::new("n1")).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("p"))
        .await
        .expect("create pod");
    let mut c = Command::new(bin("sluice-server"));
    c.arg("scheduler")
        .arg("--kubeconfig")
        .arg(s.data.0.join("scheduler.kubeconfig"));
    let _scheduler = Daemon::from_command("scheduler", c);
    assert_eq!(bound_node(&pods, "p").await, "n1");
}

#[tokio::test]
async fn a_standalone_controller_manager_serves_a_server_that_runs_none() {
    let s = ApiServer::start_with(&["--disable", "controllers"]);
    let client = s.client().await;
    create_namespace(&client, "fresh").await;
    let mut c = Command::new(bin("sluice-server"));
    c.arg("controllers")
        .arg("--kubeconfig")
        .arg(s.data.0.join("controller-manager.kubeconfig"));
    let _controllers = Daemon::from_command("controllers", c);
    default_service_account(&client, "fresh").await;
}

/// Bad component flags: exit 2, one line naming the flag and the value,
/// nothing started.
#[test]
fn bad_component_flags_exit_2_naming_the_value() {
    let dir = sluice_tests::topology::TempDir::new();
    let data_dir = dir.0.to_str().expect("utf-8 temp dir");
    let server = ["--data-dir", data_dir, "--listen", "127.0.0.1:0"];
    let kubeconfig = dir.0.join("admin.kubeconfig");
    let kubeconfig = kubeconfig.to_str().expect("utf-8 temp dir");
    for (args, needle) in [
        (
            [&server[..], &["--disable", "schedular"]].concat(),
            "schedular",
        ),
        (
            [&server[..], &["--cluster-cidr", "10.244.1.0/16"]].concat(),
            "--cluster-cidr \"10.244.1.0/16\"",
        ),
        (
            [&server[..], &["--node-cidr-mask-size", "8"]].concat(),
            "--node-cidr-mask-size \"8\"",
        ),
        (
            vec![
                "controllers",
                "--kubeconfig",
                kubeconfig,
                "--cluster-cidr",
                "nope",
            ],
            "--cluster-cidr \"nope\"",
        ),
    ] {
        let out = Command::new(bin("sluice-server"))
            .args(&args)
            .output()
            .expect("run sluice-server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !dir.0.join("admin.kubeconfig").exists(),
            "{args:?} started the server"
        );
    }
}
