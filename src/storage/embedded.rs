//! The embedded engine: one redb file in the node's data dir, a
//! write-ahead log beside it, and two threads.
//!
//! Writes go to one writer thread (see `writer`), which decides for each
//! group of queued batches which records take and at which seqs and
//! appends the group's frame to the write-ahead log (`wal`); a syncer
//! thread fdatasyncs the log (once for every group written meanwhile),
//! puts the groups in the memtable (`memtable`), which makes them visible,
//! and answers: an acknowledged write is durable, and the writer waits
//! neither on the disk nor on the B-tree. Records pulled from a peer are
//! readable from the moment their frame is written (`early`). The
//! applier thread folds the memtable into
//! redb in one durable transaction every `apply_every` (or sooner when the
//! memtable grows), off the write path, a routine fold on a short-lived
//! helper thread that only uses idle CPU time (see `fold_when_idle`); once
//! redb has a log segment's frames, the segment is removed.
//!
//! Reads look in the memtable, then in a cache of recently read and
//! written records (`RecordCache`, kept up to date by the writer), then in
//! redb, on the caller's thread.
//!
//! Tables: `records` (key -> encoded record, see `codec`), `feed`
//! (seq -> key, one row per key at its latest seq), `tombstones` (seq ->
//! key, the feed's tombstone rows, for garbage collection), `meta` (last
//! seq, max version ts) and `cursors` (peer -> seq).

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::early::Early;
use super::memtable::{self, Listed, Memtable};
use super::paced::{Pace, PacedFile};
use super::wal::{Frame, FrameBuilder, Retirer, Unsynced, Wal};
use super::writer::{self, Purge, PurgeJob, Queue, Work, Writer};
use super::{codec, Applied, Batch, Cursor, Entry, Result, Storage, StorageError, Version};

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

/// The redb engine. Cheap to share behind an `Arc`.
pub struct Embedded {
    db: Arc<Database>,
    shared: Arc<Shared>,
    writer: Writer,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// How the embedded engine uses memory and the disk.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Most bytes cached in memory: a quarter for recently used records,
    /// the rest for the file's pages (redb's cache).
    pub cache_bytes: usize,
    /// How often the applier folds the memtable into redb, at the latest.
    pub apply_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_bytes: 128 << 20,
            apply_every: Duration::from_secs(1),
        }
    }
}

/// The applier starts early once the memtable holds this much...
const NUDGE_BYTES: usize = 16 << 20;
/// ...and the writer waits for it beyond this much...
const MAX_MEMTABLE_BYTES: usize = 64 << 20;
/// ...failing writes after this long (the applier cannot write redb).
const MAX_WAIT: Duration = Duration::from_secs(30);
/// A log segment is sealed at the fold interval's age (at least this) or
/// at this length, so that it can be removed once the applier has its
/// frames. One rotation per fold keeps the writer's file work (cutting a
/// reused file back to its frames, a rename and a directory sync) rare.
const MIN_SEGMENT_AGE: Duration = Duration::from_secs(1);
const SEGMENT_BYTES: u64 = 64 << 20;
/// How long the writer lets writes gather while the syncer syncs.
const GATHER_WHILE_SYNCING: Duration = Duration::from_micros(500);

/// What readers, the writer and the applier share.
struct Shared {
    mem: Memtable,
    /// Records pulled from peers, readable while their frame is synced
    /// (see `early`).
    early: Early,
    cache: RecordCache,
    /// The highest seq and version ts the writer made visible.
    last_seq: AtomicU64,
    max_ts: AtomicU64,
    /// Groups the applier has durably in redb (see `Memtable::snapshot`).
    /// Bumped before the memtable lets go of them.
    applied: AtomicU64,
    /// The highest seq redb holds, bumped with `applied`: a feed read
    /// after it finds everything in the memtable.
    applied_seq: AtomicU64,
    /// This store's feed id, as in redb's meta table.
    feed_id: AtomicU64,
    /// Held while a new feed id is written and then kept, so that two at
    /// once cannot leave `feed_id` other than redb's.
    new_feed: Mutex<()>,
    /// Set when the writer asked the applier to start early.
    nudged: AtomicBool,
    /// Paces redb's syncs during routine folds (see `paced`).
    pace: Pace,
    /// Readers' snapshot of the records table (see `Shared::records`).
    snapshot: Mutex<Option<Arc<RecordsTable>>>,
}

type RecordsTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;

impl Shared {
    /// redb's records table as of the last fold and purge, for a reader
    /// that missed the memtable and the cache. Readers share one read
    /// transaction until the applier commits again, instead of each
    /// beginning one and opening the table (a third of a PUT's storage
    /// work, most of a missed GET's).
    ///
    /// The applier drops the snapshot after each commit (see
    /// `let_go_of_snapshot`), before the memtable or the cache lets go of
    /// anything the commit holds; and a snapshot is begun and kept under
    /// one lock, so one kept after that drop was begun after the commit.
    /// A reader that missed a record in the memtable or the cache
    /// therefore finds a snapshot that holds it.
    fn records(&self, db: &Database) -> Result<Arc<RecordsTable>> {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(records) = snapshot.as_ref() {
            return Ok(records.clone());
        }
        let txn = db.begin_read().map_err(other)?;
        let records = Arc::new(txn.open_table(RECORDS).map_err(other)?);
        *snapshot = Some(records.clone());
        Ok(records)
    }

    /// Drops readers' snapshot after a commit: the next reader begins
    /// one that sees it. Also, a read transaction keeps every page it can
    /// see from being reused, so one kept until a reader missed the cache
    /// (which may be never: a node taking only replicated writes) would
    /// make redb's file grow with each fold.
    fn let_go_of_snapshot(&self) {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// What the writer sends the applier.
enum ToApplier {
    /// The memtable is large: fold it in now.
    Nudge,
    /// Purges run on the applier, redb's one writer.
    Purge(PurgeJob),
}

impl Embedded {
    /// Opens (or creates) the engine in `data_dir`, with default options.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Embedded::open_with(data_dir, Options::default())
    }

    /// Opens (or creates) the engine in `data_dir`.
    pub fn open_with(data_dir: &Path, options: Options) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StorageError::Other(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(FILE_NAME);
        let cache_bytes = options.cache_bytes;
        let (file, pace) = PacedFile::open(&path)
            .map_err(|e| StorageError::Other(format!("cannot open {}: {e}", path.display())))?;
        let db = Database::builder()
            .set_cache_size(cache_bytes - cache_bytes / 4)
            .create_with_backend(file)
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
        wal.reset()?;

        let db = Arc::new(db);
        // Everything logged is in redb now.
        let stored_last_seq = read_u64(&db, META, LAST_SEQ)?;
        let shared = Arc::new(Shared {
            mem: Memtable::default(),
            early: Early::default(),
            cache: RecordCache::new(cache_bytes / 4),
            last_seq: AtomicU64::new(stored_last_seq),
            max_ts: AtomicU64::new(read_u64(&db, META, MAX_TS)?),
            applied: AtomicU64::new(0),
            applied_seq: AtomicU64::new(stored_last_seq),
            feed_id: AtomicU64::new(read_u64(&db, META, FEED_ID)?),
            new_feed: Mutex::new(()),
            nudged: AtomicBool::new(false),
            pace,
            snapshot: Mutex::new(None),
        });
        let (to_applier, inbox) = std::sync::mpsc::channel();
        let segment_age = options.apply_every.max(MIN_SEGMENT_AGE);
        let applier = {
            let (db, shared, retirer) = (db.clone(), shared.clone(), wal.retirer());
            std::thread::Builder::new()
                .name("ripple-applier".into())
                .spawn(move || {
                    lower_priority();
                    applier_loop(&db, &shared, &retirer, inbox, options.apply_every)
                })
                .map_err(|e| StorageError::Other(format!("cannot start applier thread: {e}")))?
        };
        let progress = Arc::new(Progress::default());
        let (writer, queue) = {
            let progress = progress.clone();
            writer::queue_telling(move || progress.urgent_came())
        };
        let thread = {
            let (db, shared) = (db.clone(), shared.clone());
            std::thread::Builder::new()
                .name("ripple-writer".into())
                .spawn(move || {
                    writer_loop(
                        &db,
                        &shared,
                        queue,
                        &mut wal,
                        &progress,
                        segment_age,
                        &to_applier,
                    );
                    // The applier folds in what is left, then exits.
                    drop(to_applier);
                    let finished = applier.join().is_ok() && shared.mem.is_empty();
                    if !finished {
                        tracing::error!("the applier did not finish; the write-ahead log will be replayed at start");
                    } else if let Err(e) = wal.reset() {
                        tracing::error!(error = %e, "cannot empty the write-ahead log; it will be replayed at start");
                    }
                })
                .map_err(|e| StorageError::Other(format!("cannot start writer thread: {e}")))?
        };
        Ok(Embedded {
            db,
            shared,
            writer,
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// A feed read's entries, and whether the memtable's part was cut to its
/// first records (see `Embedded::changes_since`).
struct FeedRead {
    entries: Vec<Entry>,
    window_cut: bool,
}

impl Embedded {
    /// The feed after `after`, at most `limit` entries: the memtable's
    /// first `window` records, then redb's rows up to `limit` of those the
    /// memtable does not hide (`memtable::row_hidden`, `merge_feed`). Only
    /// what the answer can hold is read, from either: a puller far behind
    /// a node whose memtable holds tens of thousands of records costs each
    /// request `limit` redb lookups, not one per record in the memtable.
    fn read_feed(&self, after: u64, limit: usize, window: usize) -> Result<FeedRead> {
        let (mem, mem_complete) = self.shared.mem.since(after, window);
        let window_cut = !mem_complete;
        if self.shared.applied_seq.load(Ordering::SeqCst) <= after {
            // redb holds nothing after `after`: had the applier released
            // any of it before the read above, this would be newer.
            let entries = memtable::merge_feed(mem, mem_complete, Vec::new(), true, limit);
            return Ok(FeedRead {
                entries,
                window_cut,
            });
        }
        let txn = self.db.begin_read().map_err(other)?;
        let feed = txn.open_table(FEED).map_err(other)?;
        let records = txn.open_table(RECORDS).map_err(other)?;
        let window = memtable::window_seqs(&mem);
        let mut disk = Vec::new();
        let mut complete = true;
        for item in feed
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map_err(other)?
        {
            if disk.len() >= limit {
                complete = false;
                break;
            }
            let (seq, key) = item.map_err(other)?;
            let (seq, key) = (seq.value(), key.value());
            if memtable::row_hidden(&window, self.shared.mem.seq_of(key), key, seq) {
                continue;
            }
            let bytes = records.get(key).map_err(other)?.ok_or_else(|| {
                StorageError::Corrupt(format!("feed seq {seq} names missing key {key:?}"))
            })?;
            disk.push(codec::decode(key, bytes.value())?);
        }
        drop(window);
        let entries = memtable::merge_feed(mem, mem_complete, disk, complete, limit);
        Ok(FeedRead {
            entries,
            window_cut,
        })
    }
}

/// A number kept under `name` in `table` (`meta` or `cursors`) in redb; 0
/// when unset.
fn read_u64(db: &Database, table: TableDefinition<&str, u64>, name: &str) -> Result<u64> {
    let txn = db.begin_read().map_err(other)?;
    let table = txn.open_table(table).map_err(other)?;
    Ok(table
        .get(name)
        .map_err(other)?
        .map(|v| v.value())
        .unwrap_or(0))
}

fn other(e: impl std::fmt::Display) -> StorageError {
    StorageError::Other(e.to_string())
}

/// A stored record's seq and whether it is a tombstone.
fn stored_kind(key: &str, bytes: &[u8]) -> Result<(u64, bool)> {
    let (seq, _) = codec::decode_header(key, bytes)?;
    // Byte 1 holds the flags; decode_header validated the layout.
    Ok((seq, bytes[1] & 1 == 1))
}

/// The writer thread: decide and log each group, hand it to the syncer
/// (which makes it durable, visible, and answers), hand purges to the
/// applier, and seal the log's segment when it is due (the applier
/// retires it).
///
/// The writer does not wait for the disk: while the syncer's fdatasync
/// runs, it decides and writes the groups queued behind. A write that
/// comes during a sync is synced after it in any case, so the writer lets
/// such writes gather for up to `GATHER_WHILE_SYNCING`, until the syncer
/// has finished with what it was sent (synced it, put it in the memtable,
/// answered), and writes them as one group: one frame and one hand-over
/// for many, which leaves more CPU time to serve requests. Records pulled
/// from a peer go at once, and end such a wait when they are queued
/// (`Progress::urgent_came`): they are readable as soon as their frame is
/// written (see `early`); everything else waits for the sync.
fn writer_loop(
    db: &Database,
    shared: &Shared,
    mut queue: Queue,
    wal: &mut Wal,
    progress: &Progress,
    segment_age: Duration,
    to_applier: &std::sync::mpsc::Sender<ToApplier>,
) {
    let (to_syncer, logged) = std::sync::mpsc::channel::<Logged>();
    std::thread::scope(|scope| {
        let syncer = std::thread::Builder::new()
            .name("ripple-syncer".into())
            .spawn_scoped(scope, || syncer_loop(shared, logged, progress));
        if let Err(e) = syncer {
            tracing::error!(error = %e, "cannot start the log's syncer thread");
            return;
        }
        let mut lookup = Lookup::default();
        let mut flight = InFlight::new(shared);
        let send = |flight: &mut InFlight, logged: Logged| {
            flight.sent += 1;
            // The syncer outlives this loop: the send cannot fail.
            let _ = to_syncer.send(logged);
        };
        while let Some(urgent) = queue.blocking_wait() {
            if !urgent {
                // While the syncer syncs, what comes is synced after it
                // anyway: let it gather into one group and one frame.
                progress.wait_at_most(flight.sent, GATHER_WHILE_SYNCING);
            }
            let Some(work) = queue.blocking_next() else {
                break;
            };
            flight.prune(progress.done());
            match work {
                Work::Commit(group) => {
                    lookup.let_go_if_behind(shared);
                    if let Err(e) = wait_for_room(shared, to_applier) {
                        group.answer(Err(e));
                        continue;
                    }
                    match log_group(db, shared, wal, &mut lookup, &mut flight, &group.batches) {
                        Ok(parts) => send(&mut flight, parts.answering(Caller::Group(group))),
                        Err(e) if group.should_split(&e) => {
                            for one in group.split() {
                                let batches = std::slice::from_ref(&one.batch);
                                match log_group(db, shared, wal, &mut lookup, &mut flight, batches)
                                {
                                    Ok(parts) => {
                                        send(&mut flight, parts.answering(Caller::Single(one)))
                                    }
                                    Err(e) => one.answer(Err(e)),
                                }
                            }
                        }
                        Err(e) => group.answer(Err(e)),
                    }
                    if shared.mem.bytes() >= NUDGE_BYTES {
                        nudge(shared, to_applier);
                    }
                }
                Work::Purge(job) => {
                    // A purge sees every group logged before it.
                    progress.wait_for(flight.sent);
                    if let Err(std::sync::mpsc::SendError(ToApplier::Purge(job))) =
                        to_applier.send(ToApplier::Purge(job))
                    {
                        job.answer(Err(StorageError::Unavailable(
                            "the storage applier stopped".into(),
                        )));
                    }
                }
            }
            wal.rotate_when_due(segment_age, SEGMENT_BYTES, || {
                progress.wait_for(flight.sent)
            });
        }
        // The syncer ends once it has answered everything sent.
        drop(to_syncer);
    });
}

/// How many logged groups the syncer has finished with.
#[derive(Default)]
struct Progress {
    state: Mutex<ProgressState>,
    moved: std::sync::Condvar,
}

#[derive(Default)]
struct ProgressState {
    done: u64,
    /// The syncer stopped (it panicked: the groups sent to it are
    /// answered with an error as their replies are dropped).
    stopped: bool,
    /// Whether the writer waits (`wait_for`, `wait_at_most`; it is the
    /// only thread that waits): the syncer wakes it only then, not after
    /// every group.
    waiting: bool,
    /// Work that should go at once was queued since the writer last let
    /// work gather (see `wait_at_most`).
    urgent: bool,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn done(&self) -> u64 {
        self.lock().done
    }

    fn finished(&self, groups: u64) {
        let mut state = self.lock();
        state.done += groups;
        if state.waiting {
            self.moved.notify_all();
        }
    }

    /// Work that should go at once was queued: a writer letting work
    /// gather stops waiting.
    fn urgent_came(&self) {
        let mut state = self.lock();
        state.urgent = true;
        if state.waiting {
            self.moved.notify_all();
        }
    }

    /// Waits until the syncer has finished with `sent` groups, or stopped,
    /// or `most` has passed, or work that should go at once was queued
    /// (since the last such wait).
    fn wait_at_most(&self, sent: u64, most: Duration) {
        let deadline = Instant::now() + most;
        let mut state = self.lock();
        while state.done < sent && !state.stopped && !state.urgent {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            state.waiting = true;
            state = self
                .moved
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.waiting = false;
        state.urgent = false;
    }

    /// Waits until the syncer has finished with `sent` groups, or stopped.
    fn wait_for(&self, sent: u64) {
        let mut state = self.lock();
        while state.done < sent && !state.stopped {
            state.waiting = true;
            state = self.moved.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.waiting = false;
    }
}

/// Marks the syncer stopped when its thread ends, however it ends.
struct Stopped<'a>(&'a Progress);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.moved.notify_all();
    }
}

/// Whom a logged group answers: a whole group, or one batch of a group
/// split after it failed as a whole.
enum Caller {
    Group(writer::Group),
    Single(writer::Single),
}

impl Caller {
    fn batches(&self) -> &[Batch] {
        match self {
            Caller::Group(g) => &g.batches,
            Caller::Single(one) => std::slice::from_ref(&one.batch),
        }
    }

    fn answer(self, result: Result<Vec<Vec<Applied>>>) {
        match self {
            Caller::Group(g) => g.answer(result),
            Caller::Single(one) => one.answer(result),
        }
    }
}

/// What the writer decided for a group and wrote to the log.
struct Parts {
    results: Vec<Vec<Applied>>,
    stored: Vec<Entry>,
    cursors: Vec<Cursor>,
    last_seq: u64,
    max_ts: u64,
    /// The key and seq of each record readable already (see `early`).
    early: Vec<(String, u64)>,
    /// `None` when nothing was stored and no cursor moved.
    frames: Option<Unsynced>,
}

impl Parts {
    fn answering(self, caller: Caller) -> Logged {
        Logged {
            parts: self,
            caller,
        }
    }
}

/// A group written to the log, for the syncer.
struct Logged {
    parts: Parts,
    caller: Caller,
}

/// The syncer thread: for every group logged (in order), waits for its
/// frame to be on disk, puts its records in the memtable, which makes
/// them visible (and publishes the last seq), and answers. One fdatasync
/// covers every group written before it started.
fn syncer_loop(shared: &Shared, logged: std::sync::mpsc::Receiver<Logged>, progress: &Progress) {
    let _stopped = Stopped(progress);
    while let Ok(first) = logged.recv() {
        let mut groups = vec![first];
        groups.extend(logged.try_iter());
        // The segment synced last, while its sync stands for the groups
        // after it (rotation waits for every group, so most often all of
        // them share one).
        let mut synced: Option<&Unsynced> = None;
        let mut outcomes = Vec::with_capacity(groups.len());
        for group in &groups {
            let outcome = match &group.parts.frames {
                None => Ok(()),
                Some(frames) if synced.is_some_and(|s| s.same_segment(frames)) => Ok(()),
                Some(frames) => {
                    let r = frames.sync();
                    synced = r.is_ok().then_some(frames);
                    r
                }
            };
            outcomes.push(outcome);
        }
        let count = groups.len() as u64;
        for (group, outcome) in groups.into_iter().zip(outcomes) {
            let Logged { parts, caller } = group;
            match outcome {
                Ok(()) => {
                    if parts.frames.is_some() {
                        // The last seq moves with the records, under the
                        // memtable's lock: a feed reader that saw them
                        // must not then read an older last seq (its
                        // peer's cursor would run ahead of it, which reads
                        // as a store gone back in time), nor one it can
                        // see no records for yet.
                        let (last_seq, max_ts) = (parts.last_seq, parts.max_ts);
                        shared.mem.insert(parts.stored, &parts.cursors, || {
                            shared.max_ts.fetch_max(max_ts, Ordering::SeqCst);
                            shared.last_seq.store(last_seq, Ordering::SeqCst);
                        });
                        // After the memtable has them: a reader that
                        // misses them there finds them here.
                        shared.early.remove(&parts.early);
                    }
                    shared.cache.stored(caller.batches(), &parts.results);
                    caller.answer(Ok(parts.results));
                }
                Err(e) => {
                    // Readable for a moment; durable at their source,
                    // and pulled again after the restart a failed sync
                    // calls for.
                    shared.early.remove(&parts.early);
                    caller.answer(Err(e));
                }
            }
        }
        progress.finished(count);
    }
}

/// What the writer has logged that the syncer has not put in the memtable
/// yet: the writer's version checks must see it.
struct InFlight {
    /// The seq and version of each key's latest such record.
    versions: super::FastMap<String, (u64, Version)>,
    /// Per group sent and not yet pruned, in order: its keys and seqs.
    groups: VecDeque<Vec<(String, u64)>>,
    /// Groups sent to the syncer, and how many of them were pruned here.
    sent: u64,
    pruned: u64,
    /// The last seq taken and the highest version ts logged.
    last_seq: u64,
    max_ts: u64,
}

impl InFlight {
    fn new(shared: &Shared) -> InFlight {
        InFlight {
            versions: Default::default(),
            groups: VecDeque::new(),
            sent: 0,
            pruned: 0,
            last_seq: shared.last_seq.load(Ordering::SeqCst),
            max_ts: shared.max_ts.load(Ordering::SeqCst),
        }
    }

    /// Forgets the groups the syncer finished with: the memtable has them.
    fn prune(&mut self, done: u64) {
        while self.pruned < done {
            let Some(keys) = self.groups.pop_front() else {
                break;
            };
            for (key, seq) in keys {
                if self.versions.get(&key).is_some_and(|(s, _)| *s == seq) {
                    self.versions.remove(&key);
                }
            }
            self.pruned += 1;
        }
    }
}

/// Asks the applier to fold the memtable in now, unless already asked.
fn nudge(shared: &Shared, to_applier: &std::sync::mpsc::Sender<ToApplier>) {
    if !shared.nudged.swap(true, Ordering::SeqCst) {
        let _ = to_applier.send(ToApplier::Nudge);
    }
}

/// Waits while the memtable is over its bound (the applier is behind).
fn wait_for_room(shared: &Shared, to_applier: &std::sync::mpsc::Sender<ToApplier>) -> Result<()> {
    let start = Instant::now();
    while shared.mem.bytes() > MAX_MEMTABLE_BYTES {
        nudge(shared, to_applier);
        if start.elapsed() > MAX_WAIT {
            return Err(StorageError::Unavailable(
                "the embedded engine cannot write its file (see the node's log)".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The writer's view of redb for version checks: a read transaction,
/// begun after the applier last released records from the memtable.
#[derive(Default)]
struct Lookup {
    records: Option<(u64, redb::ReadOnlyTable<&'static str, &'static [u8]>)>,
}

impl Lookup {
    /// Drops the read transaction once the applier has committed since it
    /// began (see `Shared::let_go_of_snapshot`).
    fn let_go_if_behind(&mut self, shared: &Shared) {
        let applied = shared.applied.load(Ordering::SeqCst);
        if self.records.as_ref().is_some_and(|(at, _)| *at != applied) {
            self.records = None;
        }
    }

    /// The version stored for `key`: the memtable's, else the cache's,
    /// else redb's.
    fn version(&mut self, db: &Database, shared: &Shared, key: &str) -> Result<Option<Version>> {
        if let Some(v) = shared.mem.version(key) {
            return Ok(Some(v));
        }
        if let Ok(e) = shared.cache.get(key) {
            return Ok(Some(e.record.version));
        }
        // A record released from the memtable since this transaction began
        // would be missing from it: begin a new one then.
        let applied = shared.applied.load(Ordering::SeqCst);
        if self.records.as_ref().is_none_or(|(at, _)| *at != applied) {
            let txn = db.begin_read().map_err(other)?;
            self.records = Some((applied, txn.open_table(RECORDS).map_err(other)?));
        }
        let Some((_, records)) = &self.records else {
            return Ok(None);
        };
        match records.get(key).map_err(other)? {
            Some(bytes) => Ok(Some(codec::decode_header(key, bytes.value())?.1)),
            None => Ok(None),
        }
    }
}

/// Decides which records of the group take, at which seqs, and writes
/// their effects to the write-ahead log; records pulled from a peer become
/// readable then (see `early`). The syncer does the rest (`syncer_loop`).
fn log_group(
    db: &Database,
    shared: &Shared,
    wal: &mut Wal,
    lookup: &mut Lookup,
    flight: &mut InFlight,
    batches: &[Batch],
) -> Result<Parts> {
    let mut last_seq = flight.last_seq;
    let mut max_ts = flight.max_ts;
    // Records stored earlier in this group, which the lookup cannot see.
    let mut here: super::FastMap<&str, &Version> = Default::default();
    let mut log = FrameBuilder::default();
    let mut stored = Vec::new();
    let mut cursors = Vec::new();
    let mut results = Vec::with_capacity(batches.len());
    // Records readable before the fdatasync (ranges of `stored`), and
    // whom to tell.
    let mut early_from = Vec::new();
    let mut on_readable = Vec::new();
    for batch in batches {
        let from = stored.len();
        let mut applied = Vec::with_capacity(batch.records.len());
        for record in &batch.records {
            let newer = match here.get(record.key.as_str()) {
                Some(v) => **v >= record.version,
                None => match flight.versions.get(&record.key) {
                    Some((_, v)) => *v >= record.version,
                    None => lookup
                        .version(db, shared, &record.key)?
                        .is_some_and(|v| v >= record.version),
                },
            };
            if newer {
                applied.push(Applied::Stale);
                continue;
            }
            last_seq += 1;
            max_ts = max_ts.max(record.version.ts);
            log.record(&record.key, &codec::encode(last_seq, record));
            here.insert(&record.key, &record.version);
            stored.push(Entry {
                seq: last_seq,
                record: record.clone(),
            });
            applied.push(Applied::Stored { seq: last_seq });
        }
        if let Some(cursor) = &batch.cursor {
            log.cursor(cursor);
            cursors.push(cursor.clone());
        }
        if let Some(hook) = &batch.readable_before_durable {
            early_from.push(from..stored.len());
            on_readable.push(hook);
        }
        results.push(applied);
    }
    let frames = if log.is_empty() {
        // Nothing stored, no cursor moved: nothing to make durable.
        None
    } else {
        Some(wal.write(log)?)
    };
    let keys: Vec<(String, u64)> = stored
        .iter()
        .map(|e| (e.record.key.clone(), e.seq))
        .collect();
    for e in &stored {
        flight
            .versions
            .insert(e.record.key.clone(), (e.seq, e.record.version.clone()));
    }
    let mut early = Vec::new();
    if frames.is_some() && !early_from.is_empty() {
        let entries = early_from.iter().flat_map(|r| stored[r.clone()].iter());
        shared.early.insert(entries.cloned().collect());
        early = early_from
            .into_iter()
            .flat_map(|r| keys[r].iter().cloned())
            .collect();
        for hook in on_readable {
            (hook.0)();
        }
    }
    flight.groups.push_back(keys);
    flight.last_seq = last_seq;
    flight.max_ts = max_ts;
    Ok(Parts {
        results,
        stored,
        cursors,
        last_seq,
        max_ts,
        early,
        frames,
    })
}

/// The applier thread: fold the memtable into redb every `every`, or when
/// nudged, and retire the log segments folded in; run purges; fold in what
/// is left when the writer goes.
///
/// A routine fold (the memtable under `NUDGE_BYTES`) runs on a helper
/// thread under `SCHED_IDLE` (see `fold_when_idle`): it takes only CPU
/// time that requests leave. A fold the writer asked for, a fold for a
/// purge and the last one at close run on this thread, at nice 10.
fn applier_loop(
    db: &Database,
    shared: &Shared,
    retirer: &Retirer,
    inbox: std::sync::mpsc::Receiver<ToApplier>,
    every: Duration,
) {
    use std::sync::mpsc::RecvTimeoutError;
    // The first fold comes up to 10 s early (a random part of the
    // interval, at most that), so nodes started together (several on one
    // machine) do not fold in step.
    let spread = every.min(Duration::from_secs(10));
    let phase = spread.mul_f64((super::random_u64() % 1000) as f64 / 1000.0);
    let mut last = Instant::now()
        .checked_sub(phase)
        .unwrap_or_else(Instant::now);
    let mut failing = false;
    // Purges that came while a helper folded, oldest first.
    let mut held: VecDeque<PurgeJob> = VecDeque::new();
    loop {
        let message = match held.pop_front() {
            Some(job) => Ok(ToApplier::Purge(job)),
            None => inbox.recv_timeout(every.saturating_sub(last.elapsed())),
        };
        let fold = match message {
            Ok(ToApplier::Purge(job)) => {
                // Tombstones still in the memtable count too: fold it in
                // first.
                let p = job.purge;
                let result = apply(db, shared, &never)
                    .and_then(|_| purge(db, shared, p.max_seq, p.older_than_ts, p.limit));
                job.answer(result);
                None
            }
            Ok(ToApplier::Nudge) => Some(Urgency::Asked),
            Err(RecvTimeoutError::Timeout) => Some(Urgency::Routine),
            Err(RecvTimeoutError::Disconnected) => {
                if let Err(e) = apply(db, shared, &never) {
                    tracing::error!(error = %e, "cannot write the memtable to redb at close");
                }
                return;
            }
        };
        let urgency = match fold {
            Some(u) => u,
            None if last.elapsed() >= every => Urgency::Routine,
            None => continue,
        };
        last = Instant::now();
        let result = match urgency {
            Urgency::Routine if shared.mem.bytes() < NUDGE_BYTES => {
                fold_when_idle(db, shared, &inbox, &mut held)
            }
            _ => apply(db, shared, &never).map(|_| ()),
        };
        match result {
            Ok(()) => {
                failing = false;
                retirer.retire(shared.applied.load(Ordering::SeqCst));
            }
            // The log still holds everything: nothing is lost, the
            // next round tries again.
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "cannot write the memtable to redb; retrying");
            }
            Err(_) => {}
        }
    }
}

/// Why the applier folds.
enum Urgency {
    /// The interval is up.
    Routine,
    /// The writer asked: the memtable is large.
    Asked,
}

/// For a fold nothing stops.
fn never() -> bool {
    false
}

/// How often the applier checks on a helper's fold.
const HELPER_POLL: Duration = Duration::from_millis(2);

/// Folds on a helper thread under `SCHED_IDLE`, which the kernel runs only
/// on CPU time no ordinary thread wants: on a machine busy with requests,
/// the fold no longer takes turns with them (at nice 10 it still did,
/// and requests queued behind it). `SCHED_IDLE` gets almost nothing of a
/// machine kept busy by something else, and an unprivileged thread cannot
/// leave it, so the helper is made to yield: when the writer asks for a
/// fold meanwhile (the memtable passed `NUDGE_BYTES`), the helper stops at
/// its next record, drops its transaction, and the fold is done again on
/// this thread at nice 10 (the frozen table is taken up again first).
/// Purges that come meanwhile wait in `held`, since redb has one writer.
/// The helper cannot be stopped inside its commit, and whatever else needs
/// redb's write transaction (a new feed id) waits for it: on a machine
/// kept busy by other work that can take long, but it ends.
fn fold_when_idle(
    db: &Database,
    shared: &Shared,
    inbox: &std::sync::mpsc::Receiver<ToApplier>,
    held: &mut VecDeque<PurgeJob>,
) -> Result<()> {
    use std::sync::mpsc::RecvTimeoutError;
    let stop = AtomicBool::new(false);
    // Whether the writer asked for a fold meanwhile: its nudge is taken
    // here, so this fold must answer it.
    let mut asked = false;
    let outcome = std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("ripple-fold".into())
            .spawn_scoped(scope, || {
                idle_priority();
                shared
                    .pace
                    .gently(|| apply(db, shared, &|| stop.load(Ordering::SeqCst)))
            });
        let Ok(helper) = helper else {
            return None;
        };
        while !helper.is_finished() {
            match inbox.recv_timeout(HELPER_POLL) {
                Ok(ToApplier::Nudge) => {
                    asked = true;
                    stop.store(true, Ordering::SeqCst);
                    // Past its last look, in the commit: sync at once.
                    shared.pace.hurry();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Closing: the rest is folded here.
                    stop.store(true, Ordering::SeqCst);
                    shared.pace.hurry();
                    std::thread::sleep(HELPER_POLL);
                }
                Ok(ToApplier::Purge(job)) => held.push_back(job),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        helper.join().ok()
    });
    match outcome {
        Some(Ok(Folded::All)) if !asked => Ok(()),
        Some(Err(e)) => {
            // The writer may nudge again (its nudge was taken here).
            shared.nudged.store(false, Ordering::SeqCst);
            Err(e)
        }
        // No helper thread: fold here.
        None => apply(db, shared, &never).map(|_| ()),
        // Stopped; or the writer asked too late to stop it (past its last
        // look, in the commit), and the memtable has grown since.
        Some(Ok(_)) => {
            tracing::debug!("the writer asked for a fold during an idle one: folding at nice 10");
            apply(db, shared, &never).map(|_| ())
        }
    }
}

/// Makes the calling thread yield the CPU to the others when they are busy
/// (nice 10): the applier's work can wait, requests cannot.
fn lower_priority() {
    // SAFETY: gettid and setpriority only read their arguments.
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) != 0
    };
    if failed {
        tracing::debug!("cannot lower the applier's priority");
    }
}

/// Puts the calling thread under `SCHED_IDLE` (see `fold_when_idle`); if
/// the kernel refuses, it stays at the applier's nice 10.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads `param`; 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!("cannot put the fold helper under SCHED_IDLE");
    }
}

/// How far a fold got.
#[derive(Debug, PartialEq, Eq)]
enum Folded {
    /// Everything the memtable held is in redb.
    All,
    /// `stop` was set: the frozen table stays for the next fold.
    Stopped,
}

/// Writes what the memtable holds now to redb (a table left frozen by a
/// failed or stopped round, then the active one), each in one durable
/// transaction, then releases it from the memtable. Stops between records
/// once `stop` says so.
fn apply(db: &Database, shared: &Shared, stop: &dyn Fn() -> bool) -> Result<Folded> {
    shared.nudged.store(false, Ordering::SeqCst);
    // A table left frozen by a failed round first, then the active one.
    for _ in 0..2 {
        let Some(snap) = shared.mem.snapshot() else {
            return Ok(Folded::All);
        };
        let left_over = snap.left_over();
        if write_snapshot(db, shared, snap, stop)? == Folded::Stopped {
            return Ok(Folded::Stopped);
        }
        if !left_over {
            break;
        }
    }
    Ok(Folded::All)
}

/// Writes a frozen table to redb in one durable transaction, then releases
/// it from the memtable.
fn write_snapshot(
    db: &Database,
    shared: &Shared,
    snap: memtable::Snapshot,
    stop: &dyn Fn() -> bool,
) -> Result<Folded> {
    /// Records stored between looks at `stop`.
    const STOP_EVERY: usize = 64;
    let txn = db.begin_write().map_err(other)?;
    let last_seq = {
        let mut t = Tables::open(&txn)?;
        for (i, e) in snap.entries().enumerate() {
            if i % STOP_EVERY == 0 && stop() {
                drop(t);
                txn.abort().map_err(other)?;
                return Ok(Folded::Stopped);
            }
            t.store(e)?;
        }
        for c in snap.cursors() {
            t.cursor(&c)?;
        }
        t.finish()?
    };
    txn.commit().map_err(other)?;
    // In this order: a lookup, a feed read or a reader that misses the
    // memtable then sees the new count and seq (and no readers' snapshot
    // older than this commit), and reads redb afresh.
    shared.applied_seq.fetch_max(last_seq, Ordering::SeqCst);
    shared.applied.store(snap.groups(), Ordering::SeqCst);
    shared.let_go_of_snapshot();
    shared.mem.release(snap);
    Ok(Folded::All)
}

/// The tables a write transaction changes, with the steps that replay and
/// the applier share. `last_seq` and `max_ts` start as stored and are
/// written back by `finish`.
struct Tables<'txn> {
    records: redb::Table<'txn, &'static str, &'static [u8]>,
    feed: redb::Table<'txn, u64, &'static str>,
    tombstones: redb::Table<'txn, u64, &'static str>,
    meta: redb::Table<'txn, &'static str, u64>,
    cursors: redb::Table<'txn, &'static str, u64>,
    last_seq: u64,
    max_ts: u64,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Tables<'txn>> {
        let meta = txn.open_table(META).map_err(other)?;
        let get = |name| -> Result<u64> {
            Ok(meta
                .get(name)
                .map_err(other)?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        let (last_seq, max_ts) = (get(LAST_SEQ)?, get(MAX_TS)?);
        Ok(Tables {
            records: txn.open_table(RECORDS).map_err(other)?,
            feed: txn.open_table(FEED).map_err(other)?,
            tombstones: txn.open_table(TOMBSTONES).map_err(other)?,
            meta,
            cursors: txn.open_table(CURSORS).map_err(other)?,
            last_seq,
            max_ts,
        })
    }

    /// Stores `e` at its seq, moving its key's feed row (and tombstone
    /// row) from the seq it had: three B-tree writes for a live record,
    /// the old one read back from the first.
    fn store(&mut self, e: &Entry) -> Result<()> {
        let key = e.record.key.as_str();
        let old = self
            .records
            .insert(key, codec::encode(e.seq, &e.record).as_slice())
            .map_err(other)?
            .map(|bytes| stored_kind(key, bytes.value()))
            .transpose()?;
        if let Some((old_seq, was_tombstone)) = old {
            self.feed.remove(old_seq).map_err(other)?;
            if was_tombstone {
                self.tombstones.remove(old_seq).map_err(other)?;
            }
        }
        self.feed.insert(e.seq, key).map_err(other)?;
        if e.record.tombstone {
            self.tombstones.insert(e.seq, key).map_err(other)?;
        }
        self.last_seq = self.last_seq.max(e.seq);
        self.max_ts = self.max_ts.max(e.record.version.ts);
        Ok(())
    }

    fn cursor(&mut self, c: &Cursor) -> Result<()> {
        self.cursors.insert(c.peer.as_str(), c.seq).map_err(other)?;
        Ok(())
    }

    /// Writes back the last seq and max ts; returns the last seq.
    fn finish(mut self) -> Result<u64> {
        self.meta.insert(LAST_SEQ, self.last_seq).map_err(other)?;
        self.meta.insert(MAX_TS, self.max_ts).map_err(other)?;
        Ok(self.last_seq)
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
        let durable = t.last_seq;
        for frame in frames {
            for e in frame.records.iter().filter(|e| e.seq > durable) {
                t.store(e)?;
                replayed += 1;
            }
            for c in &frame.cursors {
                t.cursor(c)?;
            }
        }
        t.finish()?;
    }
    txn.commit().map_err(other)?;
    Ok(replayed)
}

/// Removes old tombstones up to `max_seq`, in one transaction.
fn purge(
    db: &Database,
    shared: &Shared,
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
    // Before the cache forgets the keys: a reader that misses the cache
    // then must not fill it from the older snapshot.
    shared.let_go_of_snapshot();
    for key in &gone {
        shared.cache.remove(key);
    }
    Ok(purged)
}

#[async_trait]
impl Storage for Embedded {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let cache = &self.shared.cache;
        // Taken before the memtable is read: a write that lands after this
        // look at the memtable bumps it before its record can leave the
        // cache again, so what is read from redb below is not cached over
        // it.
        let generation = cache.generation(key);
        if let Some(entry) = self.shared.early.get(key) {
            return Ok(Some(entry));
        }
        if let Some(entry) = self.shared.mem.get(key) {
            return Ok(Some(entry));
        }
        if let Ok(entry) = cache.get(key) {
            return Ok(Some(entry));
        }
        let records = self.shared.records(&self.db)?;
        match records.get(key).map_err(other)? {
            Some(bytes) => {
                let entry = codec::decode(key, bytes.value())?;
                cache.fill(&entry, generation);
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
        // The memtable first, then redb (see `memtable::merge_keys`).
        // Records readable before they are durable count as the memtable's:
        // read before it, as a record enters the memtable before it leaves
        // `early`, so one moving between the two is seen in one of them.
        let early = self.shared.early.keys(prefix, start_after);
        let mut mem = self.shared.mem.keys(prefix, start_after);
        if !early.is_empty() {
            // A key in both: its later record.
            mem.extend(early);
            mem.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(b.seq.cmp(&a.seq)));
            mem.dedup_by(|later, kept| later.key == kept.key);
        }
        let in_mem: std::collections::HashSet<&str> = mem.iter().map(|l| l.key.as_str()).collect();
        let txn = self.db.begin_read().map_err(other)?;
        let records = txn.open_table(RECORDS).map_err(other)?;
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        // A memtable record can hide one live key of redb's.
        let wanted = limit.saturating_add(mem.len());
        let mut disk = Vec::new();
        let mut live = 0;
        let mut complete = true;
        for item in records
            .range::<&str>((start, Bound::Unbounded))
            .map_err(other)?
        {
            if live >= wanted {
                complete = false;
                break;
            }
            let (key, value) = item.map_err(other)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (seq, tombstone) = stored_kind(key, value.value())?;
            if !tombstone {
                live += 1;
            }
            if !tombstone || in_mem.contains(key) {
                disk.push(Listed {
                    key: key.to_owned(),
                    seq,
                    tombstone,
                });
            }
        }
        Ok(memtable::merge_keys(mem, disk, complete, limit))
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Entry>> {
        let merged = self.read_feed(after, limit, limit)?;
        if merged.entries.len() < limit && merged.window_cut {
            // A fold committed records written after the memtable was
            // read, and redb's newer rows of their keys dropped some of the
            // memtable's first records, leaving the answer short: read
            // again, the whole memtable this time, so that a short answer
            // still means "nothing more".
            return Ok(self.read_feed(after, limit, usize::MAX)?.entries);
        }
        Ok(merged.entries)
    }

    async fn feed_id(&self) -> Result<u64> {
        Ok(self.shared.feed_id.load(Ordering::SeqCst))
    }

    async fn new_feed_id(&self) -> Result<u64> {
        let (db, shared) = (self.db.clone(), self.shared.clone());
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = shared.new_feed.lock().unwrap_or_else(|p| p.into_inner());
            let id = super::random_feed_id();
            let txn = db.begin_write().map_err(other)?;
            txn.open_table(META)
                .map_err(other)?
                .insert(FEED_ID, id)
                .map_err(other)?;
            txn.commit().map_err(other)?;
            shared.feed_id.store(id, Ordering::SeqCst);
            Ok(id)
        })
        .await
        .map_err(other)?
    }

    async fn last_seq(&self) -> Result<u64> {
        Ok(self.shared.last_seq.load(Ordering::SeqCst))
    }

    async fn max_version_ts(&self) -> Result<u64> {
        Ok(self.shared.max_ts.load(Ordering::SeqCst))
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
        // redb's count, corrected by each memtable record it does not have
        // yet (the memtable first, then redb).
        // Seqs start at 1: every unapplied record.
        let (mem, _) = self.shared.mem.since(0, usize::MAX);
        let txn = self.db.begin_read().map_err(other)?;
        let tombstones = txn.open_table(TOMBSTONES).map_err(other)?;
        let records = txn.open_table(RECORDS).map_err(other)?;
        let mut count = tombstones.len().map_err(other)? as i64;
        for e in mem {
            let key = e.record.key.as_str();
            let (seq, was) = match records.get(key).map_err(other)? {
                Some(bytes) => stored_kind(key, bytes.value())?,
                None => (0, false),
            };
            if seq < e.seq {
                count += i64::from(e.record.tombstone) - i64::from(was);
            }
        }
        Ok(count.max(0) as u64)
    }

    async fn cursor(&self, peer: &str) -> Result<u64> {
        if let Some(seq) = self.shared.mem.cursor(peer) {
            return Ok(seq);
        }
        read_u64(&self.db, CURSORS, peer)
    }

    async fn close(&self) -> Result<()> {
        // The writer finishes what is queued, the applier folds it all into
        // redb, then both exit.
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
/// read from redb only when no write touched the key's shard since before
/// the reader looked in the memtable (`generation`), so it never holds a
/// value older than the memtable's or redb's.
struct RecordCache {
    shards: Box<[Mutex<CacheShard>]>,
    /// Picks a key's shard (seeded apart from the shards' own maps).
    hasher: foldhash::fast::RandomState,
    shard_budget: usize,
}

#[derive(Default)]
struct CacheShard {
    map: super::FastMap<String, Entry>,
    bytes: usize,
    /// Bumped by every write to a key of this shard.
    generation: u64,
}

const CACHE_SHARDS: usize = 64;

/// What an entry costs the cache: its bytes and a fixed overhead.
fn cache_cost(e: &Entry) -> usize {
    e.footprint() + 128
}

impl RecordCache {
    fn new(budget: usize) -> RecordCache {
        RecordCache {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            shard_budget: budget / CACHE_SHARDS,
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, CacheShard> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key);
        self.shards[h as usize % CACHE_SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The cached entry, or the shard's generation to fill it with.
    fn get(&self, key: &str) -> std::result::Result<Entry, u64> {
        let shard = self.shard(key);
        shard.map.get(key).cloned().ok_or(shard.generation)
    }

    /// The count of writes to `key`'s shard so far, for `fill`.
    fn generation(&self, key: &str) -> u64 {
        self.shard(key).generation
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

    #[test]
    fn the_writer_waits_for_the_syncer_no_longer_than_it_asked_nor_past_urgent_work() {
        let progress = Progress::default();
        // How long `wait_at_most(sent, most)` took.
        let took = |sent: u64, most: Duration| {
            let start = Instant::now();
            progress.wait_at_most(sent, most);
            start.elapsed()
        };
        let long = Duration::from_secs(30);
        let bound = Duration::from_millis(20);
        // Nothing sent: no wait at all.
        assert!(took(0, long) < Duration::from_secs(10));
        // A group the syncer never finishes: the wait ends at the bound.
        assert!(took(1, bound) >= bound);
        assert!(!progress.lock().waiting);
        // Finished while the writer waits: it wakes before the bound.
        std::thread::scope(|s| {
            s.spawn(|| {
                while !progress.lock().waiting {
                    std::thread::yield_now();
                }
                progress.finished(1);
            });
            assert!(took(1, long) < Duration::from_secs(10));
        });
        assert_eq!(progress.done(), 1);
        // Work that should go at once ends a wait, once.
        progress.urgent_came();
        assert!(took(2, long) < Duration::from_secs(10));
        assert!(took(2, bound) >= bound);
    }

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

    /// An engine whose applier thread stays out of the way: the test
    /// folds, by calling `apply`.
    fn open_without_applier(dir: &Path) -> Embedded {
        let options = Options {
            apply_every: Duration::from_secs(3600),
            ..Options::default()
        };
        Embedded::open_with(dir, options).unwrap()
    }

    /// A fold stopped partway (its helper yielded) drops its transaction:
    /// every record stays readable from the memtable, in the feed at its
    /// seq, and the next fold writes the stopped table and the newer one.
    #[tokio::test]
    async fn a_stopped_fold_leaves_everything_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_without_applier(dir.path());
        let write = |range: std::ops::Range<u64>| Batch {
            records: range
                .map(|i| entry(&format!("k{i:04}"), i, &format!("v{i}")).record)
                .collect(),
            cursor: None,
            readable_before_durable: None,
        };
        s.apply(write(1..301)).await.unwrap();
        // Stops at its third look: after 128 of the 300 records.
        let looks = std::sync::atomic::AtomicUsize::new(0);
        let third_look = || looks.fetch_add(1, Ordering::SeqCst) >= 2;
        assert_eq!(
            apply(&s.db, &s.shared, &third_look).unwrap(),
            Folded::Stopped
        );
        assert_eq!(looks.load(Ordering::SeqCst), 3);
        assert_eq!(s.shared.applied_seq.load(Ordering::SeqCst), 0);
        assert!(!s.shared.mem.is_empty());
        s.apply(write(301..401)).await.unwrap();
        let check = |feed: Vec<Entry>| {
            assert_eq!(feed.len(), 400);
            for (i, e) in feed.iter().enumerate() {
                let n = i as u64 + 1;
                assert_eq!(
                    (e.seq, e.record.key.as_str()),
                    (n, format!("k{n:04}").as_str())
                );
            }
        };
        check(s.changes_since(0, 1000).await.unwrap());
        assert_eq!(
            &s.get("k0200").await.unwrap().unwrap().record.value[..],
            b"v200"
        );
        assert_eq!(apply(&s.db, &s.shared, &never).unwrap(), Folded::All);
        assert!(s.shared.mem.is_empty());
        assert_eq!(s.shared.applied_seq.load(Ordering::SeqCst), 400);
        check(s.changes_since(0, 1000).await.unwrap());
        assert_eq!(
            &s.get("k0399").await.unwrap().unwrap().record.value[..],
            b"v399"
        );
    }

    /// Readers share one redb snapshot (`Shared::records`), and still see
    /// every fold and purge: a snapshot taken before a record was folded
    /// in, or before its tombstone was purged, is not used after.
    #[tokio::test]
    async fn reads_from_redb_see_every_fold_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_without_applier(dir.path());
        let one = |e: Entry| Batch {
            records: vec![e.record],
            cursor: None,
            readable_before_durable: None,
        };
        // Reads past the memtable and the cache, from redb.
        let from_redb = |key: &str| {
            assert!(s.shared.mem.get(key).is_none());
            s.shared.cache.remove(key);
        };
        assert!(s.get("a").await.unwrap().is_none());
        s.apply(one(entry("a", 1, "v1"))).await.unwrap();
        assert_eq!(apply(&s.db, &s.shared, &never).unwrap(), Folded::All);
        from_redb("a");
        assert_eq!(&s.get("a").await.unwrap().unwrap().record.value[..], b"v1");

        let mut gone = entry("a", 2, "");
        gone.record.tombstone = true;
        s.apply(one(gone)).await.unwrap();
        assert_eq!(apply(&s.db, &s.shared, &never).unwrap(), Folded::All);
        from_redb("a");
        assert!(s.get("a").await.unwrap().unwrap().record.tombstone);
        assert_eq!(s.purge_tombstones(u64::MAX, u64::MAX, 10).await.unwrap(), 1);
        assert!(s.get("a").await.unwrap().is_none());
    }

    /// A follower reading the feed while the applier folds every
    /// millisecond sees every key: reads that skip redb (nothing there is
    /// newer than the cursor) never miss what the applier just moved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_misses_nothing_while_the_applier_folds() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            apply_every: Duration::from_millis(1),
            ..Options::default()
        };
        let s = Arc::new(Embedded::open_with(dir.path(), options).unwrap());
        const KEYS: u64 = 3_000;
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                // Ten keys a group: the writer runs ahead of the follower,
                // so the applier folds what it has not read yet.
                for first in (1..=KEYS).step_by(10) {
                    let batch = Batch {
                        records: (first..first + 10)
                            .map(|i| entry(&format!("k{i}"), i, "v").record)
                            .collect(),
                        cursor: None,
                        readable_before_durable: None,
                    };
                    s.apply(batch).await.unwrap();
                }
            })
        };
        let mut seen = std::collections::HashSet::new();
        let mut after = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.len() < KEYS as usize && Instant::now() < deadline {
            // As a feed answer: the last seq first, then the records.
            let last = s.last_seq().await.unwrap();
            let got = s.changes_since(after, 20).await.unwrap();
            for e in &got {
                seen.insert(e.record.key.clone());
            }
            after = match got.last() {
                Some(e) if got.len() == 20 => e.seq,
                Some(e) => e.seq.max(last),
                None => last.max(after),
            };
            // A step behind the writer, about one fold's worth.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        writer.await.unwrap();
        assert_eq!(seen.len(), KEYS as usize, "the follower missed keys");
        s.close().await.unwrap();
    }

    #[test]
    fn a_fill_that_raced_a_write_is_dropped() {
        let cache = RecordCache::new(1 << 20);
        let generation = cache.get("k").unwrap_err();
        // A write lands between the reader's miss and its fill.
        let batch = Batch {
            records: vec![entry("k", 2, "new").record],
            cursor: None,
            readable_before_durable: None,
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

    /// A write whose record does not stay in the cache (evicted at once,
    /// here by a budget smaller than the record) still refuses a fill
    /// begun before it: the reader would otherwise cache the older value
    /// over the one in the memtable.
    #[test]
    fn a_write_evicted_at_once_still_refuses_an_older_fill() {
        let cache = RecordCache::new(CACHE_SHARDS * 10);
        let generation = cache.generation("k");
        let batch = Batch {
            records: vec![entry("k", 2, &"n".repeat(100)).record],
            cursor: None,
            readable_before_durable: None,
        };
        cache.stored(
            std::slice::from_ref(&batch),
            &[vec![Applied::Stored { seq: 2 }]],
        );
        assert!(cache.get("k").is_err(), "the record should not fit");
        cache.fill(&entry("k", 1, "old"), generation);
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
