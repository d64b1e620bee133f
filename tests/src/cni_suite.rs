//! A black-box CNI conformance suite: drives any plugin binary exactly as a
//! runtime does (environment, stdin config, stdout result, exit status)
//! inside a fresh "node" namespace, against pod namespaces it creates.
//!
//! It asserts what CNI spec 1.1.0 requires of every plugin, not what sluice
//! happens to do: result shapes per requested version, the interface and
//! address inside the pod, connectivity, CHECK, DEL idempotency, error codes
//! and "nothing left behind" after a failure, concurrency, pool exhaustion,
//! chaining with the reference `tuning` plugin, and STATUS/GC where the
//! plugin speaks 1.1.0. Checks a plugin cannot be asked for (a version it
//! does not list) are skipped, so it passes against the reference
//! bridge + host-local too, which is what shows the suite itself is right.
use std::{
    collections::HashSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

use crate::{Daemon, NetNs};

/// Where Debian's containernetworking-plugins (the reference plugins) live.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// What to test and how to reach it.
pub struct Options {
    pub plugin: PathBuf,
    /// One network configuration (not a list); its `cniVersion` is the
    /// version most cases use. Its IPAM pool must hold at least 41 and at
    /// most 1024 addresses (parallel and exhaustion cases).
    pub conf: Value,
    /// CNI_PATH: where delegated plugins (IPAM, `tuning`) are found.
    pub cni_path: String,
    /// The `sluice-testpod` binary (a TCP server and client for pods).
    pub testpod: PathBuf,
    /// The plugin's address store, when it keeps host-local's layout (one
    /// file per held address under `<dir>/<network name>/`): GC then also
    /// checks which addresses it released. `None` checks interfaces only.
    pub ipam_store: Option<PathBuf>,
}

#[derive(Debug)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

/// Per-case results and the `N passed, M failed, K skipped` line.
pub struct Report {
    pub cases: Vec<(String, Outcome)>,
}

impl Report {
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for (_, o) in &self.cases {
            match o {
                Outcome::Pass => c.0 += 1,
                Outcome::Fail(_) => c.1 += 1,
                Outcome::Skip(_) => c.2 += 1,
            }
        }
        c
    }
    pub fn summary(&self) -> String {
        let (p, f, s) = self.counts();
        format!("{p} passed, {f} failed, {s} skipped")
    }
}

type CaseResult = Result<(), Outcome>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Outcome::Fail(format!($($fmt)+)));
        }
    };
}

/// One plugin invocation's result.
#[derive(Debug)]
pub struct Invocation {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Invocation {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
    /// The spec's error code, if stdout is an error result.
    pub fn code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }
    pub fn describe(&self) -> String {
        format!(
            "ok={} stdout={} stderr={}",
            self.ok,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// Runs `plugin` as a runtime would: inside `node`'s namespace (setns
/// before exec, so /sys and bpffs stay the host's), with a clean
/// environment plus `env`, `stdin` as the config.
pub fn invoke(
    node: &NetNs,
    plugin: &Path,
    cni_path: &str,
    env: &[(&str, String)],
    stdin: &str,
) -> Invocation {
    let mut c = node.command(plugin);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", cni_path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", plugin.display()));
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait plugin");
    Invocation {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The runtime side: env + stdin for one call, run inside the node netns.
struct Runtime<'a> {
    o: &'a Options,
    node: NetNs,
}

#[derive(Clone, Default)]
struct Call<'a> {
    command: &'a str,
    container_id: Option<&'a str>,
    netns: Option<String>,
    ifname: Option<&'a str>,
    /// Overrides the whole stdin (bad-input cases).
    raw_stdin: Option<&'a str>,
}

impl Runtime<'_> {
    /// An empty `call.command` leaves CNI_COMMAND unset.
    fn exec(&self, plugin: &Path, call: &Call, conf: &Value) -> Invocation {
        let mut env = Vec::new();
        if !call.command.is_empty() {
            env.push(("CNI_COMMAND", call.command.to_string()));
        }
        if let Some(v) = call.container_id {
            env.push(("CNI_CONTAINERID", v.to_string()));
        }
        if let Some(v) = &call.netns {
            env.push(("CNI_NETNS", v.clone()));
        }
        if let Some(v) = call.ifname {
            env.push(("CNI_IFNAME", v.to_string()));
        }
        let stdin = match call.raw_stdin {
            Some(s) => s.to_string(),
            None => conf.to_string(),
        };
        invoke(&self.node, plugin, &self.o.cni_path, &env, &stdin)
    }

    fn plugin(&self, call: &Call, conf: &Value) -> Invocation {
        self.exec(&self.o.plugin, call, conf)
    }

    fn add(&self, pod: &NetNs, cid: &str, conf: &Value) -> Invocation {
        self.plugin(
            &Call {
                command: "ADD",
                container_id: Some(cid),
                netns: Some(pod.path().display().to_string()),
                ifname: Some("eth0"),
                ..Default::default()
            },
            conf,
        )
    }

    fn del(&self, pod: Option<&NetNs>, cid: &str, conf: &Value) -> Invocation {
        self.plugin(
            &Call {
                command: "DEL",
                container_id: Some(cid),
                netns: pod.map(|p| p.path().display().to_string()),
                ifname: Some("eth0"),
                ..Default::default()
            },
            conf,
        )
    }

    /// Interfaces in the node namespace, by name.
    fn node_links(&self) -> HashSet<String> {
        links(&self.node)
    }
}

/// Interface names in `ns`.
pub fn links(ns: &NetNs) -> HashSet<String> {
    let out = ns.ip(["-j", "link", "show"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.get("ifname").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn with_version(conf: &Value, v: &str) -> Value {
    let mut c = conf.clone();
    c["cniVersion"] = json!(v);
    c
}

fn version_ge(a: &str, b: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    p(a) >= p(b)
}

/// The result's address for interface `ifname` (IPv4 only).
pub fn pod_ip(result: &Value, ifname: &str) -> Option<String> {
    let ifaces = result.get("interfaces")?.as_array()?;
    let idx = ifaces
        .iter()
        .position(|i| i.get("name").and_then(Value::as_str) == Some(ifname))?;
    result
        .get("ips")?
        .as_array()?
        .iter()
        .find(|ip| ip.get("interface").and_then(Value::as_u64) == Some(idx as u64))
        .or_else(|| result.get("ips")?.as_array()?.first())?
        .get("address")?
        .as_str()
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
}

/// How long interfaces of deleted namespaces may take to go before they
/// count as leaked: far above the kernel's worst cleanup under load.
const LEFTOVER_CEILING: std::time::Duration = std::time::Duration::from_secs(60);

struct Suite<'a> {
    rt: Runtime<'a>,
    supported: Vec<String>,
    version: String,
    baseline: HashSet<String>,
}

impl Suite<'_> {
    fn conf(&self) -> &Value {
        &self.rt.o.conf
    }

    fn leftovers(&self) -> CaseResult {
        // The kernel destroys a deleted namespace (and the veth peers of
        // its interfaces) asynchronously: wait for that, under a ceiling
        // that only catches a hang (a leaked interface never goes).
        let deadline = std::time::Instant::now() + LEFTOVER_CEILING;
        let mut now = self.rt.node_links();
        while !now.is_subset(&self.baseline) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            now = self.rt.node_links();
        }
        let extra: Vec<_> = now.difference(&self.baseline).collect();
        ensure!(
            extra.is_empty(),
            "interfaces left in the node namespace: {extra:?}"
        );
        Ok(())
    }

    fn version(&self) -> CaseResult {
        let r = self.rt.plugin(
            &Call {
                command: "VERSION",
                ..Default::default()
            },
            self.conf(),
        );
        ensure!(r.ok, "VERSION failed: {}", r.describe());
        let v = r.json();
        ensure!(
            v.get("cniVersion").and_then(Value::as_str).is_some(),
            "VERSION result lacks cniVersion: {v}"
        );
        ensure!(
            self.supported.contains(&self.version),
            "supportedVersions {:?} lacks the config's {}",
            self.supported,
            self.version
        );
        Ok(())
    }

    /// ADD in every supported version: the result's shape for that version
    /// and the interface it describes, as seen inside the pod.
    fn result_shape(&self, v: &str) -> CaseResult {
        if !self.supported.iter().any(|s| s == v) {
            return Err(Outcome::Skip(format!("plugin does not support {v}")));
        }
        let pod = NetNs::new();
        let conf = with_version(self.conf(), v);
        let r = self.rt.add(&pod, "shape", &conf);
        let res = r.json();
        let check = (|| {
            ensure!(r.ok, "ADD {v} failed: {}", r.describe());
            ensure!(
                res.get("cniVersion").and_then(Value::as_str) == Some(v),
                "result cniVersion is {:?}, requested {v}",
                res.get("cniVersion")
            );
            let ips = res.get("ips").and_then(Value::as_array).cloned();
            ensure!(
                ips.as_ref().is_some_and(|i| !i.is_empty()),
                "result has no ips: {res}"
            );
            for ip in ips.unwrap_or_default() {
                let has_version = ip.get("version").is_some();
                if version_ge(v, "1.0.0") {
                    ensure!(
                        !has_version,
                        "{v} result ips must not carry \"version\": {ip}"
                    );
                } else {
                    ensure!(
                        ip.get("version").and_then(Value::as_str) == Some("4"),
                        "{v} result ips need \"version\":\"4\": {ip}"
                    );
                }
            }
            let ifaces = res
                .get("interfaces")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let pod_if = ifaces
                .iter()
                .find(|i| i.get("name").and_then(Value::as_str) == Some("eth0"));
            ensure!(pod_if.is_some(), "result lists no interface eth0: {res}");
            let pod_if = pod_if.cloned().unwrap_or_default();
            ensure!(
                pod_if.get("sandbox").and_then(Value::as_str)
                    == Some(&pod.path().display().to_string()),
                "eth0's sandbox is {:?}, want {}",
                pod_if.get("sandbox"),
                pod.path().display()
            );
            let ip = pod_ip(&res, "eth0").unwrap_or_default();
            let out = pod.ip(["-j", "addr", "show", "dev", "eth0"]);
            let shown: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let text = shown.to_string();
            ensure!(
                text.contains(&format!("\"local\":\"{ip}\"")),
                "eth0 in the pod lacks {ip}: {text}"
            );
            if let Some(mac) = pod_if.get("mac").and_then(Value::as_str) {
                ensure!(
                    text.to_lowercase().contains(&mac.to_lowercase()),
                    "eth0's MAC differs from the result's {mac}: {text}"
                );
            }
            let up = shown[0]["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP"));
            ensure!(up, "eth0 is not up: {text}");
            // Every route the result reports is in the pod's table.
            for r in res
                .get("routes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let dst = r.get("dst").and_then(Value::as_str).unwrap_or("");
                let dst = if dst == "0.0.0.0/0" { "default" } else { dst };
                let shown = pod.ip(["route", "show", dst]);
                let text = String::from_utf8_lossy(&shown.stdout).into_owned();
                ensure!(!text.trim().is_empty(), "result route {r} not in the pod");
                if let Some(gw) = r.get("gw").and_then(Value::as_str) {
                    ensure!(
                        text.contains(&format!("via {gw}")),
                        "route {dst} in the pod is not via {gw}: {text}"
                    );
                }
            }
            Ok(())
        })();
        let d = self.rt.del(Some(&pod), "shape", &conf);
        check?;
        ensure!(d.ok, "DEL {v} failed: {}", d.describe());
        ensure!(
            !links(&pod).contains("eth0"),
            "eth0 still in the pod after DEL"
        );
        self.leftovers()
    }

    fn bad_version(&self) -> CaseResult {
        let pod = NetNs::new();
        let r = self
            .rt
            .add(&pod, "badver", &with_version(self.conf(), "9.9.9"));
        ensure!(!r.ok, "ADD with cniVersion 9.9.9 succeeded");
        ensure!(r.code() == Some(1), "want code 1, got {}", r.describe());
        ensure!(!links(&pod).contains("eth0"), "a rejected ADD created eth0");
        self.leftovers()
    }

    fn connectivity(&self) -> CaseResult {
        let (a, b) = (NetNs::new(), NetNs::new());
        let ra = self.rt.add(&a, "conn-a", self.conf());
        let rb = self.rt.add(&b, "conn-b", self.conf());
        let check = (|| {
            ensure!(
                ra.ok && rb.ok,
                "ADD failed: {} / {}",
                ra.describe(),
                rb.describe()
            );
            let ip_b = pod_ip(&rb.json(), "eth0").unwrap_or_default();
            b.ip(["link", "set", "lo", "up"]);
            let mut server = Daemon::from_command("pod-b", {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &b.name])
                    .arg(&self.rt.o.testpod)
                    .args(["serve", "pod-b", "8080"]);
                c
            });
            server.wait_for_line("pod-b serving", std::time::Duration::from_secs(10), |l| {
                l.contains("serving")
            });
            let target = format!("{ip_b}:8080");
            let from = |ns: &NetNs| -> String {
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns.name])
                    .arg(&self.rt.o.testpod)
                    .args(["tcp", &target, "1"])
                    .output()
                    .expect("testpod");
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let host = from(&self.rt.node);
            ensure!(host.starts_with("pod-b"), "node -> pod {target}: {host:?}");
            let pod = from(&a);
            ensure!(pod.starts_with("pod-b"), "pod -> pod {target}: {pod:?}");
            Ok(())
        })();
        self.rt.del(Some(&a), "conn-a", self.conf());
        self.rt.del(Some(&b), "conn-b", self.conf());
        check?;
        self.leftovers()
    }

    fn check_ok_and_tampered(&self) -> CaseResult {
        let v = if version_ge(&self.version, "0.4.0") {
            self.version.clone()
        } else {
            return Err(Outcome::Skip("config version predates CHECK".into()));
        };
        let pod = NetNs::new();
        let r = self.rt.add(&pod, "check", self.conf());
        let result = (|| {
            ensure!(r.ok, "ADD failed: {}", r.describe());
            let mut conf = with_version(self.conf(), &v);
            conf["prevResult"] = r.json();
            let call = Call {
                command: "CHECK",
                container_id: Some("check"),
                netns: Some(pod.path().display().to_string()),
                ifname: Some("eth0"),
                ..Default::default()
            };
            let c = self.rt.plugin(&call, &conf);
            ensure!(c.ok, "CHECK right after ADD failed: {}", c.describe());
            pod.ip(["addr", "flush", "dev", "eth0"]);
            let c = self.rt.plugin(&call, &conf);
            ensure!(
                !c.ok && c.code().is_some(),
                "CHECK after removing eth0's address must fail with an error result: {}",
                c.describe()
            );
            Ok(())
        })();
        self.rt.del(Some(&pod), "check", self.conf());
        result?;
        self.leftovers()
    }

    fn check_needs_040(&self) -> CaseResult {
        if !self.supported.iter().any(|s| s == "0.3.1") {
            return Err(Outcome::Skip("plugin does not support 0.3.1".into()));
        }
        let pod = NetNs::new();
        let r = self.rt.plugin(
            &Call {
                command: "CHECK",
                container_id: Some("c031"),
                netns: Some(pod.path().display().to_string()),
                ifname: Some("eth0"),
                ..Default::default()
            },
            &with_version(self.conf(), "0.3.1"),
        );
        ensure!(
            !r.ok && r.code() == Some(1),
            "CHECK at 0.3.1 must fail with code 1: {}",
            r.describe()
        );
        Ok(())
    }

    fn del_idempotent(&self) -> CaseResult {
        let pod = NetNs::new();
        let r = self.rt.add(&pod, "del", self.conf());
        ensure!(r.ok, "ADD failed: {}", r.describe());
        let mut with_prev = self.conf().clone();
        with_prev["prevResult"] = r.json();
        let cases: [(&str, Option<&NetNs>, &Value); 3] = [
            ("DEL with prevResult", Some(&pod), &with_prev),
            ("second DEL", Some(&pod), &with_prev),
            ("DEL without prevResult", Some(&pod), self.conf()),
        ];
        for (what, ns, conf) in cases {
            let d = self.rt.del(ns, "del", conf);
            ensure!(d.ok, "{what} failed: {}", d.describe());
        }
        let d = self.rt.plugin(
            &Call {
                command: "DEL",
                container_id: Some("del"),
                netns: Some(String::new()),
                ifname: Some("eth0"),
                ..Default::default()
            },
            self.conf(),
        );
        ensure!(d.ok, "DEL with an empty CNI_NETNS failed: {}", d.describe());
        let d = self.rt.del(Some(&pod), "never-added", self.conf());
        ensure!(
            d.ok,
            "DEL of a container never added failed: {}",
            d.describe()
        );
        // A pod whose namespace vanished before its DEL (runtimes do this).
        let gone = NetNs::new();
        let r = self.rt.add(&gone, "gone", self.conf());
        ensure!(r.ok, "ADD failed: {}", r.describe());
        let path = gone.path().display().to_string();
        drop(gone);
        let d = self.rt.plugin(
            &Call {
                command: "DEL",
                container_id: Some("gone"),
                netns: Some(path),
                ifname: Some("eth0"),
                ..Default::default()
            },
            self.conf(),
        );
        ensure!(d.ok, "DEL with a vanished netns failed: {}", d.describe());
        self.leftovers()
    }

    fn bad_env(&self) -> CaseResult {
        let pod = NetNs::new();
        let full = Call {
            command: "ADD",
            container_id: Some("badenv"),
            netns: Some(pod.path().display().to_string()),
            ifname: Some("eth0"),
            ..Default::default()
        };
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let mut c = full.clone();
            match var {
                "CNI_CONTAINERID" => c.container_id = None,
                "CNI_NETNS" => c.netns = None,
                _ => c.ifname = None,
            }
            let r = self.rt.plugin(&c, self.conf());
            ensure!(
                !r.ok && r.code() == Some(4),
                "ADD without {var}: want code 4, got {}",
                r.describe()
            );
            ensure!(
                r.stdout.contains(var),
                "the error for a missing {var} does not name it: {}",
                r.stdout
            );
        }
        let mut c = full.clone();
        c.command = "FROB";
        let r = self.rt.plugin(&c, self.conf());
        ensure!(
            !r.ok && r.code() == Some(4),
            "unknown CNI_COMMAND: want code 4, got {}",
            r.describe()
        );
        ensure!(!links(&pod).contains("eth0"), "a failed ADD created eth0");
        self.leftovers()
    }

    /// The spec makes CNI_COMMAND required: an invocation without it is
    /// error 4, not a help text with exit 0 (libcni's skel does the latter).
    fn unset_command(&self) -> CaseResult {
        let pod = NetNs::new();
        let r = self.rt.plugin(
            &Call {
                command: "",
                container_id: Some("nocmd"),
                netns: Some(pod.path().display().to_string()),
                ifname: Some("eth0"),
                ..Default::default()
            },
            self.conf(),
        );
        ensure!(
            !r.ok && r.code() == Some(4),
            "unset CNI_COMMAND: want code 4, got {}",
            r.describe()
        );
        ensure!(
            r.stdout.contains("CNI_COMMAND"),
            "the error for an unset CNI_COMMAND does not name it: {}",
            r.stdout
        );
        ensure!(
            !links(&pod).contains("eth0"),
            "an invocation without a command created eth0"
        );
        self.leftovers()
    }

    /// Addresses held in the plugin's host-local-layout store, if known.
    fn held_addresses(&self) -> Option<HashSet<String>> {
        let net = self.conf()["name"].as_str().unwrap_or("");
        let dir = self.rt.o.ipam_store.as_ref()?.join(net);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read address store {}: {e}", dir.display()));
        Some(
            entries
                .map(|e| e.expect("read address store entry").file_name())
                .filter_map(|n| n.to_str().map(str::to_string))
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect(),
        )
    }

    fn bad_stdin(&self) -> CaseResult {
        let pod = NetNs::new();
        for (what, stdin) in [
            ("truncated JSON", "{\"cniVersion\":"),
            ("not JSON", "hello"),
        ] {
            let r = self.rt.plugin(
                &Call {
                    command: "ADD",
                    container_id: Some("badstdin"),
                    netns: Some(pod.path().display().to_string()),
                    ifname: Some("eth0"),
                    raw_stdin: Some(stdin),
                },
                self.conf(),
            );
            ensure!(
                !r.ok && r.code() == Some(6),
                "{what} on stdin: want code 6, got {}",
                r.describe()
            );
        }
        ensure!(!links(&pod).contains("eth0"), "a failed ADD created eth0");
        self.leftovers()
    }

    fn bad_config(&self) -> CaseResult {
        let pod = NetNs::new();
        let mut conf = self.conf().clone();
        if let Some(o) = conf.as_object_mut() {
            o.remove("name");
        }
        let r = self.rt.add(&pod, "badconf", &conf);
        ensure!(
            !r.ok && r.code() == Some(7),
            "config without a network name: want code 7, got {}",
            r.describe()
        );
        // A namespace that does not exist: any error, nothing created.
        let r = self.rt.plugin(
            &Call {
                command: "ADD",
                container_id: Some("badns"),
                netns: Some("/run/netns/sluice-conformance-no-such-netns".into()),
                ifname: Some("eth0"),
                ..Default::default()
            },
            self.conf(),
        );
        ensure!(
            !r.ok && r.code().is_some(),
            "ADD into a missing netns must fail with an error result: {}",
            r.describe()
        );
        self.rt
            .del(None, "badns", self.conf())
            .ok
            .then_some(())
            .ok_or_else(|| Outcome::Fail("DEL after a failed ADD failed".into()))?;
        ensure!(!links(&pod).contains("eth0"), "a failed ADD created eth0");
        self.leftovers()
    }

    fn parallel(&self) -> CaseResult {
        const N: usize = 40;
        let pods: Vec<NetNs> = (0..N).map(|_| NetNs::new()).collect();
        let results: Vec<Invocation> = std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| s.spawn(move || self.rt.add(p, &format!("par-{i}"), self.conf())))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("ADD thread"))
                .collect()
        });
        let check = (|| {
            let mut ips = HashSet::new();
            for (i, r) in results.iter().enumerate() {
                ensure!(r.ok, "parallel ADD {i} failed: {}", r.describe());
                let ip = pod_ip(&r.json(), "eth0").unwrap_or_default();
                ensure!(ips.insert(ip.clone()), "address {ip} handed out twice");
            }
            Ok(())
        })();
        let dels: Vec<Invocation> = std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    s.spawn(move || self.rt.del(Some(p), &format!("par-{i}"), self.conf()))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("DEL thread"))
                .collect()
        });
        check?;
        for (i, d) in dels.iter().enumerate() {
            ensure!(d.ok, "parallel DEL {i} failed: {}", d.describe());
        }
        self.leftovers()
    }

    fn exhaustion(&self) -> CaseResult {
        const MAX: usize = 1024;
        let mut pods = Vec::new();
        let mut failure = None;
        for i in 0..MAX {
            let p = NetNs::new();
            let r = self.rt.add(&p, &format!("ex-{i}"), self.conf());
            if !r.ok {
                failure = Some((p, r));
                break;
            }
            pods.push(p);
        }
        let result = (|| {
            let Some((failed_pod, r)) = &failure else {
                return Err(Outcome::Skip(format!(
                    "pool holds more than {MAX} addresses"
                )));
            };
            ensure!(
                r.code().is_some() && r.json().get("msg").is_some(),
                "pool exhaustion must be an error result with code and msg: {}",
                r.describe()
            );
            // Runtimes follow a failed ADD with a DEL; after it nothing of
            // the attempt may remain.
            let d = self
                .rt
                .del(Some(failed_pod), &format!("ex-{}", pods.len()), self.conf());
            ensure!(d.ok, "DEL after the failed ADD failed: {}", d.describe());
            ensure!(
                !links(failed_pod).contains("eth0"),
                "the ADD that found the pool empty left eth0 behind after its DEL"
            );
            // One DEL frees one address; the next ADD gets it.
            let last = pods.len() - 1;
            let d = self
                .rt
                .del(Some(&pods[last]), &format!("ex-{last}"), self.conf());
            ensure!(d.ok, "DEL failed: {}", d.describe());
            let r = self.rt.add(failed_pod, "ex-again", self.conf());
            ensure!(
                r.ok,
                "ADD after a DEL freed an address failed: {}",
                r.describe()
            );
            self.rt.del(Some(failed_pod), "ex-again", self.conf());
            Ok(())
        })();
        for (i, p) in pods.iter().enumerate() {
            self.rt.del(Some(p), &format!("ex-{i}"), self.conf());
        }
        result?;
        self.leftovers()
    }

    /// As the first plugin of a chain followed by the reference `tuning`
    /// plugin (at 1.0.0, the newest tuning speaks): prevResult passes
    /// through and tuning's sysctl lands in the pod.
    fn chain_tuning(&self) -> CaseResult {
        let tuning = self
            .rt
            .o
            .cni_path
            .split(':')
            .map(|d| Path::new(d).join("tuning"))
            .find(|p| p.exists());
        let Some(tuning) = tuning else {
            return Err(Outcome::Skip("no tuning plugin on CNI_PATH".into()));
        };
        let v = "1.0.0";
        if !self.supported.iter().any(|s| s == v) {
            return Err(Outcome::Skip(format!("plugin does not support {v}")));
        }
        let pod = NetNs::new();
        let first = with_version(self.conf(), v);
        let name = first["name"].clone();
        let tuning_conf = |prev: Option<Value>| {
            let mut t = json!({"cniVersion": v, "name": name, "type": "tuning",
                "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}});
            if let Some(p) = prev {
                t["prevResult"] = p;
            }
            t
        };
        let call = Call {
            command: "ADD",
            container_id: Some("chain"),
            netns: Some(pod.path().display().to_string()),
            ifname: Some("eth0"),
            ..Default::default()
        };
        let r1 = self.rt.plugin(&call, &first);
        let result = (|| {
            ensure!(r1.ok, "ADD (first plugin) failed: {}", r1.describe());
            let r2 = self.rt.exec(&tuning, &call, &tuning_conf(Some(r1.json())));
            ensure!(r2.ok, "tuning ADD failed: {}", r2.describe());
            ensure!(
                pod_ip(&r2.json(), "eth0") == pod_ip(&r1.json(), "eth0"),
                "the chain's final result lost the first plugin's address: {}",
                r2.stdout
            );
            let out = Command::new("ip")
                .args(["netns", "exec", &pod.name, "sysctl", "-n"])
                .arg("net.ipv4.conf.eth0.rp_filter")
                .output()
                .expect("sysctl");
            let val = String::from_utf8_lossy(&out.stdout).trim().to_string();
            ensure!(
                val == "2",
                "tuning's sysctl not applied in the pod: {val:?}"
            );
            Ok(())
        })();
        let mut del = call.clone();
        del.command = "DEL";
        let d2 = self
            .rt
            .exec(&tuning, &del, &tuning_conf(r1.ok.then(|| r1.json())));
        let d1 = self.rt.plugin(&del, &first);
        result?;
        ensure!(
            d2.ok && d1.ok,
            "chain DEL failed: {} / {}",
            d2.describe(),
            d1.describe()
        );
        self.leftovers()
    }

    fn status(&self) -> CaseResult {
        if !self.supported.iter().any(|s| s == "1.1.0") {
            return Err(Outcome::Skip(
                "STATUS is CNI 1.1.0; plugin predates it".into(),
            ));
        }
        let r = self.rt.plugin(
            &Call {
                command: "STATUS",
                ..Default::default()
            },
            &with_version(self.conf(), "1.1.0"),
        );
        ensure!(r.ok, "STATUS failed on a healthy node: {}", r.describe());
        Ok(())
    }

    fn gc(&self) -> CaseResult {
        if !self.supported.iter().any(|s| s == "1.1.0") {
            return Err(Outcome::Skip("GC is CNI 1.1.0; plugin predates it".into()));
        }
        let conf = with_version(self.conf(), "1.1.0");
        let (keep, drop_) = (NetNs::new(), NetNs::new());
        let rk = self.rt.add(&keep, "gc-keep", &conf);
        let rd = self.rt.add(&drop_, "gc-drop", &conf);
        let result = (|| {
            ensure!(
                rk.ok && rd.ok,
                "ADD failed: {} / {}",
                rk.describe(),
                rd.describe()
            );
            let (keep_ip, drop_ip) = (pod_ip(&rk.json(), "eth0"), pod_ip(&rd.json(), "eth0"));
            let (Some(keep_ip), Some(drop_ip)) = (keep_ip, drop_ip) else {
                return Err(Outcome::Fail(format!(
                    "ADD results carry no eth0 address: {} / {}",
                    rk.stdout, rd.stdout
                )));
            };
            if let Some(held) = self.held_addresses() {
                ensure!(
                    held.contains(&keep_ip) && held.contains(&drop_ip),
                    "the address store does not show the ADDs' addresses {keep_ip}, {drop_ip}: {held:?}"
                );
            }
            let before = self.rt.node_links();
            let mut gc_conf = conf.clone();
            gc_conf["cni.dev/valid-attachments"] =
                json!([{"containerID": "gc-keep", "ifname": "eth0"}]);
            let r = self.rt.plugin(
                &Call {
                    command: "GC",
                    ..Default::default()
                },
                &gc_conf,
            );
            ensure!(r.ok, "GC failed: {}", r.describe());
            let mut check = conf.clone();
            check["prevResult"] = rk.json();
            let c = self.rt.plugin(
                &Call {
                    command: "CHECK",
                    container_id: Some("gc-keep"),
                    netns: Some(keep.path().display().to_string()),
                    ifname: Some("eth0"),
                    ..Default::default()
                },
                &check,
            );
            ensure!(
                c.ok,
                "a valid attachment no longer CHECKs after GC: {}",
                c.describe()
            );
            // Exactly the invalid attachment goes: its pod loses eth0 (the
            // veth pair is gone), the valid one keeps it, and the node has
            // lost links it had only for the invalid one.
            ensure!(
                !links(&drop_).contains("eth0"),
                "GC left the invalid attachment's eth0 in its pod"
            );
            ensure!(
                links(&keep).contains("eth0"),
                "GC removed the valid attachment's eth0"
            );
            let after = self.rt.node_links();
            ensure!(
                after.is_subset(&before) && after.len() < before.len(),
                "GC released nothing on the node for the invalid attachment: {before:?} -> {after:?}"
            );
            if let Some(held) = self.held_addresses() {
                ensure!(
                    !held.contains(&drop_ip),
                    "GC kept the invalid attachment's address {drop_ip}: {held:?}"
                );
                ensure!(
                    held.contains(&keep_ip),
                    "GC released the valid attachment's address {keep_ip}: {held:?}"
                );
            }
            Ok(())
        })();
        self.rt.del(Some(&keep), "gc-keep", &conf);
        self.rt.del(Some(&drop_), "gc-drop", &conf);
        result?;
        self.leftovers()
    }
}

/// Runs every case; `progress` sees each line as it is decided.
pub fn run(o: &Options, mut progress: impl FnMut(&str)) -> Report {
    let rt = Runtime {
        o,
        node: NetNs::new(),
    };
    let version = o.conf["cniVersion"].as_str().unwrap_or("").to_string();
    let v = rt.plugin(
        &Call {
            command: "VERSION",
            ..Default::default()
        },
        &o.conf,
    );
    let supported: Vec<String> = v.json()["supportedVersions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    // Warm up once so node-wide state a plugin creates on first use (a
    // bridge, pinned programs) is part of the baseline, not a leftover.
    let warm = NetNs::new();
    let w = rt.add(&warm, "warmup", &o.conf);
    rt.del(Some(&warm), "warmup", &o.conf);
    drop(warm);
    let baseline = rt.node_links();
    let s = Suite {
        rt,
        supported,
        version,
        baseline,
    };
    let mut cases: Vec<(String, Outcome)> = Vec::new();
    let mut record = |name: &str, r: CaseResult| {
        let o = match r {
            Ok(()) => Outcome::Pass,
            Err(o) => o,
        };
        let line = match &o {
            Outcome::Pass => format!("PASS {name}"),
            Outcome::Fail(why) => format!("FAIL {name}: {why}"),
            Outcome::Skip(why) => format!("SKIP {name}: {why}"),
        };
        progress(&line);
        cases.push((name.to_string(), o));
    };
    record(
        "warm-up ADD",
        if w.ok {
            Ok(())
        } else {
            Err(Outcome::Fail(w.describe()))
        },
    );
    record("VERSION lists the config's version", s.version());
    for v in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        record(&format!("ADD/DEL result shape at {v}"), s.result_shape(v));
    }
    record("unsupported cniVersion -> code 1", s.bad_version());
    record("connectivity node->pod and pod->pod", s.connectivity());
    record(
        "CHECK after ADD passes, after tampering fails",
        s.check_ok_and_tampered(),
    );
    record("CHECK below 0.4.0 -> code 1", s.check_needs_040());
    record("DEL idempotency", s.del_idempotent());
    record("missing env / unknown command -> code 4", s.bad_env());
    record("unset CNI_COMMAND -> code 4", s.unset_command());
    record("undecodable stdin -> code 6", s.bad_stdin());
    record(
        "invalid config -> code 7, bad netns -> error",
        s.bad_config(),
    );
    record(
        "40 parallel ADDs distinct, parallel DELs clean",
        s.parallel(),
    );
    record("pool exhaustion, recovery after one DEL", s.exhaustion());
    record(
        "chained before the reference tuning plugin",
        s.chain_tuning(),
    );
    record("STATUS (1.1.0)", s.status());
    record("GC releases invalid attachments (1.1.0)", s.gc());
    Report { cases }
}
