//! What the API server does on DELETE (DeleteOptions: propagation policy,
//! preconditions, grace period, dry run), and the upstream behaviours
//! around it that users meet first: finalizers on objects being deleted,
//! pods' default tolerations, `kubectl get all`, and events posted
//! through events.k8s.io/v1 showing in `kubectl get events` and `kubectl
//! describe`. The API server alone (no controller is a second writer);
//! no root needed.
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::{Value, json};
use sluice_tests::{api_server::ApiServer, poll::wait_until};

fn cm(name: &str, finalizers: &[&str]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "finalizers": finalizers},
        "data": {"k": "v"},
    }))
    .expect("ConfigMap")
}

async fn create_cm(s: &ApiServer, name: &str, finalizers: &[&str]) -> (Api<ConfigMap>, ConfigMap) {
    let api: Api<ConfigMap> = Api::default_namespaced(s.client().await);
    let made = api
        .create(&PostParams::default(), &cm(name, finalizers))
        .await
        .expect("create");
    (api, made)
}

fn api_error(e: kube::Error) -> kube::core::ErrorResponse {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API Status, got {other}"),
    }
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test]
async fn background_is_the_default_and_deletes_at_once() {
    let s = ApiServer::api_only(&[]);
    let (api, _) = create_cm(&s, "plain", &[]).await;
    api.delete("plain", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(api.get_opt("plain").await.expect("get").is_none());
    let (api, _) = create_cm(&s, "bg", &[]).await;
    api.delete("bg", &DeleteParams::background())
        .await
        .expect("delete");
    assert!(api.get_opt("bg").await.expect("get").is_none());
}

#[tokio::test]
async fn foreground_and_orphan_mark_the_object_with_their_finalizer() {
    let s = ApiServer::api_only(&[]);
    for (name, dp, finalizer) in [
        ("fg", DeleteParams::foreground(), "foregroundDeletion"),
        ("or", DeleteParams::orphan(), "orphan"),
    ] {
        let (api, _) = create_cm(&s, name, &[]).await;
        let marked = api
            .delete(name, &dp)
            .await
            .expect("delete")
            .left()
            .expect("the object, not a Status");
        assert!(marked.metadata.deletion_timestamp.is_some(), "{name}");
        assert_eq!(
            marked.metadata.finalizers,
            Some(vec![finalizer.to_string()]),
            "{name}"
        );
        let stored = api.get(name).await.expect("the object stays");
        assert_eq!(stored.metadata.finalizers, marked.metadata.finalizers);
        // A later Background delete swaps the GC finalizer away; with none
        // left the object goes.
        api.delete(name, &DeleteParams::background())
            .await
            .expect("delete");
        assert!(api.get_opt(name).await.expect("get").is_none(), "{name}");
    }
}

#[test]
fn kubectl_cascade_sends_the_policy() {
    let s = ApiServer::api_only(&[]);
    let f = sluice_tests::topology::TempDir::new();
    let p = f.0.join("cm.yaml");
    std::fs::write(
        &p,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kc\n  namespace: default\n",
    )
    .expect("write");
    s.kubectl_ok(&["create", "-f", &p.display().to_string()]);
    s.kubectl_ok(&["delete", "cm", "kc", "--cascade=orphan", "--wait=false"]);
    let got = json_of(&s.kubectl_ok(&["get", "cm", "kc", "-o", "json"]));
    assert_eq!(got["metadata"]["finalizers"], json!(["orphan"]));
    assert!(got["metadata"]["deletionTimestamp"].is_string());
}

#[test]
fn an_unknown_propagation_policy_is_refused_naming_it() {
    let s = ApiServer::api_only(&[]);
    let f = sluice_tests::topology::TempDir::new();
    let p = f.0.join("cm.yaml");
    std::fs::write(
        &p,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kept\n  namespace: default\n",
    )
    .expect("write");
    s.kubectl_ok(&["create", "-f", &p.display().to_string()]);
    let out = s.kubectl(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps/kept?propagationPolicy=Sideways",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(
        err.contains("Sideways") && err.contains("propagationPolicy"),
        "{err}"
    );
    s.kubectl_ok(&["get", "cm", "kept"]);
    // The query form of a valid policy works.
    s.kubectl_ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps/kept?propagationPolicy=Background",
    ]);
    let out = s.kubectl(&["get", "cm", "kept"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[tokio::test]
async fn preconditions_that_do_not_hold_are_conflicts_and_delete_nothing() {
    let s = ApiServer::api_only(&[]);
    let (api, made) = create_cm(&s, "pre", &[]).await;
    let uid = made.metadata.uid.clone().expect("uid");
    let rv = made.metadata.resource_version.clone().expect("rv");
    for (pre, needle) in [
        (
            Preconditions {
                uid: Some("00000000-0000-4000-8000-000000000000".into()),
                resource_version: None,
            },
            "UID in the precondition",
        ),
        (
            Preconditions {
                uid: None,
                resource_version: Some("1".into()),
            },
            "ResourceVersion in the precondition",
        ),
    ] {
        let dp = DeleteParams {
            preconditions: Some(pre),
            ..Default::default()
        };
        let e = api_error(api.delete("pre", &dp).await.expect_err("must conflict"));
        assert_eq!(e.code, 409, "{e:?}");
        assert!(e.message.contains(needle), "{}", e.message);
        api.get("pre").await.expect("still there");
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: Some(rv),
        }),
        ..Default::default()
    };
    api.delete("pre", &dp).await.expect("preconditions hold");
    assert!(api.get_opt("pre").await.expect("get").is_none());
}

#[tokio::test]
async fn a_dry_run_delete_changes_nothing() {
    let s = ApiServer::api_only(&[]);
    let (api, made) = create_cm(&s, "dry", &[]).await;
    for dp in [
        DeleteParams::default().dry_run(),
        DeleteParams::foreground().dry_run(),
    ] {
        api.delete("dry", &dp).await.expect("dry-run delete");
        let now = api.get("dry").await.expect("still there");
        assert_eq!(
            now.metadata.resource_version, made.metadata.resource_version,
            "nothing was written"
        );
        assert!(now.metadata.deletion_timestamp.is_none());
        assert!(now.metadata.finalizers.unwrap_or_default().is_empty());
    }
}

fn pod(name: &str, node: Option<&str>) -> Pod {
    let mut p = json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "terminationGracePeriodSeconds": 30},
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    serde_json::from_value(p).expect("Pod")
}

#[tokio::test]
async fn a_pod_on_a_node_is_deleted_gracefully_and_an_unscheduled_one_at_once() {
    let s = ApiServer::api_only(&[]);
    let pods: Api<Pod> = Api::default_namespaced(s.client().await);
    pods.create(&PostParams::default(), &pod("bound", Some("n1")))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &pod("loose", None))
        .await
        .expect("create");
    pods.delete("loose", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(pods.get_opt("loose").await.expect("get").is_none());
    let marked = pods
        .delete("bound", &DeleteParams::default())
        .await
        .expect("delete")
        .left()
        .expect("the object, not a Status");
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    let again = pods
        .delete("bound", &DeleteParams::default())
        .await
        .expect("delete again")
        .left()
        .expect("the object, not a Status");
    assert_eq!(
        again.metadata.resource_version, marked.metadata.resource_version,
        "a second delete without a shorter grace changes nothing"
    );
    let table = s.kubectl_ok(&["get", "pod", "bound"]);
    assert!(table.contains("Terminating"), "{table}");
    // The kubelet's final delete (grace 0) removes it.
    pods.delete(
        "bound",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("delete with grace 0");
    assert!(pods.get_opt("bound").await.expect("get").is_none());
}

#[tokio::test]
async fn an_object_being_deleted_takes_no_new_finalizers() {
    let s = ApiServer::api_only(&[]);
    let (api, _) = create_cm(&s, "held", &["example.com/hold"]).await;
    api.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let add = json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}});
    let e = api_error(
        api.patch("held", &PatchParams::default(), &Patch::Merge(&add))
            .await
            .expect_err("a new finalizer on an object being deleted"),
    );
    assert_eq!(e.code, 422, "{e:?}");
    assert!(e.message.contains("example.com/more"), "{}", e.message);
    // Removing the last one completes the delete.
    let none = json!({"metadata": {"finalizers": null}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&none))
        .await
        .expect("remove the finalizer");
    assert!(api.get_opt("held").await.expect("get").is_none());
}

#[tokio::test]
async fn pods_tolerate_not_ready_and_unreachable_nodes_for_300_s() {
    let s = ApiServer::api_only(&[]);
    let pods: Api<Pod> = Api::default_namespaced(s.client().await);
    let made = pods
        .create(&PostParams::default(), &pod("tol", None))
        .await
        .expect("create");
    let tolerations = made
        .spec
        .and_then(|s| s.tolerations)
        .expect("tolerations added");
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let t = tolerations
            .iter()
            .find(|t| t.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no toleration of {key}: {tolerations:?}"));
        assert_eq!(t.effect.as_deref(), Some("NoExecute"));
        assert_eq!(t.operator.as_deref(), Some("Exists"));
        assert_eq!(t.toleration_seconds, Some(300));
    }
}

#[test]
fn kubectl_get_all_lists_workloads_and_services() {
    let s = ApiServer::api_only(&[]);
    let f = sluice_tests::topology::TempDir::new();
    let p = f.0.join("all.yaml");
    std::fs::write(
        &p,
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: busybox}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
"#,
    )
    .expect("write");
    s.kubectl_ok(&["apply", "-f", &p.display().to_string()]);
    let all = s.kubectl_ok(&["get", "all", "-o", "name"]);
    assert!(all.contains("service/web"), "{all}");
    assert!(all.contains("deployment.apps/web"), "{all}");
    assert!(!all.contains("configmap"), "{all}");
}

/// kube-rs's Recorder writes events.k8s.io/v1 (a create, then a PATCH of
/// the series); the core/v1 readers see one event with count 2.
#[tokio::test]
async fn events_recorded_through_events_k8s_io_show_in_kubectl() {
    let s = ApiServer::api_only(&[]);
    let client = s.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let made = pods
        .create(&PostParams::default(), &pod("watched", None))
        .await
        .expect("create");
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: made.metadata.name.clone(),
        namespace: Some("default".into()),
        uid: made.metadata.uid.clone(),
        ..Default::default()
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "sluice-test-controller".into(),
            instance: Some("test-1".into()),
        },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: "Flapped".into(),
        note: Some("the widget flapped".into()),
        action: "Checking".into(),
        secondary: None,
    };
    for _ in 0..2 {
        recorder.publish(&ev, &reference).await.expect("publish");
    }
    let list = json_of(&s.kubectl_ok(&["get", "events", "-o", "json"]));
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "one event, deduplicated: {list}");
    let e = &items[0];
    assert_eq!(e["apiVersion"], "v1");
    assert_eq!(e["message"], "the widget flapped");
    assert_eq!(e["involvedObject"]["name"], "watched");
    assert_eq!(e["reportingComponent"], "sluice-test-controller");
    assert_eq!(e["series"]["count"], 2);
    let wide = s.kubectl_ok(&["get", "events", "-o", "wide"]);
    let row = wide
        .lines()
        .find(|l| l.contains("Flapped"))
        .unwrap_or_else(|| panic!("no row for the event:\n{wide}"));
    for cell in [
        "Warning",
        "pod/watched",
        "the widget flapped",
        "sluice-test-controller",
    ] {
        assert!(row.contains(cell), "{cell} missing from {row:?}");
    }
    assert!(
        row.split_whitespace().any(|c| c == "2"),
        "count 2 missing from {row:?}"
    );
    let described = wait_until(
        "kubectl describe to list the event",
        Duration::from_secs(30),
        || {
            let d = s.kubectl_ok(&["describe", "pod", "watched"]);
            d.contains("Flapped").then_some(d)
        },
        || s.kubectl_ok(&["describe", "pod", "watched"]),
    );
    assert!(described.contains("the widget flapped"), "{described}");
    assert!(described.contains("x2"), "the count: {described}");
    // And the events.k8s.io view reads the same object back.
    let view = json_of(&s.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"]));
    let v = &view["items"][0];
    assert_eq!(v["apiVersion"], "events.k8s.io/v1");
    assert_eq!(v["note"], "the widget flapped");
    assert_eq!(v["regarding"]["uid"], json!(made.metadata.uid));
    assert_eq!(v["reportingController"], "sluice-test-controller");
}
