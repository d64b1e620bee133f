//! A cluster without machines, for the control-plane tests (the way
//! kube-scheduler's and kube-controller-manager's integration tests and
//! kwok work): Node objects with Leases in kube-node-lease that a task
//! renews, and a kubelet stand-in that marks the Pods bound to those Nodes
//! Running (and Ready, unless told otherwise) through `pods/status`, and
//! finishes deleting Pods that are being deleted. The control plane under
//! test is the real `sluice-server`; only the kubelet is played.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, Pod},
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
    chrono::Utc,
};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::json;
use tokio::task::JoinHandle;

/// How a fake Node looks to the scheduler.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
    /// `(key, value, effect)`.
    pub taints: Vec<(String, String, String)>,
    pub unschedulable: bool,
}

impl NodeSpec {
    /// 4 CPUs, 8 GiB, 110 pods, the hostname label, no taints.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            cpu: "4".into(),
            memory: "8Gi".into(),
            pods: 110,
            labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
            taints: Vec::new(),
            unschedulable: false,
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn taint(mut self, k: &str, v: &str, effect: &str) -> Self {
        self.taints.push((k.into(), v.into(), effect.into()));
        self
    }

    pub fn resources(mut self, cpu: &str, memory: &str) -> Self {
        self.cpu = cpu.into();
        self.memory = memory.into();
        self
    }

    fn node(&self) -> Node {
        let taints: Vec<_> = self
            .taints
            .iter()
            .map(|(k, v, e)| json!({"key": k, "value": v, "effect": e}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": {"taints": taints, "unschedulable": self.unschedulable},
        }))
        .expect("Node")
    }

    fn status(&self) -> serde_json::Value {
        let now = Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
        let resources = json!({
            "cpu": self.cpu, "memory": self.memory, "pods": self.pods.to_string(),
            "ephemeral-storage": "100Gi",
        });
        json!({"status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "fake node", "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "addresses": [{"type": "Hostname", "address": self.name}],
        }})
    }
}

/// Fake Nodes whose Leases are renewed every 10 s (the kubelet's period)
/// until [`FakeNodes::stop_renewing`] or drop.
pub struct FakeNodes {
    client: kube::Client,
    renewers: Mutex<HashMap<String, JoinHandle<()>>>,
    renew_every: Duration,
}

impl FakeNodes {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            renewers: Mutex::new(HashMap::new()),
            renew_every: Duration::from_secs(10),
        }
    }

    /// Renewing more often than a kubelet, for a server started with a
    /// short `--node-monitor-grace-period`.
    pub fn renewing_every(mut self, period: Duration) -> Self {
        self.renew_every = period;
        self
    }

    /// Registers the Node (object, status, Lease) and starts renewing.
    pub async fn add(&self, spec: &NodeSpec) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .create(&PostParams::default(), &spec.node())
            .await
            .unwrap_or_else(|e| panic!("creating node {}: {e}", spec.name));
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(spec.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(spec.name.clone()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(Utc::now())),
                ..Default::default()
            }),
        };
        leases
            .create(&PostParams::default(), &lease)
            .await
            .unwrap_or_else(|e| panic!("lease of {}: {e}", spec.name));
        self.resume(spec).await;
    }

    /// Posts the Node's status (Ready, fresh heartbeat) and (re)starts
    /// renewing its Lease: the kubelet is back.
    pub async fn resume(&self, spec: &NodeSpec) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch_status(
                &spec.name,
                &PatchParams::default(),
                // Strategic, as the kubelet patches: conditions merge by
                // type, so a controller's NetworkUnavailable stays.
                &Patch::Strategic(spec.status()),
            )
            .await
            .unwrap_or_else(|e| panic!("node {} status: {e}", spec.name));
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let name = spec.name.clone();
        let every = self.renew_every;
        let renew = tokio::spawn(async move {
            loop {
                let patch = json!({"spec": {"renewTime": MicroTime(Utc::now())}});
                if let Err(e) = leases
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    eprintln!("[fake-node {name}] lease renewal: {e}");
                }
                tokio::time::sleep(every).await;
            }
        });
        if let Some(old) = self
            .renewers
            .lock()
            .expect("renewers")
            .insert(spec.name.clone(), renew)
        {
            old.abort();
        }
    }

    /// The node "fails": its Lease is no longer renewed.
    pub fn stop_renewing(&self, name: &str) {
        if let Some(task) = self.renewers.lock().expect("renewers").remove(name) {
            task.abort();
        }
    }
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        for (_, task) in self.renewers.lock().expect("renewers").drain() {
            task.abort();
        }
    }
}

/// Which pods the fake kubelet reports Ready.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<HashSet<String>>>);

impl Readiness {
    /// Pods named here (namespace/name) run but are not Ready.
    pub fn hold(&self, ns: &str, name: &str) {
        self.0
            .lock()
            .expect("readiness")
            .insert(format!("{ns}/{name}"));
    }

    /// The pod may become Ready again; the fake kubelet acts on the pod's
    /// next event (the caller touches the pod to make one).
    pub fn release(&self, ns: &str, name: &str) {
        self.0
            .lock()
            .expect("readiness")
            .remove(&format!("{ns}/{name}"));
    }

    fn held(&self, ns: &str, name: &str) -> bool {
        self.0
            .lock()
            .expect("readiness")
            .contains(&format!("{ns}/{name}"))
    }
}

/// Plays the kubelet of a set of Node names: every Pod bound to one of
/// them becomes Running with a pod IP and Ready (see [`Readiness`]); a Pod
/// being deleted is deleted for good (grace 0), as a kubelet does once its
/// containers are gone.
pub struct FakeKubelet {
    task: JoinHandle<()>,
    pub readiness: Readiness,
}

impl FakeKubelet {
    pub fn start(client: kube::Client, nodes: &[&str]) -> Self {
        let nodes: HashSet<String> = nodes.iter().map(|n| n.to_string()).collect();
        let readiness = Readiness::default();
        let ready = readiness.clone();
        let task = tokio::spawn(async move {
            let pods: Api<Pod> = Api::all(client.clone());
            let mut next_ip: u32 = 0;
            let mut ips: HashMap<String, String> = HashMap::new();
            let mut events = watcher(pods.clone(), watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = events.next().await {
                let Ok(pod) = ev else { continue };
                let (Some(ns), Some(name), Some(uid)) = (
                    pod.metadata.namespace.clone(),
                    pod.metadata.name.clone(),
                    pod.metadata.uid.clone(),
                ) else {
                    continue;
                };
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                if !nodes.contains(&node) {
                    continue;
                }
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                if pod.metadata.deletion_timestamp.is_some() {
                    let _ = api
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await;
                    continue;
                }
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                // A finished pod stays finished (a test marks it so).
                if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                    continue;
                }
                let is_ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .is_some_and(|c| c.status == "True");
                let want_ready = !ready.held(&ns, &name);
                if phase.as_deref() == Some("Running") && is_ready == want_ready {
                    continue;
                }
                let ip = ips
                    .entry(uid)
                    .or_insert_with(|| {
                        next_ip += 1;
                        format!("10.250.{}.{}", next_ip / 250, next_ip % 250 + 1)
                    })
                    .clone();
                let status = status_running(&pod, &ip, want_ready);
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                {
                    eprintln!("[fake-kubelet] status of {ns}/{name}: {e}");
                }
            }
        });
        Self { task, readiness }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Running pod's status as a kubelet writes it.
fn status_running(pod: &Pod, ip: &str, ready: bool) -> serde_json::Value {
    let now = Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
    let truth = |b: bool| if b { "True" } else { "False" };
    let containers: Vec<_> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(),
                "imageID": "", "ready": ready, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let cond = |t: &str, s: bool| json!({"type": t, "status": truth(s), "lastTransitionTime": now});
    json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.250.255.1",
        "startTime": now,
        "conditions": [
            cond("PodScheduled", true), cond("Initialized", true),
            cond("ContainersReady", ready), cond("Ready", ready),
        ],
        "containerStatuses": containers,
    }})
}
