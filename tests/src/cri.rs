//! A private containerd driven over CRI, the way the kubelet drives it.
//!
//! Everything containerd owns lives under one temp dir: root, state, the
//! gRPC socket, pod network namespaces (`netns_mounts_under_state_dir`),
//! CNI config and plugin dir. The daemon runs in a test "node" network
//! namespace, so the CNI plugin it calls wires pods into that namespace and
//! never into the host's. Images come from [`busybox_image`], an OCI archive
//! built offline from Debian's busybox-static, so no registry is involved.
//!
//! Drop removes every pod sandbox still known to containerd (which stops
//! its shim and container processes and runs the CNI DELs), then stops the
//! daemon by PID, unmounts anything left under the temp dir and removes
//! the pod cgroup parent from every hierarchy.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ListPodSandboxRequest, RemovePodSandboxRequest, StopPodSandboxRequest, VersionRequest,
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Daemon, NetNs, run_ok, topology::TempDir, unique};

/// The CRI v1 runtime client on tonic (what the kubelet will use).
pub type RuntimeClient = RuntimeServiceClient<Channel>;
pub type ImageClient = ImageServiceClient<Channel>;

/// Binaries a CRI test needs; the bootstrap installs them (Debian
/// containerd, runc, busybox-static, containernetworking-plugins).
pub const REQUIRED: &[&str] = &[
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/bin/ctr",
    "/usr/sbin/runc",
    "/bin/busybox",
];

pub struct Containerd {
    pub dir: TempDir,
    pub socket: PathBuf,
    /// cgroupfs parent for pods (`LinuxPodSandboxConfig.cgroup_parent`).
    pub cgroup_parent: String,
    daemon: Option<Daemon>,
}

impl Containerd {
    /// Starts containerd in `node` with `conflist` as its only CNI config
    /// and `plugins` (paths) linked into its CNI bin dir next to the
    /// reference `loopback` plugin that CRI also calls.
    pub fn start(node: &NetNs, conflist: &Value, plugins: &[&Path]) -> Self {
        for b in REQUIRED {
            assert!(
                Path::new(b).exists(),
                "{b} missing: run `cargo xtask bootstrap`"
            );
        }
        let dir = TempDir::new();
        let d = |p: &str| dir.0.join(p);
        for sub in ["root", "state", "cni-bin", "cni-conf", "opt", "logs"] {
            std::fs::create_dir_all(d(sub)).expect("containerd dirs");
        }
        let mut bins: Vec<PathBuf> = plugins.iter().map(|p| p.to_path_buf()).collect();
        bins.push(Path::new(crate::cni_suite::REFERENCE_PLUGINS).join("loopback"));
        for b in &bins {
            let name = b.file_name().expect("plugin file name");
            std::os::unix::fs::symlink(b, d("cni-bin").join(name)).expect("link plugin");
        }
        std::fs::write(
            d("cni-conf").join("10-test.conflist"),
            serde_json::to_string_pretty(conflist).expect("conflist"),
        )
        .expect("write conflist");
        let socket = d("containerd.sock");
        // restrict_oom_score_adj: this machine kind has no CAP_SYS_RESOURCE,
        // so containerd must not try to lower a container's oom_score_adj.
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = d("root").display(),
            state = d("state").display(),
            sock = socket.display(),
            opt = d("opt").display(),
            image = BUSYBOX_REF,
            bin = d("cni-bin").display(),
            conf = d("cni-conf").display(),
        );
        std::fs::write(d("config.toml"), config).expect("write containerd config");
        let mut cmd = node.command("/usr/bin/containerd");
        cmd.arg("--config").arg(d("config.toml"));
        let daemon = Daemon::from_command("containerd", cmd);
        let mut me = Self {
            cgroup_parent: format!("/{}", unique("cri")),
            socket,
            daemon: Some(daemon),
            dir,
        };
        me.wait_ready();
        me
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let rt = runtime();
        loop {
            let ok = rt.block_on(async {
                let mut c = self.runtime_client().await.ok()?;
                c.version(VersionRequest::default()).await.ok()
            });
            if ok.is_some() {
                return;
            }
            let exited = self
                .daemon
                .as_mut()
                .and_then(|d| d.pid())
                .is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if exited || Instant::now() > deadline {
                panic!(
                    "containerd did not answer CRI Version on {}; output:\n{}",
                    self.socket.display(),
                    self.daemon.as_ref().map(|d| d.output()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let path = self.socket.clone();
        // The URI is required by tonic but unused: the connector dials the socket.
        Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
    }

    pub async fn runtime_client(&self) -> Result<RuntimeClient, tonic::transport::Error> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    pub async fn image_client(&self) -> Result<ImageClient, tonic::transport::Error> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }

    /// Imports an OCI archive into CRI's `k8s.io` namespace (CRI has no
    /// import call; `ctr` is containerd's own client).
    pub fn import(&self, archive: &Path) {
        run_ok(
            "ctr",
            [
                "--address".as_ref(),
                self.socket.as_os_str(),
                "--namespace".as_ref(),
                "k8s.io".as_ref(),
                "images".as_ref(),
                "import".as_ref(),
                archive.as_os_str(),
            ],
        );
    }

    /// The daemon's output so far (for assertion messages).
    pub fn output(&self) -> String {
        self.daemon.as_ref().map(|d| d.output()).unwrap_or_default()
    }

    /// Removes every sandbox containerd still has: stops containers and
    /// their shims and runs the CNI teardown.
    fn remove_all_sandboxes(&self) {
        let rt = runtime();
        rt.block_on(async {
            let Ok(mut c) = self.runtime_client().await else {
                return;
            };
            let Ok(list) = c.list_pod_sandbox(ListPodSandboxRequest::default()).await else {
                return;
            };
            for sb in list.into_inner().items {
                let _ = c
                    .stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: sb.id.clone(),
                    })
                    .await;
                let _ = c
                    .remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: sb.id,
                    })
                    .await;
            }
        });
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all_sandboxes();
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
        // Anything still mounted under our dir (a crash mid-test).
        let root = self.dir.0.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(
                hierarchy
                    .path()
                    .join(self.cgroup_parent.trim_start_matches('/')),
            );
        }
    }
}

/// A current-thread tokio runtime for driving CRI calls from a sync test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The image reference [`busybox_image`] is imported as; also the sandbox
/// ("pause") image of [`Containerd`].
pub const BUSYBOX_REF: &str = "sluice.test/busybox:1";

/// Applets linked in the image's /bin.
const APPLETS: &[&str] = &[
    "sh", "sleep", "httpd", "cat", "ls", "ip", "wget", "hostname",
];

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Writes an OCI image archive under `dir` for [`BUSYBOX_REF`]: one
/// uncompressed layer with /bin/busybox (Debian's busybox-static) and
/// applet links, and `/www/index.html` containing `marker`. Default
/// command: sleep (so it also serves as the pod sandbox image).
pub fn busybox_image(dir: &Path, marker: &str) -> PathBuf {
    let root = dir.join("rootfs");
    for sub in ["bin", "www", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(sub)).expect("rootfs dirs");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).expect("applet link");
    }
    std::fs::write(root.join("www/index.html"), marker).expect("index.html");
    let layer_tar = dir.join("layer.tar");
    run_ok(
        "tar",
        [
            "--numeric-owner".as_ref(),
            "--owner=0".as_ref(),
            "--group=0".as_ref(),
            "-C".as_ref(),
            root.as_os_str(),
            "-cf".as_ref(),
            layer_tar.as_os_str(),
            ".".as_ref(),
        ],
    );
    let layer = std::fs::read(&layer_tar).expect("read layer");
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string();
    let config_digest = format!("sha256:{}", sha256_hex(config.as_bytes()));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let manifest_digest = format!("sha256:{}", sha256_hex(manifest.as_bytes()));
    let oci = dir.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let blob = |digest: &str, bytes: &[u8]| {
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(blobs.join(hex), bytes).expect("write blob");
    };
    blob(&layer_digest, &layer);
    blob(&config_digest, config.as_bytes());
    blob(&manifest_digest, manifest.as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": BUSYBOX_REF,
                "org.opencontainers.image.ref.name": "1",
            },
        }],
    });
    std::fs::write(oci.join("index.json"), index.to_string()).expect("index.json");
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let archive = dir.join("busybox-oci.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar oci: {out:?}");
    archive
}
