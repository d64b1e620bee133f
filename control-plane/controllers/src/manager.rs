//! Starts every enabled controller with a shared [`Context`] and stops
//! them together.
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;

use crate::shared::SharedInformer;

/// Controller-manager flags (upstream's names).
#[derive(Clone, Debug)]
pub struct Config {
    /// `--cluster-cidr`: node IPAM hands out one `/node_cidr_mask_size`
    /// block of it per Node.
    pub cluster_cidr: String,
    pub node_cidr_mask_size: u8,
    /// `--node-monitor-grace-period`: a Node unheard of for this long is
    /// unreachable.
    pub node_monitor_grace_period: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_mask_size: 24,
            node_monitor_grace_period: std::time::Duration::from_secs(40),
        }
    }
}

impl Config {
    /// Checks the flags before anything starts, so a typo is a one-line
    /// error naming the flag rather than a controller failing later.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |flag: &'static str, value: String, reason: &str| Error::Config {
            flag,
            value,
            reason: reason.to_string(),
        };
        let cidr = || self.cluster_cidr.clone();
        let (addr, len) = self.cluster_cidr.split_once('/').ok_or_else(|| {
            bad(
                "cluster-cidr",
                cidr(),
                "not an IPv4 CIDR like 10.244.0.0/16",
            )
        })?;
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| {
            bad(
                "cluster-cidr",
                cidr(),
                "not an IPv4 CIDR like 10.244.0.0/16",
            )
        })?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| bad("cluster-cidr", cidr(), "the prefix length is not 0-32"))?;
        if len > 0 && u32::from(addr) & (u32::MAX >> len) != 0 {
            return Err(bad("cluster-cidr", cidr(), "host bits are set"));
        }
        let mask = self.node_cidr_mask_size;
        if mask < len || mask > 30 {
            return Err(bad(
                "node-cidr-mask-size",
                mask.to_string(),
                &format!("must be between the cluster CIDR's prefix length ({len}) and 30"),
            ));
        }
        Ok(())
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
    /// The one Pod watch and store every controller shares.
    pub pods: Arc<SharedInformer<Pod>>,
}

/// Runs every controller until `shutdown` is cancelled; the first one to
/// fail stops the others and its error is returned.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let pods = SharedInformer::new(kube::Api::<Pod>::all(client.clone()));
    let ctx = Context {
        client,
        config: Arc::new(config),
        shutdown: shutdown.clone(),
        pods: pods.clone(),
    };
    let informers = async {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = pods.run() => {}
        }
        Ok::<(), Error>(())
    };
    let res = tokio::try_join!(
        informers,
        crate::replicaset::run(ctx.clone()),
        crate::deployment::run(ctx.clone()),
        crate::daemonset::run(ctx.clone()),
        crate::statefulset::run(ctx.clone()),
        crate::endpointslice::run(ctx.clone()),
        crate::endpoints::run(ctx.clone()),
        crate::nodeipam::run(ctx.clone()),
        crate::serviceaccount::run(ctx.clone()),
        crate::garbagecollector::run(ctx.clone()),
        crate::nodelifecycle::run(ctx.clone()),
        crate::job::run(ctx.clone()),
        crate::cronjob::run(ctx.clone()),
        crate::ttlafterfinished::run(ctx.clone()),
    );
    shutdown.cancel();
    res.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cidr: &str, mask: u8) -> Config {
        Config {
            cluster_cidr: cidr.into(),
            node_cidr_mask_size: mask,
            ..Config::default()
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn a_bad_cluster_cidr_is_named_with_its_flag() {
        for bad in [
            "10.244.0.0",
            "10.244.0.0/33",
            "10.244.1.0/16",
            "fe80::/64",
            "x/8",
        ] {
            let e = config(bad, 24).validate().expect_err(bad).to_string();
            assert!(e.starts_with(&format!("--cluster-cidr {bad:?}")), "{e}");
        }
    }

    #[test]
    fn a_node_mask_outside_the_cluster_cidr_is_refused() {
        for mask in [8, 31] {
            let e = config("10.244.0.0/16", mask)
                .validate()
                .expect_err("mask")
                .to_string();
            assert!(
                e.starts_with(&format!("--node-cidr-mask-size \"{mask}\"")),
                "{e}"
            );
        }
    }
}
