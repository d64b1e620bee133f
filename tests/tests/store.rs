//! The state store: one conformance suite against the embedded store and
//! a real etcd, plus what only one backend can show (process-crash safety
//! and restart for the embedded store; a member restart, a member loss in
//! a 3-member cluster and TLS for etcd). No root needed: everything is
//! files and loopback. That an acknowledged write survives a power cut
//! (fsync before the ack) is a unit test in the store crate, on a
//! simulated disk: a process kill cannot show it.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sluice_store::{ListRequest, Store, StoreError, WatchEvent, embedded, etcd};
use sluice_tests::{
    bin,
    etcd::{EtcdCluster, new_ca},
    store_suite::{self, next_change},
    topology::TempDir,
};

/// A ceiling for events that take well under a second: it only catches a
/// hang, never decides a pass.
const HANG: Duration = Duration::from_secs(120);

fn open_embedded(dir: &TempDir, buffer: usize) -> embedded::Embedded {
    embedded::Embedded::open(
        &dir.0.join("store.redb"),
        embedded::Options {
            watcher_buffer: buffer,
            ..Default::default()
        },
    )
    .expect("open the embedded store")
}

async fn connect(c: &EtcdCluster, buffer: usize) -> etcd::Etcd {
    etcd::Etcd::connect(
        &c.endpoints(),
        etcd::Options {
            watcher_buffer: buffer,
            ..Default::default()
        },
    )
    .await
    .expect("connect to etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_suite() {
    let dir = TempDir::new();
    store_suite::run_all(Arc::new(open_embedded(&dir, 1024))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_suite() {
    let c = EtcdCluster::start(1);
    store_suite::run_all(Arc::new(connect(&c, 1024).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_cuts_off_a_stalled_watcher() {
    let dir = TempDir::new();
    let s = Arc::new(open_embedded(&dir, 16));
    store_suite::slow_watcher_is_disconnected(s, "/registry/t-slow/", 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cuts_off_a_stalled_watcher() {
    let c = EtcdCluster::start(1);
    let s = Arc::new(connect(&c, 16).await);
    store_suite::slow_watcher_is_disconnected(s, "/registry/t-slow/", 16).await;
}

/// Closed and reopened, the embedded store keeps its revision and its
/// history: a watch from a revision before the restart replays from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_watch_resumes_from_history_after_a_restart() {
    let dir = TempDir::new();
    let p = "/registry/t-restart/";
    let (from, revs) = {
        let s = open_embedded(&dir, 1024);
        let from = s
            .create(&format!("{p}a"), b"1".to_vec())
            .await
            .expect("create");
        let mut revs = Vec::new();
        for i in 0..5 {
            revs.push(
                s.create(&format!("{p}k{i}"), b"x".to_vec())
                    .await
                    .expect("create"),
            );
        }
        let (r, _) = s.delete(&format!("{p}a"), None).await.expect("delete");
        revs.push(r);
        (from, revs)
    };
    let s = open_embedded(&dir, 1024);
    assert_eq!(
        s.current_revision().await.expect("revision"),
        *revs.last().expect("revs")
    );
    let mut w = s
        .watch(p, from)
        .await
        .expect("watch from before the restart");
    for want in &revs {
        assert_eq!(next_change(&mut w).await.revision(), *want);
    }
    let live = s
        .create(&format!("{p}after"), b"y".to_vec())
        .await
        .expect("create");
    assert_eq!(next_change(&mut w).await.revision(), live);
}

/// kill -9 of a process in the middle of acknowledged writes: after
/// reopening, every write it acknowledged is there (an ack comes after the
/// commit reached the kernel, and the file opens cleanly after a crash).
/// The page cache outlives the process, so this says nothing about fsync;
/// `embedded::tests::acknowledged_writes_survive_a_power_cut` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_keeps_every_acknowledged_write_across_a_process_kill() {
    let dir = TempDir::new();
    let path = dir.0.join("store.redb");
    let mut child = Command::new(bin("sluice-store-writer"))
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sluice-store-writer");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    let deadline = Instant::now() + HANG;
    while acked.len() < 400 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the writer keeps acknowledging");
        let mut f = line.split_whitespace();
        if let (Some("acked"), Some(k), Some(r)) = (f.next(), f.next(), f.next()) {
            acked.insert(k.to_string(), r.parse().expect("revision"));
        }
    }
    // SIGKILL mid-stream (the writer is still going), by our own PID.
    child.kill().expect("kill -9");
    let _ = child.wait();
    // Acks printed before the kill landed may still be in the pipe; the
    // reader ends (and the channel closes) at its end.
    while let Ok(line) = rx.recv() {
        let mut f = line.split_whitespace();
        if let (Some("acked"), Some(k), Some(r)) = (f.next(), f.next(), f.next()) {
            acked.insert(k.to_string(), r.parse().expect("revision"));
        }
    }
    let s = open_embedded(&dir, 1024);
    let all = s
        .list(ListRequest {
            prefix: "/registry/crash/",
            ..Default::default()
        })
        .await
        .expect("list after reopening");
    let stored: BTreeMap<String, i64> = all
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.mod_revision))
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(k, r)| stored.get(*k) != Some(r))
        .map(|(k, _)| k)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
}

/// The etcd backend's watch outlives the connection: the member is
/// restarted under it and the watch resumes with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_survives_a_member_restart() {
    let mut c = EtcdCluster::start(1);
    let s = connect(&c, 1024).await;
    let p = "/registry/t-reconnect/";
    let start = s.current_revision().await.expect("revision");
    let mut w = s.watch(p, start).await.expect("watch");
    let r1 = s
        .create(&format!("{p}before"), b"1".to_vec())
        .await
        .expect("create");
    assert_eq!(next_change(&mut w).await.revision(), r1);
    c.restart(0);
    let mut revs = Vec::new();
    let deadline = Instant::now() + HANG;
    while revs.len() < 5 {
        match s
            .create(&format!("{p}after{}", revs.len()), b"2".to_vec())
            .await
        {
            Ok(r) => revs.push(r),
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("write after the restart: {e}"),
        }
    }
    for want in revs {
        assert_eq!(next_change(&mut w).await.revision(), want);
    }
}

/// Three members; one is killed while writes and a watch run: writes keep
/// succeeding through the others and the watch delivers every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_keeps_writing_and_watching_after_losing_a_member() {
    let mut c = EtcdCluster::start(3);
    let s = Arc::new(connect(&c, 4096).await);
    let p = "/registry/t-cluster/";
    let start = s.current_revision().await.expect("revision");
    let mut w = s.watch(p, start).await.expect("watch");
    // The writer reports each acknowledgement; a member is killed once 20
    // landed with all three up, and the writer goes on until 50 writes it
    // started after the kill were acknowledged. If the killed member led,
    // the survivors first elect a new leader: writes caught in that
    // election fail or wait, and are retried as new writes.
    let killed = Arc::new(AtomicBool::new(false));
    let (acks_tx, mut acks) = tokio::sync::watch::channel(0usize);
    let writer = {
        let (s, killed) = (s.clone(), killed.clone());
        tokio::spawn(async move {
            let (mut acked, mut after_kill, mut failed) = (Vec::new(), 0, 0);
            let mut i = 0;
            while after_kill < 50 {
                let started_after_kill = killed.load(Ordering::SeqCst);
                match s.create(&format!("{p}{i:05}"), b"v".to_vec()).await {
                    Ok(r) => {
                        acked.push(r);
                        after_kill += usize::from(started_after_kill);
                        acks_tx.send_replace(acked.len());
                    }
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (acked, failed)
        })
    };
    tokio::time::timeout(HANG, acks.wait_for(|n| *n >= 20))
        .await
        .expect("20 writes acknowledged by a healthy 3-member cluster")
        .expect("the writer runs");
    c.members[0].kill();
    killed.store(true, Ordering::SeqCst);
    let (acked, failed) = tokio::time::timeout(HANG, writer)
        .await
        .expect("50 writes acknowledged after losing a member")
        .expect("writer");
    eprintln!("{} writes acknowledged, {failed} failed", acked.len());
    let after = s
        .create(&format!("{p}final"), b"v".to_vec())
        .await
        .expect("write with 2 of 3");
    let mut want: Vec<i64> = acked.clone();
    want.push(after);
    let mut seen = Vec::new();
    while seen.last().is_none_or(|l| *l < after) {
        match next_change(&mut w).await {
            WatchEvent::Put { kv, .. } => seen.push(kv.mod_revision),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every acknowledged write, in order; a write that failed on the client
    // side may still have committed, so extra revisions are fine.
    let mut it = seen.iter();
    for r in &want {
        assert!(
            it.any(|x| x == r),
            "acknowledged revision {r} missing from the watch (saw {} events)",
            seen.len()
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "watch events out of order"
    );
}

fn trusting(ca_pem: &str) -> etcd::Options {
    etcd::Options {
        tls: Some(etcd::TlsOptions::new().ca_certificate(etcd::Certificate::from_pem(ca_pem))),
        ..Default::default()
    }
}

/// A member whose client port speaks only TLS, trusted through its CA:
/// a write and a read round-trip over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_round_trips_a_write() {
    let c = EtcdCluster::start_tls(1);
    let ca = &c.tls.as_ref().expect("a TLS cluster").ca_pem;
    assert!(c.endpoints().iter().all(|e| e.starts_with("https://")));
    let s = etcd::Etcd::connect(&c.endpoints(), trusting(ca))
        .await
        .expect("connect over TLS");
    let key = "/registry/t-tls/a";
    let rev = s
        .create(key, b"over tls".to_vec())
        .await
        .expect("a write over TLS");
    let got = s.get(key).await.expect("a read over TLS").expect("stored");
    assert_eq!(
        (got.value.as_slice(), got.mod_revision),
        (&b"over tls"[..], rev)
    );
}

/// Trusting some other CA, the client rejects the member's certificate:
/// requests fail, and the error names the certificate problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_the_wrong_ca_fails_naming_the_certificate() {
    let c = EtcdCluster::start_tls(1);
    let ca = &c.tls.as_ref().expect("a TLS cluster").ca_pem;
    // Control: the member serves TLS right now, to a client with its CA.
    let good = etcd::Etcd::connect(&c.endpoints(), trusting(ca))
        .await
        .expect("connect with the right CA");
    good.create("/registry/t-tls-ca/control", b"v".to_vec())
        .await
        .expect("a write trusting the cluster's CA");
    let (other_ca, _) = new_ca("sluice-test-other-ca");
    let r = match etcd::Etcd::connect(&c.endpoints(), trusting(&other_ca)).await {
        Err(e) => Err(e),
        Ok(bad) => bad.create("/registry/t-tls-ca/x", b"v".to_vec()).await,
    };
    match r {
        Err(StoreError::Unavailable(m)) => assert!(
            m.contains("certificate") && m.contains("UnknownIssuer"),
            "the error should name the untrusted certificate: {m}"
        ),
        other => panic!("a client trusting another CA: want Unavailable, got {other:?}"),
    }
    assert_eq!(
        good.get("/registry/t-tls-ca/x").await.expect("get"),
        None,
        "nothing written through the rejected connection"
    );
}
