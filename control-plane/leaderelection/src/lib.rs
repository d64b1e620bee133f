//! Leader election through a coordination.k8s.io/v1 Lease, client-go's
//! algorithm: take the Lease when it is free or its holder has not renewed
//! it for a whole lease duration *as observed locally* (so clocks of
//! different machines never need to agree), renew every retry period, and
//! give up leadership when no renewal succeeded for the renew deadline.
//! Writes are read-modify-write on resourceVersion, so two candidates can
//! never both win one round.
//!
//! [`run`] campaigns, runs the work while leading, stops it (by cancelling
//! its token) when leadership is lost and campaigns again, and releases the
//! Lease on shutdown so a successor need not wait out the duration.
use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    chrono::Utc,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where the Lease is and how long leadership lasts (upstream's defaults:
/// 15 s lease, 10 s renew deadline, 2 s retry).
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// Unique per candidate (upstream: hostname + "_" + a uuid).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Config {
    /// A Lease `name` in kube-system with upstream's timings.
    pub fn new(name: &str, identity: &str) -> Self {
        Self {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate does with the Lease it just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is none: create it, holding it.
    Create,
    /// Free or expired: take it over (a new term).
    Take,
    /// Ours: renew it.
    Renew,
    /// Someone else holds it and renewed within the lease duration.
    Wait,
}

/// The decision, from the Lease's spec, the local instant at which this
/// candidate last saw the spec change, and now.
pub fn decide(
    spec: Option<&LeaseSpec>,
    changed_at: Instant,
    now: Instant,
    me: &str,
    default_duration: Duration,
) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Step::Take,
        Some(h) if h == me => Step::Renew,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(default_duration);
            if now.saturating_duration_since(changed_at) > duration {
                Step::Take
            } else {
                Step::Wait
            }
        }
    }
}

/// A candidate's view: the last spec it read and when it changed.
struct Elector {
    api: Api<Lease>,
    config: Config,
    observed: Option<(LeaseSpec, Instant)>,
}

impl Elector {
    /// One round: true if we hold the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let wall = MicroTime(Utc::now());
        let duration_secs = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(15);
        let current = self.api.get_opt(&self.config.name).await?;
        let spec = current.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        if let Some(spec) = &spec {
            match &self.observed {
                Some((seen, _)) if seen == spec => {}
                _ => self.observed = Some((spec.clone(), now)),
            }
        }
        let changed_at = self.observed.as_ref().map(|(_, t)| *t).unwrap_or(now);
        let step = decide(
            spec.as_ref(),
            changed_at,
            now,
            &self.config.identity,
            self.config.lease_duration,
        );
        let mine = |acquire: Option<MicroTime>, transitions: Option<i32>| LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: acquire,
            renew_time: Some(wall.clone()),
            lease_transitions: transitions,
            ..Default::default()
        };
        let next = match step {
            Step::Wait => return Ok(false),
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(mine(Some(wall.clone()), Some(0))),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(created) => {
                        self.observed = Some((created.spec.unwrap_or_default(), now));
                        Ok(true)
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Step::Take => {
                let old = spec.unwrap_or_default();
                mine(
                    Some(wall.clone()),
                    Some(old.lease_transitions.unwrap_or(0) + 1),
                )
            }
            Step::Renew => {
                let old = spec.unwrap_or_default();
                mine(old.acquire_time, old.lease_transitions)
            }
        };
        let Some(mut lease) = current else {
            return Ok(false);
        };
        lease.spec = Some(next);
        // `replace` carries the resourceVersion we read: a concurrent
        // writer makes this a 409, and we lost the round.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observed = Some((written.spec.unwrap_or_default(), now));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Hands the Lease back (holder cleared) if we still hold it.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Utc::now()));
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(lease = %self.config.name, error = %e, "releasing the lease");
        }
    }
}

/// Runs `work` whenever this candidate leads, until `shutdown`. `work`
/// gets a token cancelled when leadership is lost or on shutdown and must
/// return soon after; it is started afresh for every term. The first
/// error `work` returns while leading ends the election (after releasing
/// the Lease) and is returned.
pub async fn run<E, F, Fut>(
    client: kube::Client,
    config: Config,
    shutdown: CancellationToken,
    mut work: F,
) -> Result<(), E>
where
    E: std::fmt::Display,
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config: config.clone(),
        observed: None,
    };
    loop {
        // Campaign.
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = %config.name, error = %e, "acquiring the lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(config.retry_period) => {}
            }
        }
        tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
        let term = shutdown.child_token();
        let job = work(term.clone());
        tokio::pin!(job);
        let mut renewed = Instant::now();
        let ended = loop {
            tokio::select! {
                res = &mut job => break Some(res),
                _ = tokio::time::sleep(config.retry_period) => {
                    let left = config.renew_deadline.saturating_sub(renewed.elapsed());
                    match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
                        Ok(Ok(true)) => renewed = Instant::now(),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::warn!(lease = %config.name, error = %e, "renewing the lease"),
                        Err(_) => {}
                    }
                    if renewed.elapsed() >= config.renew_deadline {
                        break None;
                    }
                }
            }
        };
        match ended {
            Some(res) => {
                elector.release().await;
                return res;
            }
            None => {
                tracing::warn!(lease = %config.name, "leadership lost; stopping and campaigning again");
                term.cancel();
                if let Err(e) = job.await {
                    tracing::warn!(lease = %config.name, error = %e, "work ended with an error after leadership was lost");
                }
                elector.observed = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held_by(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn no_lease_is_created() {
        let t = Instant::now();
        assert_eq!(decide(None, t, t, "me", D), Step::Create);
    }

    #[test]
    fn a_lease_without_holder_is_taken() {
        let t = Instant::now();
        let free = LeaseSpec::default();
        assert_eq!(decide(Some(&free), t, t, "me", D), Step::Take);
        assert_eq!(decide(Some(&held_by("")), t, t, "me", D), Step::Take);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        let t = Instant::now();
        assert_eq!(decide(Some(&held_by("me")), t, t, "me", D), Step::Renew);
    }

    #[test]
    fn another_holder_is_waited_for_until_a_whole_duration_passes_unchanged() {
        let seen = Instant::now();
        let spec = held_by("other");
        assert_eq!(decide(Some(&spec), seen, seen + D, "me", D), Step::Wait);
        assert_eq!(
            decide(
                Some(&spec),
                seen,
                seen + D + Duration::from_millis(1),
                "me",
                D
            ),
            Step::Take
        );
    }

    #[test]
    fn the_lease_s_own_duration_wins_over_the_default() {
        let seen = Instant::now();
        let mut spec = held_by("other");
        spec.lease_duration_seconds = Some(1);
        assert_eq!(
            decide(Some(&spec), seen, seen + Duration::from_secs(2), "me", D),
            Step::Take
        );
    }
}
