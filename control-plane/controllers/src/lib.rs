//! The controller manager: one level-triggered reconciler per concern
//! (kube-rs runtime: watcher -> reflector -> reconcile), all API clients
//! (kube-rs), so they run unchanged against any Kubernetes API server.
//! Controllers never import one another; what they share is in
//! [`manager`].
pub mod manager;

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod garbagecollector;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod pods;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod workload;

mod api_error;
mod events;
mod informer;
mod pod_endpoint;
mod shared;
mod workqueue;

pub mod cronjob;
pub mod job;
pub mod ttlafterfinished;

pub use manager::{Config, Context, Error, run};
