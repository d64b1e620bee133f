//! Real etcd (Debian's etcd-server) for store tests: members on random
//! loopback ports with temp data dirs, stopped by PID and removed on drop.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::{Daemon, free_port, topology::TempDir, unique};

pub const ETCD: &str = "/usr/bin/etcd";

/// One member's fixed identity (ports and data dir survive a restart).
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data: TempDir,
    daemon: Option<Daemon>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Starts (or restarts) this member of `initial_cluster`.
    fn start(&mut self, initial_cluster: &str, token: &str) {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} missing: run `cargo xtask bootstrap` (installs etcd-server)"
        );
        let mut c = Command::new(ETCD);
        c.args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.data.0.join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-token", token])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn"]);
        self.daemon = Some(Daemon::from_command(&self.name, c));
    }

    pub fn is_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// SIGKILL: a member dying, not a clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }
}

/// An etcd cluster of `n` members on loopback.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial: String,
    token: String,
}

impl EtcdCluster {
    pub fn start(n: usize) -> Self {
        let token = unique("etcd");
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("{token}-m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data: TempDir::new(),
                daemon: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.start(&initial, &token);
        }
        let c = Self {
            members,
            initial,
            token,
        };
        c.wait_healthy();
        c
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Restarts member `i` (same ports, same data).
    pub fn restart(&mut self, i: usize) {
        let (initial, token) = (self.initial.clone(), self.token.clone());
        self.members[i].stop();
        self.members[i].start(&initial, &token);
        self.wait_healthy();
    }

    /// Waits until every running member answers a read through etcdctl's
    /// wire protocol (a plain HTTP GET /health on the client port).
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in self.members.iter().filter(|m| m.is_running()) {
            loop {
                if health(m.client_port) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} not healthy on {}",
                    m.name,
                    m.endpoint()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// etcd's `/health` endpoint reports `{"health":"true"}` once the member
/// has a leader and can serve.
fn health(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
