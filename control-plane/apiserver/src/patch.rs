//! Patch formats beyond RFC 6902/7386 (which json-patch implements).
pub(crate) mod strategic;
