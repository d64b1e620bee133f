//! The tc classifier on a real veth inside namespaces the test creates:
//! attach (tcx), see it attached, see it run, detach, and pinned state that
//! outlives the loader.
use std::{net::UdpSocket, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType};
use sluice_common::ProgStat;
use sluice_datapath::{BpfLogLevel, Datapath, LoadOptions, pinned_counters};
use sluice_tests::{NetNs, PinDir, require_root, veth_between};

const A_IP: &str = "192.0.2.1"; // TEST-NET-1: only ever inside our namespaces
const B_IP: &str = "192.0.2.2";

fn tc_runs(dp: &Datapath) -> (u64, u64) {
    let c = dp
        .counters()
        .expect("counters")
        .into_iter()
        .find(|(s, _)| *s == ProgStat::TcPodIngress)
        .expect("tc slot")
        .1;
    (c.packets, c.bytes)
}

fn send_udp_from(ns: &NetNs, n: usize, payload: &[u8]) {
    ns.run(|| {
        let s = UdpSocket::bind((B_IP, 0)).expect("bind in netns");
        for _ in 0..n {
            s.send_to(payload, (A_IP, 9)).expect("send");
        }
    });
    // Packets cross the veth synchronously, but give softirq a moment.
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn tc_classifier_attaches_runs_and_detaches_on_a_netns_veth() {
    if !require_root("tc_classifier_attaches_runs_and_detaches_on_a_netns_veth") {
        return;
    }
    let (a, b) = (NetNs::new(), NetNs::new());
    let (ia, _ib) = veth_between(&a, &format!("{A_IP}/30"), &b, &format!("{B_IP}/30"));
    let pins = PinDir::new();
    let opts = LoadOptions {
        bpffs_dir: pins.path.clone(),
        log_level: BpfLogLevel::Warn,
        lb_sizes: None,
    };
    let mut dp = Datapath::load(&opts).expect("load datapath");
    assert_eq!(tc_runs(&dp), (0, 0), "fresh pin dir starts at zero");

    let link = a.run(|| dp.attach_tc_pod_ingress(&ia)).expect("attach tc");
    let attached = a
        .run(|| SchedClassifier::query_tcx(&ia, TcAttachType::Ingress))
        .expect("query tcx")
        .1;
    let names: Vec<String> = attached
        .iter()
        .map(|p| p.name_as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        names,
        ["tc_pod_ingress"],
        "exactly our program on tcx ingress"
    );
    // (Debian's bpftool 7.1 predates tcx and cannot list it; the kernel's
    // BPF_PROG_QUERY above is the authoritative check.)

    let payload = [0u8; 100];
    send_udp_from(&b, 20, &payload);
    // The first datagrams wait for ARP; poll instead of trusting one sleep.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tc_runs(&dp).0 < 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (runs, bytes) = tc_runs(&dp);
    // 20 datagrams (+ possibly ARP/ND) each at least IPv4+UDP+payload long.
    assert!(runs >= 20, "program ran {runs} times for 20 packets");
    assert!(bytes >= 20 * (20 + 8 + 100), "only {bytes} bytes counted");
    // The counters live in the pinned map, readable without the loader.
    let pinned = pinned_counters(&pins.path).expect("pinned counters");
    assert!(
        pinned
            .iter()
            .any(|(s, c)| *s == ProgStat::TcPodIngress && c.packets == runs)
    );

    a.run(|| dp.detach_tc_pod_ingress(link)).expect("detach");
    let after = a
        .run(|| SchedClassifier::query_tcx(&ia, TcAttachType::Ingress))
        .expect("query tcx")
        .1;
    assert!(after.is_empty(), "still attached after detach");
    send_udp_from(&b, 5, &payload);
    assert_eq!(tc_runs(&dp).0, runs, "detached program must not run");

    // Pinned maps outlive the loader: a new load on the same dir sees the
    // old counts (this is what lets the data plane survive agent restarts).
    drop(dp);
    let dp2 = Datapath::load(&opts).expect("reload datapath");
    assert_eq!(tc_runs(&dp2).0, runs, "reload must reuse the pinned map");
}
