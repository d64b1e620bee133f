//! The kinds' rules as the handlers run them: defaults, validation,
//! preparation, names and graceful deletion, kind by kind.
use serde_json::{Value, json};

use super::cronjob::schedule_problem;
use super::*;
use crate::registry::find;

fn default(r: &Resource, obj: &mut Value) {
    r.strategy.default(obj);
}

fn prepare_create(r: &Resource, obj: &mut Value) {
    r.strategy.prepare_create(r, obj);
}

fn drop_type_dependent(r: &Resource, new: &mut Value, old: &Value) {
    r.strategy.prepare_update(new, old);
}

fn deletion_grace(r: &Resource) -> Option<Grace> {
    r.strategy.deletion_grace()
}

fn kind(plural: &str) -> &'static Resource {
    find("", "v1", plural)
        .or_else(|| find("apps", "v1", plural))
        .expect("registered")
}

#[test]
fn services_get_upstream_defaults() {
    let r = kind("services");
    let mut s = json!({"spec": {"ports": [{"port": 80}], "sessionAffinity": "ClientIP"}});
    default(r, &mut s);
    assert_eq!(s["spec"]["type"], "ClusterIP");
    assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
    assert!(s["spec"]["externalTrafficPolicy"].is_null());
    assert_eq!(
        s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
        10800
    );
    assert!(validate(r, &s, None).is_empty());
}

#[test]
fn service_errors_name_their_fields() {
    let r = kind("services");
    let mut s = json!({"spec": {"ports": [
        {"name": "a", "port": 70000},
        {"port": 81, "targetPort": "Not_A_Name"},
        {"name": "c", "port": 82, "nodePort": 30001}]}});
    default(r, &mut s);
    let fields: Vec<String> = validate(r, &s, None).into_iter().map(|x| x.0).collect();
    assert_eq!(
        fields,
        [
            "spec.ports[0].port",
            "spec.ports[0].targetPort",
            "spec.ports[1].name",
            "spec.ports[1].targetPort",
            "spec.ports[2].nodePort"
        ]
    );
    let old = json!({"spec": {"clusterIP": "10.96.0.5"}});
    let new = json!({"spec": {"clusterIP": "10.96.0.6", "ports": [{"port": 1}]}});
    assert!(
        validate(r, &new, Some(&old))
            .iter()
            .any(|(_, m)| m.contains("immutable"))
    );
}

#[test]
fn deployments_default_and_check_selector_and_template() {
    let r = kind("deployments");
    let mut d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}},
        "template": {"metadata": {"labels": {"app": "b"}},
                     "spec": {"containers": [{"name": "c", "image": "img:1"}, {"name": "c"}]}}}});
    default(r, &mut d);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    let c0 = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c0["imagePullPolicy"], "IfNotPresent");
    let fields: Vec<String> = validate(r, &d, None).into_iter().map(|x| x.0).collect();
    assert_eq!(
        fields,
        [
            "spec.template.metadata.labels",
            "spec.template.spec.containers[1].name",
            "spec.template.spec.containers[1].image"
        ]
    );
}

#[test]
fn a_type_change_drops_what_only_the_old_type_used() {
    let r = kind("services");
    let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"],
        "externalTrafficPolicy": "Cluster", "ports": [{"port": 80, "nodePort": 30001}]}});
    let mut new = json!({"spec": {"type": "ClusterIP", "externalTrafficPolicy": "Cluster",
        "ports": [{"port": 80, "nodePort": 30001}]}});
    drop_type_dependent(r, &mut new, &old);
    default(r, &mut new);
    assert!(validate(r, &new, Some(&old)).is_empty(), "{new}");
    assert_eq!(
        new["spec"]["clusterIP"], "10.96.0.7",
        "an omitted ClusterIP is kept"
    );
    assert!(new["spec"]["ports"][0]["nodePort"].is_null());
    // A node port the client sets anew on a ClusterIP service is still an error.
    let mut fresh =
        json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30999}]}});
    drop_type_dependent(r, &mut fresh, &old);
    assert!(!validate(r, &fresh, Some(&old)).is_empty());
    let mut ext = json!({"spec": {"type": "ExternalName", "externalName": "db.example.com",
        "clusterIP": "10.96.0.7", "ports": [{"port": 80, "nodePort": 30001}]}});
    drop_type_dependent(r, &mut ext, &old);
    assert!(ext["spec"]["clusterIP"].is_null(), "{ext}");
    assert!(validate(r, &ext, Some(&old)).is_empty(), "{ext}");
}

#[test]
fn pods_tolerate_not_ready_and_unreachable_for_300_s() {
    let r = kind("pods");
    let mut p = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
    default(r, &mut p);
    let ts = p["spec"]["tolerations"].as_array().expect("tolerations");
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let t = ts.iter().find(|t| t["key"] == key).expect(key);
        assert_eq!(t["effect"], "NoExecute");
        assert_eq!(t["operator"], "Exists");
        assert_eq!(t["tolerationSeconds"], 300);
    }
    // Defaulting again adds nothing.
    default(r, &mut p);
    assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
    // A pod's own toleration of a key (or of every NoExecute taint) stands.
    let mut p = json!({"spec": {"tolerations": [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
    ]}});
    default(r, &mut p);
    let ts = p["spec"]["tolerations"].as_array().expect("tolerations");
    assert_eq!(ts.len(), 2, "{ts:?}");
    assert_eq!(ts[0]["tolerationSeconds"], 5);
    let mut p = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
    default(r, &mut p);
    assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(1));
    // Templates are not pods: they get none.
    let mut d = json!({"spec": {"template": {"spec": {"containers": []}}}});
    default(kind("deployments"), &mut d);
    assert!(d["spec"]["template"]["spec"]["tolerations"].is_null());
}

#[test]
fn only_scheduled_running_pods_delete_gracefully() {
    let grace = deletion_grace(kind("pods")).expect("pods are graceful");
    let bound = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 30}});
    assert_eq!(grace(&bound, None), 30);
    assert_eq!(grace(&bound, Some(3)), 3);
    assert_eq!(
        grace(
            &json!({"spec": {"terminationGracePeriodSeconds": 30}}),
            None
        ),
        0
    );
    let done = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 30},
                      "status": {"phase": "Succeeded"}});
    assert_eq!(grace(&done, None), 0);
    assert!(deletion_grace(kind("configmaps")).is_none());
}

#[test]
fn an_object_being_deleted_takes_no_new_finalizers() {
    let r = kind("configmaps");
    let old = json!({"metadata": {"name": "a", "deletionTimestamp": "2030-01-01T00:00:00Z",
                                  "finalizers": ["a.io/x"]}});
    let new = json!({"metadata": {"name": "a", "finalizers": ["a.io/x", "b.io/y"]}});
    let c = validate(r, &new, Some(&old));
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].1.contains("b.io/y"), "{c:?}");
    let fewer = json!({"metadata": {"name": "a", "finalizers": []}});
    assert!(validate(r, &fewer, Some(&old)).is_empty());
    let both = json!({"metadata": {"name": "a", "finalizers": ["orphan", "foregroundDeletion"]}});
    assert_eq!(validate(r, &both, None)[0].0, "metadata.finalizers");
}

#[test]
fn secret_string_data_becomes_data() {
    let r = kind("secrets");
    let mut s = json!({"data": {"a": "eA=="}, "stringData": {"b": "s3cret", "a": "y"}});
    default(r, &mut s);
    assert_eq!(
        s,
        json!({"type": "Opaque", "data": {"a": "eQ==", "b": "czNjcmV0"}})
    );
}

#[test]
fn names_follow_the_kinds_rule() {
    let (ns, svc, cm) = (kind("namespaces"), kind("services"), kind("configmaps"));
    assert_eq!(name_problem(cm, "web-1.a"), None);
    assert!(name_problem(ns, "web-1.a").is_some());
    assert!(name_problem(svc, "1web").is_some_and(|p| p.contains("DNS-1035")));
    assert_eq!(name_problem(cm, "1web"), None);
    assert!(name_problem(cm, "").is_some());
    assert!(name_problem(cm, "Web").is_some_and(|p| p.contains("RFC 1123")));
    assert!(name_problem(cm, &"a".repeat(254)).is_some());
    assert!(name_problem(ns, &"a".repeat(64)).is_some());
}

fn batch(plural: &str) -> &'static Resource {
    find("batch", "v1", plural).expect("registered")
}

fn job_manifest() -> Value {
    json!({"metadata": {"name": "pi", "uid": "u-1"},
        "spec": {"template": {"metadata": {"labels": {"app": "pi"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "perl:5"}]}}}})
}

/// Create, as the API server runs the steps.
fn create(r: &Resource, mut obj: Value) -> (Value, Vec<String>) {
    prepare_create(r, &mut obj);
    default(r, &mut obj);
    let fields = validate(r, &obj, None).into_iter().map(|x| x.0).collect();
    (obj, fields)
}

#[test]
fn a_job_gets_a_selector_from_its_uid_and_its_pods_the_labels() {
    let (j, fields) = create(batch("jobs"), job_manifest());
    assert!(fields.is_empty(), "{fields:?}");
    assert_eq!(
        j["spec"]["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
    );
    assert_eq!(
        j["spec"]["template"]["metadata"]["labels"],
        json!({"app": "pi", "controller-uid": "u-1", "batch.kubernetes.io/controller-uid": "u-1",
               "job-name": "pi", "batch.kubernetes.io/job-name": "pi"})
    );
    // The Job's own labels are the template's as written, before generation.
    assert_eq!(j["metadata"]["labels"], json!({"app": "pi"}));
}

#[test]
fn a_manual_selector_is_left_alone() {
    let mut m = job_manifest();
    m["spec"]["manualSelector"] = json!(true);
    m["spec"]["selector"] = json!({"matchLabels": {"app": "pi"}});
    let (j, fields) = create(batch("jobs"), m);
    assert!(fields.is_empty(), "{fields:?}");
    assert_eq!(j["spec"]["selector"], json!({"matchLabels": {"app": "pi"}}));
    assert_eq!(
        j["spec"]["template"]["metadata"]["labels"],
        json!({"app": "pi"})
    );
    // Without manualSelector, a selector of the user's is refused.
    let mut m = job_manifest();
    m["spec"]["selector"] = json!({"matchLabels": {"app": "pi"}});
    let (_, fields) = create(batch("jobs"), m);
    assert_eq!(fields, ["spec.selector"]);
}

#[test]
fn jobs_get_upstreams_defaults() {
    let (j, _) = create(batch("jobs"), job_manifest());
    let spec = &j["spec"];
    assert_eq!(spec["parallelism"], 1);
    assert_eq!(spec["completions"], 1);
    assert_eq!(spec["backoffLimit"], 6);
    assert_eq!(spec["completionMode"], "NonIndexed");
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
    assert_eq!(
        spec["template"]["spec"]["schedulerName"],
        "default-scheduler"
    );
    // Parallelism alone: completions stay unset ("until any pod succeeds").
    let mut m = job_manifest();
    m["spec"]["parallelism"] = json!(3);
    let (j, _) = create(batch("jobs"), m);
    assert!(j["spec"]["completions"].is_null());
    assert_eq!(j["spec"]["parallelism"], 3);
}

#[test]
fn a_job_must_not_restart_always() {
    let mut m = job_manifest();
    m["spec"]["template"]["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("restartPolicy");
    let (_, fields) = create(batch("jobs"), m.clone());
    assert_eq!(fields, ["spec.template.spec.restartPolicy"]);
    m["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    assert!(create(batch("jobs"), m).1.is_empty());
}

#[test]
fn job_errors_name_their_fields() {
    let mut m = job_manifest();
    m["spec"]["parallelism"] = json!(-1);
    m["spec"]["backoffLimit"] = json!(-2);
    m["spec"]["completionMode"] = json!("Indexed");
    m["spec"]["completions"] = Value::Null;
    m["spec"]["activeDeadlineSeconds"] = json!(-3);
    let (_, fields) = create(batch("jobs"), m);
    assert_eq!(
        fields,
        [
            "spec.parallelism",
            "spec.activeDeadlineSeconds",
            "spec.backoffLimit",
            "spec.completions"
        ]
    );
    let mut m = job_manifest();
    m["spec"]["completionMode"] = json!("Sometimes");
    assert_eq!(create(batch("jobs"), m).1, ["spec.completionMode"]);
}

#[test]
fn a_jobs_template_and_completions_are_immutable() {
    let r = batch("jobs");
    let (old, _) = create(r, job_manifest());
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:6");
    new["spec"]["completions"] = json!(4);
    let fields: Vec<String> = validate(r, &new, Some(&old))
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(fields, ["spec.completions", "spec.template"]);
    // Suspended and never started: scheduling directives may change.
    let mut old = old;
    old["spec"]["suspend"] = json!(true);
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["nodeSelector"] = json!({"zone": "a"});
    assert!(validate(r, &new, Some(&old)).is_empty());
    new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:6");
    assert!(!validate(r, &new, Some(&old)).is_empty());
}

fn cron_manifest(schedule: &str) -> Value {
    json!({"metadata": {"name": "tick", "uid": "u-2"},
        "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}})
}

#[test]
fn cron_jobs_get_upstreams_defaults() {
    let (cj, fields) = create(batch("cronjobs"), cron_manifest("*/5 * * * *"));
    assert!(fields.is_empty(), "{fields:?}");
    let spec = &cj["spec"];
    assert_eq!(spec["concurrencyPolicy"], "Allow");
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["successfulJobsHistoryLimit"], 3);
    assert_eq!(spec["failedJobsHistoryLimit"], 1);
    assert!(spec["jobTemplate"]["spec"]["parallelism"].is_null());
}

#[test]
fn cron_schedules_follow_upstreams_grammar() {
    for ok in [
        "* * * * *",
        "*/5 * * * *",
        "0 9-17 * * MON-FRI",
        "30 6-16/4 * * 1-5",
        "0 0 1,15 jan,jul ?",
        "5/15 * * * *",
        "@hourly",
        "@Daily",
    ] {
        assert_eq!(schedule_problem(ok), None, "{ok}");
    }
    for bad in [
        "",
        "* * * *",
        "0 * * * * *",
        "61 * * * *",
        "0 0 L * *",
        "0 0 * * 5#2",
        "0 0 * JAN-FOO *",
        "@every 5m",
        "@sometimes",
    ] {
        assert!(schedule_problem(bad).is_some(), "{bad}");
    }
}

#[test]
fn cron_job_errors_name_their_fields() {
    let r = batch("cronjobs");
    assert_eq!(create(r, cron_manifest("61 * * * *")).1, ["spec.schedule"]);
    assert_eq!(
        create(r, cron_manifest("TZ=UTC * * * * *")).1,
        ["spec.schedule"]
    );
    let mut m = cron_manifest("@daily");
    m["spec"]["timeZone"] = json!("Mars/Olympus");
    m["spec"]["concurrencyPolicy"] = json!("Sometimes");
    m["spec"]["startingDeadlineSeconds"] = json!(-1);
    m["spec"]["jobTemplate"]["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
    m["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    assert_eq!(
        create(r, m).1,
        [
            "spec.timeZone",
            "spec.startingDeadlineSeconds",
            "spec.concurrencyPolicy",
            "spec.jobTemplate.spec.template.spec.restartPolicy",
            "spec.jobTemplate.spec.selector"
        ]
    );
    let mut m = cron_manifest("@daily");
    m["spec"]["timeZone"] = json!("Europe/Berlin");
    assert!(create(r, m).1.is_empty());
    let mut m = cron_manifest("@daily");
    m["metadata"]["name"] = json!("a".repeat(53));
    assert_eq!(create(r, m).1, ["metadata.name"]);
}
