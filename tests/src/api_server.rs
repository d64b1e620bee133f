//! A `sluice-server` for tests: its own data dir, a random loopback port,
//! optionally on an etcd cluster; stopped by PID on drop. `kubectl` runs
//! against it with the admin kubeconfig the server writes.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::{Daemon, NetNs, bin, command_in, free_port, topology::TempDir};

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

/// Field order matters for Drop: the server stops before its data dir goes.
pub struct ApiServer {
    daemon: Daemon,
    pub data: TempDir,
    pub port: u16,
    /// The network namespace it serves in (None: the test's own).
    netns: Option<std::path::PathBuf>,
    etcd: Vec<String>,
}

fn spawn(data: &TempDir, port: u16, netns: Option<&std::path::Path>, etcd: &[String]) -> Daemon {
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
        let data = TempDir::new();
        let port = free_port();
        let netns = netns.map(NetNs::path);
        let me = Self {
            daemon: spawn(&data, port, netns.as_deref(), etcd),
            data,
            port,
            netns,
            etcd: etcd.to_vec(),
        };
        me.wait_ready();
        me
    }

    /// Stops the server (SIGTERM) and starts it again on the same data dir,
    /// port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops the server (SIGTERM); [`Self::start_again`] brings it back.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    pub fn start_again(&mut self) {
        self.daemon = spawn(&self.data, self.port, self.netns.as_deref(), &self.etcd);
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
}
