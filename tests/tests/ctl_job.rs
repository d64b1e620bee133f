//! Jobs, CronJobs and TTL-after-finished, end to end: the real
//! sluice-server (API server, scheduler and controllers in-process), fake
//! nodes and a fake kubelet that runs pods; the test plays the
//! containers' exits by writing a pod's phase through `pods/status`.
//! kubectl drives and reads as a user would. No root needed.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, Job},
        core::v1::Pod,
    },
    chrono::{DateTime, SecondsFormat, Utc},
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use sluice_tests::{
    api_server::ApiServer,
    cluster::{FakeKubelet, FakeNodes, NodeSpec},
};

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(90);
/// A CronJob's first minute can be up to 60 s away.
const CRON_HANG: Duration = Duration::from_secs(150);

struct Cluster {
    s: ApiServer,
    client: kube::Client,
    _nodes: FakeNodes,
    _kubelet: FakeKubelet,
}

impl Cluster {
    async fn start() -> Self {
        let s = ApiServer::start(&[]);
        let client = s.client().await;
        let nodes = FakeNodes::new(client.clone());
        nodes.add(&NodeSpec::new("n1")).await;
        let kubelet = FakeKubelet::start(client.clone(), &["n1"]);
        Cluster {
            s,
            client,
            _nodes: nodes,
            _kubelet: kubelet,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn apply(&self, manifest: &Value) -> std::process::Output {
        let dir = sluice_tests::topology::TempDir::new();
        let path = dir.0.join("m.json");
        std::fs::write(&path, manifest.to_string()).expect("write manifest");
        self.s
            .kubectl(&["apply", "-f", path.to_str().expect("utf-8 path")])
    }

    fn apply_ok(&self, manifest: &Value) {
        let out = self.apply(manifest);
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl wait` for a condition, off the runtime's threads.
    async fn wait_for(&self, what: &str, condition: &str) {
        let kubeconfig = self.s.kubeconfig();
        let args = [
            "wait".to_string(),
            format!("--for=condition={condition}"),
            what.to_string(),
        ];
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(&args)
                .arg(format!("--timeout={}s", HANG.as_secs()))
                .output()
                .expect("run kubectl")
        })
        .await
        .expect("kubectl wait");
        assert!(
            out.status.success(),
            "{what} never became {condition}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Pods name their node, so they run without waiting for the scheduler.
fn pod_spec(restart: &str) -> Value {
    json!({"restartPolicy": restart, "nodeName": "n1",
        "containers": [{"name": "c", "image": "localhost/busybox:1.35"}]})
}

fn job(name: &str, spec: Value) -> Value {
    let mut s = json!({"template": {"spec": pod_spec("Never")}});
    for (k, v) in spec.as_object().expect("spec").clone() {
        s[k] = v;
    }
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"}, "spec": s})
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The containers exit: the pod ends `Succeeded` or `Failed`.
async fn exit(pods: &Api<Pod>, pod: &Pod, phase: &str) {
    let name = pod.metadata.name.as_deref().expect("pod name");
    let code = if phase == "Succeeded" { 0 } else { 1 };
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": code,
                "startedAt": now(), "finishedAt": now()}}})
        })
        .collect();
    let status = json!({"status": {"phase": phase, "containerStatuses": containers,
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now()}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap_or_else(|e| panic!("finishing pod {name}: {e}"));
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn running(p: &Pod) -> bool {
    phase(p) == "Running" && p.metadata.deletion_timestamp.is_none()
}

async fn job_pods(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .expect("list pods")
        .items
}

/// Waits until `pred` holds for the Job's pods and returns them.
async fn wait_pods(
    pods: &Api<Pod>,
    job: &str,
    what: &str,
    pred: impl Fn(&[Pod]) -> bool,
) -> Vec<Pod> {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let ps = job_pods(pods, job).await;
        if pred(&ps) {
            return ps;
        }
        let phases: Vec<(String, String)> = ps
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    phase(p).to_string(),
                )
            })
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job}: never {what}; pods {phases:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition(j: &Job, type_: &str) -> Option<(String, String)> {
    j.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_three_completions_two_at_a_time_completes() {
    let c = Cluster::start().await;
    c.apply_ok(&job("pi", json!({"completions": 3, "parallelism": 2})));
    let pods = c.pods();
    let mut seen = BTreeSet::new();
    // Finish one running pod at a time; never more than two run.
    for done in 0..3 {
        let ps = wait_pods(&pods, "pi", "had a running pod", |ps| {
            ps.iter().any(running)
        })
        .await;
        let active: Vec<&Pod> = ps
            .iter()
            .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
            .collect();
        assert!(
            active.len() <= 2,
            "{} active pods after {done} completions",
            active.len()
        );
        // With two completions left, two run at once.
        if done == 0 {
            wait_pods(&pods, "pi", "ran two pods", |ps| {
                ps.iter().filter(|p| running(p)).count() == 2
            })
            .await;
        }
        let p = ps.iter().find(|p| running(p)).expect("a running pod");
        seen.insert(p.metadata.name.clone().expect("name"));
        exit(&pods, p, "Succeeded").await;
    }
    c.wait_for("job/pi", "complete").await;
    let j = c.jobs().get("pi").await.expect("job");
    let status = j.status.clone().expect("status");
    assert_eq!(status.succeeded, Some(3));
    assert!(status.completion_time.is_some());
    assert_eq!(
        condition(&j, "SuccessCriteriaMet").map(|c| c.0).as_deref(),
        Some("True")
    );
    // Exactly three pods were ever made, each named after the Job.
    let all = job_pods(&pods, "pi").await;
    assert_eq!(
        all.len(),
        3,
        "{:?}",
        all.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
    );
    assert!(seen.iter().all(|n| n.starts_with("pi-")), "{seen:?}");
    // Counted pods lose the tracking finalizer.
    assert!(
        all.iter()
            .all(|p| p.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty())),
        "finalizers left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_backs_off_and_fails_at_its_backoff_limit() {
    let c = Cluster::start().await;
    c.apply_ok(&job("flaky", json!({"backoffLimit": 1})));
    let pods = c.pods();
    let first = wait_pods(&pods, "flaky", "ran", |ps| ps.iter().any(running)).await;
    exit(&pods, &first[0], "Failed").await;
    let first_name = first[0].metadata.name.as_deref().expect("name");
    let failed = pods.get(first_name).await.expect("failed pod");
    let finished_at = failed
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .expect("finishedAt");
    let second = wait_pods(&pods, "flaky", "replaced the failed pod", |ps| {
        ps.iter().any(running)
    })
    .await;
    let replacement = second.iter().find(|p| running(p)).expect("replacement");
    let created: DateTime<Utc> = replacement
        .metadata
        .creation_timestamp
        .as_ref()
        .expect("creationTimestamp")
        .0;
    // The first replacement waits out the 10 s backoff counted from the
    // container's finishedAt. Both stamps are whole seconds written by this
    // host's clock, the creation after the controller saw the delay pass, so
    // the comparison does not depend on how fast anything ran.
    assert!(
        created - finished_at >= k8s_openapi::chrono::Duration::seconds(10),
        "replaced {}s after finishedAt {finished_at}",
        (created - finished_at).num_seconds()
    );
    exit(&pods, replacement, "Failed").await;
    c.wait_for("job/flaky", "failed").await;
    let j = c.jobs().get("flaky").await.expect("job");
    assert_eq!(
        condition(&j, "Failed"),
        Some(("True".into(), "BackoffLimitExceeded".into()))
    );
    assert_eq!(
        condition(&j, "FailureTarget").map(|c| c.1).as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(j.status.as_ref().and_then(|s| s.failed), Some(2));
    let table = c.s.kubectl_ok(&["get", "job", "flaky"]);
    assert!(table.contains("Failed"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_job_gives_each_pod_its_own_index() {
    let c = Cluster::start().await;
    c.apply_ok(&job(
        "idx",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
    ));
    let pods = c.pods();
    let ps = wait_pods(&pods, "idx", "ran three pods", |ps| {
        ps.iter().filter(|p| running(p)).count() == 3
    })
    .await;
    let mut indexes = BTreeMap::new();
    for p in &ps {
        let ix = p.metadata.annotations.as_ref().expect("annotations")
            ["batch.kubernetes.io/job-completion-index"]
            .clone();
        let label = &p.metadata.labels.as_ref().expect("labels")["batch.kubernetes.io/job-completion-index"];
        assert_eq!(label, &ix);
        let hostname = p.spec.as_ref().and_then(|s| s.hostname.clone());
        assert_eq!(hostname, Some(format!("idx-{ix}")));
        indexes.insert(ix, p.clone());
    }
    assert_eq!(indexes.keys().collect::<Vec<_>>(), ["0", "1", "2"]);
    for p in indexes.values() {
        exit(&pods, p, "Succeeded").await;
    }
    c.wait_for("job/idx", "complete").await;
    let j = c.jobs().get("idx").await.expect("job");
    assert_eq!(
        j.status
            .as_ref()
            .and_then(|s| s.completed_indexes.as_deref()),
        Some("0-2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_pod_deleted_at_once_is_still_counted_once() {
    let c = Cluster::start().await;
    c.apply_ok(&job("once", json!({"completions": 2, "parallelism": 1})));
    let pods = c.pods();
    let ps = wait_pods(&pods, "once", "ran", |ps| ps.iter().any(running)).await;
    let first = ps[0].clone();
    exit(&pods, &first, "Succeeded").await;
    // Someone deletes the finished pod straight away: the tracking
    // finalizer keeps it until the Job has counted it.
    let name = first.metadata.name.clone().expect("name");
    c.s.kubectl_ok(&["delete", "pod", &name, "--wait=false"]);
    let ps = wait_pods(&pods, "once", "ran a second pod", |ps| {
        ps.iter().any(running)
    })
    .await;
    let second = ps.iter().find(|p| running(p)).expect("second pod").clone();
    assert_ne!(second.metadata.name.as_deref(), Some(name.as_str()));
    exit(&pods, &second, "Succeeded").await;
    c.wait_for("job/once", "complete").await;
    let j = c.jobs().get("once").await.expect("job");
    assert_eq!(j.status.as_ref().and_then(|s| s.succeeded), Some(2));
    assert_eq!(j.status.as_ref().and_then(|s| s.failed), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_active_deadline_fails_and_its_pods_go() {
    let c = Cluster::start().await;
    c.apply_ok(&job("slow", json!({"activeDeadlineSeconds": 3})));
    let pods = c.pods();
    wait_pods(&pods, "slow", "ran", |ps| ps.iter().any(running)).await;
    c.wait_for("job/slow", "failed").await;
    let j = c.jobs().get("slow").await.expect("job");
    assert_eq!(
        condition(&j, "Failed"),
        Some(("True".into(), "DeadlineExceeded".into()))
    );
    wait_pods(&pods, "slow", "lost its pods", |ps| ps.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_job_runs_nothing_until_resumed() {
    let c = Cluster::start().await;
    c.apply_ok(&job("later", json!({"suspend": true})));
    c.wait_for("job/later", "suspended").await;
    let pods = c.pods();
    assert!(job_pods(&pods, "later").await.is_empty());
    c.s.kubectl_ok(&[
        "patch",
        "job",
        "later",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    let ps = wait_pods(&pods, "later", "ran once resumed", |ps| {
        ps.iter().any(running)
    })
    .await;
    exit(&pods, &ps[0], "Succeeded").await;
    c.wait_for("job/later", "complete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_with_a_ttl_is_deleted_after_it() {
    let c = Cluster::start().await;
    c.apply_ok(&job("brief", json!({"ttlSecondsAfterFinished": 2})));
    let pods = c.pods();
    let ps = wait_pods(&pods, "brief", "ran", |ps| ps.iter().any(running)).await;
    exit(&pods, &ps[0], "Succeeded").await;
    c.wait_for("job/brief", "complete").await;
    let deadline = tokio::time::Instant::now() + HANG;
    while c.jobs().get_opt("brief").await.expect("get job").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job brief was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_every_minute_creates_a_job_and_prunes_its_history() {
    let c = Cluster::start().await;
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "tick", "namespace": "default"},
        "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 0,
            "jobTemplate": {"spec": {"template": {"spec": pod_spec("OnFailure")}}}}});
    c.apply_ok(&cj);
    let cron_jobs: Api<CronJob> = Api::namespaced(c.client.clone(), "default");
    let jobs = c.jobs();
    let deadline = tokio::time::Instant::now() + CRON_HANG;
    let first = loop {
        let owned: Vec<Job> = jobs
            .list(&ListParams::default())
            .await
            .expect("list jobs")
            .items;
        if let Some(j) = owned.into_iter().next() {
            break j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no job within {CRON_HANG:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let name = first.metadata.name.clone().expect("name");
    let scheduled = first.metadata.annotations.as_ref().expect("annotations")
        ["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .clone();
    let at = DateTime::parse_from_rfc3339(&scheduled).expect("RFC 3339 scheduled time");
    assert_eq!(name, format!("tick-{}", at.timestamp() / 60));
    assert_eq!(at.timestamp() % 60, 0, "{scheduled}");
    let owner = &first.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    let cj = cron_jobs.get("tick").await.expect("cronjob");
    let status = cj.status.expect("status");
    assert_eq!(
        status.last_schedule_time.map(|t| t.0.timestamp()),
        Some(at.timestamp())
    );
    let table = c.s.kubectl_ok(&["get", "cj", "tick"]);
    assert!(table.contains("* * * * *"), "{table}");
    // Its pod runs and succeeds; with no successful history kept, the
    // finished Job is deleted.
    let pods = c.pods();
    let ps = wait_pods(&pods, &name, "ran", |ps| ps.iter().any(running)).await;
    exit(&pods, &ps[0], "Succeeded").await;
    let deadline = tokio::time::Instant::now() + HANG;
    while jobs.get_opt(&name).await.expect("get job").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "finished job {name} was never pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cj = cron_jobs.get("tick").await.expect("cronjob");
    assert!(
        cj.status.and_then(|s| s.last_successful_time).is_some(),
        "lastSuccessfulTime not set"
    );
    c.s.kubectl_ok(&["delete", "cronjob", "tick"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_jobs_and_cron_jobs_are_refused_naming_the_field() {
    let c = Cluster::start().await;
    let mut always = job("bad", json!({}));
    always["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "badcron", "namespace": "default"},
        "spec": {"schedule": "61 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "localhost/busybox:1.35"}]}}}}}});
    let mut zone = cron.clone();
    zone["spec"]["schedule"] = json!("@daily");
    zone["spec"]["timeZone"] = json!("Mars/Olympus");
    let mut negative = job("neg", json!({"parallelism": -1}));
    negative["metadata"]["name"] = json!("neg");
    for (manifest, field) in [
        (&always, "spec.template.spec.restartPolicy"),
        (&negative, "spec.parallelism"),
        (&cron, "spec.schedule"),
        (&zone, "spec.timeZone"),
    ] {
        let out = c.apply(manifest);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(field),
            "{field}: {err}"
        );
        assert!(err.contains("Invalid") || err.contains("invalid"), "{err}");
    }
    let listed = c.s.kubectl_ok(&["get", "jobs,cronjobs", "-o", "name"]);
    assert_eq!(listed.trim(), "", "something was created: {listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_prints_jobs_and_cron_jobs_with_upstreams_columns() {
    let c = Cluster::start().await;
    c.apply_ok(&job("cols", json!({"suspend": true})));
    c.apply_ok(&json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "default"},
        "spec": {"schedule": "0 3 * * *", "timeZone": "Europe/Berlin",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "localhost/busybox:1.35"}]}}}}}}));
    let jobs = c.s.kubectl_ok(&["get", "jobs"]);
    let header: Vec<&str> = jobs
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "{jobs}"
    );
    let row: Vec<&str> = jobs
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["cols", "Suspended", "0/1"], "{jobs}");
    let cron = c.s.kubectl_ok(&["get", "cj"]);
    let header = cron.lines().next().unwrap_or("");
    for col in [
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "ACTIVE",
        "LAST SCHEDULE",
        "AGE",
    ] {
        assert!(header.contains(col), "{col} missing: {cron}");
    }
    let row = cron.lines().nth(1).unwrap_or("");
    for cell in ["nightly", "0 3 * * *", "Europe/Berlin", "False", "<none>"] {
        assert!(row.contains(cell), "{cell} missing: {cron}");
    }
    // The generated selector and labels, as upstream generates them.
    let j: Value =
        serde_json::from_str(&c.s.kubectl_ok(&["get", "job", "cols", "-o", "json"])).expect("json");
    let uid = j["metadata"]["uid"].as_str().expect("uid");
    assert_eq!(
        j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid),
        ("controller-uid", uid),
        ("batch.kubernetes.io/job-name", "cols"),
        ("job-name", "cols"),
    ] {
        assert_eq!(j["spec"]["template"]["metadata"]["labels"][k], v, "{k}");
    }
}
