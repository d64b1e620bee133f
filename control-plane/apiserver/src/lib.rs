//! sluice's API server: the Kubernetes REST surface over the state store.
//! Depends on the store, k8s-openapi and axum only, never on kube, the
//! scheduler or the controllers (they are its clients).
//!
//! - `http`: TLS, authentication, routing, content decoding, `Status` errors, health.
//! - `handlers`: get/list/watch/create/update/patch/delete, generic over resources.
//! - `registry`: what the server knows per kind (admission, table columns, keys).
//! - `alloc`, `cache`, `patch`, `discovery`, `openapi`, `metrics`: the services
//!   the handlers use.
pub mod alloc;
pub mod cache;
mod discovery;
pub mod handlers;
pub mod http;
pub mod metrics;
mod openapi;
mod patch;
mod registry;
mod selector;
