//! A `sluice-server` for tests: its own data dir, a loopback port the
//! server picks itself (`--listen 127.0.0.1:0`, read back from the
//! kubeconfig it writes, so parallel tests cannot race for one),
//! optionally on an etcd cluster; stopped by PID on drop. `kubectl` runs
//! against it with the admin kubeconfig the server writes.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::{Daemon, NetNs, bin, command_in, topology::TempDir};

/// Debian's kubectl 1.20 (an old client: OpenAPI v2 only, no server-side
/// field validation), extracted under the target dir by `cargo xtask
/// bootstrap`.
pub fn old_kubectl() -> PathBuf {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/kubectl-1.20/usr/bin/kubectl");
    assert!(
        p.is_file(),
        "{} not found: run `cargo xtask bootstrap` (or `cargo xtask test`)",
        p.display()
    );
    p
}

/// The flags that leave the scheduler and the controller manager off.
pub const API_ONLY: &[&str] = &["--disable", "scheduler,controllers"];

/// Field order matters for Drop: the server stops before its data dir goes.
pub struct ApiServer {
    daemon: Daemon,
    pub data: TempDir,
    pub port: u16,
    /// The network namespace it serves in (None: the test's own).
    netns: Option<std::path::PathBuf>,
    etcd: Vec<String>,
    /// More flags, on every start.
    extra: Vec<String>,
}

fn spawn(
    data: &TempDir,
    port: u16,
    netns: Option<&std::path::Path>,
    etcd: &[String],
    extra: &[String],
) -> Daemon {
    let mut c = match netns {
        Some(ns) => command_in(ns, bin("sluice-server")),
        None => Command::new(bin("sluice-server")),
    };
    c.arg("--data-dir")
        .arg(&data.0)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    if !etcd.is_empty() {
        c.args(["--etcd-endpoints", &etcd.join(",")]);
    }
    c.args(extra);
    Daemon::from_command("sluice-server", c)
}

impl ApiServer {
    /// Starts the server (on `etcd` endpoints when given) and waits until
    /// kubectl can list namespaces through it.
    pub fn start(etcd: &[String]) -> Self {
        Self::start_in(None, etcd)
    }

    /// Like [`Self::start`], serving on the loopback of `netns` (a test
    /// node's, so an agent inside it can reach it); kubectl runs there too.
    pub fn start_in(netns: Option<&NetNs>, etcd: &[String]) -> Self {
        Self::start_on(netns, etcd, &[])
    }

    /// Like [`Self::start`], with more flags (e.g. `--disable controllers`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(None, &[], extra)
    }

    /// The API server alone (`API_ONLY`), for tests of the API's own
    /// semantics, where a scheduler or controller acting on the test's
    /// objects would be a second writer.
    pub fn api_only(etcd: &[String]) -> Self {
        Self::start_on(None, etcd, API_ONLY)
    }

    /// The general form: in `netns` (None: the test's own), on `etcd`
    /// (empty: the embedded store), with `extra` flags.
    pub fn start_on(netns: Option<&NetNs>, etcd: &[String], extra: &[&str]) -> Self {
        let data = TempDir::new();
        let netns = netns.map(NetNs::path);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut me = Self {
            daemon: spawn(&data, 0, netns.as_deref(), etcd, &extra),
            data,
            port: 0,
            netns,
            etcd: etcd.to_vec(),
            extra,
        };
        me.port = me.bound_port();
        me.wait_ready();
        me
    }

    /// The port the server bound, from the kubeconfig it writes once
    /// listening (complete: it ends with the current context).
    fn bound_port(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let port = std::fs::read_to_string(self.kubeconfig())
                .ok()
                .filter(|k| k.trim_end().ends_with("current-context: sluice"))
                .and_then(|k| {
                    k.lines()
                        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
                        .and_then(|p| p.parse::<u16>().ok())
                });
            if let Some(port) = port.filter(|p| *p != 0) {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "sluice-server wrote no kubeconfig with its port; output:\n{}",
                self.daemon.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM) and starts it again on the same data dir,
    /// port (the one it picked first) and store.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Kills the server (SIGKILL): no shutdown work, like a lost machine.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Stops the server (SIGTERM); [`Self::start_again`] brings it back.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    pub fn start_again(&mut self) {
        self.daemon = spawn(
            &self.data,
            self.port,
            self.netns.as_deref(),
            &self.etcd,
            &self.extra,
        );
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.kubeconfig().exists() && self.kubectl(&["get", "namespaces"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice-server did not come up; output:\n{}",
                self.daemon.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kubeconfig(&self) -> std::path::PathBuf {
        self.data.0.join("admin.kubeconfig")
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// A kube-rs client with the admin credentials.
    pub async fn client(&self) -> kube::Client {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let kc = Kubeconfig::read_from(self.kubeconfig()).expect("admin.kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kube config from admin.kubeconfig");
        kube::Client::try_from(config).expect("kube client")
    }

    /// The credentials agents use.
    pub fn node_kubeconfig(&self) -> std::path::PathBuf {
        self.data.0.join("node.kubeconfig")
    }

    /// `kubectl ARGS` (the machine's kubectl) against this server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_bin(Path::new("kubectl"), args)
    }

    /// Like [`Self::kubectl`] with another kubectl binary.
    pub fn kubectl_bin(&self, kubectl: &Path, args: &[&str]) -> Output {
        match &self.netns {
            Some(ns) => command_in(ns, kubectl),
            None => Command::new(kubectl),
        }
        .arg("--kubeconfig")
        .arg(self.kubeconfig())
        .args(args)
        .output()
        .expect("run kubectl")
    }

    /// Like [`Self::kubectl`], panicking with kubectl's stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_bin_ok(Path::new("kubectl"), args)
    }

    /// Like [`Self::kubectl_ok`] with another kubectl binary.
    pub fn kubectl_bin_ok(&self, kubectl: &Path, args: &[&str]) -> String {
        let out = self.kubectl_bin(kubectl, args);
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}",
            kubectl.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn output(&self) -> String {
        self.daemon.output()
    }

    /// `GET path` over HTTPS (curl, checking the server's CA), with the
    /// admin token or anonymously: the status code and the body.
    pub fn get(&self, path: &str, authenticated: bool) -> (u16, String) {
        let mut c = match &self.netns {
            Some(ns) => command_in(ns, "curl"),
            None => Command::new("curl"),
        };
        c.args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(self.data.0.join("pki/ca.crt"));
        if authenticated {
            let token =
                std::fs::read_to_string(self.data.0.join("pki/admin.token")).expect("admin token");
            c.args(["-H", &format!("Authorization: Bearer {}", token.trim())]);
        }
        let out = c
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {path}: no status code in {text:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, body.to_string())
    }
}
