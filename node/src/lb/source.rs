//! Where Services and EndpointSlices come from.
//!
//! A source publishes whole snapshots into a `watch` channel; the
//! reconciler loop only ever looks at the latest one (level-triggered: a
//! burst of changes is one reconcile, and a missed intermediate state does
//! not matter). The manifests directory is the first source; a kube-rs
//! watcher/reflector over the API server plugs in behind the same trait
//! and publishes its stores' contents the same way.
use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use notify::Watcher as _;
use tokio::sync::{mpsc, watch};

use super::{manifests, model::Snapshot};

/// One published view, stamped with when the change that produced it was
/// seen (the start of the programming-latency measurement).
#[derive(Clone, Debug)]
pub struct Update {
    pub snapshot: Arc<Snapshot>,
    pub seen_at: Instant,
}

pub trait ServiceSource: Send + 'static {
    /// Runs until the receiver is gone, publishing a snapshot at start and
    /// after every change.
    fn run(
        self,
        tx: watch::Sender<Option<Update>>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// `--manifests DIR`: inotify on the directory, plus a slow periodic
/// re-read as a safety net (a re-read of an unchanged directory programs
/// nothing, so it is cheap to be level-triggered).
pub struct ManifestSource {
    pub dir: PathBuf,
    pub resync: Duration,
}

/// Coalesces bursts (an editor's write + rename, `cp` of many files).
const DEBOUNCE: Duration = Duration::from_millis(50);

impl ServiceSource for ManifestSource {
    async fn run(self, tx: watch::Sender<Option<Update>>) -> anyhow::Result<()> {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = ev_tx.send(());
            }
        })
        .context("creating the manifests watcher")?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", self.dir.display()))?;
        loop {
            let seen_at = Instant::now();
            let dir = self.dir.clone();
            let snap = tokio::task::spawn_blocking(move || manifests::read_dir(&dir))
                .await
                .context("manifest reader task")?;
            match snap {
                Ok(snapshot) => {
                    if tx
                        .send(Some(Update {
                            snapshot: Arc::new(snapshot),
                            seen_at,
                        }))
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                // The directory itself vanished or is unreadable: keep the
                // last programmed state rather than withdrawing every service.
                Err(e) => tracing::warn!(dir = %self.dir.display(), "reading manifests: {e}"),
            }
            tokio::select! {
                ev = ev_rx.recv() => {
                    if ev.is_none() {
                        return Ok(());
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while ev_rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(self.resync) => {}
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}
