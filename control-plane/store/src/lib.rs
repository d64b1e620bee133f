//! The control plane's state store: the subset of etcd's API that the
//! Kubernetes API server needs (the subset kine implements), behind one
//! async trait with two backends.
//!
//! - [`embedded::Embedded`]: redb in-process, durable on commit, for
//!   single-node clusters (the k3s-with-SQLite niche, without SQLite).
//! - [`etcd::Etcd`]: a real etcd cluster through `etcd-client`.
//!
//! Revision semantics are etcd's: one global revision, bumped once per
//! successful write; every key carries `create_revision`, `mod_revision`
//! and `version`. A watch "after R" delivers every event with a revision
//! greater than R, in revision order, exactly once, or fails with
//! [`StoreError::Compacted`] when R is older than the compacted revision
//! (the API server maps that to 410 Gone).
use std::pin::Pin;

use futures::Stream;

pub mod embedded;
pub mod etcd;

/// etcd's default request size limit (`--max-request-bytes`, 1.5 MiB)
/// covers a whole request: value, key (twice in a compare-and-swap) and
/// framing. Values are capped 16 KiB below it and keys at 4 KiB, so a write
/// either backend accepts the other accepts too.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
pub const MAX_KEY_BYTES: usize = 4 * 1024;
pub const MAX_VALUE_BYTES: usize = MAX_REQUEST_BYTES - 16 * 1024;

/// A key and its value as of some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last delete).
    pub create_revision: i64,
    /// Revision of the last write to this key.
    pub mod_revision: i64,
    /// Writes since creation, starting at 1.
    pub version: i64,
}

/// One change, as a watch delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A create or update; `prev` is the value it replaced, if any.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A delete at `revision`; `prev` is the deleted value.
    Delete { revision: i64, prev: KeyValue },
    /// Nothing for this watcher up to `revision` (a bookmark): lets a
    /// consumer advance its resume point while its keys are quiet.
    Progress { revision: i64 },
}

impl WatchEvent {
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
            WatchEvent::Progress { revision } => *revision,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            WatchEvent::Put { kv, .. } => Some(&kv.key),
            WatchEvent::Delete { prev, .. } => Some(&prev.key),
            WatchEvent::Progress { .. } => None,
        }
    }
}

/// A page of a list, consistent at `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListResult {
    pub kvs: Vec<KeyValue>,
    /// The revision this page reflects; pass it back (with the next start
    /// key) to read the following page at the same revision.
    pub revision: i64,
    /// More keys follow the last one returned.
    pub more: bool,
}

/// What to list: keys under `prefix`, from `start` (inclusive; must be
/// under the prefix too) in key order, at most `limit` of them (0 = all),
/// as of `revision` (None = now).
#[derive(Clone, Debug, Default)]
pub struct ListRequest<'a> {
    pub prefix: &'a str,
    pub start: Option<&'a str>,
    pub limit: usize,
    pub revision: Option<i64>,
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("revision {requested} is in the future (current revision {current})")]
    FutureRevision { requested: i64, current: i64 },
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("key {0:?} not found")]
    NotFound(String),
    /// A compare-and-swap lost: the key's current state is attached (None
    /// when it has been deleted meanwhile).
    #[error("key {key:?} was modified: expected mod_revision {expected}, found {}", .current.as_ref().map_or(0, |kv| kv.mod_revision))]
    Conflict {
        key: String,
        expected: i64,
        current: Option<Box<KeyValue>>,
    },
    #[error("empty key")]
    EmptyKey,
    #[error("key {key:?}... is {size} bytes, over the {limit}-byte limit")]
    KeyTooLong {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("key {key:?} is outside the store's prefix {prefix:?}")]
    KeyOutsidePrefix { key: String, prefix: String },
    #[error("value for {key:?} is {size} bytes, over the {limit}-byte limit")]
    ValueTooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// The watcher fell too far behind and was cut off (writers never wait
    /// for watchers); re-list and watch again.
    #[error("watcher fell behind and was disconnected")]
    WatcherTooSlow,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store backend: {0}")]
    Backend(String),
}

/// The store surface the API server uses. Every write either happens
/// completely (one new revision) or not at all.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The newest revision.
    async fn current_revision(&self) -> Result<i64, StoreError>;

    /// One key now.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    async fn list(&self, req: ListRequest<'_>) -> Result<ListResult, StoreError>;

    /// Creates `key` if absent; returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError>;

    /// Replaces `key` if its mod_revision is still `expected`.
    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError>;

    /// Deletes `key`, if its mod_revision is still `expected` when given;
    /// returns the delete's revision and the value deleted.
    async fn delete(&self, key: &str, expected: Option<i64>)
    -> Result<(i64, KeyValue), StoreError>;

    /// Every change under `prefix` with a revision greater than `after`,
    /// then live changes, with [`WatchEvent::Progress`] now and then.
    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream, StoreError>;

    /// Discards history up to and including `revision`: the state at
    /// `revision` stays readable, anything older fails with `Compacted`.
    async fn compact(&self, revision: i64) -> Result<(), StoreError>;

    /// The lowest revision lists and watches can still start from.
    async fn compacted_revision(&self) -> Result<i64, StoreError>;
}

/// The checks both backends make before writing anything.
pub(crate) fn validate_key(prefix: &str, key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::KeyTooLong {
            key: key.chars().take(64).collect(),
            size: key.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    if !key.starts_with(prefix) {
        return Err(StoreError::KeyOutsidePrefix {
            key: key.to_string(),
            prefix: prefix.to_string(),
        });
    }
    Ok(())
}

pub(crate) fn validate_write(prefix: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
    validate_key(prefix, key)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            key: key.to_string(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The smallest string greater than every string starting with `prefix`
/// (etcd's range_end for a prefix); None when there is none (all 0xff).
pub(crate) fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return Some(b);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_bad_value() {
        assert_eq!(validate_key("/r/", ""), Err(StoreError::EmptyKey));
        assert!(matches!(
            validate_key("/r/", "/x/a"),
            Err(StoreError::KeyOutsidePrefix { key, .. }) if key == "/x/a"
        ));
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert!(matches!(
            validate_write("/r/", "/r/a", &big),
            Err(StoreError::ValueTooLarge { size, .. }) if size == MAX_VALUE_BYTES + 1
        ));
        assert!(validate_write("/r/", "/r/a", &big[..MAX_VALUE_BYTES]).is_ok());
        let long = format!("/r/{}", "k".repeat(MAX_KEY_BYTES));
        assert!(matches!(
            validate_key("/r/", &long),
            Err(StoreError::KeyTooLong { size, .. }) if size == MAX_KEY_BYTES + 3
        ));
    }

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end("/r/"), Some(b"/r0".to_vec()));
        assert_eq!(prefix_end("a"), Some(b"b".to_vec()));
    }
}
