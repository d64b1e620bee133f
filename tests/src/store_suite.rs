//! The store conformance suite: the same cases against every backend of
//! `sluice_store::Store` (tests/tests/store.rs runs it on the embedded
//! store and on a real etcd). Each case works under its own key prefix
//! and panics with a precise message on the first deviation.
use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use sluice_store::{
    KeyValue, ListRequest, MAX_KEY_BYTES, MAX_VALUE_BYTES, Store, StoreError, WatchEvent,
    WatchStream,
};

pub type Dyn = Arc<dyn Store>;

/// A ceiling for events that take well under a second: it only catches a
/// hang, never decides a pass.
const HANG: Duration = Duration::from_secs(60);

/// Every case, in order (they share one store, each under its own prefix).
pub async fn run_all(s: Dyn) {
    revisions_and_crud(s.clone(), "/registry/t-crud/").await;
    failed_writes_change_nothing(s.clone(), "/registry/t-fail/").await;
    bad_input_is_rejected_precisely(s.clone(), "/registry/t-bad/").await;
    cas_under_16_concurrent_writers_loses_no_update(s.clone(), "/registry/t-cas/").await;
    watch_from_an_old_revision_replays_exactly_the_missed_events(s.clone(), "/registry/t-watch/")
        .await;
    list_pages_are_consistent_at_one_revision_while_writes_continue(s.clone(), "/registry/t-page/")
        .await;
    list_at_an_older_revision_shows_that_revision(s.clone(), "/registry/t-old/").await;
    idle_watch_gets_progress(s.clone(), "/registry/t-progress/").await;
    // Last: it compacts the whole store.
    compaction_then_old_watch_and_list_fail_as_compacted(s.clone(), "/registry/t-compact/").await;
}

/// Next event from `w` (a hang fails), skipping progress events.
pub async fn next_change(w: &mut WatchStream) -> WatchEvent {
    loop {
        match tokio::time::timeout(HANG, w.next()).await {
            Ok(Some(Ok(WatchEvent::Progress { .. }))) => continue,
            Ok(Some(Ok(ev))) => return ev,
            Ok(Some(Err(e))) => panic!("watch failed: {e}"),
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("no watch event within {HANG:?}"),
        }
    }
}

fn k(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

pub async fn revisions_and_crud(s: Dyn, p: &str) {
    let r0 = s.current_revision().await.expect("revision");
    let r1 = s.create(&k(p, "a"), b"1".to_vec()).await.expect("create");
    assert_eq!(r1, r0 + 1, "one write, one revision");
    let a = s.get(&k(p, "a")).await.expect("get").expect("a exists");
    assert_eq!(
        (
            a.create_revision,
            a.mod_revision,
            a.version,
            a.value.as_slice()
        ),
        (r1, r1, 1, &b"1"[..])
    );
    let r2 = s
        .update(&k(p, "a"), b"2".to_vec(), r1)
        .await
        .expect("update");
    assert_eq!(r2, r1 + 1);
    let a = s.get(&k(p, "a")).await.expect("get").expect("a exists");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (r1, r2, 2),
        "update keeps create_revision, bumps mod_revision and version"
    );
    let (r3, gone) = s.delete(&k(p, "a"), Some(r2)).await.expect("delete");
    assert_eq!(r3, r2 + 1);
    assert_eq!(gone.value, b"2");
    assert_eq!(s.get(&k(p, "a")).await.expect("get"), None);
    // Re-created: a new life with a new create_revision and version 1.
    let r4 = s
        .create(&k(p, "a"), b"3".to_vec())
        .await
        .expect("re-create");
    let a = s.get(&k(p, "a")).await.expect("get").expect("a exists");
    assert_eq!((a.create_revision, a.version), (r4, 1));
    assert_eq!(s.current_revision().await.expect("revision"), r4);
}

pub async fn failed_writes_change_nothing(s: Dyn, p: &str) {
    let r1 = s.create(&k(p, "x"), b"v1".to_vec()).await.expect("create");
    let before = s.current_revision().await.expect("revision");
    assert_eq!(
        s.create(&k(p, "x"), b"v2".to_vec()).await,
        Err(StoreError::AlreadyExists(k(p, "x")))
    );
    match s.update(&k(p, "x"), b"v2".to_vec(), r1 - 1).await {
        Err(StoreError::Conflict {
            key,
            expected,
            current: Some(cur),
        }) => {
            assert_eq!((key.as_str(), expected), (k(p, "x").as_str(), r1 - 1));
            assert_eq!((cur.mod_revision, cur.value.as_slice()), (r1, &b"v1"[..]));
        }
        other => panic!("stale update: want Conflict with the current value, got {other:?}"),
    }
    assert_eq!(
        s.update(&k(p, "nope"), b"v".to_vec(), 1).await,
        Err(StoreError::NotFound(k(p, "nope")))
    );
    assert!(matches!(
        s.delete(&k(p, "x"), Some(r1 + 1000)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        s.delete(&k(p, "nope"), None).await,
        Err(StoreError::NotFound(k(p, "nope")))
    );
    assert_eq!(
        s.current_revision().await.expect("revision"),
        before,
        "failed writes must not consume revisions"
    );
    assert_eq!(
        s.get(&k(p, "x")).await.expect("get").map(|kv| kv.value),
        Some(b"v1".to_vec())
    );
}

pub async fn bad_input_is_rejected_precisely(s: Dyn, p: &str) {
    let before = s.current_revision().await.expect("revision");
    assert_eq!(s.create("", b"v".to_vec()).await, Err(StoreError::EmptyKey));
    match s.create("/elsewhere/k", b"v".to_vec()).await {
        Err(StoreError::KeyOutsidePrefix { key, .. }) => assert_eq!(key, "/elsewhere/k"),
        other => panic!("key outside the prefix: got {other:?}"),
    }
    let big = vec![b'x'; MAX_VALUE_BYTES + 1];
    match s.create(&k(p, "big"), big.clone()).await {
        Err(StoreError::ValueTooLarge { key, size, limit }) => {
            assert_eq!(
                (key, size, limit),
                (k(p, "big"), MAX_VALUE_BYTES + 1, MAX_VALUE_BYTES)
            );
        }
        other => panic!("oversized value: got {other:?}"),
    }
    let r = s.create(&k(p, "ok"), b"v".to_vec()).await.expect("create");
    assert!(matches!(
        s.update(&k(p, "ok"), big, r).await,
        Err(StoreError::ValueTooLarge { .. })
    ));
    assert_eq!(s.current_revision().await.expect("revision"), before + 1);
    assert_eq!(
        s.get(&k(p, "big")).await.expect("get"),
        None,
        "nothing stored"
    );
    assert_eq!(
        s.get(&k(p, "ok")).await.expect("get").map(|kv| kv.value),
        Some(b"v".to_vec())
    );
    let long = k(p, &"k".repeat(MAX_KEY_BYTES));
    assert!(matches!(
        s.create(&long, b"v".to_vec()).await,
        Err(StoreError::KeyTooLong { .. })
    ));
    assert_eq!(s.current_revision().await.expect("revision"), before + 1);
    // Exactly at the limit is fine.
    s.create(&k(p, "max"), vec![b'y'; MAX_VALUE_BYTES])
        .await
        .expect("a value of exactly the limit");
}

/// 16 writers each add 1 to one counter 25 times with get + CAS + retry;
/// the counter ends at exactly 400 (a lost update would leave it lower).
pub async fn cas_under_16_concurrent_writers_loses_no_update(s: Dyn, p: &str) {
    let key = k(p, "counter");
    s.create(&key, b"0".to_vec()).await.expect("create");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (s, key) = (s.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..25 {
                loop {
                    let cur = s.get(&key).await.expect("get").expect("counter");
                    let n: u64 = String::from_utf8_lossy(&cur.value).parse().expect("number");
                    match s
                        .update(&key, (n + 1).to_string().into_bytes(), cur.mod_revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("update: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.expect("writer");
    }
    let v = s.get(&key).await.expect("get").expect("counter");
    assert_eq!(
        v.value, b"400",
        "lost updates ({conflicts} conflicts retried)"
    );
    assert_eq!(v.version, 401);
    assert!(
        conflicts > 0,
        "16 writers never collided: the test proved nothing"
    );
}

pub async fn watch_from_an_old_revision_replays_exactly_the_missed_events(s: Dyn, p: &str) {
    let r0 = s.create(&k(p, "a"), b"1".to_vec()).await.expect("create a");
    // Missed while no watch ran:
    let r1 = s
        .update(&k(p, "a"), b"2".to_vec(), r0)
        .await
        .expect("update a");
    let r2 = s.create(&k(p, "b"), b"1".to_vec()).await.expect("create b");
    s.create("/registry/t-watch-not-mine/x", b"1".to_vec())
        .await
        .expect("outside the watched prefix");
    let (r3, _) = s.delete(&k(p, "a"), None).await.expect("delete a");
    let mut w = s.watch(p, r0).await.expect("watch");
    match next_change(&mut w).await {
        WatchEvent::Put { kv, prev } => {
            assert_eq!((kv.key.as_str(), kv.mod_revision), (k(p, "a").as_str(), r1));
            assert_eq!(
                prev.map(|p| p.value),
                Some(b"1".to_vec()),
                "prev of an update"
            );
        }
        other => panic!("first replayed event: {other:?}"),
    }
    match next_change(&mut w).await {
        WatchEvent::Put { kv, prev } => {
            assert_eq!((kv.key.as_str(), kv.mod_revision), (k(p, "b").as_str(), r2));
            assert_eq!(prev, None);
        }
        other => panic!("second replayed event: {other:?}"),
    }
    match next_change(&mut w).await {
        WatchEvent::Delete { revision, prev } => {
            assert_eq!(revision, r3);
            assert_eq!(
                (prev.key.as_str(), prev.value.as_slice()),
                (k(p, "a").as_str(), &b"2"[..])
            );
        }
        other => panic!("third replayed event: {other:?}"),
    }
    // Then live, in order, none twice.
    let mut revs = Vec::new();
    for i in 0..20 {
        revs.push(
            s.create(&k(p, &format!("live{i:02}")), b"x".to_vec())
                .await
                .expect("create"),
        );
    }
    for want in revs {
        let ev = next_change(&mut w).await;
        assert_eq!(
            ev.revision(),
            want,
            "live events in revision order, exactly once"
        );
    }
}

/// 100 keys listed in pages of 10 at the first page's revision while a
/// writer changes them. The two take turns by events, not timing: after
/// page r is fetched the writer rewrites the keys of page r+1 (updates,
/// deletes every third, adds a key beside each), and the pager fetches page
/// r+1 only once that round is done, so every later page is read after
/// writes to its own keys. The pages hold exactly the objects that existed
/// at that revision, and every write succeeded (they are all there now).
pub async fn list_pages_are_consistent_at_one_revision_while_writes_continue(s: Dyn, p: &str) {
    let mut then: Vec<KeyValue> = Vec::new();
    for i in 0..100 {
        let (key, value) = (k(p, &format!("{i:03}")), format!("v{i}").into_bytes());
        let rev = s.create(&key, value.clone()).await.expect("create");
        then.push(KeyValue {
            key,
            value,
            create_revision: rev,
            mod_revision: rev,
            version: 1,
        });
    }
    let first = s
        .list(ListRequest {
            prefix: p,
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("first page");
    let at = first.revision;
    let (pages_tx, mut pages) = tokio::sync::watch::channel(1usize);
    let (rounds_tx, mut rounds) = tokio::sync::watch::channel(0usize);
    let writer = {
        let (s, p) = (s.clone(), p.to_string());
        tokio::spawn(async move {
            let mut writes: Vec<(String, Result<i64, StoreError>)> = Vec::new();
            for round in 1..10 {
                if pages.wait_for(|n| *n >= round).await.is_err() {
                    break;
                }
                for i in round * 10..round * 10 + 10 {
                    let key = format!("{p}{i:03}");
                    let r = if i % 3 == 0 {
                        s.delete(&key, None).await.map(|(r, _)| r)
                    } else {
                        match s.get(&key).await {
                            Ok(Some(cur)) => {
                                s.update(&key, b"changed".to_vec(), cur.mod_revision).await
                            }
                            Ok(None) => Err(StoreError::NotFound(key.clone())),
                            Err(e) => Err(e),
                        }
                    };
                    writes.push((key, r));
                    let new = format!("{p}{i:03}-new");
                    let r = s.create(&new, b"n".to_vec()).await;
                    writes.push((new, r));
                }
                rounds_tx.send_replace(round);
            }
            writes
        })
    };
    let mut all = first.kvs.clone();
    let mut more = first.more;
    let mut fetched = 1;
    while more {
        // 9 rounds, for pages 2-10; a list that (wrongly) has more pages
        // goes on without them and fails below.
        let round = fetched.min(9);
        tokio::time::timeout(HANG, rounds.wait_for(|r| *r >= round))
            .await
            .unwrap_or_else(|_| panic!("writer round {round} never finished"))
            .expect("the writer runs");
        let last = all.last().expect("a non-empty page").key.clone();
        let start = format!("{last}\0");
        let page = s
            .list(ListRequest {
                prefix: p,
                start: Some(&start),
                limit: 10,
                revision: Some(at),
            })
            .await
            .expect("next page at the same revision");
        assert_eq!(page.revision, at);
        all.extend(page.kvs);
        more = page.more;
        fetched += 1;
        pages_tx.send_replace(fetched);
    }
    let writes = tokio::time::timeout(HANG, writer)
        .await
        .expect("the writer finishes")
        .expect("writer");
    assert_eq!(fetched, 10, "100 keys in pages of 10");
    assert_eq!(
        all, then,
        "the pages hold exactly the objects as of revision {at}"
    );
    assert_eq!(writes.len(), 9 * 10 * 2, "every round ran");
    for (key, r) in &writes {
        match r {
            Ok(rev) => assert!(*rev > at, "{key} written at {rev}, not after {at}"),
            Err(e) => panic!("the writer's write to {key} failed: {e}"),
        }
    }
    let mut want_now: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..100 {
        let key = k(p, &format!("{i:03}"));
        match i {
            0..10 => want_now.push((key, format!("v{i}").into_bytes())),
            _ if i % 3 == 0 => {}
            _ => want_now.push((key, b"changed".to_vec())),
        }
        if i >= 10 {
            want_now.push((k(p, &format!("{i:03}-new")), b"n".to_vec()));
        }
    }
    assert_eq!(
        contents(&s, p, None).await,
        want_now,
        "the writer's changes, as of now"
    );
}

/// Keys and values under `p` at revision `at` (None = now), in one list.
async fn contents(s: &Dyn, p: &str, at: Option<i64>) -> Vec<(String, Vec<u8>)> {
    let l = s
        .list(ListRequest {
            prefix: p,
            revision: at,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("list {p} at {at:?}: {e}"));
    l.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

pub async fn list_at_an_older_revision_shows_that_revision(s: Dyn, p: &str) {
    let ra = s.create(&k(p, "a"), b"a1".to_vec()).await.expect("create");
    s.create(&k(p, "b"), b"b1".to_vec()).await.expect("create");
    let at = s.current_revision().await.expect("revision");
    s.update(&k(p, "a"), b"a2".to_vec(), ra)
        .await
        .expect("update");
    s.delete(&k(p, "b"), None).await.expect("delete");
    s.create(&k(p, "c"), b"c1".to_vec()).await.expect("create");
    assert_eq!(
        contents(&s, p, Some(at)).await,
        vec![(k(p, "a"), b"a1".to_vec()), (k(p, "b"), b"b1".to_vec())]
    );
    assert_eq!(
        contents(&s, p, None).await,
        vec![(k(p, "a"), b"a2".to_vec()), (k(p, "c"), b"c1".to_vec())]
    );
    let future = s.current_revision().await.expect("revision") + 100;
    assert!(matches!(
        s.list(ListRequest {
            prefix: p,
            revision: Some(future),
            ..Default::default()
        })
        .await,
        Err(StoreError::FutureRevision { .. })
    ));
}

pub async fn idle_watch_gets_progress(s: Dyn, p: &str) {
    let now = s.current_revision().await.expect("revision");
    let mut w = s.watch(p, now).await.expect("watch");
    // Writes elsewhere move the revision; this watcher sees only bookmarks.
    s.create("/registry/t-progress-other/x", b"1".to_vec())
        .await
        .expect("create");
    let target = now + 1;
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let ev = tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("a progress event (a hang fails)")
            .expect("watch open")
            .expect("no error");
        match ev {
            WatchEvent::Progress { revision } if revision >= target => break,
            WatchEvent::Progress { .. } => {}
            other => panic!("idle watch got a change: {other:?}"),
        }
    }
}

pub async fn compaction_then_old_watch_and_list_fail_as_compacted(s: Dyn, p: &str) {
    let r = s.create(&k(p, "a"), b"1".to_vec()).await.expect("create");
    s.update(&k(p, "a"), b"2".to_vec(), r)
        .await
        .expect("update");
    let at = s.current_revision().await.expect("revision");
    s.update(&k(p, "a"), b"3".to_vec(), at)
        .await
        .expect("update");
    s.compact(at).await.expect("compact");
    assert_eq!(s.compacted_revision().await.expect("compacted"), at);
    match s.watch(p, at - 2).await {
        Err(StoreError::Compacted { compacted, .. }) => assert_eq!(compacted, at),
        Err(e) => panic!("watch from before the compaction: want Compacted, got {e}"),
        Ok(mut w) => match w.next().await {
            Some(Err(StoreError::Compacted { compacted, .. })) => assert_eq!(compacted, at),
            other => panic!("watch from before the compaction: want Compacted, got {other:?}"),
        },
    }
    assert!(matches!(
        s.list(ListRequest {
            prefix: p,
            revision: Some(at - 2),
            ..Default::default()
        })
        .await,
        Err(StoreError::Compacted { .. })
    ));
    // The compacted revision itself is still readable, and watching after it works.
    let kept = s
        .list(ListRequest {
            prefix: p,
            revision: Some(at),
            ..Default::default()
        })
        .await
        .expect("list at the compaction revision");
    assert_eq!(
        kept.kvs.first().map(|kv| kv.value.clone()),
        Some(b"2".to_vec())
    );
    let mut w = s
        .watch(p, at)
        .await
        .expect("watch after the compaction point");
    match next_change(&mut w).await {
        WatchEvent::Put { kv, .. } => assert_eq!(kv.value, b"3"),
        other => panic!("{other:?}"),
    }
}

/// A watcher that never reads is cut off with `WatcherTooSlow` (the
/// backend must be built with a small watcher buffer); writers do not wait.
pub async fn slow_watcher_is_disconnected(s: Dyn, p: &str, buffer: usize) {
    let now = s.current_revision().await.expect("revision");
    let mut w = s.watch(p, now).await.expect("watch");
    let started = std::time::Instant::now();
    for i in 0..(buffer * 8) {
        s.create(&k(p, &format!("{i:05}")), b"x".to_vec())
            .await
            .expect("writes proceed while a watcher stalls");
    }
    let write_time = started.elapsed();
    let mut seen = 0usize;
    loop {
        match tokio::time::timeout(HANG, w.next()).await {
            Ok(Some(Ok(_))) => seen += 1,
            Ok(Some(Err(StoreError::WatcherTooSlow))) => break,
            other => panic!(
                "after {seen} events: want WatcherTooSlow, got {other:?} (writes took {write_time:?})"
            ),
        }
    }
    assert!(
        seen < buffer * 8,
        "the stalled watcher got everything ({seen})"
    );
}
