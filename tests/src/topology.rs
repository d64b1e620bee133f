//! The service-LB test topology, built once here for every LB test (and the
//! LB benchmark):
//!
//! ```text
//!   client pod (10.244.0.2) ─┐                      ┌─ backend pod-0 (10.244.0.10)
//!                            ├── node netns ────────┼─ backend pod-1 (10.244.0.11)
//!   external (192.168.77.2) ─┘  (routes, forwarding) └─ ...
//!                               node IP 192.168.77.1
//! ```
//!
//! Every pod reaches the others through the node netns: a pod's default
//! route points at 169.254.1.1, an address the node owns on each pod veth
//! (the Calico/Cilium trick, so no bridge and no ARP proxying), and the node
//! has a /32 route per pod. Backends run `sluice-testpod serve`, which
//! answers TCP and UDP with the pod's name. The client runs in the node's
//! test cgroup, so the agent's socket hooks apply to it. All addresses live
//! in namespaces created here; nothing touches the host's interfaces.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    Daemon, NetNs, PinDir, TestCgroup, bin, command_in_cgroup, run_ok, unique, unique_ifname,
};

/// The name `sluice-agent` uses for this node (matched against
/// EndpointSlice `nodeName` for traffic policy Local).
pub const NODE_NAME: &str = "node-a";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
/// Port every backend serves on (TCP and UDP).
pub const BACKEND_PORT: u16 = 8080;

/// Path of the test workload binary (built with the tests crate).
pub fn testpod() -> PathBuf {
    bin("sluice-testpod")
}

/// `sluice-testpod serve NAME PORT` inside `ns` (setns, not `ip netns
/// exec`), returned once it is listening.
pub fn serve_in(ns: &NetNs, name: &str, port: u16) -> Daemon {
    let mut c = ns.command(testpod());
    c.args(["serve", name, &port.to_string()]);
    let mut d = Daemon::from_command(name, c);
    d.wait_for_line("server ready", Duration::from_secs(60), |l| {
        l.contains("serving")
    });
    d
}

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ns: NetNs,
    /// The node side of the pod's veth.
    pub host_if: String,
    /// The pod's echo server, ended with the pod.
    _server: Option<Daemon>,
}

/// A directory of manifests under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(unique("manifests"));
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        Self(p)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pods made sluice endpoints by [`LbTopology::enroll`]; dropping it
/// detaches the pod programs (the veths' clsact qdiscs go) and removes the
/// endpoint entries.
pub struct Enrolled {
    node: PathBuf,
    pins: PathBuf,
    pods: Vec<(Ipv4Addr, String)>,
}

impl Drop for Enrolled {
    fn drop(&mut self) {
        for (_, host_if) in &self.pods {
            let _ = crate::command_in(&self.node, "tc")
                .args(["qdisc", "del", "dev", host_if, "clsact"])
                .output();
        }
        if let Ok(mut eps) = sluice_datapath::Endpoints::open(&self.pins) {
            for (ip, _) in &self.pods {
                let _ = eps.remove_endpoint(*ip);
            }
        }
    }
}

/// Field order matters for Drop: the agent stops before its netns goes, and
/// the pin dir (pinned links) goes before the cgroup it is attached to.
pub struct LbTopology {
    pub agent: Option<Daemon>,
    /// The node's interface towards the external host (`--nodeport-iface`).
    pub node_ext_if: String,
    pub backends: Vec<Pod>,
    pub client: Pod,
    pub external: NetNs,
    pub pins: PinDir,
    pub cgroup: TestCgroup,
    pub manifests: TempDir,
    pub node: NetNs,
}

/// A pod netns wired to the node; returns it with the node-side veth name.
fn wire_pod(node: &NetNs, ip: Ipv4Addr) -> (NetNs, String) {
    let ns = NetNs::new();
    let (host_if, pod_if) = (unique_ifname(), unique_ifname());
    run_ok(
        "ip",
        [
            "link", "add", &host_if, "netns", &node.name, "type", "veth", "peer", "name", &pod_if,
            "netns", &ns.name,
        ],
    );
    ns.ip(["link", "set", &pod_if, "name", "eth0"]);
    ns.ip(["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    ns.ip(["link", "set", "eth0", "up"]);
    ns.ip([
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    ns.ip([
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    node.ip(["addr", "add", "169.254.1.1/32", "dev", &host_if]);
    node.ip(["link", "set", &host_if, "up"]);
    node.ip(["route", "add", &format!("{ip}/32"), "dev", &host_if]);
    (ns, host_if)
}

fn sysctl(ns: &NetNs, kv: &str) {
    run_ok("ip", ["netns", "exec", &ns.name, "sysctl", "-qw", kv]);
}

impl LbTopology {
    /// A node with `backends` backend pods (pod-0 .. pod-N-1 at
    /// 10.244.0.10+i), one client pod and one external host.
    pub fn new(backends: usize) -> Self {
        let node = NetNs::new();
        sysctl(&node, "net.ipv4.ip_forward=1");
        let (client_ns, client_host_if) = wire_pod(&node, CLIENT_IP);
        let external = NetNs::new();
        let (node_ext_if, _) = crate::veth_between(
            &node,
            &format!("{NODE_IP}/24"),
            &external,
            &format!("{EXTERNAL_IP}/24"),
        );
        external.ip(["route", "add", "default", "via", &NODE_IP.to_string()]);
        let mut pods = Vec::new();
        for i in 0..backends {
            let name = format!("pod-{i}");
            let ip = Ipv4Addr::new(10, 244, 0, 10 + i as u8);
            let (ns, host_if) = wire_pod(&node, ip);
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(testpod()).args([
                "serve",
                &name,
                &BACKEND_PORT.to_string(),
            ]);
            let mut server = Daemon::from_command(&name, c);
            server.wait_for_line("server ready", Duration::from_secs(60), |l| {
                l.starts_with("serving")
            });
            pods.push(Pod {
                name,
                ip,
                ns,
                host_if,
                _server: Some(server),
            });
        }
        Self {
            agent: None,
            node_ext_if,
            backends: pods,
            client: Pod {
                name: "client".into(),
                ip: CLIENT_IP,
                ns: client_ns,
                host_if: client_host_if,
                _server: None,
            },
            external,
            pins: PinDir::new(),
            cgroup: TestCgroup::new(),
            manifests: TempDir::new(),
            node,
        }
    }

    /// Wires one more pod netns to the node (not in the node's cgroup, not
    /// on any `--pod-iface`): a client whose traffic no sluice program sees,
    /// e.g. the benchmark's direct baseline. Dropping it removes it.
    pub fn extra_pod(&self, name: &str, ip: Ipv4Addr) -> Pod {
        let (ns, host_if) = wire_pod(&self.node, ip);
        Pod {
            name: name.into(),
            ip,
            ns,
            host_if,
            _server: None,
        }
    }

    /// Makes `pods` sluice endpoints the way sluice-cni's ADD does for the
    /// pods it wires: the pod programs on the host side of each veth and an
    /// `EP4_ENDPOINTS` entry, so traffic between them (service traffic
    /// after DNAT included) is handed over in the kernel instead of routed
    /// by the node. Needs the node's pinned maps (an agent has run).
    /// Undone when the returned guard drops.
    pub fn enroll(&self, pods: &[&Pod]) -> Enrolled {
        use sluice_common::endpoint::Endpoint;
        use sluice_datapath::PodDatapath;
        let link = |ns: &NetNs, dev: &str| -> (u32, [u8; 6]) {
            let out = ns.ip(["-j", "link", "show", "dev", dev]);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("ip -j link show");
            let index = v[0]["ifindex"].as_u64().expect("ifindex") as u32;
            let mac = v[0]["address"].as_str().expect("mac address");
            let mut b = [0u8; 6];
            for (slot, hex) in b.iter_mut().zip(mac.split(':')) {
                *slot = u8::from_str_radix(hex, 16).expect("mac byte");
            }
            (index, b)
        };
        let eps: Vec<(Ipv4Addr, String, Endpoint)> = pods
            .iter()
            .map(|p| {
                let (ifindex, host_mac) = link(&self.node, &p.host_if);
                let (_, mac) = link(&p.ns, "eth0");
                let ep = Endpoint {
                    ifindex,
                    flags: 0,
                    mac,
                    host_mac,
                };
                (p.ip, p.host_if.clone(), ep)
            })
            .collect();
        let enrolled = Enrolled {
            node: self.node.path(),
            pins: self.pins.path.clone(),
            pods: eps.iter().map(|(ip, i, _)| (*ip, i.clone())).collect(),
        };
        let pins = self.pins.path.clone();
        self.node.run(move || {
            let mut dp = PodDatapath::open(&pins).expect("open the pod datapath");
            for (ip, host_if, ep) in eps {
                dp.attach(&host_if, false).expect("attach pod programs");
                dp.endpoints()
                    .set_endpoint(ip, ep)
                    .expect("write endpoint entry");
            }
        });
        enrolled
    }

    /// Arguments that make `sluice-agent` (or its `bpf` subcommands) act on
    /// this node.
    pub fn node_args(&self) -> Vec<String> {
        vec![
            "--netns".into(),
            self.node.path().display().to_string(),
            "--cgroup".into(),
            self.cgroup.path.display().to_string(),
            "--bpffs".into(),
            self.pins.path.display().to_string(),
        ]
    }

    /// Starts the agent on this node's manifests dir and waits until its
    /// data path is attached.
    pub fn start_agent(&mut self, extra: &[&str]) -> &mut Daemon {
        let dir = self.manifests.0.display().to_string();
        self.start_agent_on(&["--manifests", &dir], extra)
    }

    /// Starts the agent with `source` (`--manifests DIR` or `--kubeconfig
    /// FILE`) and waits until its data path is attached.
    pub fn start_agent_on(&mut self, source: &[&str], extra: &[&str]) -> &mut Daemon {
        let mut args = self.node_args();
        args.extend(source.iter().map(|s| s.to_string()));
        args.extend(
            [
                "--node-ip",
                &NODE_IP.to_string(),
                "--node-name",
                NODE_NAME,
                "--nodeport-iface",
                &self.node_ext_if,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Daemon::spawn("sluice-agent", &args);
        d.wait_for_line("agent attached", Duration::from_secs(60), |l| {
            l.contains("datapath attached")
        });
        self.agent = Some(d);
        self.agent.as_mut().expect("just set")
    }

    pub fn agent(&mut self) -> &mut Daemon {
        self.agent.as_mut().expect("agent started")
    }

    /// Writes (or replaces, atomically via rename) a manifest file.
    pub fn write_manifest(&self, file: &str, yaml: &str) {
        let tmp = self.manifests.0.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, self.manifests.0.join(file)).expect("rename manifest");
    }

    /// Runs `sluice-testpod ARGS` in the client pod (inside the node's
    /// cgroup) and returns its stdout lines.
    pub fn client(&self, args: &[&str]) -> Vec<String> {
        self.client_pod().run(args)
    }

    /// Runs `sluice-testpod ARGS` in the client pod's netns but outside the
    /// node's cgroup, so the socket hooks do not see it: only the tc path
    /// (`--pod-iface`) can balance its ClusterIP traffic.
    pub fn client_outside_cgroup(&self, args: &[&str]) -> Vec<String> {
        lines_of(self.client_outside_cgroup_command(args), args)
    }

    /// A `Command` for the client pod outside the node's cgroup.
    pub fn client_outside_cgroup_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client.ns.name])
            .arg(testpod())
            .args(args);
        c
    }

    /// Runs `sluice-testpod ARGS` on the external host (outside the node's
    /// cgroup: only the tc path applies) and returns its stdout lines.
    pub fn external(&self, args: &[&str]) -> Vec<String> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.external.name])
            .arg(testpod())
            .args(args);
        lines_of(c, args)
    }

    /// A `Command` for the client pod (inside the node's cgroup), for
    /// long-running clients.
    pub fn client_command(&self, args: &[&str]) -> Command {
        self.client_pod().command(args)
    }

    /// The client pod (inside the node's cgroup) as an owned value, for a
    /// thread that keeps traffic going while the test restarts the agent.
    pub fn client_pod(&self) -> ClientPod {
        ClientPod {
            cgroup: self.cgroup.path.clone(),
            netns: self.client.ns.name.clone(),
        }
    }

    /// `sluice-agent bpf lb list -o json` for this node.
    pub fn lb_list_json(&self) -> serde_json::Value {
        self.bpf_json(&["lb", "list"])
    }

    /// `sluice-agent bpf ct list -o json` for this node.
    pub fn ct_list_json(&self) -> serde_json::Value {
        self.bpf_json(&["ct", "list"])
    }

    fn bpf_json(&self, what: &[&str]) -> serde_json::Value {
        let mut args = self.node_args();
        args.push("bpf".into());
        args.extend(what.iter().map(|s| s.to_string()));
        args.extend(["-o", "json"].map(String::from));
        let out = Command::new(bin("sluice-agent"))
            .args(&args)
            .output()
            .expect("run sluice-agent bpf");
        assert!(
            out.status.success(),
            "bpf {what:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("bpf json output")
    }

    /// GET /metrics from the agent (default address, inside the node netns).
    pub fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        self.node.run(|| {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9962").expect("connect metrics");
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .expect("send request");
            let mut body = String::new();
            s.read_to_string(&mut body).expect("read metrics");
            assert!(
                body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
                "{body}"
            );
            body
        })
    }

    pub fn manifests_dir(&self) -> &Path {
        &self.manifests.0
    }
}

/// See [`LbTopology::client_pod`].
#[derive(Clone)]
pub struct ClientPod {
    cgroup: PathBuf,
    netns: String,
}

impl ClientPod {
    /// `sluice-testpod ARGS` in the client pod, inside the node's cgroup.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = command_in_cgroup(&self.cgroup, "ip");
        c.args(["netns", "exec", &self.netns])
            .arg(testpod())
            .args(args);
        c
    }

    /// Runs `sluice-testpod ARGS` in the client pod; its stdout lines.
    pub fn run(&self, args: &[&str]) -> Vec<String> {
        lines_of(self.command(args), args)
    }
}

/// Runs a `sluice-testpod` command to completion; its stdout lines.
fn lines_of(mut c: Command, args: &[&str]) -> Vec<String> {
    let out = c.output().expect("run sluice-testpod");
    assert!(
        out.status.success(),
        "sluice-testpod {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A one-port (`http`, TCP 80) Service over the ready backend pods
/// `backends` of `t`, all on this node.
pub fn http_service(t: &LbTopology, name: &str, cluster_ip: &str, backends: &[usize]) -> String {
    let eps: Vec<_> = backends
        .iter()
        .map(|&i| (t.backends[i].ip, true, true, false, NODE_NAME))
        .collect();
    SvcSpec {
        name,
        cluster_ip,
        ports: &[("http", "TCP", 80)],
        extra_spec: "",
        endpoints: &eps,
        with_slice: true,
    }
    .yaml()
}

/// YAML for a Service plus one EndpointSlice, in the upstream schema.
pub struct SvcSpec<'a> {
    pub name: &'a str,
    pub cluster_ip: &'a str,
    /// (port name, protocol, service port)
    pub ports: &'a [(&'a str, &'a str, u16)],
    /// Extra `spec:` lines (already indented by two spaces), e.g. affinity.
    pub extra_spec: &'a str,
    /// (ip, ready, serving, terminating, nodeName)
    pub endpoints: &'a [(Ipv4Addr, bool, bool, bool, &'a str)],
    /// Write the EndpointSlice at all.
    pub with_slice: bool,
}

impl SvcSpec<'_> {
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: default\nspec:\n  clusterIP: {}\n{}  ports:\n",
            self.name, self.cluster_ip, self.extra_spec
        );
        for (pname, proto, port) in self.ports {
            y.push_str(&format!(
                "  - name: {pname}\n    protocol: {proto}\n    port: {port}\n    targetPort: backend\n"
            ));
        }
        if self.with_slice {
            y.push_str(&format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-slice\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {}\naddressType: IPv4\nports:\n",
                self.name, self.name
            ));
            for (pname, proto, _) in self.ports {
                y.push_str(&format!(
                    "- name: {pname}\n  protocol: {proto}\n  port: {BACKEND_PORT}\n"
                ));
            }
            y.push_str("endpoints:\n");
            for (ip, ready, serving, terminating, node) in self.endpoints {
                y.push_str(&format!(
                    "- addresses: [\"{ip}\"]\n  nodeName: {node}\n  conditions:\n    ready: {ready}\n    serving: {serving}\n    terminating: {terminating}\n"
                ));
            }
            if self.endpoints.is_empty() {
                y.push_str("  []\n");
            }
        }
        y
    }
}

/// Counts replies (`NAME SHOWN-ADDRESS` lines from `sluice-testpod`) per
/// backend name; panics on any line that is not a backend's reply or whose
/// shown address is not `peer` (the address the client asked for, i.e.
/// reverse translation worked).
pub fn tally(lines: &[String], peer: &str) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for l in lines {
        let (name, shown) = l.split_once(' ').unwrap_or((l, ""));
        assert!(name.starts_with("pod-"), "unexpected reply {l:?}");
        assert_eq!(
            shown, peer,
            "the client must see the address it used: {l:?}"
        );
        *m.entry(name.to_string()).or_default() += 1;
    }
    m
}

/// Connections a spread test makes over three backends: with this many, a
/// backend getting twice its share (50/25/25) gives a chi-square near 114,
/// far above [`CHI2_DF2_LIMIT`].
pub const SPREAD_SAMPLES: u64 = 900;

/// Chi-square limit (2 degrees of freedom: three backends) for a spread of
/// [`SPREAD_SAMPLES`] to count as uniform. A fair spread exceeds it about
/// once in 10^9 runs (chi-square tail exp(-x/2) = 1.0e-9; the exact
/// multinomial tail for 900 samples is 1.09e-9, computed by
/// `tests::false_failure_rate_of_the_spread_limit`).
pub const CHI2_DF2_LIMIT: f64 = 41.45;

/// Pearson's chi-square statistic of `counts` against a uniform spread.
pub fn chi_square_uniform(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

/// Asserts that `tally` (from [`tally`]) spreads [`SPREAD_SAMPLES`]
/// connections over all three backends as a uniform random choice would.
pub fn assert_uniform_spread(tally: &std::collections::BTreeMap<String, u64>, what: &str) {
    let counts: Vec<u64> = tally.values().copied().collect();
    assert_eq!(
        counts.iter().sum::<u64>(),
        SPREAD_SAMPLES,
        "{what}: {tally:?}"
    );
    assert_eq!(
        counts.len(),
        3,
        "{what}: every backend gets some: {tally:?}"
    );
    let chi2 = chi_square_uniform(&counts);
    assert!(
        chi2 < CHI2_DF2_LIMIT,
        "{what}: spread {tally:?} is not uniform (chi2 {chi2:.2})"
    );
}

/// The agent's log line for an applied change (its services are in the maps).
pub fn programmed(l: &str) -> bool {
    l.contains("services programmed")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact chance that a uniform choice of 3 backends over
    /// [`SPREAD_SAMPLES`] tries exceeds [`CHI2_DF2_LIMIT`]: the sum of the
    /// multinomial probabilities of every outcome at or above the limit.
    #[test]
    fn false_failure_rate_of_the_spread_limit() {
        let n = SPREAD_SAMPLES as usize;
        let mut ln_fact = vec![0.0f64; n + 1];
        for i in 1..=n {
            ln_fact[i] = ln_fact[i - 1] + (i as f64).ln();
        }
        let ln_third = (1.0f64 / 3.0).ln() * n as f64;
        let mut p = 0.0;
        for a in 0..=n {
            for b in 0..=n - a {
                let c = n - a - b;
                if chi_square_uniform(&[a as u64, b as u64, c as u64]) >= CHI2_DF2_LIMIT {
                    p += (ln_fact[n] - ln_fact[a] - ln_fact[b] - ln_fact[c] + ln_third).exp();
                }
            }
        }
        assert!((1.0e-9..1.2e-9).contains(&p), "false-failure rate {p:e}");
    }
}
