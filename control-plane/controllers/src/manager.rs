//! Starts every enabled controller with a shared [`Context`] and stops
//! them together.
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Controller-manager flags (upstream's names).
#[derive(Clone, Debug)]
pub struct Config {
    /// `--cluster-cidr`: node IPAM hands out one `/node_cidr_mask_size`
    /// block of it per Node.
    pub cluster_cidr: String,
    pub node_cidr_mask_size: u8,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_mask_size: 24,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("--{flag} {value:?}: {reason}")]
    Config {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

/// What every controller gets.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub config: Arc<Config>,
    pub shutdown: CancellationToken,
}

/// Runs every controller until `shutdown` is cancelled; the first one to
/// fail stops the others and its error is returned.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let ctx = Context {
        client,
        config: Arc::new(config),
        shutdown: shutdown.clone(),
    };
    let res = tokio::try_join!(
        crate::replicaset::run(ctx.clone()),
        crate::deployment::run(ctx.clone()),
        crate::endpointslice::run(ctx.clone()),
        crate::endpoints::run(ctx.clone()),
        crate::nodeipam::run(ctx.clone()),
        crate::serviceaccount::run(ctx.clone()),
        crate::garbagecollector::run(ctx.clone()),
        crate::job::run(ctx.clone()),
        crate::cronjob::run(ctx.clone()),
        crate::ttlafterfinished::run(ctx.clone()),
    );
    shutdown.cancel();
    res.map(|_| ())
}
