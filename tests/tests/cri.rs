//! sluice-cni called by a real containerd through CRI, as the kubelet
//! would: RunPodSandbox -> CNI ADD (with K8S_POD_* CNI_ARGS),
//! StopPodSandbox -> DEL, RemovePodSandbox -> a second DEL whose netns is
//! already gone.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use serde_json::json;
use sluice_tests::{
    NetNs, PinDir, bin,
    cni_suite::links,
    cri::{BUSYBOX_REF, Containerd, RuntimeClient, busybox_image, runtime},
    require_root,
    topology::TempDir,
    unique,
};

const MARKER: &str = "sluice-cri-ok";

fn sandbox_config(name: &str, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: unique("uid"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod sandbox with one busybox httpd container; returns (sandbox id,
/// container id, pod IP).
async fn web_pod(
    c: &mut RuntimeClient,
    name: &str,
    cgroup_parent: &str,
) -> (String, String, Ipv4Addr) {
    let config = sandbox_config(name, cgroup_parent);
    let sb = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"))
        .into_inner()
        .pod_sandbox_id;
    let status = c
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sb.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("sandbox status");
    let ip: Ipv4Addr = status
        .network
        .as_ref()
        .map(|n| n.ip.as_str())
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("sandbox {name} has no IPv4 address ({e}): {status:?}"));
    let ctr = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sb.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "web".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: BUSYBOX_REF.into(),
                    ..Default::default()
                }),
                command: vec!["/bin/httpd".into()],
                args: ["-f", "-p", "8080", "-h", "/www"]
                    .map(String::from)
                    .to_vec(),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer in {name}: {e}"))
        .into_inner()
        .container_id;
    c.start_container(StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer in {name}: {e}"));
    (sb, ctr, ip)
}

/// GET / from the calling thread's namespace, retried while httpd starts.
fn http_get(ip: Ipv4Addr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::from((ip, 8080)), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(b) if b.contains(MARKER) => return b,
            other if Instant::now() > deadline => panic!("GET http://{ip}:8080/: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn containerd_pods_get_sluice_ips_serve_http_and_release_on_teardown() {
    if !require_root("containerd_pods_get_sluice_ips_serve_http_and_release_on_teardown") {
        return;
    }
    let node = NetNs::new();
    let (pins, data, img) = (PinDir::new(), TempDir::new(), TempDir::new());
    let cidr: ipnet::Ipv4Net = "10.80.7.0/28".parse().expect("cidr");
    let ipam = data.0.join("ipam");
    let net = unique("cri");
    // containerd 1.6's libcni speaks CNI up to 1.0.0.
    let conflist = json!({
        "cniVersion": "1.0.0", "name": net,
        "plugins": [{"type": "sluice-cni", "podCIDR": cidr.to_string(),
                     "dataDir": ipam.display().to_string(),
                     "bpffs": pins.path.display().to_string(), "mtu": 1500}],
    });
    let links_before = links(&node);
    // A logging shim in front of the plugin, so the test sees each call
    // exactly as containerd made it.
    let shim_dir = TempDir::new();
    let calls = shim_dir.0.join("calls.log");
    let shim = shim_dir.0.join("sluice-cni");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\necho \"$CNI_COMMAND|$CNI_NETNS|$CNI_ARGS\" >> {}\nexec {} \"$@\"\n",
            calls.display(),
            bin("sluice-cni").display()
        ),
    )
    .expect("write shim");
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod shim");
    let ctd = Containerd::start(&node, &conflist, &[&shim]);
    ctd.import(&busybox_image(&img.0, MARKER));
    let allocations = || -> Vec<String> {
        std::fs::read_dir(ipam.join(&net))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    };

    let rt = runtime();
    let mut c = rt.block_on(ctd.runtime_client()).expect("CRI client");
    let (sb_a, _ctr_a, ip_a) = rt.block_on(web_pod(&mut c, "web-a", &ctd.cgroup_parent));
    let (sb_b, ctr_b, ip_b) = rt.block_on(web_pod(&mut c, "web-b", &ctd.cgroup_parent));
    for ip in [ip_a, ip_b] {
        assert!(
            cidr.contains(&ip),
            "pod IP {ip} outside sluice's podCIDR {cidr}"
        );
    }
    assert_ne!(ip_a, ip_b);
    let mut held = allocations();
    held.sort();
    let mut want = vec![ip_a.to_string(), ip_b.to_string()];
    want.sort();
    assert_eq!(held, want, "IPAM allocations");
    assert_eq!(pins.endpoints(), 2, "one endpoint map entry per pod");

    // Node -> pod, then pod -> pod (through the in-kernel hand-off).
    let body = node.run(|| http_get(ip_a));
    assert!(body.contains(MARKER), "{body}");
    let wget = rt
        .block_on(
            c.exec_sync(ExecSyncRequest {
                container_id: ctr_b,
                cmd: ["wget", "-q", "-O", "-", &format!("http://{ip_a}:8080/")]
                    .map(String::from)
                    .to_vec(),
                timeout: 10,
            }),
        )
        .expect("ExecSync wget")
        .into_inner();
    assert_eq!(
        (wget.exit_code, String::from_utf8_lossy(&wget.stdout).trim()),
        (0, MARKER),
        "pod b -> pod a: stderr {}",
        String::from_utf8_lossy(&wget.stderr)
    );

    // Teardown as the kubelet does it: stop (DEL with the netns), stop
    // again (DEL with the netns already gone), then remove. Everything is
    // released after the first; the others must succeed too.
    for sb in [&sb_a, &sb_b, &sb_a, &sb_b] {
        rt.block_on(c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sb.to_string(),
        }))
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", ctd.output()));
    }
    assert_eq!(
        allocations(),
        Vec::<String>::new(),
        "addresses held after stop"
    );
    assert_eq!(links(&node), links_before, "veths left after stop");
    assert_eq!(pins.endpoints(), 0, "endpoint entries left after stop");
    for sb in [sb_a, sb_b] {
        rt.block_on(c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: sb }))
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", ctd.output()));
    }
    assert_eq!(allocations(), Vec::<String>::new());
    assert_eq!(links(&node), links_before);

    // What containerd sent: one ADD per pod carrying the kubelet-style
    // K8S_POD_* arguments, and at least two DELs per pod, one of them
    // with no netns left.
    let log = std::fs::read_to_string(&calls).expect("calls log");
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.splitn(3, '|').collect()).collect();
    let of = |cmd: &str| lines.iter().filter(|l| l[0] == cmd).collect::<Vec<_>>();
    let adds = of("ADD");
    assert_eq!(adds.len(), 2, "{log}");
    for a in &adds {
        assert!(
            a[2].contains("K8S_POD_NAME=web-") && a[2].contains("K8S_POD_NAMESPACE=default"),
            "ADD without K8S_POD_* CNI_ARGS: {log}"
        );
    }
    let dels = of("DEL");
    assert!(dels.len() >= 4, "expected two DELs per pod: {log}");
    assert!(
        dels.iter().any(|d| d[1].is_empty()),
        "no DEL with an empty netns: {log}"
    );
}
