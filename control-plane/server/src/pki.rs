//! Credentials under the data dir, made on first start and reused after:
//! a CA, a serving certificate for the addresses the server answers on,
//! bearer tokens (admin, node, and one per in-process component:
//! `system:kube-scheduler`, `system:kube-controller-manager`) and a
//! kubeconfig for each. Keys and tokens are written 0600.
use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub admin_token: String,
    pub node_token: String,
    pub scheduler_token: String,
    pub controller_manager_token: String,
}

/// The kubeconfig files under the data dir, one per credential.
pub const SCHEDULER_KUBECONFIG: &str = "scheduler.kubeconfig";
pub const CONTROLLER_MANAGER_KUBECONFIG: &str = "controller-manager.kubeconfig";

fn write_private(path: &Path, data: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn token() -> anyhow::Result<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random token: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Pki {
    /// Loads `<dir>/pki`, creating what is missing. `hosts` are the serving
    /// certificate's names (IPs or DNS names).
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> anyhow::Result<Self> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
        let p = |n: &str| -> PathBuf { pki.join(n) };
        if !p("ca.key").exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "sluice-ca");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key)?;
            std::fs::write(p("ca.crt"), cert.pem())?;
            write_private(&p("ca.key"), &key.serialize_pem())?;
        }
        let ca_pem = std::fs::read_to_string(p("ca.crt"))?;
        if !p("server.key").exists() {
            let ca_key = KeyPair::from_pem(&std::fs::read_to_string(p("ca.key"))?)?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "sluice-server");
            params.distinguished_name = dn;
            for h in hosts {
                params.subject_alt_names.push(match h.parse() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(h.clone().try_into()?),
                });
            }
            let cert = params.signed_by(&key, &issuer)?;
            std::fs::write(p("server.crt"), cert.pem())?;
            write_private(&p("server.key"), &key.serialize_pem())?;
        }
        let tok = |n: &str| -> anyhow::Result<String> {
            if !p(n).exists() {
                write_private(&p(n), &token()?)?;
            }
            Ok(std::fs::read_to_string(p(n))?.trim().to_string())
        };
        Ok(Self {
            cert_pem: std::fs::read_to_string(p("server.crt"))?,
            key_pem: std::fs::read_to_string(p("server.key"))?,
            admin_token: tok("admin.token")?,
            node_token: tok("node.token")?,
            scheduler_token: tok("scheduler.token")?,
            controller_manager_token: tok("controller-manager.token")?,
            ca_pem,
        })
    }

    /// A kubeconfig for `user` with `token` against `server`.
    pub fn kubeconfig(&self, server: &str, user: &str, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sluice\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: sluice\n  context:\n    cluster: sluice\n    user: {user}\ncurrent-context: sluice\n"
        )
    }

    /// Every bearer token the server accepts.
    pub fn tokens(&self) -> std::collections::HashSet<String> {
        [
            &self.admin_token,
            &self.node_token,
            &self.scheduler_token,
            &self.controller_manager_token,
        ]
        .into_iter()
        .cloned()
        .collect()
    }

    /// One kubeconfig per credential. `admin.kubeconfig` goes last: tests
    /// and `cargo xtask up` take its appearance as "the API answers".
    pub fn write_kubeconfigs(&self, dir: &Path, server: &str) -> anyhow::Result<()> {
        for (file, user, token) in [
            ("node.kubeconfig", "node", &self.node_token),
            (
                SCHEDULER_KUBECONFIG,
                "system:kube-scheduler",
                &self.scheduler_token,
            ),
            (
                CONTROLLER_MANAGER_KUBECONFIG,
                "system:kube-controller-manager",
                &self.controller_manager_token,
            ),
            ("admin.kubeconfig", "admin", &self.admin_token),
        ] {
            write_private(&dir.join(file), &self.kubeconfig(server, user, token))?;
        }
        Ok(())
    }
}
