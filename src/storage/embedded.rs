//! The embedded engine: one redb file in the node's data dir.
//!
//! Reads open a read transaction on the caller's thread. Writes go to one
//! writer thread (see `writer`), which applies each group of queued batches
//! in one redb transaction, makes it durable in the write-ahead log (`wal`:
//! one append, one fdatasync), then commits the transaction without
//! durability, which makes it visible. Each caller is answered only after
//! that, so an acknowledged write is durable; a durable redb commit every
//! `CHECKPOINT_EVERY` (a checkpoint) lets the log start over.
//!
//! Reads of hot keys are served from a cache of recently read and written
//! records (`RecordCache`), which the writer keeps up to date.
//!
//! Tables: `records` (key -> encoded record, see `codec`), `feed`
//! (seq -> key, one row per key at its latest seq), `tombstones` (seq ->
//! key, the feed's tombstone rows, for garbage collection), `meta` (last
//! seq, max version ts) and `cursors` (peer -> seq).

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::wal::{Frame, FrameBuilder, Wal};
use super::writer::{self, Purge, Queue, Work, Writer};
use super::{codec, Applied, Batch, Entry, Result, Storage, StorageError, Version};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const FEED: TableDefinition<u64, &str> = TableDefinition::new("feed");
const TOMBSTONES: TableDefinition<u64, &str> = TableDefinition::new("tombstones");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");

const LAST_SEQ: &str = "last_seq";
const MAX_TS: &str = "max_version_ts";
const FEED_ID: &str = "feed_id";

/// The file name inside the data dir.
pub const FILE_NAME: &str = "ripple.redb";

/// How often the writer makes everything durable in redb and empties the
/// write-ahead log, at the latest...
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// ...and once the log holds this much.
const CHECKPOINT_BYTES: u64 = 64 << 20;

/// The redb engine. Cheap to share behind an `Arc`.
pub struct Embedded {
    db: Arc<Database>,
    cache: Arc<RecordCache>,
    writer: Writer,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Embedded {
    /// Opens (or creates) the engine in `data_dir`, with the default page
    /// cache (128 MiB).
    pub fn open(data_dir: &Path) -> Result<Self> {
        Embedded::open_with_cache(data_dir, 128 << 20)
    }

    /// Opens (or creates) the engine in `data_dir`, caching at most
    /// `cache_bytes` in memory: a quarter for recently used records, the
    /// rest for the file's pages (redb's cache).
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StorageError::Other(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(cache_bytes - cache_bytes / 4)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StorageError::Other(format!(
                    "{} is in use by another process (is another ripple node running on this data dir?)",
                    path.display()
                )),
                e => StorageError::Other(format!("cannot open {}: {e}", path.display())),
            })?;
        // Create every table up front so readers never meet a missing one.
        let txn = db.begin_write().map_err(other)?;
        {
            txn.open_table(RECORDS).map_err(other)?;
            txn.open_table(FEED).map_err(other)?;
            txn.open_table(TOMBSTONES).map_err(other)?;
            let mut meta = txn.open_table(META).map_err(other)?;
            if meta.get(FEED_ID).map_err(other)?.is_none() {
                meta.insert(FEED_ID, super::random_feed_id())
                    .map_err(other)?;
            }
            txn.open_table(CURSORS).map_err(other)?;
        }
        txn.commit().map_err(other)?;

        // What the log holds beyond redb's last durable commit was
        // acknowledged: put it back, at its seqs.
        let (mut wal, frames) = Wal::open(data_dir)?;
        if !frames.is_empty() {
            let replayed = replay(&db, &frames)?;
            tracing::info!(
                frames = frames.len(),
                records = replayed,
                "replayed the write-ahead log"
            );
        }
        if !wal.is_empty() {
            wal.reset()?;
        }

        let db = Arc::new(db);
        let cache = Arc::new(RecordCache::new(cache_bytes / 4));
        let (writer, queue) = writer::queue();
        let (writer_db, writer_cache) = (db.clone(), cache.clone());
        let thread = std::thread::Builder::new()
            .name("ripple-writer".into())
            .spawn(move || writer_loop(&writer_db, &writer_cache, queue, wal))
            .map_err(|e| StorageError::Other(format!("cannot start writer thread: {e}")))?;
        Ok(Embedded {
            db,
            cache,
            writer,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn read_meta(&self, name: &str) -> Result<u64> {
        let txn = self.db.begin_read().map_err(other)?;
        let meta = txn.open_table(META).map_err(other)?;
        Ok(meta
            .get(name)
            .map_err(other)?
            .map(|v| v.value())
            .unwrap_or(0))
    }
}

fn other(e: impl std::fmt::Display) -> StorageError {
    StorageError::Other(e.to_string())
}

/// The writer thread: commit each group, run each purge, answer; and
/// checkpoint now and then, and when the queue closes.
fn writer_loop(db: &Database, cache: &RecordCache, mut queue: Queue, mut wal: Wal) {
    let mut checkpointed = std::time::Instant::now();
    while let Some(work) = queue.blocking_next() {
        match work {
            Work::Commit(group) => match commit_group(db, &mut wal, &group.batches) {
                Err(e) if group.should_split(&e) => {
                    for one in group.split() {
                        let batches = std::slice::from_ref(&one.batch);
                        let result = commit_group(db, &mut wal, batches);
                        if let Ok(results) = &result {
                            cache.stored(batches, results);
                        }
                        one.answer(result);
                    }
                }
                result => {
                    if let Ok(results) = &result {
                        cache.stored(&group.batches, results);
                    }
                    group.answer(result)
                }
            },
            Work::Purge(job) => {
                let p = job.purge;
                let result = purge(db, cache, p.max_seq, p.older_than_ts, p.limit);
                if result.is_ok() {
                    // A purge commits durably: the log is in redb now.
                    match wal.reset() {
                        Ok(()) => checkpointed = std::time::Instant::now(),
                        Err(e) => tracing::error!(error = %e, "cannot empty the write-ahead log"),
                    }
                }
                job.answer(result);
            }
        }
        if !wal.is_empty()
            && (checkpointed.elapsed() >= CHECKPOINT_EVERY || wal.len() >= CHECKPOINT_BYTES)
        {
            match checkpoint(db, &mut wal) {
                Ok(()) => checkpointed = std::time::Instant::now(),
                // The log still holds everything: nothing is lost, the next
                // round tries again.
                Err(e) => tracing::error!(error = %e, "checkpoint failed"),
            }
        }
    }
    if let Err(e) = checkpoint(db, &mut wal) {
        tracing::error!(error = %e, "final checkpoint failed; the write-ahead log will be replayed at start");
    }
}

/// Makes every commit so far durable in redb, then empties the log.
fn checkpoint(db: &Database, wal: &mut Wal) -> Result<()> {
    let txn = db.begin_write().map_err(other)?;
    {
        // A durable commit persists the non-durable ones before it; it
        // needs a change to make, so it rewrites the last seq.
        let mut meta = txn.open_table(META).map_err(other)?;
        let last = meta.get(LAST_SEQ).map_err(other)?.map(|v| v.value());
        meta.insert(LAST_SEQ, last.unwrap_or(0)).map_err(other)?;
    }
    txn.commit().map_err(other)?;
    wal.reset()
}

/// The tables a write transaction changes, with the steps that replay and
/// group commit share.
struct Tables<'txn> {
    records: redb::Table<'txn, &'static str, &'static [u8]>,
    feed: redb::Table<'txn, u64, &'static str>,
    tombstones: redb::Table<'txn, u64, &'static str>,
    meta: redb::Table<'txn, &'static str, u64>,
    cursors: redb::Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Tables<'txn>> {
        Ok(Tables {
            records: txn.open_table(RECORDS).map_err(other)?,
            feed: txn.open_table(FEED).map_err(other)?,
            tombstones: txn.open_table(TOMBSTONES).map_err(other)?,
            meta: txn.open_table(META).map_err(other)?,
            cursors: txn.open_table(CURSORS).map_err(other)?,
        })
    }

    /// A `meta` value (0 when unset).
    fn meta(&self, name: &str) -> Result<u64> {
        Ok(self
            .meta
            .get(name)
            .map_err(other)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// The seq and version of `key`'s stored record, if any.
    fn stored(&self, key: &str) -> Result<Option<(u64, Version)>> {
        match self.records.get(key).map_err(other)? {
            Some(bytes) => Ok(Some(codec::decode_header(key, bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Stores `bytes` (the record encoded with `seq`) under `key`, moving
    /// the key's feed row (and tombstone row) from `old_seq` to `seq`.
    fn put(
        &mut self,
        key: &str,
        seq: u64,
        bytes: &[u8],
        tombstone: bool,
        old_seq: Option<u64>,
    ) -> Result<()> {
        if let Some(old_seq) = old_seq {
            self.feed.remove(old_seq).map_err(other)?;
            self.tombstones.remove(old_seq).map_err(other)?;
        }
        self.records.insert(key, bytes).map_err(other)?;
        self.feed.insert(seq, key).map_err(other)?;
        if tombstone {
            self.tombstones.insert(seq, key).map_err(other)?;
        }
        Ok(())
    }

    fn finish(&mut self, last_seq: u64, max_ts: u64) -> Result<()> {
        self.meta.insert(LAST_SEQ, last_seq).map_err(other)?;
        self.meta.insert(MAX_TS, max_ts).map_err(other)?;
        Ok(())
    }
}

/// Puts back what the log holds beyond redb's last durable commit: every
/// record with a seq above its last seq, at that seq, and every cursor, in
/// log order, in one durable transaction. Returns how many records.
fn replay(db: &Database, frames: &[Frame]) -> Result<usize> {
    let txn = db.begin_write().map_err(other)?;
    let mut replayed = 0;
    {
        let mut t = Tables::open(&txn)?;
        let durable = t.meta(LAST_SEQ)?;
        let mut last_seq = durable;
        let mut max_ts = t.meta(MAX_TS)?;
        for frame in frames {
            for e in &frame.records {
                if e.seq <= durable {
                    continue;
                }
                let key = e.record.key.as_str();
                let old_seq = t.stored(key)?.map(|(seq, _)| seq);
                let bytes = codec::encode(e.seq, &e.record);
                t.put(key, e.seq, &bytes, e.record.tombstone, old_seq)?;
                last_seq = last_seq.max(e.seq);
                max_ts = max_ts.max(e.record.version.ts);
                replayed += 1;
            }
            for c in &frame.cursors {
                t.cursors.insert(c.peer.as_str(), c.seq).map_err(other)?;
            }
        }
        t.finish(last_seq, max_ts)?;
    }
    txn.commit().map_err(other)?;
    Ok(replayed)
}

/// Applies every batch, in order, in one transaction, logs its effects in
/// the write-ahead log, and commits (visible, durable through the log).
fn commit_group(db: &Database, wal: &mut Wal, batches: &[Batch]) -> Result<Vec<Vec<Applied>>> {
    let mut txn = db.begin_write().map_err(other)?;
    // Durable through the log instead: see `wal`.
    txn.set_durability(redb::Durability::None).map_err(other)?;
    let mut log = FrameBuilder::default();
    let mut results = Vec::with_capacity(batches.len());
    {
        let mut t = Tables::open(&txn)?;
        let mut last_seq = t.meta(LAST_SEQ)?;
        let mut max_ts = t.meta(MAX_TS)?;
        for batch in batches {
            let mut applied = Vec::with_capacity(batch.records.len());
            for record in &batch.records {
                let old = t.stored(&record.key)?;
                if old.as_ref().is_some_and(|(_, v)| *v >= record.version) {
                    applied.push(Applied::Stale);
                    continue;
                }
                last_seq += 1;
                max_ts = max_ts.max(record.version.ts);
                let stored = codec::encode(last_seq, record);
                let old_seq = old.map(|(seq, _)| seq);
                t.put(&record.key, last_seq, &stored, record.tombstone, old_seq)?;
                log.record(&record.key, &stored);
                applied.push(Applied::Stored { seq: last_seq });
            }
            if let Some(cursor) = &batch.cursor {
                t.cursors
                    .insert(cursor.peer.as_str(), cursor.seq)
                    .map_err(other)?;
                log.cursor(cursor);
            }
            results.push(applied);
        }
        t.finish(last_seq, max_ts)?;
    }
    if log.is_empty() {
        // Nothing stored, no cursor moved: nothing to make durable.
        txn.abort().map_err(other)?;
        return Ok(results);
    }
    let before = wal.len();
    wal.append(&log.finish())?;
    if let Err(e) = txn.commit() {
        // The group did not happen: its frame must not be replayed.
        wal.rollback(before)?;
        return Err(other(e));
    }
    Ok(results)
}

/// Removes old tombstones up to `max_seq`, in one transaction.
fn purge(
    db: &Database,
    cache: &RecordCache,
    max_seq: u64,
    older_than_ts: u64,
    limit: usize,
) -> Result<usize> {
    let txn = db.begin_write().map_err(other)?;
    let mut purged = 0;
    let gone: Vec<String>;
    {
        let mut records = txn.open_table(RECORDS).map_err(other)?;
        let mut feed = txn.open_table(FEED).map_err(other)?;
        let mut tombstones = txn.open_table(TOMBSTONES).map_err(other)?;
        // Old enough ones only count towards the limit: young ones in front
        // must not hide older ones behind them.
        let mut victims = Vec::new();
        for item in tombstones.range(..=max_seq).map_err(other)? {
            if victims.len() >= limit {
                break;
            }
            let (seq, key) = item.map_err(other)?;
            let key = key.value();
            let ts = match records.get(key).map_err(other)? {
                Some(bytes) => codec::decode_header(key, bytes.value())?.1.ts,
                None => 0,
            };
            if ts < older_than_ts {
                victims.push((seq.value(), key.to_owned()));
            }
        }
        for (seq, key) in &victims {
            records.remove(key.as_str()).map_err(other)?;
            feed.remove(*seq).map_err(other)?;
            tombstones.remove(*seq).map_err(other)?;
            purged += 1;
        }
        gone = victims.into_iter().map(|(_, key)| key).collect();
    }
    txn.commit().map_err(other)?;
    for key in &gone {
        cache.remove(key);
    }
    Ok(purged)
}

#[async_trait]
impl Storage for Embedded {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let generation = match self.cache.get(key) {
            Ok(entry) => return Ok(Some(entry)),
            Err(generation) => generation,
        };
        let txn = self.db.begin_read().map_err(other)?;
        let records = txn.open_table(RECORDS).map_err(other)?;
        match records.get(key).map_err(other)? {
            Some(bytes) => {
                let entry = codec::decode(key, bytes.value())?;
                self.cache.fill(&entry, generation);
                Ok(Some(entry))
            }
            None => Ok(None),
        }
    }

    async fn apply(&self, batch: Batch) -> Result<Vec<Applied>> {
        self.writer.apply(batch).await
    }

    async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let txn = self.db.begin_read().map_err(other)?;
        let records = txn.open_table(RECORDS).map_err(other)?;
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut keys = Vec::new();
        for item in records
            .range::<&str>((start, Bound::Unbounded))
            .map_err(other)?
        {
            if keys.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(other)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let entry = codec::decode_header(key, value.value());
            entry?;
            // Byte 1 holds the flags; decode_header validated the layout.
            if value.value()[1] & 1 == 0 {
                keys.push(key.to_owned());
            }
        }
        Ok(keys)
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Entry>> {
        let txn = self.db.begin_read().map_err(other)?;
        let feed = txn.open_table(FEED).map_err(other)?;
        let records = txn.open_table(RECORDS).map_err(other)?;
        let mut out = Vec::new();
        for item in feed
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map_err(other)?
        {
            if out.len() >= limit {
                break;
            }
            let (seq, key) = item.map_err(other)?;
            let key = key.value();
            let bytes = records.get(key).map_err(other)?.ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "feed seq {} names missing key {key:?}",
                    seq.value()
                ))
            })?;
            out.push(codec::decode(key, bytes.value())?);
        }
        Ok(out)
    }

    async fn feed_id(&self) -> Result<u64> {
        self.read_meta(FEED_ID)
    }

    async fn new_feed_id(&self) -> Result<u64> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let id = super::random_feed_id();
            let txn = db.begin_write().map_err(other)?;
            txn.open_table(META)
                .map_err(other)?
                .insert(FEED_ID, id)
                .map_err(other)?;
            txn.commit().map_err(other)?;
            Ok(id)
        })
        .await
        .map_err(other)?
    }

    async fn last_seq(&self) -> Result<u64> {
        self.read_meta(LAST_SEQ)
    }

    async fn max_version_ts(&self) -> Result<u64> {
        self.read_meta(MAX_TS)
    }

    async fn purge_tombstones(
        &self,
        max_seq: u64,
        older_than_ts: u64,
        limit: usize,
    ) -> Result<usize> {
        self.writer
            .purge(Purge {
                max_seq,
                older_than_ts,
                limit,
            })
            .await
    }

    async fn tombstone_count(&self) -> Result<u64> {
        let txn = self.db.begin_read().map_err(other)?;
        let tombstones = txn.open_table(TOMBSTONES).map_err(other)?;
        tombstones.len().map_err(other)
    }

    async fn cursor(&self, peer: &str) -> Result<u64> {
        let txn = self.db.begin_read().map_err(other)?;
        let cursors = txn.open_table(CURSORS).map_err(other)?;
        Ok(cursors
            .get(peer)
            .map_err(other)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    async fn close(&self) -> Result<()> {
        // The writer finishes what is queued, then exits.
        self.writer.close();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(other)?
                .map_err(|_| StorageError::Other("the storage writer panicked".into()))?;
        }
        Ok(())
    }
}

/// Recently read and written records, so that reading a hot key skips
/// redb (a read transaction, a B-tree walk, a decode). Only the writer
/// thread changes it, after each commit; a reader fills it with what it
/// read from redb only when no write touched the key's shard meanwhile
/// (`generation`), so it never holds a value older than redb's.
struct RecordCache {
    shards: Box<[Mutex<CacheShard>]>,
    shard_budget: usize,
}

#[derive(Default)]
struct CacheShard {
    map: std::collections::HashMap<String, Entry>,
    bytes: usize,
    /// Bumped by every write to a key of this shard.
    generation: u64,
}

const CACHE_SHARDS: usize = 64;

/// What an entry costs the cache: its bytes and a fixed overhead.
fn cache_cost(e: &Entry) -> usize {
    let r = &e.record;
    2 * r.key.len() + r.value.len() + r.content_type.len() + r.version.node.len() + 128
}

impl RecordCache {
    fn new(budget: usize) -> RecordCache {
        RecordCache {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
            shard_budget: budget / CACHE_SHARDS,
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, CacheShard> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        self.shards[h.finish() as usize % CACHE_SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The cached entry, or the shard's generation to fill it with.
    fn get(&self, key: &str) -> std::result::Result<Entry, u64> {
        let shard = self.shard(key);
        shard.map.get(key).cloned().ok_or(shard.generation)
    }

    /// Caches what a reader read, unless a write came in between.
    fn fill(&self, entry: &Entry, generation: u64) {
        let mut shard = self.shard(&entry.record.key);
        if shard.generation == generation {
            insert(&mut shard, entry.clone(), self.shard_budget);
        }
    }

    /// The writer: these records are committed.
    fn stored(&self, batches: &[Batch], results: &[Vec<Applied>]) {
        for (batch, applied) in batches.iter().zip(results) {
            for (record, a) in batch.records.iter().zip(applied) {
                if let Applied::Stored { seq } = a {
                    let mut shard = self.shard(&record.key);
                    shard.generation += 1;
                    let entry = Entry {
                        seq: *seq,
                        record: record.clone(),
                    };
                    insert(&mut shard, entry, self.shard_budget);
                }
            }
        }
    }

    /// The writer: `key` is gone from redb.
    fn remove(&self, key: &str) {
        let mut shard = self.shard(key);
        shard.generation += 1;
        if let Some(old) = shard.map.remove(key) {
            shard.bytes -= cache_cost(&old);
        }
    }
}

/// Puts `entry` in `shard`, evicting others (whichever come first) to stay
/// within `budget`.
fn insert(shard: &mut CacheShard, entry: Entry, budget: usize) {
    let cost = cache_cost(&entry);
    if cost > budget {
        if let Some(old) = shard.map.remove(&entry.record.key) {
            shard.bytes -= cache_cost(&old);
        }
        return;
    }
    if let Some(old) = shard.map.insert(entry.record.key.clone(), entry) {
        shard.bytes -= cache_cost(&old);
    }
    shard.bytes += cost;
    while shard.bytes > budget {
        let Some(victim) = shard.map.keys().next().cloned() else {
            break;
        };
        if let Some(old) = shard.map.remove(&victim) {
            shard.bytes -= cache_cost(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Record;

    fn entry(key: &str, seq: u64, value: &str) -> Entry {
        Entry {
            seq,
            record: Record {
                key: key.into(),
                value: bytes::Bytes::copy_from_slice(value.as_bytes()),
                content_type: String::new(),
                version: crate::node::version::Version {
                    ts: seq,
                    node: "n1".into(),
                },
                tombstone: false,
            },
        }
    }

    #[test]
    fn a_fill_that_raced_a_write_is_dropped() {
        let cache = RecordCache::new(1 << 20);
        let generation = cache.get("k").unwrap_err();
        // A write lands between the reader's miss and its fill.
        let batch = Batch {
            records: vec![entry("k", 2, "new").record],
            cursor: None,
        };
        cache.stored(
            std::slice::from_ref(&batch),
            &[vec![Applied::Stored { seq: 2 }]],
        );
        cache.fill(&entry("k", 1, "old"), generation);
        assert_eq!(cache.get("k").unwrap(), entry("k", 2, "new"));
        cache.remove("k");
        assert!(cache.get("k").is_err());
    }

    #[test]
    fn the_cache_stays_within_its_budget() {
        let cache = RecordCache::new(CACHE_SHARDS * 1000);
        for i in 0..10_000 {
            let key = format!("key{i}");
            let g = cache.get(&key).unwrap_err();
            cache.fill(&entry(&key, i, "value"), g);
        }
        for shard in cache.shards.iter() {
            let shard = shard.lock().unwrap();
            let counted: usize = shard.map.values().map(cache_cost).sum();
            assert_eq!(counted, shard.bytes);
            assert!(shard.bytes <= 1000, "{}", shard.bytes);
        }
    }
}
