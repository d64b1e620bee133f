//! DaemonSets end to end: the real `sluice-server` with its scheduler and
//! controllers in-process (the DaemonSet controller pins each Pod to its
//! node with a node affinity and the scheduler binds it), the real
//! kubectl, fake Nodes and a fake kubelet (tests/src/cluster.rs). No root
//! needed.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};
use sluice_tests::api_server::ApiServer;
use sluice_tests::cluster::{FakeKubelet, FakeNodes, NodeSpec};

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(90);

const PLAIN: &str = "node-a";
const TAINTED: &str = "node-b";
const CORDONED: &str = "node-c";
const LATE: &str = "node-d";
const ALL: [&str; 4] = [PLAIN, TAINTED, CORDONED, LATE];

const V1: &str = "localhost/agent:1";
const V2: &str = "localhost/agent:2";

struct Cluster {
    // Field order: the kubelet and the Lease renewers stop before the server.
    kubelet: Option<FakeKubelet>,
    nodes: FakeNodes,
    client: kube::Client,
    server: ApiServer,
}

fn spec(name: &str) -> NodeSpec {
    match name {
        TAINTED => NodeSpec::new(name).taint("dedicated", "db", "NoSchedule"),
        CORDONED => {
            let mut s = NodeSpec::new(name);
            s.unschedulable = true;
            s
        }
        _ => NodeSpec::new(name),
    }
}

/// A plain, a tainted and a cordoned node, and a kubelet for every node
/// (`with_kubelet`) or none yet.
async fn cluster(with_kubelet: bool) -> Cluster {
    let server = ApiServer::start_with(&[]);
    let client = server.client().await;
    let nodes = FakeNodes::new(client.clone());
    for n in [PLAIN, TAINTED, CORDONED] {
        nodes.add(&spec(n)).await;
    }
    let mut c = Cluster {
        kubelet: None,
        nodes,
        client,
        server,
    };
    if with_kubelet {
        c.start_kubelet();
    }
    c
}

impl Cluster {
    fn start_kubelet(&mut self) {
        self.kubelet = Some(FakeKubelet::start(self.client.clone(), &ALL));
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn daemon_sets(&self) -> Api<DaemonSet> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// kubectl blocks: off the runtime's worker, so the kubelet and Lease
    /// renewals keep running meanwhile.
    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        tokio::task::block_in_place(|| self.server.kubectl(args))
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        tokio::task::block_in_place(|| self.server.kubectl_ok(args))
    }

    fn apply(&self, manifest: &str) {
        let path = self
            .server
            .data
            .0
            .join(format!("manifest-{}.yaml", sluice_tests::unique("m")));
        std::fs::write(&path, manifest).expect("write manifest");
        self.kubectl_ok(&["apply", "-f", path.to_str().expect("path")]);
    }

    fn rollout_status(&self) {
        let out = self.kubectl_ok(&["rollout", "status", "daemonset/agent", "--timeout=90s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
    }

    /// The DaemonSet's Pods not being deleted.
    async fn active_pods(&self) -> Vec<Pod> {
        self.pods()
            .list(&ListParams::default().labels("app=agent"))
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Waits until exactly one bound, ready Pod runs on each of `nodes`
    /// and none elsewhere; the Pods by node.
    async fn wait_one_ready_pod_on(&self, nodes: &[&str]) -> BTreeMap<String, Pod> {
        let mut want: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        want.sort();
        let deadline = tokio::time::Instant::now() + HANG;
        loop {
            let pods = self.active_pods().await;
            let mut on: Vec<String> = pods.iter().filter_map(node_of).collect();
            on.sort();
            if on == want && pods.iter().all(is_ready) {
                return pods
                    .into_iter()
                    .map(|p| (node_of(&p).unwrap_or_default(), p))
                    .collect();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for one ready pod on each of {want:?}; pods on {on:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn daemon_set(image: &str, max_unavailable: i32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  namespace: default
spec:
  selector:
    matchLabels: {{app: agent}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{maxUnavailable: {max_unavailable}}}}}
  template:
    metadata:
      labels: {{app: agent}}
    spec:
      containers:
      - name: agent
        image: {image}
        command: [sleep, "3600"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_runs_on_each_eligible_node_including_a_cordoned_one_but_not_a_tainted_one() {
    let c = cluster(true).await;
    c.apply(&daemon_set(V1, 1));
    let pods = c.wait_one_ready_pod_on(&[PLAIN, CORDONED]).await;

    let ds = c.daemon_sets().get("agent").await.expect("get daemonset");
    let s = ds.status.expect("status");
    assert_eq!(s.desired_number_scheduled, 2, "{s:?}");
    assert_eq!(s.current_number_scheduled, 2, "{s:?}");
    assert_eq!(s.number_misscheduled, 0, "{s:?}");
    for (node, p) in &pods {
        let spec = p.spec.as_ref().expect("spec");
        let pinned = serde_json::to_value(&spec.affinity).expect("affinity");
        assert_eq!(
            pinned["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchFields"][0]["values"][0],
            node.as_str(),
            "the pod is placed by node affinity, not nodeName: {pinned}"
        );
        assert!(
            p.labels().contains_key("controller-revision-hash"),
            "{:?}",
            p.labels()
        );
    }
    // The tainted node has had every chance: the status counted it out.
    let on: Vec<String> = c.active_pods().await.iter().filter_map(node_of).collect();
    assert!(!on.iter().any(|n| n == TAINTED), "{on:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_later_gets_its_pod() {
    let c = cluster(true).await;
    c.apply(&daemon_set(V1, 1));
    c.wait_one_ready_pod_on(&[PLAIN, CORDONED]).await;
    c.nodes.add(&spec(LATE)).await;
    c.wait_one_ready_pod_on(&[PLAIN, CORDONED, LATE]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_succeeds_once_the_kubelet_marks_the_pods_ready() {
    let mut c = cluster(false).await;
    c.apply(&daemon_set(V1, 1));
    let early = c.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=3s"]);
    assert!(
        !early.status.success(),
        "no pod runs yet: {}",
        String::from_utf8_lossy(&early.stdout)
    );
    c.start_kubelet();
    c.rollout_status();
    let s = c
        .daemon_sets()
        .get("agent")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(
        (
            s.number_ready,
            s.number_available,
            s.updated_number_scheduled
        ),
        (2, Some(2), Some(2)),
        "{s:?}"
    );
}

/// Counts, on every change of the DaemonSet's Pods, the eligible nodes
/// without a ready Pod that is not being deleted.
struct Unavailability {
    worst: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Unavailability {
    fn watch(c: &Cluster, nodes: &'static [&'static str]) -> Self {
        let worst = Arc::new(Mutex::new(0));
        let w = worst.clone();
        let api = c.pods();
        let task = tokio::spawn(async move {
            let mut pods: HashMap<String, Pod> = HashMap::new();
            let mut listed = false;
            let mut events = watcher(api, watcher::Config::default().labels("app=agent"))
                .default_backoff()
                .boxed();
            while let Some(Ok(ev)) = events.next().await {
                match ev {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        pods.insert(p.name_any(), p);
                    }
                    watcher::Event::Delete(p) => {
                        pods.remove(&p.name_any());
                    }
                    watcher::Event::InitDone => listed = true,
                    watcher::Event::Init => {}
                }
                if !listed {
                    continue;
                }
                let down = nodes
                    .iter()
                    .filter(|n| {
                        !pods.values().any(|p| {
                            node_of(p).as_deref() == Some(**n)
                                && p.metadata.deletion_timestamp.is_none()
                                && is_ready(p)
                        })
                    })
                    .count();
                let mut worst = w.lock().expect("worst");
                *worst = (*worst).max(down);
            }
        });
        Self { worst, task }
    }

    fn worst(&self) -> usize {
        *self.worst.lock().expect("worst")
    }
}

impl Drop for Unavailability {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_change_rolls_node_by_node_within_max_unavailable() {
    let c = cluster(true).await;
    c.nodes.add(&spec(LATE)).await;
    c.apply(&daemon_set(V1, 1));
    c.rollout_status();
    let before = c.wait_one_ready_pod_on(&[PLAIN, CORDONED, LATE]).await;

    let watch = Unavailability::watch(&c, &[PLAIN, CORDONED, LATE]);
    // The watch lists first: only what follows counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(watch.worst(), 0, "all ready before the change");
    c.kubectl_ok(&["set", "image", "daemonset/agent", &format!("agent={V2}")]);
    c.rollout_status();
    let after = c.wait_one_ready_pod_on(&[PLAIN, CORDONED, LATE]).await;

    assert_eq!(
        watch.worst(),
        1,
        "exactly one node at a time was without its pod"
    );
    for (node, p) in &after {
        assert_eq!(image_of(p), V2, "{node}");
        assert_ne!(p.uid(), before[node].uid(), "{node}: replaced");
        assert_ne!(
            p.labels().get("controller-revision-hash"),
            before[node].labels().get("controller-revision-hash"),
        );
    }
}
