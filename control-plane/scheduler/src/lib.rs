//! The scheduler: watches Pods that name `default-scheduler` and no node,
//! picks a Node for each (filters, then scores) and binds it through the
//! `pods/binding` subresource. An API client only (kube-rs), so it runs
//! unchanged against any Kubernetes API server.

/// What the scheduler is told at start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pods whose `spec.schedulerName` is this are ours.
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
    let _ = (client, config);
    shutdown.cancelled().await;
    Ok(())
}
