//! Where Services and EndpointSlices come from.
//!
//! A source publishes whole snapshots into a one-slot channel; the
//! reconciler loop drains it and applies only the newest (level-triggered:
//! a burst of changes is one reconcile, and a missed intermediate state
//! does not matter). Unlike a `watch` channel, nothing keeps a snapshot
//! alive after it was applied, so the parsed objects of 10 000 services
//! are freed once programmed. Two sources: the manifests directory (here)
//! and a kube-rs watcher/reflector over an API server (`kube_source`),
//! which publishes its stores' contents the same way.
use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use notify::Watcher as _;
use tokio::sync::mpsc;

use super::{manifests, model::Snapshot};

/// One published view, stamped with when the change that produced it was
/// seen (the start of the programming-latency measurement).
#[derive(Debug)]
pub struct Update {
    pub snapshot: Snapshot,
    pub seen_at: Instant,
}

pub trait ServiceSource: Send + 'static {
    /// Runs until the receiver is gone, publishing a snapshot at start and
    /// after every change.
    fn run(self, tx: mpsc::Sender<Update>) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// `--manifests DIR`: inotify on the directory, plus a slow periodic
/// re-read as a safety net (a re-read of an unchanged directory programs
/// nothing, so it is cheap to be level-triggered).
pub struct ManifestSource {
    pub dir: PathBuf,
    pub resync: Duration,
}

/// Coalesces bursts (an editor's write + rename, `cp` of many files).
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(50);

impl ServiceSource for ManifestSource {
    async fn run(self, tx: mpsc::Sender<Update>) -> anyhow::Result<()> {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Our own reads raise open/close-without-write events; reacting
            // to them would re-read the directory forever.
            if res.is_ok_and(|ev| !matches!(ev.kind, notify::EventKind::Access(_))) {
                let _ = ev_tx.send(());
            }
        })
        .context("creating the manifests watcher")?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", self.dir.display()))?;
        let mut last_read = None;
        let mut changed = true;
        loop {
            if !changed {
                // A resync tick: re-read only if a file changed behind
                // inotify's back (re-parsing 10 000 services is seconds).
                let dir = self.dir.clone();
                let now = tokio::task::spawn_blocking(move || fingerprint(&dir))
                    .await
                    .context("manifest fingerprint task")?;
                changed = now.is_err() || now.ok() != last_read;
            }
            if changed {
                let seen_at = Instant::now();
                let dir = self.dir.clone();
                let snap = tokio::task::spawn_blocking(move || {
                    let before = fingerprint(&dir);
                    manifests::read_dir(&dir).map(|s| (s, before.ok()))
                })
                .await
                .context("manifest reader task")?;
                match snap {
                    Ok((snapshot, before)) => {
                        tracing::info!(
                            files = before.as_ref().map_or(0, Vec::len),
                            services = snapshot.services.len(),
                            slices = snapshot.slices.len(),
                            "manifests read"
                        );
                        last_read = before;
                        if tx.send(Update { snapshot, seen_at }).await.is_err() {
                            return Ok(());
                        }
                    }
                    // The directory itself vanished or is unreadable: keep the
                    // last programmed state rather than withdrawing every service.
                    Err(e) => tracing::warn!(dir = %self.dir.display(), "reading manifests: {e}"),
                }
            }
            tokio::select! {
                ev = ev_rx.recv() => {
                    if ev.is_none() {
                        return Ok(());
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while ev_rx.try_recv().is_ok() {}
                    changed = true;
                }
                _ = tokio::time::sleep(self.resync) => changed = false,
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}

/// What identifies the directory's content without reading it: each
/// manifest file's name, size, mtime and inode (a rename-into-place changes
/// the inode even when size and mtime match).
type Fingerprint = Vec<(PathBuf, u64, i64, i64, u64)>;

fn fingerprint(dir: &std::path::Path) -> std::io::Result<Fingerprint> {
    use std::os::unix::fs::MetadataExt as _;
    manifests::manifest_files(dir)?
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p)?;
            Ok((p, m.size(), m.mtime(), m.mtime_nsec(), m.ino()))
        })
        .collect()
}
