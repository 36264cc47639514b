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
pub mod watch;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{Applied, Batch, Cursor, OnReadable, Record, Storage, StorageError};
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
    /// The seq the write took in this node's change feed.
    pub seq: u64,
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
    /// The highest seq committed; the feed long-polls on it.
    last_seq: tokio::sync::watch::Sender<u64>,
    /// Blocking reads waiting for their key to change.
    watchers: Arc<watch::Watchers>,
}

/// What a blocking read found (`Node::get_reaching`).
#[derive(Debug)]
pub enum Reached {
    /// The key's version reached the one asked for: its live record, or
    /// `None` when that version (or a later one) deleted it.
    Yes(Option<Record>),
    /// It did not within the wait: the version the key has, if any.
    No(Option<Version>),
}

impl Node {
    /// A node over `storage`; its clock resumes above every stored version.
    pub async fn new(
        id: String,
        storage: Arc<dyn Storage>,
        limits: Limits,
    ) -> Result<Self, StorageError> {
        let floor = storage.max_version_ts().await?;
        let last_seq = storage.last_seq().await?;
        Ok(Node {
            id,
            storage,
            clock: Clock::starting_above(floor),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            limits,
            last_seq: tokio::sync::watch::Sender::new(last_seq),
            watchers: Default::default(),
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

    /// Watches the highest committed seq of this node's feed.
    pub fn subscribe_seq(&self) -> tokio::sync::watch::Receiver<u64> {
        self.last_seq.subscribe()
    }

    /// Tells feed watchers that `seq` is committed.
    fn committed(&self, seq: u64) {
        self.last_seq.send_if_modified(|last| {
            let newer = seq > *last;
            if newer {
                *last = seq;
            }
            newer
        });
    }

    /// Applies records pulled from `peer`'s feed, with the cursor that
    /// covers them, in one transaction: each record only when newer than
    /// the stored one. Returns, once durable, how many were stored.
    ///
    /// The records are durable at that peer already (a feed serves only
    /// durable changes): readers here may see them, and blocking reads
    /// wake, as soon as they are written to this node's log, before it
    /// is synced; `written` is called then (with an engine that does not
    /// do this, never: wait for the answer).
    pub async fn apply_remote(
        &self,
        peer: &str,
        records: Vec<Record>,
        cursor: u64,
        written: impl Fn() + Send + Sync + 'static,
    ) -> Result<usize, StorageError> {
        let cursor = Cursor {
            peer: peer.to_owned(),
            seq: cursor,
        };
        self.apply_from_peer(records, Some(cursor), Some(Arc::new(written)))
            .await
    }

    /// Applies records an anti-entropy pass fetched from a peer: each only
    /// when newer than the stored one. Returns how many were stored.
    pub async fn apply_repaired(&self, records: Vec<Record>) -> Result<usize, StorageError> {
        self.apply_from_peer(records, None, None).await
    }

    async fn apply_from_peer(
        &self,
        records: Vec<Record>,
        cursor: Option<Cursor>,
        written: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Result<usize, StorageError> {
        if let Some(ts) = records.iter().map(|r| r.version.ts).max() {
            // A version from a clock ahead of ours: ours moves past it, so
            // a later write here still gets a greater version.
            self.clock.observe(ts);
        }
        // Hashed before the records go: a blocking read may start meanwhile.
        let hashes: Vec<u64> = records.iter().map(|r| self.watchers.hash(&r.key)).collect();
        let readable_before_durable = written.map(|written| {
            let (watchers, hashes) = (self.watchers.clone(), hashes.clone());
            OnReadable(Arc::new(move || {
                watchers.changed(hashes.iter().copied());
                written();
            }))
        });
        let applied = self
            .storage
            .apply(Batch {
                records,
                cursor,
                readable_before_durable,
            })
            .await?;
        let mut stored = 0;
        for a in &applied {
            if let Applied::Stored { seq } = a {
                stored += 1;
                self.committed(*seq);
            }
        }
        self.watchers.changed(
            hashes
                .into_iter()
                .zip(&applied)
                .filter(|(_, a)| matches!(a, Applied::Stored { .. }))
                .map(|(h, _)| h),
        );
        Ok(stored)
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

    /// A blocking read: the record for `key` once its version is `min` or
    /// later (live, or deleted by such a version), waiting at most `wait`
    /// for a write here or from a peer to bring it.
    pub async fn get_reaching(
        &self,
        key: &str,
        min: &Version,
        wait: std::time::Duration,
    ) -> Result<Reached, NodeError> {
        self.check_key(key)?;
        let deadline = tokio::time::Instant::now() + wait;
        let watch = self.watchers.watch(key);
        loop {
            let changed = watch.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let current = self.storage.get(key).await?.map(|e| e.record);
            match current {
                Some(r) if r.version >= *min => {
                    return Ok(Reached::Yes((!r.tombstone).then_some(r)));
                }
                current => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Ok(Reached::No(current.map(|r| r.version)));
                    }
                }
            }
        }
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
        let record = Record {
            key: key.to_owned(),
            value,
            content_type,
            version: Version::default(),
            tombstone: false,
        };
        self.write(record, pre).await
    }

    /// Deletes `key` (writes a tombstone) if it is live and the
    /// preconditions hold; `NotFound` when there is nothing to delete.
    pub async fn delete(&self, key: &str, pre: &Preconditions) -> Result<WriteOutcome, NodeError> {
        self.check_key(key)?;
        let record = Record {
            key: key.to_owned(),
            value: Bytes::new(),
            content_type: String::new(),
            version: Version::default(),
            tombstone: true,
        };
        self.write(record, pre).await
    }

    /// The write path shared by put and delete: `record` gets its version
    /// here, under the key's lock.
    async fn write(
        &self,
        mut record: Record,
        pre: &Preconditions,
    ) -> Result<WriteOutcome, NodeError> {
        let key = record.key.clone();
        let _guard = self.locks[stripe(&key)].lock().await;
        // A record pulled from a peer can land between our read and our
        // commit (only while members disagree on a key's master); storage
        // then refuses ours as stale, and we decide again.
        for _ in 0..3 {
            let current = self.storage.get(&key).await?.map(|e| e.record);
            let live = current.as_ref().filter(|r| !r.tombstone);
            // Deleting nothing is a 404 before any condition is looked at
            // (RFC 9110, 13.2.1: conditions only apply to a 2xx answer).
            if record.tombstone && live.is_none() {
                return Err(NodeError::NotFound);
            }
            pre.check(live.map(|r| &r.version))?;
            // The clock is above every version stored here; observing the
            // current one keeps that true whatever a peer's clock said.
            if let Some(c) = &current {
                self.clock.observe(c.version.ts);
            }
            record.version = Version {
                ts: self.clock.tick(),
                node: self.id.clone(),
            };
            let applied = self
                .storage
                .apply(Batch {
                    records: vec![record.clone()],
                    cursor: None,
                    readable_before_durable: None,
                })
                .await?;
            if let Some(Applied::Stored { seq }) = applied.first() {
                self.committed(*seq);
                if self.watchers.any() {
                    self.watchers.changed([self.watchers.hash(&key)]);
                }
                return Ok(WriteOutcome {
                    created: live.is_none(),
                    version: record.version,
                    seq: *seq,
                });
            }
        }
        Err(NodeError::Storage(StorageError::Other(format!(
            "key {key:?} kept changing under a write"
        ))))
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
