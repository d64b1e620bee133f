//! The HTTP edge: serving, authentication, request decoding, health and
//! the `Status` errors every handler answers with.
pub(crate) mod decode;
pub(crate) mod health;
pub(crate) mod protobuf;
pub mod serve;
pub(crate) mod status;
