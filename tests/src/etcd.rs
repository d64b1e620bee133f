//! Real etcd (Debian's etcd-server) for store tests: members with temp data
//! dirs, optionally serving clients over TLS with a CA made for the
//! cluster, stopped by PID and removed on drop.
//!
//! Ports: a port found free by binding port 0 and released can be taken by
//! someone else before etcd binds it (any outgoing connection from
//! 127.0.0.1 gets such a port as its source). So each cluster listens on a
//! loopback address of its own, 127.x.y.z (all of 127/8 is loopback, and
//! connections to it come from 127.0.0.1): a port free there stays free,
//! which also lets a member restart on its old port. Should two test
//! processes pick the same address anyway, etcd fails with "address
//! already in use" and the cluster starts again on another one.
use std::{
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::{Daemon, topology::TempDir, unique};

pub const ETCD: &str = "/usr/bin/etcd";

/// How long a cluster may take to become healthy: only a hang gets there.
const HEALTHY_WITHIN: Duration = Duration::from_secs(90);

/// A loopback address for one cluster, distinct per process and cluster.
fn cluster_ip(attempt: u32) -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        (100 + (pid + attempt * 7) % 100) as u8,
        ((pid / 100) % 256) as u8,
        (2 + n % 250) as u8,
    )
}

/// A port free on `ip` (nobody else binds there, see the module doc).
fn port_on(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("a free port on {ip}: {e}"))
}

/// A self-signed CA: its certificate (PEM) and what signs with it.
pub fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

/// Client-facing TLS of one cluster: its CA and the members' serving
/// certificate (for the cluster's address) in files etcd reads.
pub struct Tls {
    pub ca_pem: String,
    dir: TempDir,
}

impl Tls {
    fn for_ip(ip: Ipv4Addr) -> Self {
        let (ca_pem, issuer) = new_ca("sluice-test-etcd-ca");
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec![ip.to_string()]).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "sluice-test-etcd");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let dir = TempDir::new();
        std::fs::write(dir.0.join("server.crt"), cert.pem()).expect("write server.crt");
        std::fs::write(dir.0.join("server.key"), key.serialize_pem()).expect("write server.key");
        Self { ca_pem, dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.0.join("server.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.0.join("server.key")
    }
}

/// One member's fixed identity (address, ports and data dir survive a
/// restart).
pub struct Member {
    pub name: String,
    pub ip: Ipv4Addr,
    pub client_port: u16,
    pub peer_port: u16,
    /// Plain HTTP `/health`, whether or not clients speak TLS.
    pub metrics_port: u16,
    pub data: TempDir,
    tls: bool,
    daemon: Option<Daemon>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.peer_port)
    }

    /// Starts (or restarts) this member of `initial_cluster`.
    fn start(&mut self, initial_cluster: &str, token: &str, tls: Option<&Tls>) {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} missing: run `cargo xtask bootstrap` (installs etcd-server)"
        );
        let mut c = std::process::Command::new(ETCD);
        c.args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.data.0.join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args([
                "--listen-metrics-urls",
                &format!("http://{}:{}", self.ip, self.metrics_port),
            ])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-token", token])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn"]);
        if let Some(t) = tls {
            c.arg("--cert-file").arg(t.cert());
            c.arg("--key-file").arg(t.key());
        }
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

    fn port_taken(&self) -> bool {
        self.daemon
            .as_ref()
            .is_some_and(|d| d.count_lines(|l| l.contains("address already in use")) > 0)
    }

    fn output(&self) -> String {
        self.daemon.as_ref().map(Daemon::output).unwrap_or_default()
    }
}

/// An etcd cluster of `n` members on a loopback address of its own.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    /// Set when clients must speak TLS (see [`EtcdCluster::start_tls`]).
    pub tls: Option<Tls>,
    initial: String,
    token: String,
}

impl EtcdCluster {
    pub fn start(n: usize) -> Self {
        Self::start_with(n, false)
    }

    /// Clients reach it over TLS only (https endpoints), with a serving
    /// certificate from a CA made for this cluster (`tls.ca_pem`).
    pub fn start_tls(n: usize) -> Self {
        Self::start_with(n, true)
    }

    fn start_with(n: usize, tls: bool) -> Self {
        for attempt in 0..5 {
            let ip = cluster_ip(attempt);
            let token = unique("etcd");
            let mut members: Vec<Member> = (0..n)
                .map(|i| Member {
                    name: format!("{token}-m{i}"),
                    ip,
                    client_port: port_on(ip),
                    peer_port: port_on(ip),
                    metrics_port: port_on(ip),
                    data: TempDir::new(),
                    tls,
                    daemon: None,
                })
                .collect();
            let tls = tls.then(|| Tls::for_ip(ip));
            let initial = members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            for m in &mut members {
                m.start(&initial, &token, tls.as_ref());
            }
            let c = Self {
                members,
                tls,
                initial,
                token,
            };
            match c.healthy_or_port_taken() {
                Ok(()) => return c,
                // Dropping `c` stops the members and removes their dirs.
                Err(m) => eprintln!("etcd: {m} on {ip}: port taken, starting again elsewhere"),
            }
        }
        panic!("etcd: a port was taken on 5 different loopback addresses");
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Restarts member `i` (same address, ports and data).
    pub fn restart(&mut self, i: usize) {
        let (initial, token) = (self.initial.clone(), self.token.clone());
        self.members[i].stop();
        self.members[i].start(&initial, &token, self.tls.as_ref());
        self.wait_healthy();
    }

    /// Waits until every running member reports itself healthy.
    pub fn wait_healthy(&self) {
        if let Err(m) = self.healthy_or_port_taken() {
            let out = self
                .members
                .iter()
                .find(|x| x.name == m)
                .map(Member::output);
            panic!(
                "etcd member {m}: its port is taken; output:\n{}",
                out.unwrap_or_default()
            );
        }
    }

    /// Ok once every running member is healthy; Err(name) as soon as a
    /// member could not bind its address.
    fn healthy_or_port_taken(&self) -> Result<(), String> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        for m in self.members.iter().filter(|m| m.is_running()) {
            while !health(m.ip, m.metrics_port) {
                if let Some(taken) = self.members.iter().find(|m| m.port_taken()) {
                    return Err(taken.name.clone());
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} not healthy on {} within {HEALTHY_WITHIN:?}; output:\n{}",
                    m.name,
                    m.endpoint(),
                    m.output()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

/// etcd's `/health` reports `{"health":"true"}` once the member has a
/// leader and can serve.
fn health(ip: Ipv4Addr, port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect((ip, port)) else {
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
