//! `sluice-agent` as a black box on a child cgroup the test creates: the
//! connect4 hook is attached, runs for sockets in that cgroup, its eBPF-side
//! log reaches the agent's tracing output, and it stays attached through
//! its pinned link after the agent exits, until the pin is removed.
use std::{net::TcpListener, process::Command, time::Duration};

use sluice_tests::{Daemon, PinDir, TestCgroup, bin, require_root, run_ok};

fn cgroup_programs(cg: &TestCgroup) -> String {
    let out = run_ok(
        "bpftool",
        ["cgroup", "show", cg.path.to_str().expect("utf8 path")],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Opens a loopback listener and connects to it once from a process inside
/// `cg`; returns the port.
fn connect_from_cgroup(cg: &TestCgroup) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("addr").port();
    let status = cg
        .command("bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
        .status()
        .expect("spawn bash");
    assert!(status.success(), "connect from cgroup failed: {status}");
    port
}

fn sock4_runs(pins: &PinDir) -> u64 {
    let out = run_ok(
        bin("sluice-agent").to_str().expect("utf8"),
        [
            "bpf",
            "stats",
            "-o",
            "json",
            "--bpffs",
            pins.path.to_str().expect("utf8"),
        ],
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    rows.as_array()
        .expect("array")
        .iter()
        .find(|r| r["program"] == "sock4_connect")
        .and_then(|r| r["runs"].as_u64())
        .expect("sock4_connect row")
}

fn start_agent(cg: &TestCgroup, pins: &PinDir, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--cgroup".to_owned(),
        cg.path.display().to_string(),
        "--bpffs".to_owned(),
        pins.path.display().to_string(),
        // Host netns: tests run in parallel, so no fixed port.
        "--metrics-addr".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut agent = Daemon::spawn("sluice-agent", &args);
    agent.wait_for_line("datapath attached", Duration::from_secs(60), |l| {
        l.contains("datapath attached")
    });
    agent
}

#[test]
fn agent_attaches_connect4_and_forwards_ebpf_logs_to_tracing() {
    if !require_root("agent_attaches_connect4_and_forwards_ebpf_logs_to_tracing") {
        return;
    }
    let cg = TestCgroup::new();
    let pins = PinDir::new();
    let mut agent = start_agent(&cg, &pins, &["--bpf-log-level", "debug"]);
    let shown = cgroup_programs(&cg);
    assert!(
        shown.contains("sock4_connect") && shown.contains("cgroup_inet4_connect"),
        "bpftool cgroup show:\n{shown}"
    );

    let port = connect_from_cgroup(&cg);
    let want = format!("connect4 dst=127.0.0.1:{port} proto=6");
    let line = agent.wait_for_line("the eBPF connect4 log line", Duration::from_secs(60), |l| {
        l.contains(&want)
    });
    assert!(
        line.contains("DEBUG") && line.contains("sluice_ebpf"),
        "{line}"
    );
    assert!(sock4_runs(&pins) >= 1);

    let status = agent.stop();
    assert!(status.success(), "agent exit on SIGTERM: {status}");
    // The data plane outlives the agent: all five socket hooks stay.
    let shown = cgroup_programs(&cg);
    for hook in [
        "sock4_connect",
        "sock4_sendmsg",
        "sock4_recvmsg",
        "sock4_getpeername",
        "sock4_release",
    ] {
        assert!(
            shown.contains(hook),
            "{hook} detached with the agent:\n{shown}"
        );
    }
    // Removing the pinned links is what detaches them.
    std::fs::remove_dir_all(pins.path.join("links")).expect("remove link pins");
    let shown = cgroup_programs(&cg);
    assert!(
        !shown.contains("sock4_"),
        "hooks left after unpinning:\n{shown}"
    );
}

/// Kernel functions the loaded `sock4_connect` on `cg` calls, from the
/// program as the verifier left it (`bpftool prog dump xlated`).
fn connect4_calls(cg: &TestCgroup) -> Vec<String> {
    let out = run_ok(
        "bpftool",
        ["-j", "cgroup", "show", cg.path.to_str().expect("utf8 path")],
    );
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cgroup show json");
    let id = progs
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["name"] == "sock4_connect")
        .and_then(|p| p["id"].as_u64())
        .unwrap_or_else(|| panic!("no sock4_connect on the cgroup: {progs}"));
    let out = run_ok("bpftool", ["prog", "dump", "xlated", "id", &id.to_string()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" call ").map(|(_, f)| f.to_owned()))
        .collect()
}

/// Below `--bpf-log-level debug` the verifier removes the debug log
/// statements: the loaded program has no ring buffer call left (so it
/// cannot log, whatever it is given, and pays nothing for it). The same
/// look at a debug-level agent's program finds them.
#[test]
fn ebpf_debug_logs_are_compiled_out_at_the_default_level() {
    if !require_root("ebpf_debug_logs_are_compiled_out_at_the_default_level") {
        return;
    }
    let logs = |calls: &[String]| calls.iter().any(|c| c.starts_with("bpf_ringbuf_"));
    let (cg, pins) = (TestCgroup::new(), PinDir::new());
    let mut agent = start_agent(&cg, &pins, &[]);
    connect_from_cgroup(&cg);
    assert!(sock4_runs(&pins) >= 1, "connect4 did not run");
    let calls = connect4_calls(&cg);
    assert!(
        calls.iter().any(|c| c.starts_with("bpf_set_retval")),
        "not the translating program: {calls:?}"
    );
    assert!(
        !logs(&calls),
        "log calls left at the default level: {calls:?}"
    );
    assert!(agent.stop().success());

    let (cg, pins) = (TestCgroup::new(), PinDir::new());
    let mut agent = start_agent(&cg, &pins, &["--bpf-log-level", "debug"]);
    let calls = connect4_calls(&cg);
    assert!(logs(&calls), "no log calls at debug level: {calls:?}");
    assert!(agent.stop().success());
}

#[test]
fn bad_node_flags_exit_2_with_one_line_naming_the_value() {
    // No root needed: every case fails before anything privileged happens.
    let agent = bin("sluice-agent");
    let missing_bpffs = std::env::temp_dir()
        .join(sluice_tests::unique("notbpffs"))
        .join("pins");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--cgroup".into(), "/nonexistent/sluice-cg".into()],
            "/nonexistent/sluice-cg".into(),
        ),
        (vec!["--bpf-log-level".into(), "loud".into()], "loud".into()),
        (
            vec!["--bpf-lb-max-backends".into(), "8".into()],
            "'8'".into(),
        ),
        (
            vec!["--bpf-lb-max-services".into(), "4294967296".into()],
            "4294967296".into(),
        ),
        (
            vec!["--bpffs".into(), missing_bpffs.display().to_string()],
            missing_bpffs.display().to_string(),
        ),
        (
            vec!["--netns".into(), "/run/netns/sluice-no-such-ns".into()],
            "/run/netns/sluice-no-such-ns".into(),
        ),
    ];
    for (args, named) in cases {
        let out = Command::new(&agent)
            .args(&args)
            .output()
            .expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(&named),
            "{args:?}: first line does not name {named}: {stderr}"
        );
    }
    assert!(
        !missing_bpffs.parent().expect("parent").exists(),
        "a rejected --bpffs must not create directories"
    );
}
