//! The storage seam: the `Storage` trait every engine implements, and the
//! `Record` it stores.
//!
//! An engine keeps, atomically and durably:
//! - records, one per key (live values and tombstones alike);
//! - the node's change feed: each time a record is stored or replaced it
//!   takes the next change sequence number (`seq`) in the same transaction,
//!   so the feed is the node's records ordered by seq;
//! - replication cursors, stored in the same transaction as the records
//!   they cover.
//!
//! Engines never decide *what* to write; they apply records whose version is
//! newer than what they hold (last-writer-wins on the version) and report
//! which ones took. Versions, conditions and keys are the node core's job.

pub mod codec;
pub mod early;
pub mod embedded;
pub mod memtable;
pub mod paced;
pub mod sql;
pub mod wal;
pub mod writer;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::node::version::Version;

/// A hash map with a fast, per-process seeded hasher (foldhash) for the
/// engines' in-memory indexes, which hash a key on every read and write.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One key's state: a value or a tombstone, with the version that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Bytes,
    pub content_type: String,
    pub version: Version,
    pub tombstone: bool,
}

/// A record as stored on this node, with the change sequence number it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub record: Record,
}

impl Entry {
    /// The bytes its fields take in memory, the key counted twice (a map
    /// that holds the entry holds its key too); callers add their own
    /// per-entry overhead.
    pub fn footprint(&self) -> usize {
        let r = &self.record;
        2 * r.key.len() + r.value.len() + r.content_type.len() + r.version.node.len()
    }
}

/// A replication cursor: the highest seq of `peer`'s feed this node applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub peer: String,
    pub seq: u64,
}

/// One atomic unit of change: records to apply, and optionally the cursor
/// that moves with them. All of it commits, or none of it.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub cursor: Option<Cursor>,
    /// For records already durable elsewhere (pulled from a peer's feed,
    /// which serves only durable changes): an engine may make them
    /// readable (`get`) before they are durable here, and calls this once
    /// they are. Nothing else moves early: `apply` still returns once they
    /// are durable, and only then do they enter this node's feed and does
    /// the cursor move. An engine that does not do this ignores it.
    pub readable_before_durable: Option<OnReadable>,
}

/// What an engine calls when a batch's records became readable before
/// they were durable (see `Batch::readable_before_durable`).
#[derive(Clone)]
pub struct OnReadable(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnReadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnReadable")
    }
}

/// What became of one record of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Stored, taking this seq.
    Stored { seq: u64 },
    /// Not stored: the engine already holds this version or a newer one.
    Stale,
}

/// Why an engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The engine cannot be reached now (a database down, a writer gone);
    /// the request may succeed later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes could not be decoded: the data is damaged.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Any other engine failure.
    #[error("storage error: {0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// The storage engine interface. Every method is safe to call concurrently.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The record stored for `key`, tombstone or not.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;

    /// Applies a batch in one durable transaction: each record is stored
    /// only when its version is newer than the stored one, taking the next
    /// seq; the cursor, if any, is stored with them. Returns once durable,
    /// with one `Applied` per record, in order.
    async fn apply(&self, batch: Batch) -> Result<Vec<Applied>>;

    /// Live (non-tombstone) keys starting with `prefix`, in byte order,
    /// strictly after `start_after` when given, at most `limit` of them.
    async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>>;

    /// The change feed: entries with seq > `after`, in seq order, at most
    /// `limit`. A key appears once, at the seq of its latest change.
    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Entry>>;

    /// A random id drawn when this store was created: a peer whose cursor
    /// was for another feed id (this node's data was wiped) starts over.
    async fn feed_id(&self) -> Result<u64>;

    /// Draws a new feed id and keeps it: peers then follow this node's
    /// feed from the start. For a store whose feed went back in time (it
    /// was restored from a backup), where peers' cursors point past its end.
    async fn new_feed_id(&self) -> Result<u64>;

    /// The highest seq taken so far (0 when nothing was ever stored).
    async fn last_seq(&self) -> Result<u64>;

    /// The highest version timestamp ever stored, so the clock can resume
    /// above it after a restart.
    async fn max_version_ts(&self) -> Result<u64>;

    /// Removes tombstones whose seq is at most `max_seq` and whose version
    /// ts is below `older_than_ts`, at most `limit` of them, in one durable
    /// transaction. Returns how many were removed.
    async fn purge_tombstones(
        &self,
        max_seq: u64,
        older_than_ts: u64,
        limit: usize,
    ) -> Result<usize>;

    /// How many tombstones this node holds.
    async fn tombstone_count(&self) -> Result<u64>;

    /// The stored cursor for `peer` (0 when none).
    async fn cursor(&self, peer: &str) -> Result<u64>;

    /// Flushes and releases the engine. Later writes fail with
    /// `Unavailable`; reads may still answer.
    async fn close(&self) -> Result<()>;
}

/// A fresh random feed id (never 0, which means "none" on the wire).
pub fn random_feed_id() -> u64 {
    random_u64().max(1)
}

/// A random number, different in every call and process (not for secrets).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
