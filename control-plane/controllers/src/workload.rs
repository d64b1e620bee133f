//! What the workload controllers' I/O edges (ReplicaSet, Deployment)
//! share on top of [`crate::events`] and [`crate::api_error`]: Events
//! published in the background, per-object retry delays for kube-runtime's
//! applier, the message of an API error, and each reconcile on a task of
//! its own.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};

/// Events about objects, published in the background through
/// [`crate::events::publish`]: a reconcile that creates 500 Pods does not
/// wait for 500 Event writes.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// `controller` is upstream's component name, e.g.
    /// `replicaset-controller`.
    pub fn new(client: kube::Client, controller: &str) -> Self {
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: controller.into(),
                    instance: None,
                },
            ),
        }
    }

    pub fn normal(&self, regarding: &ObjectReference, reason: &str, action: &str, note: String) {
        self.publish(EventType::Normal, regarding, reason, action, note);
    }

    pub fn warning(&self, regarding: &ObjectReference, reason: &str, action: &str, note: String) {
        self.publish(EventType::Warning, regarding, reason, action, note);
    }

    fn publish(
        &self,
        type_: EventType,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let recorder = self.recorder.clone();
        let regarding = regarding.clone();
        let (reason, action) = (reason.to_string(), action.to_string());
        tokio::spawn(async move {
            crate::events::publish(&recorder, &regarding, type_, &reason, &action, note).await;
        });
    }
}

/// Per-object exponential retry for the applier, reset by a successful
/// reconcile: upstream's 5 ms doubling, capped at 1000 s as upstream's
/// (an applier keeps retrying; it never drops the object).
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

const BASE: Duration = Duration::from_millis(5);
const CAP: Duration = Duration::from_secs(1000);

impl Backoff {
    /// The delay before retrying `key` after one more failure.
    pub fn failed(&self, key: &str) -> Duration {
        let mut m = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key.to_string()).or_default();
        let d = BASE.saturating_mul(2u32.saturating_pow(*n)).min(CAP);
        *n = n.saturating_add(1);
        d
    }

    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The API server's message for an API error, the error itself otherwise:
/// what upstream puts in Events and conditions.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(r) => r.message.clone(),
        other => other.to_string(),
    }
}

/// A write refused because the object changed since it was read.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == 409 && r.reason != "AlreadyExists")
}

/// How a controller words its pod-deletion Events (upstream's wording
/// differs per controller) and whether a changed pod counts as gone.
pub struct DeleteNotes<'a> {
    pub deleted: &'a (dyn Fn(&str) -> String + Sync),
    pub failed: &'a (dyn Fn(&str, &str) -> String + Sync),
    /// A 409 (the uid precondition met a namesake) is not an error.
    pub conflict_is_gone: bool,
}

/// Deletes `victims` at once (upstream does too), each expected gone
/// before the owner's next sync acts, guarded by its uid; an Event per
/// pod; the first error's message is returned.
#[allow(clippy::too_many_arguments)]
pub async fn delete_pods(
    client: &kube::Client,
    expectations: &crate::replicaset::expectations::Expectations,
    events: &Events,
    regarding: &ObjectReference,
    ns: &str,
    key: &str,
    victims: &[&Pod],
    notes: DeleteNotes<'_>,
) -> Result<(), String> {
    if victims.is_empty() {
        return Ok(());
    }
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    expectations.expect_deletions(
        key,
        victims
            .iter()
            .map(|p| (p.uid().unwrap_or_default(), p.name_any())),
        std::time::Instant::now(),
    );
    let results = join_all(victims.iter().map(|p| {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: p.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        let api = api.clone();
        let name = p.name_any();
        async move { api.delete(&name, &dp).await }
    }))
    .await;
    let mut first_err = None;
    for (p, r) in victims.iter().zip(results) {
        let name = p.name_any();
        match r {
            Ok(_) => events.normal(
                regarding,
                "SuccessfulDelete",
                "Delete",
                (notes.deleted)(&name),
            ),
            Err(e) => {
                expectations.deletion_failed(key, &p.uid().unwrap_or_default());
                let gone = crate::api_error::is_not_found(&e)
                    || (notes.conflict_is_gone && is_conflict(&e));
                if !gone {
                    let msg = api_message(&e);
                    events.warning(
                        regarding,
                        "FailedDelete",
                        "Delete",
                        (notes.failed)(&name, &msg),
                    );
                    first_err.get_or_insert(msg);
                }
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// A reconcile future the applier can hold (boxed, Unpin) running on a
/// task of its own, so reconciles of different objects use both cores.
pub type Spawned<E> = Pin<Box<dyn Future<Output = Result<Action, E>> + Send>>;

pub fn spawn<E>(fut: impl Future<Output = Result<Action, E>> + Send + 'static) -> Spawned<E>
where
    E: From<tokio::task::JoinError> + Send + 'static,
{
    Box::pin(async move { tokio::spawn(fut).await.unwrap_or_else(|e| Err(e.into())) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_object_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.failed("a"), Duration::from_millis(5));
        assert_eq!(b.failed("a"), Duration::from_millis(10));
        assert_eq!(b.failed("a"), Duration::from_millis(20));
        assert_eq!(b.failed("b"), Duration::from_millis(5));
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_millis(5));
    }

    #[test]
    fn backoff_is_capped() {
        let b = Backoff::default();
        let last = (0..64).map(|_| b.failed("a")).last().unwrap();
        assert_eq!(last, CAP);
    }
}
