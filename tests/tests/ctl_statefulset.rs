//! StatefulSets end to end: the real `sluice-server` (scheduler and
//! controllers in-process), the real kubectl, fake Nodes and a fake
//! kubelet whose readiness the test holds per Pod (tests/src/cluster.rs).
//! Orders are read from a watch of the set's Pods, not from timing. No
//! root needed.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};
use serde_json::json;
use sluice_tests::api_server::ApiServer;
use sluice_tests::cluster::{FakeKubelet, FakeNodes, NodeSpec};

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(90);

const NODES: [&str; 2] = ["node-a", "node-b"];

const V1: &str = "localhost/db:1";
const V2: &str = "localhost/db:2";

struct Cluster {
    // Field order: the kubelet and the Lease renewers stop before the server.
    kubelet: FakeKubelet,
    _nodes: FakeNodes,
    client: kube::Client,
    server: ApiServer,
}

async fn cluster() -> Cluster {
    let server = ApiServer::start_with(&[]);
    let client = server.client().await;
    let nodes = FakeNodes::new(client.clone());
    for n in NODES {
        nodes.add(&NodeSpec::new(n)).await;
    }
    Cluster {
        kubelet: FakeKubelet::start(client.clone(), &NODES),
        _nodes: nodes,
        client,
        server,
    }
}

impl Cluster {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn sets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn kubectl(&self, args: &[&str]) -> String {
        tokio::task::block_in_place(|| self.server.kubectl_ok(args))
    }

    fn apply(&self, manifest: &str) {
        let path = self
            .server
            .data
            .0
            .join(format!("manifest-{}.yaml", sluice_tests::unique("m")));
        std::fs::write(&path, manifest).expect("write manifest");
        self.kubectl(&["apply", "-f", path.to_str().expect("path")]);
    }

    /// The set's Pods not being deleted, by name.
    async fn active_pods(&self) -> BTreeMap<String, Pod> {
        self.pods()
            .list(&ListParams::default().labels("app=db"))
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| (p.name_any(), p))
            .collect()
    }

    /// Waits until exactly `names` exist, all ready.
    async fn wait_ready(&self, names: &[&str]) -> BTreeMap<String, Pod> {
        wait(&format!("ready pods {names:?}"), || async {
            let pods = self.active_pods().await;
            let have: Vec<&str> = pods.keys().map(String::as_str).collect();
            (have == names && pods.values().all(is_ready)).then_some(pods)
        })
        .await
    }

    /// Lets the fake kubelet report `name` Ready, and gives it an event
    /// to act on.
    async fn release(&self, name: &str) {
        self.kubelet.readiness.release("default", name);
        let poke = json!({"metadata": {"annotations": {"test/poke": "1"}}});
        self.pods()
            .patch(name, &PatchParams::default(), &Patch::Merge(poke))
            .await
            .expect("poke pod");
    }
}

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

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// What happened to the set's Pods, in watch order: `created web-1`,
/// `ready web-0`, `deleting web-2`, `gone web-2`.
struct History {
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    fn watch(c: &Cluster) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let api = c.pods();
        let task = tokio::spawn(async move {
            let mut seen: HashMap<String, (bool, bool)> = HashMap::new();
            let mut events = watcher(api, watcher::Config::default().labels("app=db"))
                .default_backoff()
                .boxed();
            while let Some(Ok(ev)) = events.next().await {
                let mut out = Vec::new();
                match ev {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        let name = p.name_any();
                        let now = (is_ready(&p), p.metadata.deletion_timestamp.is_some());
                        let before = seen.insert(name.clone(), now);
                        if before.is_none() {
                            out.push(format!("created {name}"));
                        }
                        let before = before.unwrap_or((false, false));
                        if now.0 && !before.0 {
                            out.push(format!("ready {name}"));
                        }
                        if now.1 && !before.1 {
                            out.push(format!("deleting {name}"));
                        }
                    }
                    watcher::Event::Delete(p) => {
                        seen.remove(&p.name_any());
                        out.push(format!("gone {}", p.name_any()));
                    }
                    _ => {}
                }
                l.lock().expect("log").extend(out);
            }
        });
        Self { log, task }
    }

    fn position(&self, event: &str) -> usize {
        let log = self.log.lock().expect("log");
        log.iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no {event:?} in {log:?}"))
    }

    fn assert_before(&self, first: &str, then: &str) {
        assert!(
            self.position(first) < self.position(then),
            "{first:?} must come before {then:?}: {:?}",
            self.log.lock().expect("log")
        );
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stateful_set(replicas: i32, policy: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: default
spec:
  replicas: {replicas}
  serviceName: db
  podManagementPolicy: {policy}
  selector:
    matchLabels: {{app: db}}
{extra_spec}  template:
    metadata:
      labels: {{app: db}}
    spec:
      containers:
      - name: db
        image: {V1}
        command: [sleep, "3600"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_ready_creates_pod_1_only_after_pod_0_is_ready() {
    let c = cluster().await;
    c.kubelet.readiness.hold("default", "web-0");
    let history = History::watch(&c);
    c.apply(&stateful_set(3, "OrderedReady", ""));
    wait("web-0 running but not ready", || async {
        let p = c.pods().get_opt("web-0").await.expect("get")?;
        let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
        (running && !is_ready(&p)).then_some(())
    })
    .await;
    // web-0 running is an event the controller acts on; give it the time
    // to (wrongly) create web-1.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.active_pods().await.keys().collect::<Vec<_>>(),
        ["web-0"],
        "nothing after an unready web-0"
    );
    c.release("web-0").await;
    c.wait_ready(&["web-0", "web-1", "web-2"]).await;
    history.assert_before("ready web-0", "created web-1");
    history.assert_before("ready web-1", "created web-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_every_pod_without_waiting_for_readiness() {
    let c = cluster().await;
    c.kubelet.readiness.hold("default", "web-0");
    c.apply(&stateful_set(3, "Parallel", ""));
    wait("web-0, web-1 and web-2 created", || async {
        let pods = c.active_pods().await;
        (pods.len() == 3).then_some(())
    })
    .await;
    let p0 = c.pods().get("web-0").await.expect("web-0");
    assert!(!is_ready(&p0), "web-0 is still held unready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_carry_their_identity() {
    let c = cluster().await;
    c.apply(&stateful_set(2, "Parallel", ""));
    let pods = c.wait_ready(&["web-0", "web-1"]).await;
    for (i, (name, p)) in pods.iter().enumerate() {
        let labels = p.labels();
        assert_eq!(labels.get("statefulset.kubernetes.io/pod-name"), Some(name));
        assert_eq!(
            labels.get("apps.kubernetes.io/pod-index"),
            Some(&i.to_string())
        );
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.hostname.as_ref(), Some(name));
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_removes_the_highest_ordinal_first() {
    let c = cluster().await;
    c.apply(&stateful_set(3, "OrderedReady", ""));
    c.wait_ready(&["web-0", "web-1", "web-2"]).await;
    let history = History::watch(&c);
    c.kubectl(&["scale", "statefulset/web", "--replicas=1"]);
    c.wait_ready(&["web-0"]).await;
    wait("web-1 gone", || async {
        let log = history.log.lock().expect("log");
        log.iter().any(|e| e == "gone web-1").then_some(())
    })
    .await;
    history.assert_before("gone web-2", "deleting web-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_with_a_partition_replaces_only_ordinals_at_or_above_it() {
    let c = cluster().await;
    c.apply(&stateful_set(3, "OrderedReady", ""));
    let before = c.wait_ready(&["web-0", "web-1", "web-2"]).await;
    let patch = json!({"spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
        "template": {"spec": {"containers": [
            {"name": "db", "image": V2, "command": ["sleep", "3600"]},
        ]}},
    }});
    c.sets()
        .patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patch statefulset");
    let out = c.kubectl(&["rollout", "status", "statefulset/web", "--timeout=90s"]);
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let after = c.wait_ready(&["web-0", "web-1", "web-2"]).await;

    assert_eq!(image_of(&after["web-0"]), V1);
    assert_eq!(after["web-0"].uid(), before["web-0"].uid(), "web-0 kept");
    for name in ["web-1", "web-2"] {
        assert_eq!(image_of(&after[name]), V2, "{name}");
        assert_ne!(after[name].uid(), before[name].uid(), "{name} replaced");
    }
    let s = c
        .sets()
        .get("web")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(s.updated_replicas, Some(2), "{s:?}");
    assert_eq!(s.current_replicas, Some(1), "{s:?}");
    assert_ne!(s.current_revision, s.update_revision, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_claim_templates_are_refused_with_a_condition_and_no_pods() {
    let c = cluster().await;
    let claims = r#"  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#;
    c.apply(&stateful_set(1, "OrderedReady", claims));
    let cond = wait("the VolumeClaimsUnsupported condition", || async {
        let s = c.sets().get("web").await.expect("get").status?;
        s.conditions?
            .into_iter()
            .find(|c| c.type_ == "VolumeClaimsUnsupported")
    })
    .await;
    assert_eq!(cond.status, "True");
    assert!(
        cond.message
            .unwrap_or_default()
            .contains("no storage provisioner"),
        "the message says why"
    );
    assert!(c.active_pods().await.is_empty(), "no pods created");
}
