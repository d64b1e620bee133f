//! The scheduler: watches Pods that name `default-scheduler` and no node,
//! picks a Node for each (filters, then scores, as kube-scheduler's default
//! profile) and binds it through the `pods/binding` subresource. An API
//! client only (kube-rs), so it runs unchanged against any Kubernetes API
//! server.
//!
//! Pure cores, each unit-tested: [`queue`] (ordering, backoff, requeue on
//! cluster events), [`cache`] (the cluster view and the assume-cache),
//! [`framework`] (one scheduling cycle), [`plugins`] (one file per filter
//! and score), [`preemption`] (victim choice), [`status`] (the message).
//! The I/O edge is [`scheduler`], [`bind`] and the writes in [`status`].
pub mod bind;
pub mod cache;
pub mod framework;
pub mod labels;
pub mod plugins;
pub mod preemption;
pub mod quantity;
pub mod queue;
pub mod resources;
mod scheduler;
pub mod status;
#[cfg(test)]
mod testing;

/// What the scheduler is told at start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pods whose `spec.schedulerName` is this are ours; also the events'
    /// reporting controller.
    pub scheduler_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduler_name: "default-scheduler".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Schedules until `shutdown` is cancelled.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), Error> {
    scheduler::run(client, config, shutdown).await
}
