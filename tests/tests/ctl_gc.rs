//! The garbage collector, black box: sluice-server with its controllers
//! in-process, owner chains written by the test (ConfigMaps owning
//! ConfigMaps and Pods, so no workload controller is involved), and
//! `kubectl delete --cascade=background|foreground|orphan`. No root needed.
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use sluice_tests::api_server::ApiServer;

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(60);

/// An ownerReference to `owner`.
fn owner_ref<K: kube::Resource<DynamicType = ()>>(owner: &K, block: bool) -> Value {
    json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "name": owner.meta().name, "uid": owner.meta().uid,
        "blockOwnerDeletion": block,
    })
}

async fn cm(api: &Api<ConfigMap>, name: &str, owners: &[Value], finalizers: &[&str]) -> ConfigMap {
    let obj: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owners, "finalizers": finalizers},
    }))
    .expect("ConfigMap");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create ConfigMap")
}

async fn pod(api: &Api<Pod>, name: &str, owners: &[Value]) -> Pod {
    let obj: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owners},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .expect("Pod");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create Pod")
}

/// Waits until `probe` holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut probe: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {HANG:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn gone<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.expect("get").is_none()
}

/// Lets the collector act on whatever it would act on: an object created
/// after the test's and collected shows it has seen them, so an object
/// it left alone is one it keeps.
async fn settle(cms: &Api<ConfigMap>) {
    let sentinel = cm(
        cms,
        "sentinel",
        &[
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "never",
                 "uid": "00000000-0000-4000-8000-00000000dead"}),
        ],
        &[],
    )
    .await;
    let name = sentinel.metadata.name.clone().unwrap_or_default();
    until("the collector to collect a sentinel", || gone(cms, &name)).await;
}

fn kubectl_delete(s: &ApiServer, what: &[&str], cascade: &str) {
    let mut args = vec!["delete"];
    args.extend_from_slice(what);
    let flag = format!("--cascade={cascade}");
    args.push(&flag);
    args.push("--wait=false");
    s.kubectl_ok(&args);
}

#[tokio::test]
async fn a_dependent_whose_owner_never_existed_is_collected() {
    let s = ApiServer::start(&[]);
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client().await);
    let ghost = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost",
                       "uid": "00000000-0000-4000-8000-000000000001"});
    cm(&cms, "orphaned", &[ghost], &[]).await;
    cm(&cms, "unowned", &[], &[]).await;
    until("the dangling dependent to be collected", || {
        gone(&cms, "orphaned")
    })
    .await;
    assert!(!gone(&cms, "unowned").await, "an unowned object stays");
}

#[tokio::test]
async fn background_deletion_collects_every_level_of_dependents() {
    let s = ApiServer::start(&[]);
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client);
    let owner = cm(&cms, "owner", &[], &[]).await;
    let child = cm(&cms, "child", &[owner_ref(&owner, false)], &[]).await;
    pod(&pods, "grandchild", &[owner_ref(&child, false)]).await;
    pod(&pods, "pod-child", &[owner_ref(&owner, true)]).await;
    cm(&cms, "bystander", &[], &[]).await;
    settle(&cms).await;
    assert!(
        !gone(&cms, "child").await,
        "dependents of a live owner stay"
    );
    kubectl_delete(&s, &["configmap", "owner"], "background");
    assert!(gone(&cms, "owner").await, "the owner goes at once");
    until("the dependents to be collected", || async {
        gone(&cms, "child").await
            && gone(&pods, "pod-child").await
            && gone(&pods, "grandchild").await
    })
    .await;
    assert!(!gone(&cms, "bystander").await);
}

#[tokio::test]
async fn foreground_deletion_deletes_blocking_dependents_before_the_owner() {
    let s = ApiServer::start(&[]);
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client);
    let owner = cm(&cms, "owner", &[], &[]).await;
    let child = cm(&cms, "child", &[owner_ref(&owner, true)], &[]).await;
    // Held by a finalizer: the whole chain above it must wait for it.
    cm(
        &cms,
        "held",
        &[owner_ref(&child, true)],
        &["example.com/hold"],
    )
    .await;
    pod(&pods, "free", &[owner_ref(&owner, false)]).await;
    kubectl_delete(&s, &["configmap", "owner"], "foreground");
    until("the held grandchild to be deleted (marked)", || async {
        cms.get("held")
            .await
            .is_ok_and(|c| c.metadata.deletion_timestamp.is_some())
    })
    .await;
    until("the non-blocking dependent to go", || gone(&pods, "free")).await;
    for name in ["owner", "child"] {
        let o = cms
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name} went early: {e}"));
        assert!(o.metadata.deletion_timestamp.is_some(), "{name}");
        assert_eq!(
            o.metadata.finalizers,
            Some(vec!["foregroundDeletion".to_string()]),
            "{name} waits for its dependents"
        );
    }
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release the hold");
    until("the whole chain to go", || async {
        gone(&cms, "held").await && gone(&cms, "child").await && gone(&cms, "owner").await
    })
    .await;
}

#[tokio::test]
async fn orphan_deletion_keeps_dependents_without_the_reference() {
    let s = ApiServer::start(&[]);
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client);
    let owner = cm(&cms, "owner", &[], &[]).await;
    let other = cm(&cms, "other-owner", &[], &[]).await;
    cm(&cms, "child", &[owner_ref(&owner, true)], &[]).await;
    pod(
        &pods,
        "shared-pod",
        &[owner_ref(&owner, false), owner_ref(&other, false)],
    )
    .await;
    kubectl_delete(&s, &["configmap", "owner"], "orphan");
    until("the owner to go once its dependents are orphaned", || {
        gone(&cms, "owner")
    })
    .await;
    let child = cms.get("child").await.expect("the child stays");
    assert!(
        child
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "without its reference"
    );
    let p = pods.get("shared-pod").await.expect("the pod stays");
    let refs = p.metadata.owner_references.unwrap_or_default();
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(refs[0].name, "other-owner");
    settle(&cms).await;
    assert!(!gone(&cms, "child").await, "an orphan is not garbage");
}

#[tokio::test]
async fn a_dependent_with_another_live_owner_only_loses_the_dead_reference() {
    let s = ApiServer::start(&[]);
    let cms: Api<ConfigMap> = Api::default_namespaced(s.client().await);
    let a = cm(&cms, "a", &[], &[]).await;
    let b = cm(&cms, "b", &[], &[]).await;
    cm(
        &cms,
        "both",
        &[owner_ref(&a, false), owner_ref(&b, false)],
        &[],
    )
    .await;
    kubectl_delete(&s, &["configmap", "a"], "background");
    until("the dead reference to be dropped", || async {
        cms.get("both").await.is_ok_and(|c| {
            let refs = c.metadata.owner_references.unwrap_or_default();
            refs.len() == 1 && refs[0].name == "b"
        })
    })
    .await;
    settle(&cms).await;
    assert!(!gone(&cms, "both").await);
}

#[tokio::test]
async fn owners_are_looked_for_in_the_dependents_namespace_or_the_cluster() {
    let s = ApiServer::start(&[]);
    let client = s.client().await;
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "elsewhere"}})).expect("Namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create Namespace");
    let here: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let there: Api<ConfigMap> = Api::namespaced(client.clone(), "elsewhere");
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": "gc-owner-node"}})).expect("Node");
    let node = nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create Node");
    let owner_here = cm(&here, "owner", &[], &[]).await;
    // A namespaced owner in another namespace is no owner: dangling.
    cm(&there, "cross", &[owner_ref(&owner_here, false)], &[]).await;
    // A cluster-scoped owner owns across namespaces.
    cm(&there, "node-owned", &[owner_ref(&node, false)], &[]).await;
    until("the cross-namespace dependent to be collected", || {
        gone(&there, "cross")
    })
    .await;
    assert!(!gone(&there, "node-owned").await, "its node is alive");
    assert!(!gone(&here, "owner").await);
    s.kubectl_ok(&["delete", "node", "gc-owner-node"]);
    until("the node's dependent to be collected", || {
        gone(&there, "node-owned")
    })
    .await;
}

/// A Deployment (no replicas, so no workload controller makes Pods for
/// it) owning a Pod and a ConfigMap the test wrote, deleted with `kubectl
/// delete deployment --cascade=<policy>`; returns whether each dependent
/// was collected.
async fn delete_deployment_with(policy: &str) -> (bool, bool) {
    use k8s_openapi::api::apps::v1::Deployment;
    let s = ApiServer::start(&[]);
    let client = s.client().await;
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "busybox"}]}}},
    }))
    .expect("Deployment");
    let d = deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create Deployment");
    pod(&pods, "web-extra", &[owner_ref(&d, true)]).await;
    cm(&cms, "web-config", &[owner_ref(&d, true)], &[]).await;
    s.kubectl_ok(&[
        "delete",
        "deployment",
        "web",
        &format!("--cascade={policy}"),
        "--timeout=60s",
    ]);
    assert!(gone(&deploys, "web").await, "kubectl waited for it to go");
    if policy != "orphan" {
        until("the dependents to be collected", || async {
            gone(&pods, "web-extra").await && gone(&cms, "web-config").await
        })
        .await;
    } else {
        settle(&cms).await;
    }
    (
        gone(&pods, "web-extra").await,
        gone(&cms, "web-config").await,
    )
}

#[tokio::test]
async fn kubectl_delete_deployment_cascade_background_collects_its_dependents() {
    assert_eq!(delete_deployment_with("background").await, (true, true));
}

#[tokio::test]
async fn kubectl_delete_deployment_cascade_foreground_collects_its_dependents() {
    assert_eq!(delete_deployment_with("foreground").await, (true, true));
}

#[tokio::test]
async fn kubectl_delete_deployment_cascade_orphan_keeps_its_dependents() {
    assert_eq!(delete_deployment_with("orphan").await, (false, false));
}
