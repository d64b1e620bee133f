//! A `sluice-server` for tests: its own data dir, a random loopback port,
//! optionally on an etcd cluster; stopped by PID on drop. `kubectl` runs
//! against it with the admin kubeconfig the server writes.
use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::{Daemon, bin, free_port, topology::TempDir};

pub struct ApiServer {
    pub data: TempDir,
    pub port: u16,
    daemon: Daemon,
}

impl ApiServer {
    /// Starts the server (on `etcd` endpoints when given) and waits until
    /// kubectl can list namespaces through it.
    pub fn start(etcd: &[String]) -> Self {
        let data = TempDir::new();
        let port = free_port();
        let mut c = Command::new(bin("sluice-server"));
        c.arg("--data-dir")
            .arg(&data.0)
            .args(["--listen", &format!("127.0.0.1:{port}")]);
        if !etcd.is_empty() {
            c.args(["--etcd-endpoints", &etcd.join(",")]);
        }
        let me = Self {
            daemon: Daemon::from_command("sluice-server", c),
            data,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if me.kubeconfig().exists() && me.kubectl(&["get", "namespaces"]).status.success() {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "sluice-server did not come up; output:\n{}",
                me.daemon.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kubeconfig(&self) -> std::path::PathBuf {
        self.data.0.join("admin.kubeconfig")
    }

    /// `kubectl ARGS` (the machine's kubectl) against this server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Like [`Self::kubectl`], panicking with kubectl's stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn output(&self) -> String {
        self.daemon.output()
    }
}
