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
//!
//! Where it differs from kube-scheduler 1.3x, and why:
//! - Preemption ignores PodDisruptionBudgets (policy/v1 is not watched
//!   yet) and runs in the scheduling loop, its deletions spawned.
//! - Default topology spreading counts the pods sharing the incoming pod's
//!   first owner reference (as upstream's `PodsWithOwnerRef` fast path),
//!   not the union of the selectors of Services/ReplicaSets/StatefulSets.
//! - Pod affinity terms honour `namespaces` and an empty
//!   `namespaceSelector` (every namespace); a non-empty namespaceSelector
//!   adds no namespace, since Namespace labels are not watched.
//! - Queueing hints are coarse: each filter names the cluster events that
//!   may help it, and a rejected pod is retried on those only (plus the
//!   60 s flush).
//! - Nominated pods are added to a node when filtering it, but not to the
//!   cluster-wide spread/affinity counts.
//! - No volume, image-locality, DRA or extender plugins; one profile.
pub mod bind;
pub mod cache;
mod events;
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
