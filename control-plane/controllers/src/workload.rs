//! What the workload controllers' I/O edges share: publishing Events
//! without making a reconcile wait or fail for them, per-object retry
//! delays after a failed reconcile, reading API errors, and running each
//! reconcile on its own task.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Events about objects, published in the background (a reconcile that
/// creates 500 Pods does not wait for 500 Event writes). A failed publish
/// is logged at debug level and otherwise ignored: Events are advice.
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
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &regarding).await {
                tracing::debug!(error = %e, reason = %ev.reason, "event not published");
            }
        });
    }
}

/// Upstream's per-item exponential retry (5 ms doubling to 1000 s),
/// reset by a successful reconcile.
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

pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == code)
}

pub fn is_not_found(e: &kube::Error) -> bool {
    is_status(e, 404)
}

pub fn is_conflict(e: &kube::Error) -> bool {
    is_status(e, 409) && !is_already_exists(e)
}

pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == 409 && r.reason == "AlreadyExists")
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
