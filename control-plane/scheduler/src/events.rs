//! Events leave the scheduling path through a bounded queue, as client-go's
//! broadcaster does (1 000 queued, dropped beyond): a binding slot is freed
//! as soon as the binding is written, never held for the Event write, and a
//! storm of events cannot slow placement down.
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::mpsc;

/// How many events may wait for the writer (client-go's maxQueuedEvents).
const MAX_QUEUED: usize = 1000;

struct Queued {
    event: Event,
    regarding: ObjectReference,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Queued>,
}

impl EventSink {
    /// The sink and the writer loop, which ends once every sink is dropped.
    pub fn new(recorder: Recorder) -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = mpsc::channel::<Queued>(MAX_QUEUED);
        let writer = async move {
            while let Some(q) = rx.recv().await {
                // A failed event must never fail scheduling: log it only.
                if let Err(e) = recorder.publish(&q.event, &q.regarding).await {
                    tracing::debug!(error = %e, reason = q.event.reason, "could not publish event");
                }
            }
        };
        (Self { tx }, writer)
    }

    /// Queues an event about `regarding`; drops it when the queue is full.
    pub fn emit(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: related,
        };
        if let Err(e) = self.tx.try_send(Queued { event, regarding }) {
            tracing::debug!(reason, error = %e, "event dropped");
        }
    }
}
