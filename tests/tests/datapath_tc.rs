//! The per-packet LB programs on a real veth inside namespaces the test
//! creates, attached the way the agent attaches them for `--pod-iface`
//! (`Datapath::attach_lb_iface`): tcx links pinned in bpffs, so they keep
//! running after the loader is gone, a second attach replaces the first
//! instead of stacking on it, and removing the pins is what detaches them.
use std::{net::UdpSocket, path::Path, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType};
use sluice_common::{ProgStat, link_pins};
use sluice_datapath::{BpfLogLevel, Datapath, LbIface, LoadOptions, pinned_counters};
use sluice_tests::{NetNs, PinDir, require_root, veth_between};

const A_IP: &str = "192.0.2.1"; // TEST-NET-1: only ever inside our namespaces
const B_IP: &str = "192.0.2.2";

/// Packets `tc_pod_ingress` has run for, from the pinned counters (what
/// `sluice-agent bpf stats` reads).
fn pod_ingress_runs(pins: &Path) -> u64 {
    pinned_counters(pins)
        .expect("pinned counters")
        .into_iter()
        .find(|(s, _)| *s == ProgStat::TcPodIngress)
        .expect("tc slot")
        .1
        .packets
}

/// Names of the programs on `iface`'s tcx hook, from the kernel
/// (BPF_PROG_QUERY; Debian's bpftool 7.1 predates tcx).
fn tcx_programs(ns: &NetNs, iface: &str, ty: TcAttachType) -> Vec<String> {
    ns.run(|| SchedClassifier::query_tcx(iface, ty))
        .expect("query tcx")
        .1
        .iter()
        .map(|p| p.name_as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Sends `n` datagrams from `b` to `rx` (bound in the other namespace) and
/// returns once `rx` has received every one: they crossed the veth, so
/// whatever runs on its ingress has run for each.
fn cross(b: &NetNs, rx: &UdpSocket, n: usize) {
    let to = rx.local_addr().expect("receiver address");
    b.run(|| {
        let s = UdpSocket::bind((B_IP, 0)).expect("bind in netns");
        for i in 0..n {
            s.send_to(&[i as u8; 100], to).expect("send");
        }
    });
    // A ceiling only for a hang (e.g. a program that drops them).
    rx.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut buf = [0u8; 200];
    for i in 0..n {
        let (len, _) = rx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {n} did not arrive: {e}"));
        assert_eq!(len, 100);
    }
}

#[test]
fn pod_iface_programs_stay_attached_through_pinned_links_until_unpinned() {
    if !require_root("pod_iface_programs_stay_attached_through_pinned_links_until_unpinned") {
        return;
    }
    let (a, b) = (NetNs::new(), NetNs::new());
    let (ia, _ib) = veth_between(&a, &format!("{A_IP}/30"), &b, &format!("{B_IP}/30"));
    let rx = a.run(|| UdpSocket::bind((A_IP, 0))).expect("bind receiver");
    let pins = PinDir::new();
    let opts = LoadOptions {
        bpffs_dir: pins.path.clone(),
        log_level: BpfLogLevel::Warn,
        lb_sizes: None,
    };
    let attach = || {
        let mut dp = Datapath::load(&opts).expect("load datapath");
        a.run(|| dp.attach_lb_iface(&ia, LbIface::Pod))
            .expect("attach the pod interface programs");
        // The agent's process ends here: only the pins hold the links.
    };
    attach();
    let expected = || {
        (
            tcx_programs(&a, &ia, TcAttachType::Ingress),
            tcx_programs(&a, &ia, TcAttachType::Egress),
        )
    };
    let ours = (
        vec!["tc_pod_ingress".to_owned()],
        vec!["tc_lb_egress".to_owned()],
    );
    assert_eq!(expected(), ours, "exactly our programs on tcx");
    for d in ["ingress", "egress"] {
        let pin = pins.path.join(format!("{}{d}_{ia}", link_pins::TC_PREFIX));
        assert!(pin.exists(), "no link pinned at {}", pin.display());
    }

    // The loader is gone and the program still runs for every packet.
    cross(&b, &rx, 20);
    let runs = pod_ingress_runs(&pins.path);
    assert!(runs >= 20, "program ran {runs} times for 20 packets");

    // A restarted agent attaches again: the new links replace the pinned
    // ones, they do not run next to them.
    attach();
    assert_eq!(expected(), ours, "a second attach stacked programs");
    // The second load reused the pinned counters (pinned maps are what
    // carries the data plane's state across agent restarts).
    let before = pod_ingress_runs(&pins.path);
    assert!(
        before >= runs,
        "counters reset by a reload: {before} < {runs}"
    );
    cross(&b, &rx, 10);
    assert!(pod_ingress_runs(&pins.path) >= before + 10);

    // Removing the pins detaches: the packets still cross (the control),
    // and no program counts them.
    std::fs::remove_dir_all(pins.path.join("links")).expect("remove link pins");
    assert_eq!(expected(), (vec![], vec![]), "attached after unpinning");
    let before = pod_ingress_runs(&pins.path);
    cross(&b, &rx, 5);
    assert_eq!(
        pod_ingress_runs(&pins.path),
        before,
        "a detached program ran"
    );
}
