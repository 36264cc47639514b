//! The embedded engine's write-ahead log: what makes a group of writes
//! durable with one small sequential write and one fdatasync, instead of a
//! durable redb commit (which writes every page the group touched, then
//! fsyncs).
//!
//! The writer thread, for each group: decides which records take (and
//! their seqs) and appends the effects (every stored record with its seq,
//! every cursor moved) to this log as one frame; the syncer thread
//! fdatasyncs, and only then puts them in the memtable (`memtable`), which
//! makes them visible; then it answers. The applier thread folds the memtable into redb in durable
//! transactions, in the background; once a segment's frames are all in
//! redb, the applier retires the segment (`Retirer::retire`), so the
//! writer never waits on that rename or unlink; the writer's own file work
//! is sealing the segment (cutting a reused file back to its frames) and
//! starting the next (a rename and a directory sync), once per fold
//! interval. So everything a peer pulling the feed can see is in the log
//! or durably in redb; so is everything a reader can see, but the records
//! pulled from peers (durable there) between their write and their sync.
//!
//! After a crash, redb opens at its last durable commit; `replay` then
//! applies every logged record whose seq is above that commit's last seq,
//! at that very seq, and every logged cursor in order, so the store is
//! exactly as acknowledged, seqs included (peers' cursors depend on them).
//!
//! Segments are files `ripple.wal.NNNNNNNN` in the data dir, numbered in
//! the order they were written. A segment no longer needed becomes a spare
//! (`ripple.wal-spare.*`) that a later segment writes over, which makes
//! its fdatasyncs cheaper (no file growth to record). A log that grows its
//! file (a new node taking writes fast, or more than its spares hold) gets
//! a spare made ahead, filled with zeros off the writer's thread, and moves
//! to it once it is ready (see `Wal::rotate_when_due`).
//!
//! File layout: frames, each `len:u32 | crc32:u32 | payload`, the CRC
//! taken over the segment's number and the payload, where payload
//! is `records:u32 | cursors:u32`, then each record
//! `key_len:u32 | key | rec_len:u32 | stored record (see codec)`, then each
//! cursor `peer_len:u16 | peer | seq:u64` (integers big-endian). A frame cut
//! short or failing its checksum ends the log: it was being written when
//! the node stopped, and was never acknowledged.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::{codec, Cursor, Entry, Result, StorageError};

/// The log's file name inside the data dir.
pub const FILE_NAME: &str = "ripple.wal";

/// Most bytes a frame may claim; a larger length is damage, not a frame.
const MAX_FRAME: usize = 1 << 30;

/// One group's logged effects.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// Stored records with their seqs, in the order they were stored.
    pub records: Vec<Entry>,
    pub cursors: Vec<Cursor>,
}

/// Builds one frame's payload as a group is applied.
#[derive(Default)]
pub struct FrameBuilder {
    records: u32,
    cursors: u32,
    body: Vec<u8>,
    cursor_body: Vec<u8>,
}

impl FrameBuilder {
    /// Adds a stored record: its key and its stored bytes (`codec::encode`).
    pub fn record(&mut self, key: &str, stored: &[u8]) {
        self.records += 1;
        self.body
            .extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.body.extend_from_slice(key.as_bytes());
        self.body
            .extend_from_slice(&(stored.len() as u32).to_be_bytes());
        self.body.extend_from_slice(stored);
    }

    /// Adds a cursor move.
    pub fn cursor(&mut self, c: &Cursor) {
        let peer = &c.peer.as_bytes()[..c.peer.len().min(u16::MAX as usize)];
        self.cursors += 1;
        self.cursor_body
            .extend_from_slice(&(peer.len() as u16).to_be_bytes());
        self.cursor_body.extend_from_slice(peer);
        self.cursor_body.extend_from_slice(&c.seq.to_be_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.cursors == 0
    }

    /// The whole frame, header included, as the legacy single-file log
    /// wrote it (its checksum unsalted: see `checksum`).
    pub fn finish(self) -> Vec<u8> {
        self.finish_for(0)
    }

    /// The whole frame, header included, for segment `segment`.
    pub fn finish_for(self, segment: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.body.len() + self.cursor_body.len());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&self.records.to_be_bytes());
        out.extend_from_slice(&self.cursors.to_be_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.cursor_body);
        let payload = &out[8..];
        let (len, crc) = (payload.len() as u32, checksum(segment, payload));
        out[..4].copy_from_slice(&len.to_be_bytes());
        out[4..8].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

/// A frame's checksum: CRC-32 of the segment's number, then the payload.
/// The number makes a recycled segment's old frames, still in the file
/// past the new ones, fail their checksum, so reading stops at the new
/// frames' end. The legacy single file (number 0) has no number in it.
fn checksum(segment: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if segment != 0 {
        h.update(&segment.to_be_bytes());
    }
    h.update(payload);
    h.finalize()
}

/// Decodes the frames of the legacy single-file log (see `decode_segment`).
pub fn decode(bytes: &[u8]) -> (Vec<Frame>, usize) {
    decode_segment(bytes, 0)
}

/// Decodes the frames at the start of segment `segment`'s bytes; stops at
/// the first frame that is cut short, fails its checksum or does not
/// parse. Returns the frames and how many bytes they take. Never panics.
pub fn decode_segment(bytes: &[u8], segment: u64) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_FRAME {
            break;
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if checksum(segment, payload) != crc {
            break;
        }
        let Some(frame) = parse(payload) else {
            break;
        };
        frames.push(frame);
        at += 8 + len;
    }
    (frames, at)
}

fn parse(payload: &[u8]) -> Option<Frame> {
    let mut r = payload;
    let records = take_u32(&mut r)?;
    let cursors = take_u32(&mut r)?;
    let mut frame = Frame::default();
    for _ in 0..records {
        let key_len = take_u32(&mut r)? as usize;
        let key = std::str::from_utf8(take(&mut r, key_len)?).ok()?;
        let rec_len = take_u32(&mut r)? as usize;
        let stored = take(&mut r, rec_len)?;
        frame.records.push(codec::decode(key, stored).ok()?);
    }
    for _ in 0..cursors {
        let len = take(&mut r, 2)?;
        let peer_len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let peer = std::str::from_utf8(take(&mut r, peer_len)?).ok()?;
        let seq = u64::from_be_bytes(take(&mut r, 8)?.try_into().ok()?);
        frame.cursors.push(Cursor {
            peer: peer.to_owned(),
            seq,
        });
    }
    r.is_empty().then_some(frame)
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Some(head)
}

fn take_u32(r: &mut &[u8]) -> Option<u32> {
    take(r, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The log: numbered segment files in the data dir, written in turn.
/// Segments the applier no longer needs are kept as spares (up to
/// `SPARES`) and written over as later segments: writing into a file's
/// existing blocks spares fdatasync the metadata update that growing a
/// file costs. A number is never used twice, so a reused file's old frames
/// fail their checksum (see `checksum`).
pub struct Wal {
    dir: PathBuf,
    /// The segment written to.
    file: Arc<File>,
    path: PathBuf,
    number: u64,
    len: u64,
    /// The file's size when it became this segment (a spare's old frames).
    size: u64,
    /// When the current segment was started.
    started: Instant,
    /// Frames appended since the log was opened.
    frames: u64,
    shelf: Arc<Mutex<Shelf>>,
    /// Set when the log could not be cut back after a failed append: its
    /// tail may hold a partial frame, after which nothing may be appended
    /// (replay would stop there). Writes fail until a restart.
    broken: Option<String>,
    /// Set once an fdatasync of the log failed (see `write`).
    sync_failed: Arc<OnceLock<String>>,
    /// The thread making a spare ahead, if one was started.
    maker: Option<Maker>,
    /// The segment for which a spare was last asked for: one try per
    /// segment, so that a disk that refuses (full, say) is not asked again
    /// after every group.
    spare_asked_for: u64,
}

/// Frames written and not yet synced (see `Wal::write`).
pub struct Unsynced {
    file: Arc<File>,
    path: PathBuf,
    failed: Arc<OnceLock<String>>,
}

impl Unsynced {
    /// Waits until the frames written so far to this segment are on disk.
    /// A failed fdatasync fails this and every later sync and write.
    pub fn sync(&self) -> Result<()> {
        if let Some(why) = self.failed.get() {
            return Err(StorageError::Unavailable(why.clone()));
        }
        self.file.sync_data().map_err(|e| {
            let err = io(&self.path, "cannot sync", e);
            let _ = self.failed.set(format!("{err}; restart the node"));
            err
        })
    }

    /// Whether these frames are in the same segment as `other`'s.
    pub fn same_segment(&self, other: &Unsynced) -> bool {
        Arc::ptr_eq(&self.file, &other.file)
    }
}

/// A thread filling a spare with zeros (see `make_spare`).
struct Maker {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

/// The sealed segments and the spares, shared by the writer (which seals
/// the current segment and takes a spare for the next) and the applier
/// (which retires what it has folded in).
struct Shelf {
    /// Older segments, each with the count of frames appended when it was
    /// sealed: it can go once the applier has that many in redb.
    sealed: VecDeque<(PathBuf, u64)>,
    spares: Vec<PathBuf>,
    /// A spare made ahead (`make_spare`), taken before the others.
    made: Option<PathBuf>,
}

fn lock(shelf: &Mutex<Shelf>) -> MutexGuard<'_, Shelf> {
    // A panic while holding it cannot leave the lists half changed.
    shelf.lock().unwrap_or_else(|e| e.into_inner())
}

/// Retires the segments the applier no longer needs: keeps them as spares
/// or removes them. Renames and unlinks (a few ms on a busy disk) happen on
/// the caller's thread, never the writer's.
#[derive(Clone)]
pub struct Retirer {
    dir: PathBuf,
    shelf: Arc<Mutex<Shelf>>,
}

impl Retirer {
    /// The applier has the first `applied` frames durably in redb: retires
    /// the sealed segments that hold nothing else.
    pub fn retire(&self, applied: u64) {
        let (done, room) = {
            let mut shelf = lock(&self.shelf);
            let mut done = Vec::new();
            while shelf
                .sealed
                .front()
                .is_some_and(|(_, frames)| *frames <= applied)
            {
                done.extend(shelf.sealed.pop_front().map(|(path, _)| path));
            }
            (done, SPARES.saturating_sub(shelf.spares.len()))
        };
        let mut kept = Vec::new();
        for path in done {
            let spare = self.dir.join(format!(
                "{SPARE_PREFIX}{}",
                path.extension().and_then(|e| e.to_str()).unwrap_or("0")
            ));
            if kept.len() < room && std::fs::rename(&path, &spare).is_ok() {
                kept.push(spare);
            } else if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(path = %path.display(), error = %e, "cannot remove a write-ahead log segment");
            }
        }
        if !kept.is_empty() {
            lock(&self.shelf).spares.extend(kept);
        }
    }
}

/// Most spare segment files kept.
const SPARES: usize = 2;
/// A spare's file name starts with this.
const SPARE_PREFIX: &str = "ripple.wal-spare.";
/// A spare being made; what a stopped node left under this name is removed.
const MAKING_NAME: &str = "ripple.wal-making";
/// A segment that has grown its file by this much gets a spare made ahead:
/// a node that writes less never fills one.
const GROWTH_BEFORE_MAKING: u64 = 4 << 20;
/// A spare is made in steps of this many bytes, each synced before the
/// next, so that the disk's queue never holds more than one step of it
/// ahead of a log sync.
const MAKING_STEP: usize = 256 << 10;

/// The size of a spare made for a segment that wrote `len` bytes in
/// `elapsed`: what it would write in `max_age` at that rate, and half
/// again, from twice `GROWTH_BEFORE_MAKING` to `max_len`.
fn spare_size(len: u64, elapsed: Duration, max_age: Duration, max_len: u64) -> u64 {
    let rate = len as f64 / elapsed.as_secs_f64().max(0.001);
    let needed = rate * max_age.as_secs_f64() * 1.5;
    (needed.min(max_len as f64) as u64)
        .max(2 * GROWTH_BEFORE_MAKING)
        .min(max_len)
}

/// Fills a new file of `size` bytes with zeros, syncs it, and names it a
/// spare: blocks that a later segment writes over without growing the file.
/// Gives up (removing the file) once `stop` is set.
fn make_spare(dir: &Path, size: u64, stop: &AtomicBool) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::FileExt;
    let making = dir.join(MAKING_NAME);
    let file = File::create(&making)?;
    let zeros = vec![0u8; MAKING_STEP];
    let mut at = 0;
    while at < size {
        if stop.load(Ordering::SeqCst) {
            drop(file);
            let _ = std::fs::remove_file(&making);
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = (size - at).min(MAKING_STEP as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        file.sync_data()?;
        at += n as u64;
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let spare = dir.join(format!("{SPARE_PREFIX}made-{stamp}"));
    std::fs::rename(&making, &spare)?;
    File::open(dir)?.sync_all()?;
    Ok(spare)
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Unavailable(format!("write-ahead log {}: {what}: {e}", path.display()))
}

/// The log's segment files in `dir`, oldest first (a log from before
/// segments, `ripple.wal`, comes first, as number 0).
pub fn segments(dir: &Path) -> Result<Segments> {
    Ok(files(dir)?.0)
}

/// Segment files with their numbers.
type Segments = Vec<(u64, PathBuf)>;

/// The segments, and the spares.
fn files(dir: &Path) -> Result<(Segments, Vec<PathBuf>)> {
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, "cannot list", e))?;
    let mut found = Vec::new();
    let mut spares = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, "cannot list", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == FILE_NAME {
            found.push((0, entry.path()));
        } else if let Some(n) = name
            .strip_prefix(FILE_NAME)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((n, entry.path()));
        } else if name.starts_with(SPARE_PREFIX) {
            spares.push(entry.path());
        }
    }
    found.sort();
    spares.sort();
    Ok((found, spares))
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{FILE_NAME}.{number:08}"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, "cannot sync the directory", e))
}

impl Wal {
    /// Opens the log in `dir`, returning the frames its segments hold, in
    /// order. Reading stops at the first damaged frame: what follows was
    /// being written when the node stopped, and was never acknowledged.
    /// Appends go to a new segment; call `reset` once the frames are in
    /// redb, so they are not replayed again.
    pub fn open(dir: &Path) -> Result<(Wal, Vec<Frame>)> {
        let making = dir.join(MAKING_NAME);
        if making.exists() {
            std::fs::remove_file(&making).map_err(|e| io(&making, "cannot remove", e))?;
        }
        let (found, spares) = files(dir)?;
        let mut frames = Vec::new();
        let mut damaged = false;
        for (i, (number, path)) in found.iter().enumerate() {
            if damaged {
                tracing::warn!(path = %path.display(), "skipping a write-ahead log segment after a damaged one");
                continue;
            }
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io(path, "cannot read", e))?;
            let (mut more, valid) = decode_segment(&bytes, *number);
            frames.append(&mut more);
            if valid < bytes.len() {
                // The last segment ends where its writing stopped: the rest
                // is a frame cut short, or a reused file's older frames.
                // An earlier segment was sealed whole: the rest is damage.
                let last = i + 1 == found.len();
                if !last {
                    tracing::warn!(
                        path = %path.display(),
                        dropped_bytes = bytes.len() - valid,
                        "a sealed write-ahead log segment is damaged; replaying what comes before the damage"
                    );
                    damaged = true;
                }
            }
        }
        let last = found.last().map(|(n, _)| *n).unwrap_or(0);
        let mut wal = Wal {
            dir: dir.to_owned(),
            // Replaced just below by the first real segment.
            file: Arc::new(File::open(dir).map_err(|e| io(dir, "cannot open", e))?),
            path: PathBuf::new(),
            number: last,
            len: 0,
            size: 0,
            started: Instant::now(),
            frames: 0,
            shelf: Arc::new(Mutex::new(Shelf {
                sealed: found.into_iter().map(|(_, p)| (p, u64::MAX)).collect(),
                spares,
                made: None,
            })),
            broken: None,
            sync_failed: Default::default(),
            maker: None,
            spare_asked_for: 0,
        };
        wal.start_segment()?;
        Ok((wal, frames))
    }

    /// Starts segment `number + 1` (a spare when there is one) as the
    /// current one, and makes its name durable.
    fn start_segment(&mut self) -> Result<()> {
        let number = self.number + 1;
        let path = segment_path(&self.dir, number);
        let spare = {
            let mut shelf = lock(&self.shelf);
            shelf.made.take().or_else(|| shelf.spares.pop())
        };
        let file = match spare {
            Some(spare) => {
                std::fs::rename(&spare, &path).map_err(|e| io(&spare, "cannot reuse", e))?;
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io(&path, "cannot open", e))?
            }
            None => OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| io(&path, "cannot create", e))?,
        };
        sync_dir(&self.dir)?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = Arc::new(file);
        self.path = path;
        self.number = number;
        self.len = 0;
        self.started = Instant::now();
        Ok(())
    }

    /// What retires this log's sealed segments, for the applier.
    pub fn retirer(&self) -> Retirer {
        Retirer {
            dir: self.dir.clone(),
            shelf: self.shelf.clone(),
        }
    }

    /// Appends one group's frame (built for this segment) and waits until
    /// it is on disk (`write`, then `Unsynced::sync`).
    pub fn append(&mut self, frame: FrameBuilder) -> Result<()> {
        self.write(frame)?.sync()
    }

    /// Writes one group's frame (built for this segment) after the others,
    /// without waiting for the disk: the returned `Unsynced` does that, on
    /// any thread. A frame that could not be written is cut back, so it
    /// never stays in the log. Once a sync failed, nothing more is
    /// written: the frames after the last good sync may or may not be on
    /// disk, and only a restart (which replays what is there) knows; so a
    /// write answered with that error may or may not have happened.
    pub fn write(&mut self, frame: FrameBuilder) -> Result<Unsynced> {
        use std::os::unix::fs::FileExt;
        if let Some(why) = self.broken.as_ref().or(self.sync_failed.get()) {
            return Err(StorageError::Unavailable(why.clone()));
        }
        let frame = frame.finish_for(self.number);
        match self.file.write_all_at(&frame, self.len) {
            Ok(()) => {
                self.len += frame.len() as u64;
                self.frames += 1;
                Ok(Unsynced {
                    file: self.file.clone(),
                    path: self.path.clone(),
                    failed: self.sync_failed.clone(),
                })
            }
            Err(e) => {
                let err = io(&self.path, "cannot append", e);
                self.rollback(self.len)?;
                Err(err)
            }
        }
    }

    /// Frames appended since the log was opened.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Cuts the current segment back to `len` bytes.
    fn rollback(&mut self, len: u64) -> Result<()> {
        match self.file.set_len(len).and_then(|_| self.file.sync_all()) {
            Ok(()) => {
                self.len = len;
                self.size = len;
                self.broken = None;
                Ok(())
            }
            Err(e) => {
                let err = io(&self.path, "cannot cut back", e);
                self.broken = Some(format!("{err}; restart the node"));
                Err(err)
            }
        }
    }

    /// Seals the current segment and starts the next one. A reused file
    /// is first cut to its frames, so that a sealed segment holds nothing
    /// after them (anything there would be damage).
    fn rotate(&mut self) -> Result<()> {
        if self.size > self.len {
            self.rollback(self.len)?;
        }
        let old = self.path.clone();
        self.start_segment()?;
        lock(&self.shelf).sealed.push_back((old, self.frames));
        Ok(())
    }

    /// Seals the current segment and starts a new one once it is `max_age`
    /// old or `max_len` long, so that it can be retired in its turn; or,
    /// when the segment has grown its file by `GROWTH_BEFORE_MAKING`, once
    /// a spare made ahead for it is ready: as large as a segment grows in
    /// `max_age` at the rate this one did, and half again, at most
    /// `max_len`.
    ///
    /// `drain` is called first, when a rotation is due: it must return
    /// once every frame written is synced, since sealing works on the
    /// file and the applier may retire the segment once folded.
    pub fn rotate_when_due(&mut self, max_age: Duration, max_len: u64, drain: impl FnOnce()) {
        let growing = self.len > self.size.saturating_add(GROWTH_BEFORE_MAKING);
        if growing {
            self.make_spare_ahead(max_age, max_len);
        }
        let made = growing && lock(&self.shelf).made.is_some();
        if self.len > 0 && (self.started.elapsed() >= max_age || self.len >= max_len || made) {
            drain();
            // Appending to the current one is still right.
            if let Err(e) = self.rotate() {
                tracing::error!(error = %e, "cannot start a new write-ahead log segment");
            }
        }
    }

    /// Starts a thread making a spare (see `spare_size`), unless one is
    /// being made or is ready, or this segment already asked for one.
    fn make_spare_ahead(&mut self, max_age: Duration, max_len: u64) {
        if self.spare_asked_for == self.number
            || self.maker.as_ref().is_some_and(|m| !m.thread.is_finished())
            || lock(&self.shelf).made.is_some()
        {
            return;
        }
        self.spare_asked_for = self.number;
        let size = spare_size(self.len, self.started.elapsed(), max_age, max_len);
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, shelf, flag) = (self.dir.clone(), self.shelf.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("ripple-wal-spare".into())
            .spawn(move || match make_spare(&dir, size, &flag) {
                Ok(spare) => lock(&shelf).made = Some(spare),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = std::fs::remove_file(dir.join(MAKING_NAME));
                    tracing::warn!(error = %e, "cannot make a spare write-ahead log segment");
                }
            });
        match thread {
            Ok(thread) => self.maker = Some(Maker { thread, stop }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread to make a spare log segment")
            }
        }
    }

    /// Everything logged is durably in redb: retires every segment, and
    /// starts an empty one.
    pub fn reset(&mut self) -> Result<()> {
        if self.len > 0 {
            self.rotate()?;
        }
        self.retirer().retire(u64::MAX);
        Ok(())
    }

    /// Whether the log holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && lock(&self.shelf).sealed.is_empty()
    }
}

impl Drop for Wal {
    /// Stops a spare being made, so that nothing writes in the data dir
    /// once the log is gone.
    fn drop(&mut self) {
        if let Some(maker) = self.maker.take() {
            maker.stop.store(true, Ordering::SeqCst);
            let _ = maker.thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::version::Version;
    use crate::storage::Record;
    use proptest::prelude::*;
    use std::io::Write;

    fn entry(seq: u64, key: &str, value: &[u8], tombstone: bool) -> Entry {
        Entry {
            seq,
            record: Record {
                key: key.into(),
                value: bytes::Bytes::copy_from_slice(value),
                content_type: if tombstone {
                    String::new()
                } else {
                    "text/plain".into()
                },
                version: Version {
                    ts: seq * 10,
                    node: "n1".into(),
                },
                tombstone,
            },
        }
    }

    /// What the applier and the writer do between them after a group.
    fn release(wal: &mut Wal, applied: u64, max_age: Duration, max_len: u64) {
        wal.retirer().retire(applied);
        wal.rotate_when_due(max_age, max_len, || {});
    }

    fn builder(entries: &[Entry], cursors: &[Cursor]) -> FrameBuilder {
        let mut b = FrameBuilder::default();
        for e in entries {
            b.record(&e.record.key, &codec::encode(e.seq, &e.record));
        }
        for c in cursors {
            b.cursor(c);
        }
        b
    }

    fn frame(entries: &[Entry], cursors: &[Cursor]) -> Vec<u8> {
        builder(entries, cursors).finish()
    }

    fn seqs(frames: &[Frame]) -> Vec<u64> {
        frames
            .iter()
            .flat_map(|f| f.records.iter().map(|e| e.seq))
            .collect()
    }

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_dropped() {
        let a = [entry(1, "a", b"one", false), entry(2, "b", b"", true)];
        let c = [Cursor {
            peer: "n2".into(),
            seq: 7,
        }];
        let mut log = frame(&a, &c);
        let first = log.len();
        log.extend(frame(&[entry(3, "ключ", b"three", false)], &[]));
        let whole = log.len();
        let (frames, valid) = decode(&log);
        assert_eq!(valid, whole);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].records, a.to_vec());
        assert_eq!(frames[0].cursors, c.to_vec());
        // Every cut inside the second frame keeps only the first.
        for cut in first..whole {
            let (frames, valid) = decode(&log[..cut]);
            assert_eq!((frames.len(), valid), (1, first), "cut at {cut}");
        }
        // A flipped bit in the second frame fails its checksum.
        let mut damaged = log.clone();
        damaged[whole - 1] ^= 1;
        assert_eq!(decode(&damaged).1, first);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_reset_removes_what_was_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, frames) = Wal::open(dir.path()).unwrap();
        assert!(frames.is_empty() && wal.is_empty());
        wal.append(builder(&[entry(1, "a", b"x", false)], &[]))
            .unwrap();
        drop(wal);
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&frame(&[entry(2, "b", b"y", false)], &[])[..10])
            .unwrap();
        drop(f);
        let (mut wal, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
        wal.reset().unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        wal.append(builder(&[entry(2, "b", b"y", false)], &[]))
            .unwrap();
        drop(wal);
        let (_, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].records[0].seq, 2);
    }

    #[test]
    fn segments_go_once_the_applier_has_their_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let count = || segments(dir.path()).unwrap().len();
        let long = Duration::from_secs(3600);
        for seq in 1..=3 {
            wal.append(builder(&[entry(seq, "k", b"v", false)], &[]))
                .unwrap();
            // Each segment reaches its length limit after one frame.
            release(&mut wal, 0, long, 1);
        }
        assert_eq!((wal.frames(), count()), (3, 4));
        release(&mut wal, 2, long, u64::MAX);
        assert_eq!(count(), 2, "the segments of frames 1 and 2 are gone");
        drop(wal);
        let (_, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].records[0].seq, 3);
    }

    #[test]
    fn the_applier_retires_while_the_writer_rotates() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let applied = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let applier = {
            let (retirer, applied, stop) = (wal.retirer(), applied.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    retirer.retire(applied.load(Ordering::SeqCst));
                }
            })
        };
        let long = Duration::from_secs(3600);
        for seq in 1..=200 {
            wal.append(builder(&[entry(seq, "k", b"v", false)], &[]))
                .unwrap();
            // One frame per segment; redb has all but the last five.
            wal.rotate_when_due(long, 1, || {});
            applied.store(seq.saturating_sub(5), Ordering::SeqCst);
        }
        stop.store(true, Ordering::SeqCst);
        applier.join().unwrap();
        assert!(files(dir.path()).unwrap().1.len() <= SPARES);
        drop(wal);
        let (_, frames) = Wal::open(dir.path()).unwrap();
        let seqs = seqs(&frames);
        assert!(seqs.ends_with(&[196, 197, 198, 199, 200]), "{seqs:?}");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }

    #[test]
    fn a_reused_segment_shows_only_its_own_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let long = Duration::from_secs(3600);
        // Every frame the same size.
        let append = |wal: &mut Wal, seq| {
            wal.append(builder(&[entry(seq, "k", b"value", false)], &[]))
                .unwrap()
        };
        for i in 0..3 {
            append(&mut wal, 10 * i + 1);
            append(&mut wal, 10 * i + 2);
            release(&mut wal, 0, long, 1);
        }
        // Segments 1 to 3 are done with: two are kept as spares.
        release(&mut wal, 6, long, u64::MAX);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        assert_eq!(lock(&wal.shelf).spares.len(), SPARES);
        append(&mut wal, 31);
        release(&mut wal, 6, long, 1);
        // Segment 5 is a spare written over: of its two old frames, the
        // second is still whole in the file, right after the new one. Its
        // checksum, salted with its old segment's number, keeps it out.
        let reused = segment_path(dir.path(), 5);
        let old_size = std::fs::metadata(&reused).unwrap().len();
        assert!(old_size > 0);
        append(&mut wal, 41);
        assert_eq!(std::fs::metadata(&reused).unwrap().len(), old_size);
        drop(wal);
        let (_, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(seqs(&frames), [31, 41]);
        // A sealed segment with bytes after its frames is damaged: what
        // comes after it is not replayed.
        let sealed = segment_path(dir.path(), 4);
        let mut f = OpenOptions::new().append(true).open(&sealed).unwrap();
        f.write_all(b"junk").unwrap();
        drop(f);
        let (_, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(seqs(&frames), [31]);
    }

    #[test]
    fn a_spare_is_sized_to_the_rate_the_log_grows() {
        let (s, mib) = (Duration::from_secs(1), 1 << 20);
        // 2 MiB/s for a 5 s segment: 15 MiB.
        assert_eq!(spare_size(8 * mib, 4 * s, 5 * s, 64 * mib), 15 * mib);
        // Slow: at least 8 MiB.
        assert_eq!(spare_size(5 * mib, 5 * s, 5 * s, 64 * mib), 8 * mib);
        // Fast: at most the segment's length limit.
        assert_eq!(spare_size(60 * mib, s, 5 * s, 64 * mib), 64 * mib);
        assert_eq!(
            spare_size(5 * mib, Duration::ZERO, 5 * s, 64 * mib),
            64 * mib
        );
    }

    #[test]
    fn a_spare_that_cannot_be_made_is_asked_for_once_per_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        // The spare's file cannot be created: a directory holds its name.
        std::fs::create_dir(dir.path().join(MAKING_NAME)).unwrap();
        let value = vec![b'v'; 64 << 10];
        let long = Duration::from_secs(3600);
        let mut first_maker = None;
        for seq in 1..=120 {
            wal.append(builder(&[entry(seq, "k", &value, false)], &[]))
                .unwrap();
            wal.rotate_when_due(long, 64 << 20, || {});
            if let Some(m) = &wal.maker {
                let id = m.thread.thread().id();
                assert_eq!(*first_maker.get_or_insert(id), id, "asked again at {seq}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(first_maker.is_some(), "no spare was asked for");
        // The log goes on in its growing segment, whole.
        assert_eq!(wal.number, 1);
        drop(wal);
        std::fs::remove_dir(dir.path().join(MAKING_NAME)).unwrap();
        let (_, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(seqs(&frames), (1..=120).collect::<Vec<_>>());
    }

    #[test]
    fn a_growing_log_moves_to_a_spare_made_ahead() {
        let dir = tempfile::tempdir().unwrap();
        // What a node stopped while making a spare left behind goes.
        std::fs::write(dir.path().join(MAKING_NAME), b"half made").unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        assert!(!dir.path().join(MAKING_NAME).exists());
        let (long, max_len) = (Duration::from_secs(3600), 16 << 20);
        let value = vec![b'v'; 64 << 10];
        let mut seq = 0;
        let mut append = |wal: &mut Wal| {
            seq += 1;
            wal.append(builder(&[entry(seq, "k", &value, false)], &[]))
                .unwrap();
            wal.rotate_when_due(long, max_len, || {});
        };
        // Under the growth that calls for a spare: none is made.
        while wal.len + (64 << 10) < GROWTH_BEFORE_MAKING {
            append(&mut wal);
        }
        assert!(wal.maker.is_none());
        // Past it, the writer goes on appending to the growing segment
        // while the spare is made, then moves to it.
        let started = Instant::now();
        while wal.number == 1 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no spare was made"
            );
            append(&mut wal);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(wal.maker.is_some());
        // It moved as soon as the spare was ready, long before segment 1
        // was full.
        let first = std::fs::metadata(segment_path(dir.path(), 1))
            .unwrap()
            .len();
        assert!(first < 12 << 20, "segment 1 grew to {first} bytes");
        // Segment 2 writes over the spare's zeroed blocks: its file does
        // not grow.
        let second = segment_path(dir.path(), 2);
        assert_eq!(std::fs::metadata(&second).unwrap().len(), max_len);
        for _ in 0..20 {
            append(&mut wal);
        }
        assert_eq!(wal.number, 2);
        assert_eq!(std::fs::metadata(&second).unwrap().len(), max_len);
        let appended = seq;
        drop(wal);
        // Every frame comes back, in order, across the move; the zeros
        // after the last one end the log.
        let (_, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(seqs(&frames), (1..=appended).collect::<Vec<_>>());
    }

    proptest! {
        /// Bytes from a damaged disk never make the decoder panic, and what
        /// it accepts is a prefix.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (_, valid) = decode(&bytes);
            prop_assert!(valid <= bytes.len());
        }

        /// Frames survive any cut: the whole ones before it decode.
        #[test]
        fn cuts_keep_whole_frames(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), cut in any::<prop::sample::Index>()) {
            let mut log = Vec::new();
            let mut ends = Vec::new();
            for (i, v) in values.iter().enumerate() {
                log.extend(frame(&[entry(i as u64 + 1, &format!("k{i}"), v, false)], &[]));
                ends.push(log.len());
            }
            let cut = cut.index(log.len() + 1);
            let (frames, valid) = decode(&log[..cut]);
            let whole = ends.iter().filter(|e| **e <= cut).count();
            prop_assert_eq!(frames.len(), whole);
            prop_assert_eq!(valid, if whole == 0 { 0 } else { ends[whole - 1] });
        }
    }
}
