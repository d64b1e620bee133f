//! Deployments and ReplicaSets end to end: the real `sluice-server` with
//! its controllers in-process, the real kubectl, fake Nodes and a fake
//! kubelet (tests/src/cluster.rs) that marks bound Pods Running and Ready.
//! The scheduler is disabled and the test binds Pods itself, round robin
//! over the fake Nodes (kube-controller-manager's own integration tests
//! run without a scheduler too), so these tests depend on the ReplicaSet
//! and Deployment controllers alone. No root needed.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};
use serde_json::json;
use sluice_tests::api_server::ApiServer;
use sluice_tests::cluster::{FakeKubelet, FakeNodes, NodeSpec};
use tokio::task::JoinHandle;

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(90);

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// Pods with this label are never bound: they stay Pending.
const UNSCHEDULABLE: &str = "test/unschedulable";

struct Cluster {
    server: ApiServer,
    client: kube::Client,
    _nodes: FakeNodes,
    _kubelet: FakeKubelet,
    binder: JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.binder.abort();
    }
}

async fn cluster() -> Cluster {
    let server = ApiServer::start_with(&["--disable", "scheduler"]);
    let client = server.client().await;
    let nodes = FakeNodes::new(client.clone());
    for n in NODES {
        nodes.add(&NodeSpec::new(n)).await;
    }
    let kubelet = FakeKubelet::start(client.clone(), &NODES);
    let binder = tokio::spawn(bind_pending(client.clone()));
    Cluster {
        server,
        client,
        _nodes: nodes,
        _kubelet: kubelet,
        binder,
    }
}

/// Plays the scheduler: binds each new unbound Pod to the next fake Node
/// through `pods/binding`.
async fn bind_pending(client: kube::Client) {
    let mut next = 0;
    let mut pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(ev) = pods.next().await {
        let Ok(pod) = ev else { continue };
        let unbound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_none());
        let held = pod.labels().contains_key(UNSCHEDULABLE);
        if !unbound || held || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let node = NODES[next % NODES.len()];
        next += 1;
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod.name_any()},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let body = serde_json::to_vec(&binding).expect("binding");
        if let Err(e) = api
            .create_subresource::<serde_json::Value>(
                "binding",
                &pod.name_any(),
                &PostParams::default(),
                body,
            )
            .await
        {
            eprintln!("[binder] {}: {e}", pod.name_any());
        }
    }
}

impl Cluster {
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn replica_sets(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// kubectl blocks (`rollout status` for up to a minute and a half):
    /// off the runtime's worker, so the binder, fake kubelet and Lease
    /// renewals keep running meanwhile.
    fn kubectl(&self, args: &[&str]) -> String {
        tokio::task::block_in_place(|| self.server.kubectl_ok(args))
    }

    /// `kubectl apply -f` of a manifest.
    fn apply(&self, manifest: &str) {
        let path = self
            .server
            .data
            .0
            .join(format!("manifest-{}.yaml", sluice_tests::unique("m")));
        std::fs::write(&path, manifest).expect("write manifest");
        self.kubectl(&["apply", "-f", path.to_str().expect("path")]);
    }

    fn rollout_status(&self) -> String {
        let out = self.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
        out
    }

    /// Pods of `app=web` not being deleted.
    async fn active_pods(&self) -> Vec<Pod> {
        self.pods()
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    async fn web_replica_sets(&self) -> Vec<ReplicaSet> {
        self.replica_sets()
            .list(&ListParams::default())
            .await
            .expect("list replicasets")
            .items
    }

    /// Waits until exactly `n` active `app=web` Pods exist, all bound and
    /// Ready, and returns them.
    async fn wait_ready_pods(&self, n: usize) -> Vec<Pod> {
        wait(&format!("{n} bound, ready web pods"), || async {
            let pods = self.active_pods().await;
            (pods.len() == n && pods.iter().all(|p| node_of(p).is_some() && is_ready(p)))
                .then_some(pods)
        })
        .await
    }
}

/// Polls `probe` until it gives `Some`, under [`HANG`].
async fn wait<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image_of_pod(p: &Pod) -> String {
    p.spec.as_ref().expect("spec").containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn image_of_rs(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .expect("template")
        .containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn controller_uid(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

const V1: &str = "localhost/busybox:1.35";
const V2: &str = "localhost/busybox:1.36";

fn deployment(replicas: i32, strategy: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  annotations:
    kubernetes.io/change-cause: first
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  strategy: {strategy}
{extra_spec}  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {V1}
        command: [sleep, "3600"]
"#
    )
}

fn rolling(surge: i32, unavailable: i32) -> String {
    format!(
        "{{type: RollingUpdate, rollingUpdate: {{maxSurge: {surge}, maxUnavailable: {unavailable}}}}}"
    )
}

// ---- create and roll out ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_gets_a_replica_set_whose_pods_are_bound_and_rollout_status_succeeds() {
    let c = cluster().await;
    c.apply(&deployment(3, &rolling(1, 1), ""));
    let out = c.rollout_status();
    assert!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );

    let d = c.deployments().get("web").await.expect("deployment");
    let rss = c.web_replica_sets().await;
    assert_eq!(rss.len(), 1, "{rss:?}");
    let rs = &rss[0];
    let hash = rs.labels()["pod-template-hash"].clone();
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    let selector = &rs.spec.as_ref().expect("spec").selector;
    assert_eq!(
        selector.match_labels.as_ref().expect("matchLabels")["pod-template-hash"],
        hash
    );
    assert_eq!(controller_uid(&rs.metadata), d.uid());
    assert_eq!(
        annotation(&rs.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("1")
    );
    assert_eq!(
        annotation(&d.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("1")
    );

    let pods = c.wait_ready_pods(3).await;
    for p in &pods {
        assert_eq!(controller_uid(&p.metadata), rs.uid(), "{}", p.name_any());
        assert_eq!(
            p.metadata.generate_name.as_deref(),
            Some(format!("web-{hash}-").as_str())
        );
        assert!(NODES.contains(&node_of(p).expect("bound").as_str()));
    }
    let rs = c.replica_sets().get(&rs.name_any()).await.expect("rs");
    let st = rs.status.expect("rs status");
    assert_eq!(
        (
            st.replicas,
            st.ready_replicas,
            st.available_replicas,
            st.fully_labeled_replicas
        ),
        (3, Some(3), Some(3), Some(3))
    );
    let st = c
        .deployments()
        .get("web")
        .await
        .expect("d")
        .status
        .expect("status");
    assert_eq!(
        (st.replicas, st.updated_replicas, st.available_replicas),
        (Some(3), Some(3), Some(3))
    );
    let reason = |t: &str| {
        st.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .and_then(|c| c.reason.clone())
    };
    assert_eq!(
        reason("Available").as_deref(),
        Some("MinimumReplicasAvailable")
    );
    assert_eq!(
        reason("Progressing").as_deref(),
        Some("NewReplicaSetAvailable")
    );
}

/// Every ReplicaSet and Deployment state the watch shows during a
/// rollout: the ReplicaSets never want more than replicas + maxSurge, and
/// the Deployment never reports fewer than replicas - maxUnavailable
/// available.
struct Bounds {
    max_total: i32,
    min_available: i32,
    violations: Arc<Mutex<Vec<String>>>,
    states: Arc<Mutex<usize>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Bounds {
    fn watch(c: &Cluster, max_total: i32, min_available: i32) -> Self {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let states = Arc::new(Mutex::new(0));
        let (v, n) = (violations.clone(), states.clone());
        let rs_task = tokio::spawn({
            let api = c.replica_sets();
            async move {
                let mut sizes: HashMap<String, i32> = HashMap::new();
                let mut events = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                while let Some(Ok(ev)) = events.next().await {
                    match ev {
                        watcher::Event::Apply(rs) | watcher::Event::InitApply(rs) => {
                            sizes.insert(rs.name_any(), spec_replicas(&rs));
                        }
                        watcher::Event::Delete(rs) => {
                            sizes.remove(&rs.name_any());
                        }
                        _ => continue,
                    }
                    *n.lock().expect("states") += 1;
                    let total: i32 = sizes.values().sum();
                    if total > max_total {
                        v.lock()
                            .expect("violations")
                            .push(format!("replica sets want {total}: {sizes:?}"));
                    }
                }
            }
        });
        let (v, n) = (violations.clone(), states.clone());
        let d_task = tokio::spawn({
            let api = c.deployments();
            async move {
                let mut events = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
                    .boxed();
                while let Some(Ok(d)) = events.next().await {
                    *n.lock().expect("states") += 1;
                    let available = d
                        .status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0);
                    if available < min_available {
                        v.lock()
                            .expect("violations")
                            .push(format!("only {available} available: {:?}", d.status));
                    }
                }
            }
        });
        Self {
            max_total,
            min_available,
            violations,
            states,
            tasks: vec![rs_task, d_task],
        }
    }

    fn check(&self) {
        let v = self.violations.lock().expect("violations");
        assert!(
            v.is_empty(),
            "bounds (total <= {}, available >= {}) broken:\n{}",
            self.max_total,
            self.min_available,
            v.join("\n")
        );
        assert!(
            *self.states.lock().expect("states") > 2,
            "the watch saw the rollout"
        );
    }
}

impl Drop for Bounds {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_image_rolls_out_a_new_replica_set_within_max_surge_and_max_unavailable() {
    let c = cluster().await;
    c.apply(&deployment(4, &rolling(1, 1), ""));
    c.rollout_status();
    let old = c.web_replica_sets().await.remove(0);

    let bounds = Bounds::watch(&c, 5, 3);
    // The watches list first: only what follows counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kubectl(&["set", "image", "deployment/web", &format!("web={V2}")]);
    c.rollout_status();
    let pods = c.wait_ready_pods(4).await;
    bounds.check();

    let rss = c.web_replica_sets().await;
    assert_eq!(rss.len(), 2);
    let new = rss
        .iter()
        .find(|rs| image_of_rs(rs) == V2)
        .expect("a v2 replica set");
    let old_now = rss
        .iter()
        .find(|rs| rs.name_any() == old.name_any())
        .expect("the v1 replica set");
    assert_ne!(new.name_any(), old.name_any());
    assert_eq!((spec_replicas(new), spec_replicas(old_now)), (4, 0));
    assert_eq!(
        annotation(&new.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("2")
    );
    for p in &pods {
        assert_eq!(image_of_pod(p), V2, "{}", p.name_any());
        assert_eq!(controller_uid(&p.metadata), new.uid());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_removes_every_old_pod_before_the_first_new_one() {
    let c = cluster().await;
    c.apply(&deployment(3, "{type: Recreate}", ""));
    c.rollout_status();
    let overlaps = Arc::new(Mutex::new(Vec::new()));
    let seen = overlaps.clone();
    let api = c.pods();
    let watch = tokio::spawn(async move {
        let mut images: HashMap<String, String> = HashMap::new();
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(Ok(ev)) = events.next().await {
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    images.insert(p.name_any(), image_of_pod(&p));
                }
                watcher::Event::Delete(p) => {
                    images.remove(&p.name_any());
                }
                _ => continue,
            }
            if images.values().any(|i| i == V1) && images.values().any(|i| i == V2) {
                seen.lock().expect("overlaps").push(format!("{images:?}"));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kubectl(&["set", "image", "deployment/web", &format!("web={V2}")]);
    c.rollout_status();
    let pods = c.wait_ready_pods(3).await;
    watch.abort();
    assert!(pods.iter().all(|p| image_of_pod(p) == V2));
    let overlaps = overlaps.lock().expect("overlaps");
    assert!(
        overlaps.is_empty(),
        "old and new pods at once:\n{}",
        overlaps.join("\n")
    );
}

// ---- history and rollback ---------------------------------------------------

/// `kubectl rollout history` as (revision, change-cause) pairs.
fn history(c: &Cluster) -> Vec<(String, String)> {
    c.kubectl(&["rollout", "history", "deployment/web"])
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let rev = w.next()?;
            rev.parse::<u32>().ok()?;
            Some((rev.to_string(), w.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_history_lists_revisions_and_undo_restores_the_previous_template() {
    let c = cluster().await;
    c.apply(&deployment(2, &rolling(1, 0), ""));
    c.rollout_status();
    let v1 = c.web_replica_sets().await.remove(0);
    c.kubectl(&["set", "image", "deployment/web", &format!("web={V2}")]);
    c.kubectl(&[
        "annotate",
        "deployment/web",
        "kubernetes.io/change-cause=second",
        "--overwrite",
    ]);
    c.rollout_status();

    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    wait("history with both revisions", || async {
        (history(&c) == pairs(&[("1", "first"), ("2", "second")])).then_some(())
    })
    .await;
    let one = c.kubectl(&["rollout", "history", "deployment/web", "--revision=1"]);
    assert!(one.contains(V1), "{one}");
    let two = c.kubectl(&["rollout", "history", "deployment/web", "--revision=2"]);
    assert!(two.contains(V2), "{two}");

    let out = c.kubectl(&["rollout", "undo", "deployment/web"]);
    assert!(out.contains("rolled back"), "{out}");
    c.rollout_status();
    let pods = c.wait_ready_pods(2).await;
    assert!(pods.iter().all(|p| image_of_pod(p) == V1));
    let d = c.deployments().get("web").await.expect("deployment");
    let image = d
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some(V1));

    // The v1 ReplicaSet was reused, as revision 3.
    let rss = c.web_replica_sets().await;
    assert_eq!(rss.len(), 2, "no third replica set");
    let back = rss
        .iter()
        .find(|rs| rs.name_any() == v1.name_any())
        .expect("v1 replica set");
    assert_eq!(spec_replicas(back), 2);
    assert_eq!(
        annotation(&back.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("3")
    );
    wait("history after undo", || async {
        let h = history(&c);
        (h.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>() == ["2", "3"]).then_some(())
    })
    .await;
}

// ---- scaling and replacement ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_up_and_down_changes_the_pod_count() {
    let c = cluster().await;
    c.apply(&deployment(2, &rolling(1, 1), ""));
    c.rollout_status();
    c.kubectl(&["scale", "deployment/web", "--replicas=5"]);
    c.rollout_status();
    let pods = c.wait_ready_pods(5).await;
    let rss = c.web_replica_sets().await;
    assert_eq!(rss.len(), 1, "scaling is not a rollout");
    assert_eq!(spec_replicas(&rss[0]), 5);
    assert!(
        pods.iter()
            .all(|p| controller_uid(&p.metadata) == rss[0].uid())
    );

    c.kubectl(&["scale", "deployment/web", "--replicas=1"]);
    c.rollout_status();
    c.wait_ready_pods(1).await;
    assert_eq!(spec_replicas(&c.web_replica_sets().await[0]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_is_replaced() {
    let c = cluster().await;
    c.apply(&deployment(3, &rolling(1, 1), ""));
    c.rollout_status();
    let before = c.wait_ready_pods(3).await;
    let victim = before[0].name_any();
    c.kubectl(&["delete", "pod", &victim]);
    let after = wait("a replacement pod", || async {
        let pods = c.active_pods().await;
        let ok = pods.len() == 3
            && pods
                .iter()
                .all(|p| p.name_any() != victim && node_of(p).is_some() && is_ready(p));
        ok.then_some(pods)
    })
    .await;
    let fresh: Vec<_> = after
        .iter()
        .filter(|p| before.iter().all(|b| b.name_any() != p.name_any()))
        .collect();
    assert_eq!(fresh.len(), 1, "exactly one new pod");
    assert_eq!(
        controller_uid(&fresh[0].metadata),
        controller_uid(&before[0].metadata)
    );
}

// ---- ReplicaSet claiming ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_adopts_a_matching_orphan_and_releases_a_pod_it_stops_selecting() {
    let c = cluster().await;
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": V1}]},
    }))
    .expect("pod");
    c.pods()
        .create(&PostParams::default(), &orphan)
        .await
        .expect("create orphan");
    c.apply(
        r#"apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: localhost/busybox:1.35}]
"#,
    );
    let rs_uid = c.replica_sets().get("web").await.expect("rs").uid();
    let pods = c.wait_ready_pods(2).await;
    let adopted = pods
        .iter()
        .find(|p| p.name_any() == "orphan")
        .expect("the orphan is one of the two");
    assert_eq!(controller_uid(&adopted.metadata), rs_uid);

    // Relabelled out of the selector: released, and replaced.
    c.kubectl(&["label", "pod", "orphan", "app=other", "--overwrite"]);
    let pods = c.wait_ready_pods(2).await;
    assert!(pods.iter().all(|p| p.name_any() != "orphan"));
    let released = c.pods().get("orphan").await.expect("still there");
    assert_eq!(controller_uid(&released.metadata), None);
}

// ---- failure ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_reports_a_rollout_past_its_progress_deadline() {
    let c = cluster().await;
    c.apply(&deployment(
        2,
        &rolling(1, 0),
        "  progressDeadlineSeconds: 3\n",
    ));
    c.rollout_status();
    // New pods that are never bound never become ready.
    let patch = json!({"spec": {"template": {"metadata": {"labels": {UNSCHEDULABLE: "true"}}}}});
    c.deployments()
        .patch("web", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .expect("patch template");
    let out = tokio::task::block_in_place(|| {
        c.server
            .kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    let d = c.deployments().get("web").await.expect("deployment");
    let cond = d
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .expect("Progressing");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );
    // maxUnavailable 0: the old pods still serve.
    assert_eq!(
        c.active_pods().await.iter().filter(|p| is_ready(p)).count(),
        2
    );
}

// ---- validation -------------------------------------------------------------

/// Upstream's ValidateDeploymentStrategy: a rolling update's maxSurge and
/// maxUnavailable are counts or "N%" strings, not both zero, and Recreate
/// takes no rolling-update parameters. `kubectl apply` of such a
/// Deployment fails naming the field, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_an_invalid_strategy_names_the_field_and_creates_nothing() {
    let server = ApiServer::start_with(&["--disable", "scheduler"]);
    let client = server.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    for (strategy, field) in [
        (
            "{type: RollingUpdate, rollingUpdate: {maxSurge: lots, maxUnavailable: 1}}",
            "spec.strategy.rollingUpdate.maxSurge",
        ),
        (
            "{type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 0%}}",
            "spec.strategy.rollingUpdate.maxUnavailable",
        ),
        (
            "{type: Recreate, rollingUpdate: {maxSurge: 1}}",
            "spec.strategy.rollingUpdate",
        ),
    ] {
        let path = server
            .data
            .0
            .join(format!("manifest-{}.yaml", sluice_tests::unique("m")));
        std::fs::write(&path, deployment(1, strategy, "")).expect("write manifest");
        let out = tokio::task::block_in_place(|| {
            server.kubectl(&["apply", "-f", path.to_str().expect("path")])
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{strategy} was accepted");
        assert!(
            stderr.contains("is invalid") && stderr.contains(&format!("{field}:")),
            "{strategy}: {stderr}"
        );
        assert!(
            deployments.get_opt("web").await.expect("get").is_none(),
            "{strategy}: a Deployment was created"
        );
    }
}

/// The same rule through the API: 422 Invalid naming
/// `spec.strategy.rollingUpdate.maxSurge`, for a percentage without `%`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_that_is_not_a_percentage_is_unprocessable() {
    let server = ApiServer::start_with(&["--disable", "scheduler"]);
    let client = server.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "10", "maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": V1}]}},
        },
    }))
    .expect("a Deployment");
    match deployments.create(&PostParams::default(), &d).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
            assert!(
                s.message
                    .contains("spec.strategy.rollingUpdate.maxSurge: Invalid value: \"10\""),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
    assert!(deployments.get_opt("web").await.expect("get").is_none());
}
