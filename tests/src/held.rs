//! A long-lived TCP connection held by `sluice-testpod hold` and driven
//! line by line, for tests that check an established flow survives
//! something (an agent restart, a conntrack GC pass).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdout, Command, Stdio},
};

pub struct Held {
    child: Child,
    out: BufReader<ChildStdout>,
    /// The backend that answered the connection.
    pub backend: String,
}

impl Held {
    /// Runs `cmd` (a `sluice-testpod hold ADDR` command) and waits for its
    /// connection; panics if it did not connect to a backend pod.
    pub fn open(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sluice-testpod hold");
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut backend = String::new();
        out.read_line(&mut backend).expect("hold: first line");
        let backend = backend.trim().to_string();
        let mut held = Self {
            child,
            out,
            backend,
        };
        assert!(
            held.backend.starts_with("pod-"),
            "hold did not connect: {:?}",
            held.backend
        );
        // The first line came from the backend's greeting; a ping proves
        // the connection carries data both ways.
        let first = held.ping();
        assert_eq!(first, format!("{} ping", held.backend), "fresh connection");
        held
    }

    /// Sends "ping"; the backend's echo (`NAME ping`) or `BROKEN`.
    pub fn ping(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "ping").expect("write to hold");
        stdin.flush().expect("flush hold");
        let mut l = String::new();
        self.out.read_line(&mut l).expect("read from hold");
        l.trim().to_string()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
