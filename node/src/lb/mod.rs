//! Service load balancing: turning Services and EndpointSlices into the
//! data plane's LB maps. So far only backend selection (Maglev) exists; the
//! reconciler and map programming build on it.
pub mod maglev;
