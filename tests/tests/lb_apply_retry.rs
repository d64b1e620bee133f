//! A failed apply of the service state is counted in
//! `sluice_lb_reconcile_errors_total` and retried on its own: once the
//! cause is gone the same snapshot is programmed, with no change from the
//! source.
use std::time::Duration;

use sluice_common::lb::{Frontend, PROTO_TCP, Service};
use sluice_tests::{
    poll::wait_until,
    require_root,
    topology::{LbTopology, http_service, tally},
};

fn reconcile_errors(t: &LbTopology) -> u64 {
    t.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("sluice_lb_reconcile_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sluice_lb_reconcile_errors_total in /metrics")
}

fn failed(l: &str) -> bool {
    l.contains("programming services failed")
}

#[test]
fn a_failed_apply_is_counted_and_retried_until_it_succeeds() {
    if !require_root("a_failed_apply_is_counted_and_retried_until_it_succeeds") {
        return;
    }
    let mut t = LbTopology::new(1);
    t.write_manifest("web.yaml", &http_service(&t, "web", "10.96.0.100", &[0]));
    t.start_agent(&["--bpf-lb-max-frontends", "16"]);
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(20), |l| {
            l.contains("LB maps in sync")
        });
    assert_eq!(reconcile_errors(&t), 0);

    // Something else fills the frontend map (entries the agent never
    // wrote, so it leaves them alone): the next frontend cannot be added.
    let mut maps = sluice_datapath::LbMaps::open(&t.pins.path).expect("open pinned LB maps");
    let mut junk = Vec::new();
    for i in 1..=u8::MAX {
        let f = Frontend::new([10, 99, 0, i], 80, PROTO_TCP);
        if maps.services.insert(f, Service::default(), 0).is_err() {
            break;
        }
        junk.push(f);
    }
    assert!(
        !junk.is_empty() && junk.len() < 16,
        "{} junk entries",
        junk.len()
    );

    let reads = t.agent().count_lines(|l| l.contains("manifests read"));
    t.write_manifest("api.yaml", &http_service(&t, "api", "10.96.0.101", &[0]));
    let line = t
        .agent()
        .wait_for_line("the apply to fail", Duration::from_secs(30), failed);
    assert!(line.contains("retry_in_s=5"), "{line}");
    wait_until(
        "the failure on /metrics",
        Duration::from_secs(30),
        || (reconcile_errors(&t) >= 1).then_some(()),
        || t.metrics(),
    );
    // Each retry that meets the full map fails (and counts) again.
    t.agent()
        .wait_for_count("a retry to fail too", 2, Duration::from_secs(60), failed);

    let programmed = |l: &str| l.contains("services programmed");
    let before = t.agent().count_lines(programmed);
    for f in &junk {
        maps.services.remove(f).expect("remove a junk frontend");
    }
    t.agent().wait_for_count(
        "the retry to succeed",
        before + 1,
        Duration::from_secs(60),
        programmed,
    );
    let out = t.agent().output();
    let done = out.lines().rfind(|l| programmed(l)).expect("just seen");
    assert!(done.contains("services=2"), "{done}");
    assert_eq!(
        t.agent().count_lines(|l| l.contains("manifests read")),
        reads + 1,
        "the retry applied the snapshot it had, not a new read"
    );
    assert_eq!(
        reconcile_errors(&t),
        t.agent().count_lines(failed) as u64,
        "one count per failed apply"
    );
    let vip = "10.96.0.101:80";
    assert_eq!(tally(&t.client(&["tcp", vip, "3"]), vip).len(), 1);
}
