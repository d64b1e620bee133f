//! sluice-server through kube-rs (the client the node agent and any Rust
//! controller use): typed round trips of every verb, errors as typed
//! `Status`es, and a watcher (reflector) that carries on across a server
//! restart. No root needed.
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use serde_json::json;
use sluice_tests::api_server::ApiServer;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"},
    }))
    .expect("ConfigMap")
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API Status, got {other}"),
    }
}

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(60);

/// The names in the reflector's store, sorted.
fn names_in(store: &reflector::Store<ConfigMap>) -> Vec<String> {
    let mut names: Vec<String> = store
        .state()
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    names.sort();
    names
}

/// Waits until the reflector's store satisfies `pred`.
async fn until(store: &reflector::Store<ConfigMap>, what: &str, pred: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let names = names_in(store);
        if pred(&names) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watcher never saw {what}; it has {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_round_trips_and_a_watcher_survives_a_restart() {
    let mut s = ApiServer::api_only(&[]);
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");

    // create / get / list with a selector
    let made = cms
        .create(&PostParams::default(), &cm("one", json!({"tier": "a"})))
        .await
        .expect("create");
    assert!(made.metadata.uid.is_some() && made.metadata.resource_version.is_some());
    cms.create(&PostParams::default(), &cm("two", json!({"tier": "b"})))
        .await
        .expect("create");
    assert_eq!(
        code(
            cms.create(&PostParams::default(), &cm("one", json!({})))
                .await
                .expect_err("dup")
        ),
        409
    );
    let got = cms.get("one").await.expect("get");
    assert_eq!(
        got.data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("v")
    );
    let listed = cms
        .list(&ListParams::default().labels("tier=b"))
        .await
        .expect("list");
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["two"]);

    // patch: merge, strategic, JSON
    let p = cms
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"m": "1"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(p.data.as_ref().map(|d| d.len()), Some(2));
    cms.patch(
        "one",
        &PatchParams::default(),
        &Patch::Strategic(json!({"metadata": {"labels": {"s": "y"}}})),
    )
    .await
    .expect("strategic patch");
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/data/k"}])).expect("ops");
    let p = cms
        .patch("one", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .expect("json patch");
    assert_eq!(
        p.data
            .as_ref()
            .map(|d| d.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["m".to_string()])
    );
    assert_eq!(
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("s"))
            .map(String::as_str),
        Some("y")
    );
    // Patches without a resourceVersion never fail on a lost race: 12
    // concurrent label patches all land.
    let patches = (0..12).map(|i| {
        let cms = cms.clone();
        async move {
            let p = Patch::Merge(json!({"metadata": {"labels": {format!("l{i}"): "x"}}}));
            cms.patch("one", &PatchParams::default(), &p).await
        }
    });
    for r in futures::future::join_all(patches).await {
        r.expect("a concurrent patch");
    }
    let labels = cms
        .get("one")
        .await
        .expect("get")
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(
        (0..12)
            .filter(|i| labels.contains_key(&format!("l{i}")))
            .count(),
        12
    );
    // A stale resourceVersion on replace is a 409.
    let mut stale = got.clone();
    stale.data = None;
    assert_eq!(
        code(
            cms.replace("one", &PostParams::default(), &stale)
                .await
                .expect_err("stale")
        ),
        409
    );

    // Services come back with an allocated ClusterIP.
    let svcs: Api<Service> = Api::namespaced(cms.clone().into_client(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "kube-svc"}, "spec": {"ports": [{"port": 80}]}}))
    .expect("Service");
    let svc = svcs
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let ip: std::net::Ipv4Addr = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|i| i.parse().ok())
        .expect("an allocated ClusterIP");
    assert!(
        ip.octets()[0] == 10 && (96..112).contains(&ip.octets()[1]),
        "{ip}"
    );
    // Invalid objects are 422s.
    let bad: Service = serde_json::from_value(json!({
        "metadata": {"name": "bad-svc"}, "spec": {"ports": [{"port": 0}]}}))
    .expect("Service");
    assert_eq!(
        code(
            svcs.create(&PostParams::default(), &bad)
                .await
                .expect_err("invalid")
        ),
        422
    );

    // Bodies may be YAML (protobuf: api_protobuf.rs); another media type
    // is refused with 415, storing nothing.
    let raw = |ct: &str, body: &str| {
        http::Request::post("/api/v1/namespaces/default/configmaps")
            .header("content-type", ct)
            .body(body.as_bytes().to_vec())
            .expect("request")
    };
    let client = cms.clone().into_client();
    client
        .request_text(raw(
            "application/yaml",
            "metadata:\n  name: from-yaml\ndata:\n  k: v\n",
        ))
        .await
        .expect("a YAML body");
    assert_eq!(
        cms.get("from-yaml")
            .await
            .expect("stored")
            .data
            .and_then(|d| d.get("k").cloned()),
        Some("v".to_string())
    );
    let e = client
        .request_text(raw("application/yaml", "metadata: [unclosed\n"))
        .await
        .expect_err("malformed YAML");
    assert_eq!(code(e), 400);
    let e = client
        .request_text(raw("text/plain", "k"))
        .await
        .expect_err("text");
    assert_eq!(code(e), 415);

    // delete, then 404
    cms.delete("two", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(code(cms.get("two").await.expect_err("gone")), 404);

    // A reflector follows changes, and keeps following after a restart.
    let (store, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default()).default_backoff(),
    )
    .applied_objects();
    let follow = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    until(&store, "the initial list", |n| n == ["from-yaml", "one"]).await;
    cms.create(&PostParams::default(), &cm("three", json!({})))
        .await
        .expect("create");
    until(&store, "a create", |n| n == ["from-yaml", "one", "three"]).await;

    // A selector watch: leaving the selector is a DELETED, joining an ADDED.
    let (picked, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default().labels("pick=yes")).default_backoff(),
    )
    .applied_objects();
    let follow_picked = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    let label = |v: &str| Patch::Merge(json!({"metadata": {"labels": {"pick": v}}}));
    // Only once the watcher's initial list is in (InitDone) does an empty
    // store mean an empty selection.
    tokio::time::timeout(HANG, picked.wait_until_ready())
        .await
        .expect("the selector watcher's initial list")
        .expect("the reflector runs");
    assert_eq!(
        names_in(&picked),
        Vec::<String>::new(),
        "pick=yes selects nothing yet: no object has the label"
    );
    cms.patch("three", &PatchParams::default(), &label("yes"))
        .await
        .expect("label");
    until(&picked, "an object joining the selector", |n| {
        n == ["three"]
    })
    .await;
    cms.patch("three", &PatchParams::default(), &label("no"))
        .await
        .expect("label");
    until(&picked, "an object leaving the selector", |n| n.is_empty()).await;
    follow_picked.abort();

    tokio::task::block_in_place(|| s.restart());
    cms.create(&PostParams::default(), &cm("four", json!({})))
        .await
        .expect("create after restart");
    cms.delete("one", &DeleteParams::default())
        .await
        .expect("delete after restart");
    until(&store, "changes after the restart", |n| {
        n == ["four", "from-yaml", "three"]
    })
    .await;
    follow.abort();
}

/// Metadata-only reads (what kube-rs's `metadata_watcher` and the garbage
/// collector use) answer PartialObjectMetadata: the metadata, no data.
#[tokio::test]
async fn metadata_only_reads_answer_partial_object_metadata() {
    let s = ApiServer::api_only(&[]);
    let api: Api<ConfigMap> = Api::default_namespaced(s.client().await);
    api.create(&PostParams::default(), &cm("meta", json!({"app": "m"})))
        .await
        .expect("create");
    let one = api.get_metadata("meta").await.expect("get_metadata");
    assert_eq!(
        one.types.map(|t| t.kind).as_deref(),
        Some("PartialObjectMetadata")
    );
    assert_eq!(one.metadata.labels.unwrap_or_default()["app"], "m");
    let list = api
        .list_metadata(&ListParams::default())
        .await
        .expect("list_metadata");
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0].types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );
    // A watch from the list's revision sees a change as metadata too.
    let rv = list.metadata.resource_version.clone().expect("rv");
    let mut events = std::pin::pin!(
        api.watch_metadata(&kube::api::WatchParams::default(), &rv)
            .await
            .expect("watch_metadata")
    );
    api.patch(
        "meta",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "n"}}})),
    )
    .await
    .expect("patch");
    let ev = tokio::time::timeout(HANG, events.next())
        .await
        .expect("a watch event in time")
        .expect("the stream goes on")
        .expect("an event");
    match ev {
        kube::api::WatchEvent::Modified(m) => {
            assert_eq!(
                m.types.map(|t| t.kind).as_deref(),
                Some("PartialObjectMetadata")
            );
            assert_eq!(m.metadata.labels.unwrap_or_default()["app"], "n");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_status_write_leaves_the_generation_alone_and_a_spec_change_bumps_it() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let s = ApiServer::api_only(&[]);
    let client = s.client().await;
    let api: Api<DaemonSet> = Api::namespaced(client, "default");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "gen"},
        "spec": {
            "selector": {"matchLabels": {"app": "gen"}},
            "template": {
                "metadata": {"labels": {"app": "gen"}},
                "spec": {"containers": [{"name": "c", "image": "localhost/busybox:1.35"}]},
            },
        },
    }))
    .expect("DaemonSet");
    api.create(&PostParams::default(), &ds)
        .await
        .expect("create");
    let generation = |d: DaemonSet| d.metadata.generation;
    for n in 1..=3 {
        let status = json!({"status": {"observedGeneration": 1, "numberReady": n,
            "currentNumberScheduled": 0, "desiredNumberScheduled": 0, "numberMisscheduled": 0}});
        let d = api
            .patch_status("gen", &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("status patch");
        assert_eq!(generation(d), Some(1), "status write {n}");
    }
    let change = json!({"spec": {"minReadySeconds": 5}});
    let d = api
        .patch("gen", &PatchParams::default(), &Patch::Merge(change))
        .await
        .expect("spec patch");
    assert_eq!(generation(d), Some(2));
}
