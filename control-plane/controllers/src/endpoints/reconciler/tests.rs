use super::*;
use crate::pod_endpoint::testing::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn web() -> Service {
    service(
        "web",
        &[("app", "web")],
        vec![port("http", 80, Some(IntOrString::Int(8080)))],
    )
}

fn pods(n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| {
            pod(
                &format!("p{i:04}"),
                &[("app", "web")],
                &format!("10.1.{}.{}", i / 200, i % 200 + 1),
            )
        })
        .collect()
}

fn run(service: Option<&Service>, pods: &[Pod], existing: Option<&Endpoints>) -> Option<Write> {
    let pods: Vec<&Pod> = pods.iter().collect();
    reconcile("web", service, &pods, existing, Some(&time(10)))
}

fn written(w: Option<Write>) -> Endpoints {
    match w {
        Some(Write::Create(e) | Write::Update(e)) => e,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// As stored: with a resourceVersion.
fn stored(mut e: Endpoints) -> Endpoints {
    e.metadata.resource_version = Some("5".into());
    e
}

fn ips(v: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
    v.iter().flatten().map(|a| a.ip.as_str()).collect()
}

#[test]
fn a_service_gets_endpoints_of_its_name_with_ready_addresses_and_ports() {
    let w = run(Some(&web()), &pods(2), None);
    let Some(Write::Create(e)) = w else {
        panic!("expected a create, got {w:?}")
    };
    assert_eq!(e.metadata.name.as_deref(), Some("web"));
    assert_eq!(e.metadata.namespace.as_deref(), Some("ns"));
    let subsets = e.subsets.unwrap();
    assert_eq!(subsets.len(), 1);
    assert_eq!(ips(&subsets[0].addresses), ["10.1.0.1", "10.1.0.2"]);
    assert_eq!(subsets[0].not_ready_addresses, None);
    let a = &subsets[0].addresses.as_ref().unwrap()[0];
    assert_eq!(a.node_name.as_deref(), Some("node-a"));
    let r = a.target_ref.as_ref().unwrap();
    assert_eq!(
        (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
        (Some("Pod"), Some("p0000"), Some("uid-p0000"))
    );
    let p = &subsets[0].ports.as_ref().unwrap()[0];
    assert_eq!(
        (p.name.as_deref(), p.port, p.protocol.as_deref()),
        (Some("http"), 8080, Some("TCP"))
    );
}

#[test]
fn the_endpoints_carry_the_service_labels_the_controller_label_and_the_trigger_time() {
    let mut s = web();
    s.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
    let e = written(run(Some(&s), &pods(1), None));
    let labels = e.metadata.labels.unwrap();
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(
        labels.get(LABEL_MANAGED_BY).map(String::as_str),
        Some(CONTROLLER_NAME)
    );
    assert!(!labels.contains_key(pe::LABEL_HEADLESS));
    let a = e.metadata.annotations.unwrap();
    assert_eq!(
        a.get(pe::LAST_CHANGE_TRIGGER_TIME).map(String::as_str),
        Some(pe::format_time(&time(10)).as_str())
    );
    assert!(!a.contains_key(OVER_CAPACITY));
}

#[test]
fn a_not_ready_pod_is_a_not_ready_address() {
    let mut p = pods(2);
    set_ready(&mut p[1], false);
    let e = written(run(Some(&web()), &p, None));
    let s = &e.subsets.unwrap()[0];
    assert_eq!(ips(&s.addresses), ["10.1.0.1"]);
    assert_eq!(ips(&s.not_ready_addresses), ["10.1.0.2"]);
}

#[test]
fn a_terminating_pod_is_dropped_unless_everything_is_published() {
    let mut p = pods(2);
    p[1].metadata.deletion_timestamp = Some(time(20));
    let e = written(run(Some(&web()), &p, None));
    assert_eq!(ips(&e.subsets.unwrap()[0].addresses), ["10.1.0.1"]);
    let mut s = web();
    s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    set_ready(&mut p[0], false);
    let e = written(run(Some(&s), &p, None));
    let sub = &e.subsets.unwrap()[0];
    assert_eq!(
        ips(&sub.addresses),
        ["10.1.0.1", "10.1.0.2"],
        "all ready when published"
    );
    assert_eq!(sub.not_ready_addresses, None);
}

#[test]
fn pods_without_ip_or_finished_or_not_selected_are_left_out() {
    let mut p = pods(4);
    p[0].status.as_mut().unwrap().pod_ip = None;
    p[0].status.as_mut().unwrap().pod_ips = None;
    p[1].status.as_mut().unwrap().phase = Some("Failed".into());
    p[2].metadata.labels = None;
    let e = written(run(Some(&web()), &p, None));
    assert_eq!(ips(&e.subsets.unwrap()[0].addresses), ["10.1.0.4"]);
}

#[test]
fn no_pods_means_empty_subsets() {
    let e = written(run(Some(&web()), &[], None));
    assert_eq!(e.subsets, Some(vec![]));
}

#[test]
fn an_unchanged_service_is_not_rewritten() {
    let p = pods(3);
    let e = stored(written(run(Some(&web()), &p, None)));
    assert_eq!(run(Some(&web()), &p, Some(&e)), None);
}

#[test]
fn subsets_spelled_differently_by_the_api_are_still_unchanged() {
    let p = pods(2);
    let mut e = stored(written(run(Some(&web()), &p, None)));
    let s = &mut e.subsets.as_mut().unwrap()[0];
    s.addresses.as_mut().unwrap().reverse();
    s.ports.as_mut().unwrap()[0].protocol = None;
    s.not_ready_addresses = Some(vec![]);
    assert_eq!(run(Some(&web()), &p, Some(&e)), None);
}

#[test]
fn a_change_updates_the_stored_object_at_its_version() {
    let mut p = pods(2);
    let e = stored(written(run(Some(&web()), &p, None)));
    set_ready(&mut p[0], false);
    let Some(Write::Update(u)) = run(Some(&web()), &p, Some(&e)) else {
        panic!("expected an update")
    };
    assert_eq!(u.metadata.resource_version.as_deref(), Some("5"));
    assert_eq!(
        ips(&u.subsets.unwrap()[0].not_ready_addresses),
        ["10.1.0.1"]
    );
}

#[test]
fn pods_whose_ports_resolve_differently_are_in_different_subsets() {
    let s = service(
        "web",
        &[("app", "web")],
        vec![port("http", 80, Some(IntOrString::String("http".into())))],
    );
    let mut p = pods(3);
    set_container_port(&mut p[2], "http", 9090);
    let e = written(run(Some(&s), &p, None));
    let subsets = e.subsets.unwrap();
    assert_eq!(subsets.len(), 2);
    let by_port: BTreeMap<i32, Vec<&str>> = subsets
        .iter()
        .map(|s| (s.ports.as_ref().unwrap()[0].port, ips(&s.addresses)))
        .collect();
    assert_eq!(by_port[&8080], ["10.1.0.1", "10.1.0.2"]);
    assert_eq!(by_port[&9090], ["10.1.0.3"]);
}

#[test]
fn ports_shared_by_the_same_addresses_are_one_subset() {
    let s = service(
        "web",
        &[("app", "web")],
        vec![port("a", 80, None), port("b", 81, None)],
    );
    let e = written(run(Some(&s), &pods(2), None));
    let subsets = e.subsets.unwrap();
    assert_eq!(subsets.len(), 1);
    assert_eq!(subsets[0].ports.as_ref().unwrap().len(), 2);
}

#[test]
fn a_headless_service_without_ports_lists_addresses_only() {
    let mut s = web();
    s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    s.spec.as_mut().unwrap().ports = None;
    let e = written(run(Some(&s), &pods(1), None));
    assert!(e.metadata.labels.unwrap().contains_key(pe::LABEL_HEADLESS));
    let sub = &e.subsets.unwrap()[0];
    assert_eq!(ips(&sub.addresses), ["10.1.0.1"]);
    assert_eq!(sub.ports, None);
}

#[test]
fn more_than_1000_addresses_are_truncated_ready_first_and_annotated() {
    let mut p = pods(1100);
    for pod in &mut p[..200] {
        set_ready(pod, false);
    }
    let e = written(run(Some(&web()), &p, None));
    let s = &e.subsets.as_ref().unwrap()[0];
    assert_eq!(s.addresses.as_ref().unwrap().len(), 900);
    assert_eq!(s.not_ready_addresses.as_ref().unwrap().len(), 100);
    assert_eq!(
        e.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get(OVER_CAPACITY)
            .map(String::as_str),
        Some(TRUNCATED)
    );
    // Stored truncated, it is not rewritten again.
    let e = stored(e);
    assert_eq!(run(Some(&web()), &p, Some(&e)), None);
    // Back under capacity, the annotation goes.
    let e = written(run(Some(&web()), &p[..10], Some(&e)));
    assert!(!e.metadata.annotations.unwrap().contains_key(OVER_CAPACITY));
}

#[test]
fn truncation_keeps_each_subset_s_share() {
    let mut subsets = vec![
        EndpointSubset {
            addresses: Some(vec![EndpointAddress::default(); 600]),
            ..Default::default()
        },
        EndpointSubset {
            addresses: Some(vec![EndpointAddress::default(); 600]),
            not_ready_addresses: Some(vec![EndpointAddress::default(); 5]),
            ..Default::default()
        },
    ];
    assert!(truncate(&mut subsets, 1000));
    let n: Vec<usize> = subsets
        .iter()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .collect();
    assert_eq!(n, [500, 500]);
    assert_eq!(
        subsets[1].not_ready_addresses, None,
        "ready addresses go first"
    );
}

#[test]
fn a_service_without_selector_keeps_the_endpoints_a_user_wrote() {
    let mut s = web();
    s.spec.as_mut().unwrap().selector = None;
    let user = Endpoints {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            resource_version: Some("3".into()),
            ..Default::default()
        },
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress {
                ip: "192.0.2.1".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }]),
    };
    assert_eq!(run(Some(&s), &pods(2), Some(&user)), None);
    assert_eq!(run(Some(&s), &pods(2), None), None, "nor creates any");
}

#[test]
fn endpoints_of_a_deleted_service_are_deleted_only_if_ours() {
    let ours = stored(written(run(Some(&web()), &pods(1), None)));
    assert_eq!(
        run(None, &pods(1), Some(&ours)),
        Some(Write::Delete { name: "web".into() })
    );
    let mut theirs = ours.clone();
    theirs.metadata.labels = None;
    assert_eq!(run(None, &pods(1), Some(&theirs)), None);
    assert_eq!(run(None, &pods(1), None), None);
}

#[test]
fn endpoints_someone_else_wrote_for_a_selector_service_are_taken_over() {
    let mut theirs = stored(written(run(Some(&web()), &pods(1), None)));
    theirs.metadata.labels = None;
    let Some(Write::Update(e)) = run(Some(&web()), &pods(1), Some(&theirs)) else {
        panic!("expected an update")
    };
    assert!(managed_by_us(&e));
}

#[test]
fn an_ipv6_service_lists_the_ipv6_address_of_dual_stack_pods() {
    let mut s = web();
    s.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
    let mut p = pods(1);
    p[0].status.as_mut().unwrap().pod_ips = Some(vec![
        k8s_openapi::api::core::v1::PodIP {
            ip: "10.1.0.1".into(),
        },
        k8s_openapi::api::core::v1::PodIP {
            ip: "fd00::1".into(),
        },
    ]);
    let e = written(run(Some(&s), &p, None));
    assert_eq!(ips(&e.subsets.unwrap()[0].addresses), ["fd00::1"]);
}
