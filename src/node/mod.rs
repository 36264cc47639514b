//! The node core: the read and write paths of one node, with keys, versions
//! and conditions. It knows nothing of HTTP; the http module is a thin layer
//! over it.
//!
//! A write to a key is serialised with other writes to the same key (striped
//! locks): the core reads the current record, checks the request's
//! conditions, assigns a version from the clock (always greater than the one
//! it replaces) and hands the record to storage, which makes it durable
//! before the write is acknowledged. Writes to different keys run
//! concurrently and share commits.

pub mod conditions;
pub mod version;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{Applied, Batch, Record, Storage, StorageError};
pub use conditions::{EtagList, Preconditions};
use version::{Clock, Version};

/// Size limits the node enforces on what clients send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

/// Why a request could not be served. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the key is empty")]
    EmptyKey,
    #[error("the key is {len} bytes long; the limit is {max} bytes")]
    KeyTooLong { len: usize, max: usize },
    #[error("the value is {len} bytes long; the limit is {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    #[error("no such key")]
    NotFound,
    #[error("a precondition failed: {0}")]
    PreconditionFailed(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a successful write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// True when the key held no live value before.
    pub created: bool,
    pub version: Version,
}

/// Content type stored when a client sends none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Number of striped write locks.
const LOCK_STRIPES: usize = 256;

/// One node's core. Shared behind an `Arc` by every request.
pub struct Node {
    id: String,
    storage: Arc<dyn Storage>,
    clock: Clock,
    locks: Vec<tokio::sync::Mutex<()>>,
    limits: Limits,
}

impl Node {
    /// A node over `storage`; its clock resumes above every stored version.
    pub async fn new(
        id: String,
        storage: Arc<dyn Storage>,
        limits: Limits,
    ) -> Result<Self, StorageError> {
        let floor = storage.max_version_ts().await?;
        Ok(Node {
            id,
            storage,
            clock: Clock::starting_above(floor),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            limits,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Checks a key against the limits.
    pub fn check_key(&self, key: &str) -> Result<(), NodeError> {
        if key.is_empty() {
            return Err(NodeError::EmptyKey);
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(NodeError::KeyTooLong {
                len: key.len(),
                max: self.limits.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks a value's length against the limits.
    pub fn check_value_len(&self, len: usize) -> Result<(), NodeError> {
        if len > self.limits.max_value_bytes {
            return Err(NodeError::ValueTooLarge {
                len,
                max: self.limits.max_value_bytes,
            });
        }
        Ok(())
    }

    /// The live record for `key`, or `None` when absent or deleted.
    pub async fn get(&self, key: &str) -> Result<Option<Record>, NodeError> {
        self.check_key(key)?;
        Ok(self
            .storage
            .get(key)
            .await?
            .map(|e| e.record)
            .filter(|r| !r.tombstone))
    }

    /// Stores `value` under `key` if the preconditions hold.
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        content_type: String,
        pre: &Preconditions,
    ) -> Result<WriteOutcome, NodeError> {
        self.check_key(key)?;
        self.check_value_len(value.len())?;
        self.write(key, pre, false, |version| Record {
            key: key.to_owned(),
            value,
            content_type,
            version,
            tombstone: false,
        })
        .await
    }

    /// Deletes `key` (writes a tombstone) if it is live and the
    /// preconditions hold; `NotFound` when there is nothing to delete.
    pub async fn delete(&self, key: &str, pre: &Preconditions) -> Result<WriteOutcome, NodeError> {
        self.check_key(key)?;
        self.write(key, pre, true, |version| Record {
            key: key.to_owned(),
            value: Bytes::new(),
            content_type: String::new(),
            version,
            tombstone: true,
        })
        .await
    }

    /// The write path shared by put and delete.
    async fn write(
        &self,
        key: &str,
        pre: &Preconditions,
        is_delete: bool,
        make: impl FnOnce(Version) -> Record,
    ) -> Result<WriteOutcome, NodeError> {
        let _guard = self.locks[stripe(key)].lock().await;
        let current = self.storage.get(key).await?.map(|e| e.record);
        let live = current.as_ref().filter(|r| !r.tombstone);
        pre.check(live.map(|r| &r.version))?;
        if is_delete && live.is_none() {
            return Err(NodeError::NotFound);
        }
        // The clock is above every stored version, so this is newer than
        // `current`; observe it anyway so a record that arrived from a peer
        // with a clock ahead of ours can never be shadowed.
        if let Some(c) = &current {
            self.clock.observe(c.version.ts);
        }
        let version = Version {
            ts: self.clock.tick(),
            node: self.id.clone(),
        };
        let record = make(version.clone());
        let applied = self
            .storage
            .apply(Batch {
                records: vec![record],
                cursor: None,
            })
            .await?;
        match applied.first() {
            Some(Applied::Stored { .. }) => Ok(WriteOutcome {
                created: live.is_none(),
                version,
            }),
            _ => Err(NodeError::Storage(StorageError::Other(format!(
                "storage refused version {version} of key {key:?} as stale"
            )))),
        }
    }

    /// Live keys with `prefix`, after `start_after`, at most `limit`.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, NodeError> {
        Ok(self.storage.list_keys(prefix, start_after, limit).await?)
    }

    /// Closes storage: every acknowledged write is already durable; this
    /// lets the engine flush and release its files.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.storage.close().await
    }
}

fn stripe(key: &str) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % LOCK_STRIPES
}
