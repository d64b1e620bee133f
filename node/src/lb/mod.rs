//! Service load balancing: turning Services and EndpointSlices into the
//! data plane's LB maps.
//!
//! source (manifests dir or API server) -> [`model::Snapshot`] ->
//! [`model::desired`] -> [`reconcile::Reconciler`] -> pinned maps.
pub mod conntrack;
pub mod kube_source;
pub mod list;
pub mod maglev;
pub mod manifests;
pub mod model;
pub mod parallel;
pub mod reconcile;
pub mod source;
