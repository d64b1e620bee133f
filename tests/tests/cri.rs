//! sluice-cni called by a real containerd through CRI, as the kubelet
//! would: RunPodSandbox -> CNI ADD (with K8S_POD_* CNI_ARGS),
//! StopPodSandbox -> DEL, a second StopPodSandbox -> DEL whose netns is
//! already gone, with the reference tuning, portmap and bandwidth plugins
//! chained after sluice.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    PortMapping, Protocol, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
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
const HOST_PORT: i32 = 18080;

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
async fn web_pod(c: &mut RuntimeClient, config: PodSandboxConfig) -> (String, String, Ipv4Addr) {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
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

/// The device the node routes `ip` through.
fn route_dev(node: &NetNs, ip: Ipv4Addr) -> String {
    let out = node.ip(["route", "get", &ip.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no dev in `ip route get {ip}`: {text}"))
        .to_string()
}

/// Bytes the `kind` qdisc on `dev` has sent (`tc -s -j qdisc show`).
fn qdisc_sent(node: &NetNs, dev: &str, kind: &str) -> u64 {
    let out = sluice_tests::run_ok(
        "tc",
        ["-n", &node.name, "-s", "-j", "qdisc", "show", "dev", dev],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .find(|q| q["kind"] == kind)
        .and_then(|q| q["bytes"].as_u64())
        .unwrap_or_else(|| panic!("no {kind} qdisc with counters on {dev}: {v}"))
}

/// GET / from the calling thread's namespace, retried while httpd starts.
fn http_get(to: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(b) if b.contains(MARKER) => return b,
            other if Instant::now() > deadline => panic!("GET http://{to}/: {other:?}"),
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
    // containerd 1.6's libcni speaks CNI up to 1.0.0. sluice first, then
    // the reference plugins a cluster typically chains; sluice declares the
    // bandwidth capability so it knows which pods get shaped.
    let conflist = json!({
        "cniVersion": "1.0.0", "name": net,
        "plugins": [
            {"type": "sluice-cni", "podCIDR": cidr.to_string(),
             "dataDir": ipam.display().to_string(),
             "bpffs": pins.path.display().to_string(), "mtu": 1500,
             "capabilities": {"bandwidth": true}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
        ],
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
    let reference = std::path::Path::new(sluice_tests::cni_suite::REFERENCE_PLUGINS);
    let chained = ["tuning", "portmap", "bandwidth"].map(|p| reference.join(p));
    let mut plugins = vec![shim.as_path()];
    plugins.extend(chained.iter().map(|p| p.as_path()));
    let ctd = Containerd::start(&node, &conflist, &plugins);
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
    let (sb_a, _ctr_a, ip_a) =
        rt.block_on(web_pod(&mut c, sandbox_config("web-a", &ctd.cgroup_parent)));
    let (sb_b, ctr_b, ip_b) =
        rt.block_on(web_pod(&mut c, sandbox_config("web-b", &ctd.cgroup_parent)));
    // web-c goes through the whole chain: a host port (portmap) and both
    // bandwidth limits (bandwidth).
    let mut shaped = sandbox_config("web-c", &ctd.cgroup_parent);
    shaped.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: HOST_PORT,
        host_ip: String::new(),
    }];
    shaped.annotations = [
        ("kubernetes.io/ingress-bandwidth", "100M"),
        ("kubernetes.io/egress-bandwidth", "100M"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let (sb_c, ctr_c, ip_c) = rt.block_on(web_pod(&mut c, shaped));
    for ip in [ip_a, ip_b, ip_c] {
        assert!(
            cidr.contains(&ip),
            "pod IP {ip} outside sluice's podCIDR {cidr}"
        );
    }
    let mut held = allocations();
    held.sort();
    let mut want = vec![ip_a.to_string(), ip_b.to_string(), ip_c.to_string()];
    want.sort();
    want.dedup();
    assert_eq!(held, want, "IPAM allocations (distinct addresses)");
    assert_eq!(pins.endpoints(), 3, "one endpoint map entry per pod");

    // Node -> pod, then pod -> pod (through the in-kernel hand-off).
    let body = node.run(|| http_get(SocketAddr::from((ip_a, 8080))));
    assert!(body.contains(MARKER), "{body}");
    let wget = |from: &str, to: Ipv4Addr| {
        let r = rt
            .block_on(
                c.clone().exec_sync(ExecSyncRequest {
                    container_id: from.to_string(),
                    cmd: ["wget", "-q", "-O", "-", &format!("http://{to}:8080/")]
                        .map(String::from)
                        .to_vec(),
                    timeout: 10,
                }),
            )
            .expect("ExecSync wget")
            .into_inner();
        assert_eq!(
            (r.exit_code, String::from_utf8_lossy(&r.stdout).trim()),
            (0, MARKER),
            "wget {to} from {from}: stderr {}",
            String::from_utf8_lossy(&r.stderr)
        );
    };
    wget(&ctr_b, ip_a);

    // The chain after sluice did its part. portmap: the host port on the
    // node reaches web-c.
    let gateway = Ipv4Addr::from(u32::from(cidr.network()) + 1);
    let body = node.run(|| http_get(SocketAddr::from((gateway, HOST_PORT as u16))));
    assert!(body.contains(MARKER), "{body}");
    // bandwidth: its qdiscs see pod-to-pod traffic in both directions
    // (sluice hands such packets to them instead of around them).
    let veth_c = route_dev(&node, ip_c);
    let ifb = links(&node)
        .into_iter()
        .find(|l| l.starts_with("bwp"))
        .expect("bandwidth plugin's ifb device");
    let (into_c, out_of_c) = (
        qdisc_sent(&node, &veth_c, "tbf"),
        qdisc_sent(&node, &ifb, "tbf"),
    );
    wget(&ctr_b, ip_c);
    wget(&ctr_c, ip_a);
    assert!(
        qdisc_sent(&node, &veth_c, "tbf") > into_c,
        "pod b -> web-c bypassed web-c's ingress shaping on {veth_c}"
    );
    assert!(
        qdisc_sent(&node, &ifb, "tbf") > out_of_c,
        "web-c -> pod a bypassed web-c's egress shaping on {ifb}"
    );

    // Teardown as the kubelet does it: stop (DEL with the netns), stop
    // again (DEL with the netns already gone), then remove. Everything is
    // released after the first; the others must succeed too.
    for sb in [&sb_a, &sb_b, &sb_c, &sb_a, &sb_b, &sb_c] {
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
    for sb in [sb_a, sb_b, sb_c] {
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
    assert_eq!(adds.len(), 3, "{log}");
    for a in &adds {
        assert!(
            a[2].contains("K8S_POD_NAME=web-") && a[2].contains("K8S_POD_NAMESPACE=default"),
            "ADD without K8S_POD_* CNI_ARGS: {log}"
        );
    }
    let dels = of("DEL");
    assert!(dels.len() >= 6, "expected two DELs per pod: {log}");
    assert!(
        dels.iter().any(|d| d[1].is_empty()),
        "no DEL with an empty netns: {log}"
    );
}
