//! Test support: the one place that builds isolated "nodes" for tests.
//!
//! A node is (network namespace, cgroup v2 subtree, bpffs pin dir). Every
//! resource here gets a unique name (`sluice-t-<pid>-<n>` / `sl<pid><n>` for
//! interfaces) and is removed in `Drop`, so a panicking test still cleans up.
//! Processes are only ever ended by the PID we spawned them with.

use std::{
    ffi::OsStr,
    fs::File,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{
    sched::CloneFlags,
    sys::signal::{Signal, kill},
    unistd::Pid,
};

pub mod api_server;
pub mod bench_args;
pub mod cluster;
pub mod cni_suite;
pub mod cp_bench;
pub mod cri;
pub mod etcd;
pub mod held;
pub mod poll;
pub mod store_suite;
pub mod topology;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, e.g. `sluice-t-4242-3`.
pub fn unique(kind: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("sluice-t{kind}-{}-{n}", std::process::id())
}

/// An interface name (<= 15 bytes) unique to this process and call.
pub fn unique_ifname() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("sl{}x{n}", std::process::id() % 1_000_000)
}

/// Privileged tests call this first and return early when it is false.
/// Without root a test fails, unless `SLUICE_TEST_UNPRIVILEGED=1` (set by
/// `cargo xtask test --unprivileged`) asks for the unprivileged tests only:
/// then it skips with a printed line, so a skipped run is never silently
/// green by accident.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("SLUICE_TEST_UNPRIVILEGED").is_some_and(|v| v == "1"),
            "{test} needs root (network namespaces, cgroups, eBPF); run as root, or \
             `cargo xtask test --unprivileged` to skip the privileged tests"
        );
        // Straight to the stderr handle: libtest captures only the print
        // macros, so this line shows up in a normal `cargo test` run.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {test}: needs root (network namespaces, cgroups, eBPF)"
        );
    }
    root
}

/// Path of a sluice binary built by `cargo xtask build` (SLUICE_BIN_DIR when
/// run through `cargo xtask test`, else the workspace's target/release).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SLUICE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not found: run `cargo xtask build` first (or use `cargo xtask test`)",
        p.display()
    );
    p
}

/// Runs a command to completion and panics with its output if it fails.
pub fn run_ok<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A command that joins the network namespace at `netns` between fork and
/// exec (setns, not `ip netns exec`, which would remount /sys and hide the
/// host's cgroup and bpffs mounts).
pub fn command_in(netns: &Path, program: impl AsRef<OsStr>) -> Command {
    use std::os::fd::AsRawFd as _;
    let ns = File::open(netns).expect("open netns");
    let mut c = Command::new(program);
    // SAFETY: setns is async-signal-safe; `ns` (O_CLOEXEC) lives in the
    // closure, so its fd is open until the command is dropped.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// A named network namespace (`ip netns add`), deleted on drop together with
/// every interface inside it.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> Self {
        let name = unique("ns");
        run_ok("ip", ["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip <args>` inside this namespace.
    pub fn ip<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run_ok("ip", all)
    }

    /// [`command_in`] this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.path(), program)
    }

    /// Runs `f` on a fresh thread that has joined this namespace (setns), so
    /// the caller's thread and its paths are untouched.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair and addresses each end; the pair
/// disappears with either namespace.
pub fn veth_between(a: &NetNs, a_addr: &str, b: &NetNs, b_addr: &str) -> (String, String) {
    let (ia, ib) = (unique_ifname(), unique_ifname());
    run_ok(
        "ip",
        [
            "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns",
            &b.name,
        ],
    );
    a.ip(["addr", "add", a_addr, "dev", &ia]);
    b.ip(["addr", "add", b_addr, "dev", &ib]);
    a.ip(["link", "set", &ia, "up"]);
    b.ip(["link", "set", &ib, "up"]);
    (ia, ib)
}

/// A command that moves itself into the cgroup v2 directory `cgroup`
/// before exec (for threads that hold a path, not the [`TestCgroup`]).
pub fn command_in_cgroup(cgroup: &Path, program: &str) -> Command {
    use std::os::unix::ffi::OsStrExt as _;
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .expect("cgroup path has no NUL");
    let mut c = Command::new(program);
    // SAFETY: between fork and exec only async-signal-safe libc calls on
    // memory prepared before the fork (no allocation).
    unsafe {
        c.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    c
}

/// A child cgroup v2 directory. Drop kills what the test left in it (only
/// processes the test started can be there) and removes it.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Self {
        let root = sluice_datapath::node::cgroup2_root().expect("no cgroup2 mount in /proc/mounts");
        let path = root.join(unique("cg"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// A command that moves itself into this cgroup before exec, so every
    /// socket it opens is subject to the cgroup's hooks.
    pub fn command(&self, program: &str) -> Command {
        command_in_cgroup(&self.path, program)
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.pids() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if std::fs::remove_dir(&self.path).is_ok() || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A node's bpffs pin directory under /sys/fs/bpf, removed on drop.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        let path = PathBuf::from("/sys/fs/bpf").join(unique("pin"));
        // Created by the code under test; we only own the name.
        Self { path }
    }
}

impl PinDir {
    /// Entries in the pinned pod endpoint map. Panics when the map is not
    /// pinned or cannot be dumped: a count of 0 must mean an empty map,
    /// never a failed look.
    pub fn endpoints(&self) -> usize {
        let pin = self.path.join("EP4_ENDPOINTS");
        let path = pin.to_str().expect("UTF-8 pin path");
        let out = run_ok("bpftool", ["-j", "map", "dump", "pinned", path]);
        let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bpftool map dump {}: not JSON ({e}): {}",
                pin.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        });
        dump.as_array()
            .unwrap_or_else(|| panic!("bpftool map dump {}: not an array: {dump}", pin.display()))
            .len()
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A sluice binary running in the background with its stderr captured line
/// by line. Drop sends SIGTERM, then SIGKILL, to this PID only.
pub struct Daemon {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn spawn<I, S>(name: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(bin(name));
        c.args(args);
        Self::from_command(name, c)
    }

    /// Runs `cmd` in the background, collecting its stdout and stderr lines
    /// (echoed to the test's stderr with `tag`, so failures show them).
    pub fn from_command(tag: &str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {tag}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let sink = lines.clone();
            let tag = tag.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("[{tag}] {line}");
                    sink.lock().expect("lines lock").push(line);
                }
            });
        }
        Self {
            child: Some(child),
            lines,
        }
    }

    /// The process ID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Number of output lines so far that match `pred`.
    pub fn count_lines(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .expect("lines lock")
            .iter()
            .filter(|l| pred(l))
            .count()
    }

    /// Waits until at least `n` output lines match `pred`.
    pub fn wait_for_count(
        &mut self,
        what: &str,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while self.count_lines(&pred) < n {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {n}x {what}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (a crash: no cleanup code runs) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a stderr line matches `pred`; panics with everything seen
    /// so far on timeout or if the process exits first.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.find_line(&pred) {
                return l;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                // Give the reader thread a moment to drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(l) = self.find_line(&pred) {
                    return l;
                }
                panic!(
                    "daemon exited ({status}) before {what}; output:\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; output:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn find_line(&self, pred: &impl Fn(&str) -> bool) -> Option<String> {
        let lines = self.lines.lock().expect("lines lock");
        lines.iter().find(|l| pred(l)).cloned()
    }

    pub fn output(&self) -> String {
        self.lines.lock().expect("lines lock").join("\n")
    }

    /// SIGTERM and wait (up to 10 s, then SIGKILL); returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().expect("wait after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}
