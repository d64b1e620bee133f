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

fn zone_a(name: &str) -> Option<NodeTopology> {
    (name == "node-a").then(|| NodeTopology {
        zone: Some("zone-a".into()),
    })
}

fn pods(n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| {
            pod(
                &format!("p{i:03}"),
                &[("app", "web")],
                &format!("10.1.{}.{}", i / 200, i % 200 + 1),
            )
        })
        .collect()
}

fn run(service: &Service, pods: &[Pod], existing: &[EndpointSlice]) -> Changes {
    let pods: Vec<&Pod> = pods.iter().collect();
    let existing: Vec<&EndpointSlice> = existing.iter().collect();
    reconcile(service, &pods, &existing, zone_a, MAX_ENDPOINTS_PER_SLICE)
}

/// The API's answer: every created slice gets a name, uid and version.
fn store(changes: Changes, existing: &[EndpointSlice]) -> Vec<EndpointSlice> {
    let mut out: Vec<EndpointSlice> = existing
        .iter()
        .filter(|s| {
            !changes
                .delete
                .iter()
                .chain(&changes.update)
                .any(|d| d.metadata.name == s.metadata.name)
        })
        .cloned()
        .collect();
    out.extend(changes.update);
    for (i, mut s) in changes.create.into_iter().enumerate() {
        let name = format!(
            "{}{}{i}",
            s.metadata.generate_name.clone().unwrap_or_default(),
            out.len()
        );
        s.metadata.name = Some(name.clone());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.resource_version = Some("1".into());
        out.push(s);
    }
    out
}

fn addresses(slice: &EndpointSlice) -> Vec<&str> {
    slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.iter().map(String::as_str))
        .collect()
}

fn conditions(ep: &Endpoint) -> (Option<bool>, Option<bool>, Option<bool>) {
    let c = ep.conditions.clone().unwrap_or_default();
    (c.ready, c.serving, c.terminating)
}

fn only_created(changes: &Changes) -> &EndpointSlice {
    assert_eq!(changes.create.len(), 1, "{changes:?}");
    assert!(
        changes.update.is_empty() && changes.delete.is_empty(),
        "{changes:?}"
    );
    &changes.create[0]
}

#[test]
fn a_new_service_gets_one_slice_owned_by_it_labelled_for_it_and_the_controller() {
    let c = run(&web(), &pods(2), &[]);
    let s = only_created(&c);
    assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
    assert_eq!(s.metadata.name, None);
    assert_eq!(s.metadata.namespace.as_deref(), Some("ns"));
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(
        labels.get(LABEL_SERVICE_NAME).map(String::as_str),
        Some("web")
    );
    assert_eq!(
        labels.get(LABEL_MANAGED_BY).map(String::as_str),
        Some(CONTROLLER_NAME)
    );
    assert!(!labels.contains_key(pe::LABEL_HEADLESS));
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.api_version.as_str(),
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str()
        ),
        ("v1", "Service", "web", "uid-web")
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(s.address_type, "IPv4");
    assert_eq!(addresses(s), ["10.1.0.1", "10.1.0.2"]);
}

#[test]
fn a_ready_pod_is_an_endpoint_with_its_node_zone_and_a_reference_to_it() {
    let c = run(&web(), &pods(1), &[]);
    let ep = &only_created(&c).endpoints[0];
    assert_eq!(conditions(ep), (Some(true), Some(true), Some(false)));
    assert_eq!(ep.node_name.as_deref(), Some("node-a"));
    assert_eq!(ep.zone.as_deref(), Some("zone-a"));
    let r = ep.target_ref.as_ref().unwrap();
    assert_eq!(
        (
            r.kind.as_deref(),
            r.namespace.as_deref(),
            r.name.as_deref(),
            r.uid.as_deref()
        ),
        (Some("Pod"), Some("ns"), Some("p000"), Some("uid-p000"))
    );
    assert_eq!(ep.hostname, None);
}

#[test]
fn a_node_without_zone_label_gives_no_zone() {
    let p = pods(1);
    let c = reconcile(
        &web(),
        &[&p[0]],
        &[],
        |_| Some(NodeTopology::default()),
        100,
    );
    assert_eq!(only_created(&c).endpoints[0].zone, None);
}

#[test]
fn the_slice_ports_are_the_service_ports_resolved_for_the_pod() {
    let c = run(&web(), &pods(1), &[]);
    let p = &only_created(&c).ports.clone().unwrap()[0];
    assert_eq!(
        (p.name.as_deref(), p.port, p.protocol.as_deref()),
        (Some("http"), Some(8080), Some("TCP"))
    );
}

#[test]
fn a_not_ready_pod_is_neither_ready_nor_serving() {
    let mut p = pods(1);
    set_ready(&mut p[0], false);
    let c = run(&web(), &p, &[]);
    assert_eq!(
        conditions(&only_created(&c).endpoints[0]),
        (Some(false), Some(false), Some(false))
    );
}

#[test]
fn a_terminating_ready_pod_is_serving_and_terminating_but_not_ready() {
    let mut p = pods(1);
    p[0].metadata.deletion_timestamp = Some(time(20));
    let c = run(&web(), &p, &[]);
    assert_eq!(
        conditions(&only_created(&c).endpoints[0]),
        (Some(false), Some(true), Some(true))
    );
}

#[test]
fn publish_not_ready_addresses_makes_every_endpoint_ready() {
    let mut s = web();
    s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    let mut p = pods(2);
    set_ready(&mut p[0], false);
    p[1].metadata.deletion_timestamp = Some(time(20));
    let c = run(&s, &p, &[]);
    let eps = &only_created(&c).endpoints;
    assert_eq!(conditions(&eps[0]), (Some(true), Some(false), Some(false)));
    assert_eq!(conditions(&eps[1]), (Some(true), Some(true), Some(true)));
}

#[test]
fn pods_without_ip_finished_pods_and_pods_of_other_namespaces_or_labels_are_left_out() {
    let mut p = pods(5);
    p[0].status.as_mut().unwrap().pod_ip = None;
    p[0].status.as_mut().unwrap().pod_ips = None;
    p[1].status.as_mut().unwrap().phase = Some("Succeeded".into());
    p[2].metadata.namespace = Some("other".into());
    p[3].metadata.labels = Some([("app".to_string(), "db".to_string())].into());
    let c = run(&web(), &p, &[]);
    assert_eq!(addresses(only_created(&c)), ["10.1.0.5"]);
}

#[test]
fn a_service_without_selector_is_left_alone() {
    let mut s = web();
    s.spec.as_mut().unwrap().selector = None;
    let user_slice = store(run(&web(), &pods(1), &[]), &[]);
    let c = run(&s, &pods(3), &user_slice);
    assert!(c.is_empty(), "{c:?}");
}

#[test]
fn slices_not_managed_by_this_controller_are_never_touched() {
    let mut mine = store(run(&web(), &pods(1), &[]), &[]);
    mine[0]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_MANAGED_BY.into(), "someone-else".into());
    let c = run(&web(), &pods(1), &mine);
    assert!(c.update.is_empty() && c.delete.is_empty(), "{c:?}");
    assert_eq!(
        c.create.len(),
        1,
        "the Service gets its own slice beside the user's"
    );
}

#[test]
fn a_second_sync_of_an_unchanged_service_changes_nothing() {
    let p = pods(250);
    let slices = store(run(&web(), &p, &[]), &[]);
    let c = run(&web(), &p, &slices);
    assert!(c.is_empty(), "{c:?}");
}

#[test]
fn endpoints_are_split_into_slices_of_at_most_max_per_slice() {
    let c = run(&web(), &pods(250), &[]);
    let mut sizes: Vec<usize> = c.create.iter().map(|s| s.endpoints.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [50, 100, 100]);
    let p = pods(7);
    let pods: Vec<&Pod> = p.iter().collect();
    let c = reconcile(&web(), &pods, &[], zone_a, 3);
    let sizes: Vec<usize> = c.create.iter().map(|s| s.endpoints.len()).collect();
    assert_eq!(sizes, [3, 3, 1]);
}

#[test]
fn a_changed_condition_updates_the_slice_holding_it_in_place() {
    let mut p = pods(150);
    let slices = store(run(&web(), &p, &[]), &[]);
    set_ready(&mut p[120], false);
    let c = run(&web(), &p, &slices);
    assert!(c.create.is_empty() && c.delete.is_empty(), "{c:?}");
    assert_eq!(c.update.len(), 1, "only the slice holding p120");
    let s = &c.update[0];
    let holder = slices
        .iter()
        .find(|x| x.metadata.name == s.metadata.name)
        .unwrap();
    assert_eq!(
        s.metadata.resource_version,
        holder.metadata.resource_version
    );
    let ep = s
        .endpoints
        .iter()
        .find(|e| e.addresses == ["10.1.0.121"])
        .unwrap();
    assert_eq!(conditions(ep), (Some(false), Some(false), Some(false)));
    assert_eq!(s.endpoints.len(), holder.endpoints.len());
}

#[test]
fn a_pod_that_goes_is_removed_from_its_slice() {
    let p = pods(3);
    let slices = store(run(&web(), &p, &[]), &[]);
    let c = run(&web(), &p[..2], &slices);
    assert!(c.create.is_empty() && c.delete.is_empty(), "{c:?}");
    assert_eq!(addresses(&c.update[0]), ["10.1.0.1", "10.1.0.2"]);
}

#[test]
fn a_service_with_no_endpoints_gets_one_empty_placeholder_slice_and_keeps_it() {
    let c = run(&web(), &[], &[]);
    let s = only_created(&c);
    assert!(s.endpoints.is_empty());
    assert_eq!(s.ports.as_deref(), Some(&[][..]));
    let slices = store(c, &[]);
    let c = run(&web(), &[], &slices);
    assert!(c.is_empty(), "the placeholder stays: {c:?}");
}

#[test]
fn when_the_last_pod_goes_its_slice_becomes_the_placeholder_in_place() {
    let p = pods(1);
    let slices = store(run(&web(), &p, &[]), &[]);
    let c = run(&web(), &[], &slices);
    assert!(c.create.is_empty() && c.delete.is_empty(), "{c:?}");
    assert_eq!(c.update[0].metadata.name, slices[0].metadata.name);
    assert!(c.update[0].endpoints.is_empty());
}

#[test]
fn the_first_pods_fill_the_placeholder_instead_of_a_new_slice() {
    let slices = store(run(&web(), &[], &[]), &[]);
    let c = run(&web(), &pods(2), &slices);
    assert!(c.create.is_empty() && c.delete.is_empty(), "{c:?}");
    assert_eq!(c.update[0].metadata.name, slices[0].metadata.name);
    assert_eq!(c.update[0].metadata.resource_version.as_deref(), Some("1"));
    assert_eq!(addresses(&c.update[0]), ["10.1.0.1", "10.1.0.2"]);
    assert_eq!(c.update[0].ports.as_ref().unwrap().len(), 1);
}

#[test]
fn new_pods_go_into_the_existing_slice_they_fill_best_before_any_new_slice() {
    let p = pods(250);
    // Slices of 100, 100, 50, then 45 more pods.
    let slices = store(run(&web(), &p[..250], &[]), &[]);
    let more = pods(295);
    let c = run(&web(), &more, &slices);
    assert!(c.create.is_empty() && c.delete.is_empty(), "{c:?}");
    assert_eq!(c.update.len(), 1);
    assert_eq!(c.update[0].endpoints.len(), 95);
    // 60 more do not fit in the 50: a new slice, the others untouched.
    let more = pods(310);
    let c = run(&web(), &more, &slices);
    assert!(c.update.is_empty() && c.delete.is_empty(), "{c:?}");
    assert_eq!(c.create.len(), 1);
    assert_eq!(c.create[0].endpoints.len(), 60);
}

#[test]
fn a_slice_being_updated_is_topped_up_before_others_are_touched() {
    let mut p = pods(150);
    let slices = store(run(&web(), &p, &[]), &[]);
    // A pod of the half-full slice changes while 10 more arrive.
    let half = slices.iter().find(|s| s.endpoints.len() == 50).unwrap();
    let name = half.endpoints[0].target_ref.as_ref().unwrap().name.clone();
    let i = p.iter().position(|x| x.metadata.name == name).unwrap();
    set_ready(&mut p[i], false);
    let p = [p, pods(160)[150..].to_vec()].concat();
    let c = run(&web(), &p, &slices);
    assert!(c.create.is_empty() && c.delete.is_empty(), "{c:?}");
    assert_eq!(c.update.len(), 1);
    assert_eq!(c.update[0].endpoints.len(), 60);
}

#[test]
fn named_target_ports_are_resolved_per_pod_and_differing_pods_get_different_slices() {
    let s = service(
        "web",
        &[("app", "web")],
        vec![port("http", 80, Some(IntOrString::String("http".into())))],
    );
    let mut p = pods(3);
    set_container_port(&mut p[2], "http", 9090);
    let c = run(&s, &p, &[]);
    assert_eq!(c.create.len(), 2, "{c:?}");
    let by_port: BTreeMap<i32, Vec<&str>> = c
        .create
        .iter()
        .map(|s| (s.ports.as_ref().unwrap()[0].port.unwrap(), addresses(s)))
        .collect();
    assert_eq!(by_port[&8080], ["10.1.0.1", "10.1.0.2"]);
    assert_eq!(by_port[&9090], ["10.1.0.3"]);
}

#[test]
fn a_pod_without_the_named_port_is_an_endpoint_without_that_port() {
    let s = service(
        "web",
        &[("app", "web")],
        vec![
            port("http", 80, Some(IntOrString::String("http".into()))),
            port("metrics", 9100, Some(IntOrString::String("metrics".into()))),
        ],
    );
    let c = run(&s, &pods(1), &[]);
    let ports = only_created(&c).ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
}

#[test]
fn a_pod_whose_port_changes_moves_to_the_slice_of_its_new_ports() {
    let s = service(
        "web",
        &[("app", "web")],
        vec![port("http", 80, Some(IntOrString::String("http".into())))],
    );
    let mut p = pods(2);
    let slices = store(run(&s, &p, &[]), &[]);
    set_container_port(&mut p[1], "http", 9090);
    let c = run(&s, &p, &slices);
    assert_eq!(c.update.len(), 1);
    assert_eq!(addresses(&c.update[0]), ["10.1.0.1"]);
    assert_eq!(c.create.len(), 1);
    assert_eq!(addresses(&c.create[0]), ["10.1.0.2"]);
}

#[test]
fn port_order_and_defaulted_fields_do_not_make_a_slice_differ() {
    let s = service(
        "web",
        &[("app", "web")],
        vec![port("a", 80, None), port("b", 81, None)],
    );
    let p = pods(1);
    let mut slices = store(run(&s, &p, &[]), &[]);
    let ports = slices[0].ports.as_mut().unwrap();
    ports.reverse();
    ports[0].protocol = None;
    let c = run(&s, &p, &slices);
    assert!(c.is_empty(), "{c:?}");
}

#[test]
fn slices_of_an_earlier_service_with_the_same_name_are_deleted() {
    let old = store(run(&web(), &pods(1), &[]), &[]);
    let mut new = web();
    new.metadata.uid = Some("uid-web-2".into());
    let c = run(&new, &pods(1), &old);
    assert_eq!(c.delete.len(), 1);
    assert_eq!(c.delete[0].metadata.name, old[0].metadata.name);
    assert_eq!(c.create.len(), 1);
    assert_eq!(
        c.create[0].metadata.owner_references.as_ref().unwrap()[0].uid,
        "uid-web-2"
    );
}

#[test]
fn slices_follow_the_service_labels_and_keep_their_own() {
    let slices = store(run(&web(), &pods(1), &[]), &[]);
    let mut s = web();
    s.metadata.labels = Some(
        [
            ("team".to_string(), "a".to_string()),
            (LABEL_MANAGED_BY.to_string(), "spoof".to_string()),
        ]
        .into(),
    );
    let c = run(&s, &pods(1), &slices);
    assert_eq!(c.update.len(), 1, "{c:?}");
    let labels = c.update[0].metadata.labels.clone().unwrap();
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(
        labels.get(LABEL_MANAGED_BY).map(String::as_str),
        Some(CONTROLLER_NAME)
    );
}

#[test]
fn a_headless_service_s_slices_carry_the_headless_label_and_pod_hostnames() {
    let mut s = web();
    s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    let mut p = pods(1);
    p[0].spec.as_mut().unwrap().hostname = Some("web-0".into());
    p[0].spec.as_mut().unwrap().subdomain = Some("web".into());
    let c = run(&s, &p, &[]);
    let slice = only_created(&c);
    assert!(
        slice
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(pe::LABEL_HEADLESS)
    );
    assert_eq!(slice.endpoints[0].hostname.as_deref(), Some("web-0"));
}

#[test]
fn an_ipv6_service_gets_ipv6_slices_and_loses_those_of_a_family_it_dropped() {
    let v4 = store(run(&web(), &pods(1), &[]), &[]);
    let mut s = web();
    s.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
    let mut p = pods(1);
    p[0].status.as_mut().unwrap().pod_ips = Some(vec![
        k8s_openapi::api::core::v1::PodIP {
            ip: "10.1.0.1".into(),
        },
        k8s_openapi::api::core::v1::PodIP {
            ip: "fd00::1".into(),
        },
    ]);
    let c = run(&s, &p, &v4);
    assert_eq!(c.delete.len(), 1);
    assert_eq!(c.delete[0].address_type, "IPv4");
    assert_eq!(c.create.len(), 1);
    assert_eq!(c.create[0].address_type, "IPv6");
    assert_eq!(addresses(&c.create[0]), ["fd00::1"]);
}

#[test]
fn a_service_being_deleted_gets_no_new_slices() {
    let mut s = web();
    s.metadata.deletion_timestamp = Some(time(50));
    let c = run(&s, &pods(1), &[]);
    assert!(c.create.is_empty(), "{c:?}");
}

#[test]
fn a_pod_on_an_unknown_node_is_left_out_and_reported_unless_everything_is_published() {
    let mut p = pods(2);
    p[1].spec.as_mut().unwrap().node_name = Some("node-gone".into());
    let c = run(&web(), &p, &[]);
    assert_eq!(addresses(only_created(&c)), ["10.1.0.1"]);
    assert_eq!(c.pods_on_unknown_nodes, ["p001"]);
    let mut s = web();
    s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    let c = run(&s, &p, &[]);
    assert_eq!(addresses(only_created(&c)), ["10.1.0.1", "10.1.0.2"]);
    assert!(c.pods_on_unknown_nodes.is_empty());
    assert_eq!(c.create[0].endpoints[1].zone, None);
}

#[test]
fn duplicate_endpoints_across_slices_are_kept_once() {
    let p = pods(2);
    let mut slices = store(run(&web(), &p, &[]), &[]);
    let mut copy = slices[0].clone();
    copy.metadata.name = Some("web-copy".into());
    slices.push(copy);
    let c = run(&web(), &p, &slices);
    assert!(c.create.is_empty() && c.update.is_empty(), "{c:?}");
    assert_eq!(c.delete.len(), 1, "the later copy, emptied, goes");
    assert_eq!(c.delete[0].metadata.name.as_deref(), Some("web-copy"));
}
