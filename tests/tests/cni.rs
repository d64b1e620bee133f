//! sluice-cni end to end: the conformance suite against sluice-cni and
//! against the reference bridge + host-local (which shows the suite is
//! right), plus what only sluice promises: pod-to-pod traffic handed over
//! in the kernel, and an ADD that fails leaving nothing at all behind.
use std::{path::Path, process::Command, time::Duration};

use serde_json::{Value, json};
use sluice_tests::{
    Daemon, NetNs, PinDir, TestCgroup, bin,
    cni_suite::{self, Invocation, Options, invoke, links, pod_ip},
    require_root,
    topology::{BACKEND_PORT, NODE_NAME, SvcSpec, TempDir, serve_in, testpod},
    unique,
};

use sluice_datapath::Endpoints;
use sluice_tests::cni_suite::REFERENCE_PLUGINS as REFERENCE;

struct Node {
    ns: NetNs,
    pins: PinDir,
    data: TempDir,
    conf: Value,
}

impl Node {
    fn new(cidr: &str) -> Self {
        let (ns, pins, data) = (NetNs::new(), PinDir::new(), TempDir::new());
        let conf = json!({
            "cniVersion": "1.1.0", "name": unique("net"), "type": "sluice-cni",
            "podCIDR": cidr, "dataDir": data.0.join("ipam").display().to_string(),
            "bpffs": pins.path.display().to_string(), "mtu": 1500
        });
        Self {
            ns,
            pins,
            data,
            conf,
        }
    }

    fn call(&self, cmd: &str, cid: &str, pod: Option<&NetNs>, conf: &Value) -> Invocation {
        let mut env = vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
        ];
        if let Some(p) = pod {
            env.push(("CNI_NETNS", p.path().display().to_string()));
        }
        invoke(
            &self.ns,
            &bin("sluice-cni"),
            REFERENCE,
            &env,
            &conf.to_string(),
        )
    }

    fn allocations(&self) -> Vec<String> {
        let dir = self
            .data
            .0
            .join("ipam")
            .join(self.conf["name"].as_str().unwrap_or(""));
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every file under the node's bpffs dir: programs and maps are
    /// pinned once per node, so a per-pod pin shows up as a change.
    fn pin_files(&self) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| {
                            if e.file_type().is_ok_and(|t| t.is_dir()) {
                                count(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&self.pins.path)
    }

    fn endpoints(&self) -> usize {
        self.pins.endpoints()
    }

    /// The pod addresses the node's endpoint map holds.
    fn endpoint_ips(&self) -> Vec<String> {
        let eps = Endpoints::open_existing(&self.pins.path)
            .expect("open the endpoint map")
            .expect("no endpoint map pinned");
        let mut ips: Vec<String> = eps.list().iter().map(|(ip, _)| ip.to_string()).collect();
        ips.sort();
        ips
    }
}

fn suite(plugin: &Path, conf: Value, ipam_store: &Path) -> cni_suite::Report {
    let o = Options {
        plugin: plugin.to_path_buf(),
        conf,
        cni_path: format!(
            "{}:{REFERENCE}",
            plugin
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        testpod: testpod(),
        ipam_store: Some(ipam_store.to_path_buf()),
    };
    let report = cni_suite::run(&o, |l| eprintln!("{l}"));
    eprintln!("{}", report.summary());
    report
}

#[test]
fn conformance_suite_passes_against_sluice_cni() {
    if !require_root("conformance_suite_passes_against_sluice_cni") {
        return;
    }
    let node = Node::new("10.80.1.0/26");
    let report = suite(
        &bin("sluice-cni"),
        node.conf.clone(),
        &node.data.0.join("ipam"),
    );
    let (passed, failed, skipped) = report.counts();
    assert_eq!(failed, 0, "{}", report.summary());
    // sluice speaks 1.1.0: nothing may be skipped.
    assert_eq!(skipped, 0, "{}", report.summary());
    assert!(passed >= 19, "{}", report.summary());
    assert_eq!(node.allocations(), Vec::<String>::new(), "leaked addresses");
    assert!(
        !node.pins.path.join("links").exists(),
        "pod attachments must not be pinned (tc filters live with the veth)"
    );
}

#[test]
fn conformance_suite_passes_against_reference_bridge() {
    if !require_root("conformance_suite_passes_against_reference_bridge") {
        return;
    }
    let data = TempDir::new();
    let conf = json!({
        "cniVersion": "1.0.0", "name": unique("br"), "type": "bridge",
        "bridge": "slcbr0", "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.81.0.0/26",
                 "dataDir": data.0.display().to_string()}
    });
    let report = suite(&Path::new(REFERENCE).join("bridge"), conf, &data.0);
    let (passed, failed, skipped) = report.counts();
    // The one known deviation of the reference plugins: libcni's skel
    // answers an unset CNI_COMMAND with its about text and exit 0.
    let failed_cases: Vec<&str> = report
        .cases
        .iter()
        .filter(|(_, o)| matches!(o, cni_suite::Outcome::Fail(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        failed_cases,
        ["unset CNI_COMMAND -> code 4"],
        "{}",
        report.summary()
    );
    assert_eq!(failed, 1);
    // Only the 1.1.0-only cases (result shape at 1.1.0, STATUS, GC) skip.
    assert_eq!(skipped, 3, "{}", report.summary());
    assert!(passed >= 16, "{}", report.summary());
}

/// With forwarding off in the node namespace the host stack cannot route
/// between pods; only the in-kernel hand-off on the host-side veth can.
#[test]
fn pod_to_pod_is_handed_over_in_the_kernel() {
    if !require_root("pod_to_pod_is_handed_over_in_the_kernel") {
        return;
    }
    let node = Node::new("10.80.2.0/24");
    let (a, b) = (NetNs::new(), NetNs::new());
    let ra = node.call("ADD", "a", Some(&a), &node.conf);
    let rb = node.call("ADD", "b", Some(&b), &node.conf);
    assert!(ra.ok && rb.ok, "{} / {}", ra.describe(), rb.describe());
    assert_eq!(node.endpoints(), 2, "one endpoint entry per pod");
    let ip_b = pod_ip(&rb.json(), "eth0").expect("b's address");
    let _server = serve_in(&b, "pod-b", 8080);
    node.ns
        .run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "0"))
        .expect("forwarding off");
    let out = Command::new("ip")
        .args(["netns", "exec", &a.name])
        .arg(testpod())
        .args(["tcp", &format!("{ip_b}:8080"), "5"])
        .output()
        .expect("client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("pod-b")).count(),
        5,
        "pod -> pod with host forwarding off: {text}"
    );
    let del = node.call("DEL", "b", Some(&b), &node.conf);
    assert!(del.ok, "{}", del.describe());
    assert_eq!(node.endpoints(), 1);
    let d = node.call("DEL", "a", Some(&a), &node.conf);
    assert!(d.ok, "{}", d.describe());
    assert_eq!(node.endpoints(), 0);
    assert!(node.allocations().is_empty());
}

/// An ADD that fails half-way (the pod already has an `eth0`) undoes all
/// of it before answering: no veth, no address, no endpoint, no pins.
#[test]
fn failed_add_leaves_nothing_behind() {
    if !require_root("failed_add_leaves_nothing_behind") {
        return;
    }
    let node = Node::new("10.80.3.0/24");
    // Bring the datapath up with one healthy pod first.
    let ok_pod = NetNs::new();
    assert!(node.call("ADD", "ok", Some(&ok_pod), &node.conf).ok);
    let (links_before, allocs_before) = (links(&node.ns), node.allocations());
    let pins_before = node.pin_files();
    let pod = NetNs::new();
    pod.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let r = node.call("ADD", "clash", Some(&pod), &node.conf);
    assert!(!r.ok, "ADD over an existing eth0 succeeded");
    assert!(r.code().is_some(), "not an error result: {}", r.describe());
    assert!(
        r.stdout.contains("eth0"),
        "error does not name eth0: {}",
        r.stdout
    );
    assert_eq!(links(&node.ns), links_before, "node interfaces changed");
    assert_eq!(node.allocations(), allocs_before, "address leaked");
    assert_eq!(node.pin_files(), pins_before, "pins leaked");
    assert_eq!(node.endpoints(), 1, "endpoint entry leaked");

    // A bad podCIDR is refused before anything is touched, with code 7
    // naming the key and the value.
    let mut bad = node.conf.clone();
    bad["podCIDR"] = json!("10.80.3.0/40");
    let r = node.call("ADD", "bad", Some(&pod), &bad);
    assert_eq!(r.code(), Some(7), "{}", r.describe());
    assert!(r.stdout.contains("podCIDR") && r.stdout.contains("10.80.3.0/40"));
    assert_eq!(links(&node.ns), links_before);
    assert!(node.call("DEL", "ok", Some(&ok_pod), &node.conf).ok);
}

/// GC keeps exactly the valid attachments: the invalid one's endpoint entry
/// and address go, the valid one's stay.
#[test]
fn gc_releases_the_endpoint_and_address_of_an_invalid_attachment_only() {
    if !require_root("gc_releases_the_endpoint_and_address_of_an_invalid_attachment_only") {
        return;
    }
    let node = Node::new("10.80.6.0/28");
    let (keep, gone) = (NetNs::new(), NetNs::new());
    let rk = node.call("ADD", "keep", Some(&keep), &node.conf);
    let rg = node.call("ADD", "gone", Some(&gone), &node.conf);
    assert!(rk.ok && rg.ok, "{} / {}", rk.describe(), rg.describe());
    let keep_ip = pod_ip(&rk.json(), "eth0").expect("keep has an address");
    let gone_ip = pod_ip(&rg.json(), "eth0").expect("gone has an address");
    let mut both = vec![keep_ip.clone(), gone_ip.clone()];
    both.sort();
    assert_eq!(node.endpoint_ips(), both);
    assert_eq!(node.allocations().len(), 2);

    let mut gc = node.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let r = node.call("GC", "", None, &gc);
    assert!(r.ok, "GC failed: {}", r.describe());
    assert_eq!(
        node.endpoint_ips(),
        std::slice::from_ref(&keep_ip),
        "endpoint entries after GC"
    );
    assert_eq!(node.allocations(), [keep_ip], "addresses held after GC");
    assert!(node.call("DEL", "keep", Some(&keep), &node.conf).ok);
}

/// STATUS tells the runtime the plugin cannot serve ADDs when its bpffs
/// directory is not on a bpf filesystem: the spec's code 50, naming it.
#[test]
fn status_is_code_50_when_bpffs_is_not_a_bpf_filesystem() {
    if !require_root("status_is_code_50_when_bpffs_is_not_a_bpf_filesystem") {
        return;
    }
    let node = Node::new("10.80.7.0/28");
    let healthy = node.call("STATUS", "", None, &node.conf);
    assert!(
        healthy.ok,
        "STATUS on a healthy node: {}",
        healthy.describe()
    );
    let not_bpffs = TempDir::new();
    let mut conf = node.conf.clone();
    conf["bpffs"] = json!(not_bpffs.0.join("pins").display().to_string());
    let r = node.call("STATUS", "", None, &conf);
    assert!(!r.ok, "STATUS succeeded on {}", not_bpffs.0.display());
    assert_eq!(r.code(), Some(50), "{}", r.describe());
    assert!(
        r.stdout.contains(&not_bpffs.0.display().to_string()),
        "the error does not name the directory: {}",
        r.stdout
    );
}

/// CHECK looks at the data plane too: a pod whose host-side veth lost its
/// ingress program fails CHECK with the program and the veth named.
#[test]
fn check_notices_a_detached_pod_program() {
    if !require_root("check_notices_a_detached_pod_program") {
        return;
    }
    let node = Node::new("10.80.4.0/28");
    let pod = NetNs::new();
    let add = node.call("ADD", "p", Some(&pod), &node.conf);
    assert!(add.ok, "{}", add.describe());
    let mut with_prev = node.conf.clone();
    with_prev["prevResult"] = add.json();
    let ok = node.call("CHECK", "p", Some(&pod), &with_prev);
    assert!(ok.ok, "CHECK right after ADD: {}", ok.describe());

    let host_if = add.json()["interfaces"][0]["name"]
        .as_str()
        .expect("host veth in the result")
        .to_string();
    sluice_tests::run_ok(
        "tc",
        [
            "-n",
            &node.ns.name,
            "filter",
            "del",
            "dev",
            &host_if,
            "ingress",
        ],
    );
    let bad = node.call("CHECK", "p", Some(&pod), &with_prev);
    assert!(!bad.ok, "CHECK passed without the ingress program");
    assert!(
        bad.stdout.contains("tc_pod_ingress") && bad.stdout.contains(&host_if),
        "{}",
        bad.describe()
    );
    assert!(node.call("DEL", "p", Some(&pod), &node.conf).ok);
}

/// A pod outside the socket hooks reaches a ClusterIP whose backend is
/// another pod on the node: DNAT on the client's veth, the hand-off into
/// the backend, and reverse NAT of the reply on the backend's veth (which
/// pod-to-pod traffic skips until such a DNAT has happened). sluice-cni
/// and the agent share the node's pinned maps.
#[test]
fn cluster_ip_to_a_local_pod_on_the_tc_path() {
    if !require_root("cluster_ip_to_a_local_pod_on_the_tc_path") {
        return;
    }
    let node = Node::new("10.80.5.0/28");
    let (client, backend) = (NetNs::new(), NetNs::new());
    let ra = node.call("ADD", "client", Some(&client), &node.conf);
    let rb = node.call("ADD", "backend", Some(&backend), &node.conf);
    assert!(ra.ok && rb.ok, "{} / {}", ra.describe(), rb.describe());
    let ip_b: std::net::Ipv4Addr = pod_ip(&rb.json(), "eth0")
        .and_then(|s| s.parse().ok())
        .expect("backend address");
    let server = serve_in(&backend, "pod-b", BACKEND_PORT);
    // Pod-to-pod first: no DNAT seen yet, the plain hand-off works.
    let direct = client
        .command(testpod())
        .args(["tcp", &format!("{ip_b}:{BACKEND_PORT}"), "3"])
        .output()
        .expect("client");
    assert_eq!(
        String::from_utf8_lossy(&direct.stdout)
            .lines()
            .filter(|l| l.starts_with("pod-b"))
            .count(),
        3
    );

    let manifests = TempDir::new();
    let svc = SvcSpec {
        name: "local",
        cluster_ip: "10.96.0.77",
        ports: &[("web", "TCP", 80)],
        extra_spec: "",
        endpoints: &[(ip_b, true, true, false, NODE_NAME)],
        with_slice: true,
    };
    std::fs::write(manifests.0.join("svc.yaml"), svc.yaml()).expect("manifest");
    let cgroup = TestCgroup::new();
    let mut agent = Daemon::spawn(
        "sluice-agent",
        [
            "--netns",
            &node.ns.path().display().to_string(),
            "--cgroup",
            &cgroup.path.display().to_string(),
            "--bpffs",
            &node.pins.path.display().to_string(),
            "--manifests",
            &manifests.0.display().to_string(),
            "--node-name",
            NODE_NAME,
        ],
    );
    agent.wait_for_line("programmed", Duration::from_secs(20), |l| {
        l.contains("services programmed")
    });
    // The client is not in the agent's cgroup: its connect() is not
    // translated, so every connection takes the tc path.
    let out = client
        .command(testpod())
        .args(["tcp", "10.96.0.77:80", "20"])
        .output()
        .expect("client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| *l == "pod-b 10.96.0.77:80").count(),
        20,
        "ClusterIP -> local pod on the tc path: {text}"
    );
    drop(agent);
    drop(server);
    assert!(node.call("DEL", "client", Some(&client), &node.conf).ok);
    assert!(node.call("DEL", "backend", Some(&backend), &node.conf).ok);
}
