//! redb's file, written back to the disk in small steps before a routine
//! fold's sync.
//!
//! A fold ends in a durable redb commit, whose fdatasync writes back every
//! page the fold dirtied: 10 to 15 MB at a time at 5,000 writes/s. The
//! write-ahead log's fdatasync, which every acknowledged write waits for,
//! shares the disk with it, and while that burst is in the disk's queue a
//! log sync that normally takes 0.1 ms takes 10 to 35 ms: the writes (and
//! their replication) behind it wait that long.
//!
//! This backend is redb's own file backend plus one thing: it remembers
//! which byte ranges redb wrote since the last sync, and when the fold is
//! a routine one (`Pace::gently`), it writes them back itself before the
//! sync, `STEP` bytes at a time, waiting for each step to reach the disk
//! before starting the next (`sync_file_range`). The disk's queue then
//! never holds more than one step of ours, so a log sync waits behind at
//! most that, and the fdatasync that follows finds the data written and
//! only flushes the disk's cache and the file's metadata. What is durable,
//! and when, is as before: redb's sync returns only after the fdatasync,
//! and fails if a step failed.
//!
//! One step at a time is slower than one burst, so a fold the writer
//! asked for (the memtable is filling up: the node is taking writes as
//! fast as it can) syncs in one burst, as redb does: there the throughput
//! of the log matters more than its tail (docs/BENCH.md, "Lag tails").

use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redb::{BackendError, StorageBackend};

/// What redb's backend I/O calls fail with (without redb's experimental
/// API).
type BackendIoError = std::io::Error;

/// Most bytes written back in one step.
const STEP: u64 = 256 << 10;
/// Ranges closer than this are written back as one (the pages between
/// are clean, and cost nothing to pass over).
const MERGE_GAP: u64 = 64 << 10;

/// redb's file backend, with paced write-back before a routine sync.
#[derive(Debug)]
pub struct PacedFile {
    inner: redb::backends::FileBackend,
    /// The same file, for `sync_file_range` (the page cache is the file's,
    /// whichever descriptor names it).
    file: File,
    /// Ranges written since the last sync, as (offset, end).
    dirty: Mutex<Vec<(u64, u64)>>,
    pace: Pace,
    /// Set once `sync_file_range` proved unavailable.
    unsupported: AtomicBool,
}

/// Whether the next syncs write back in steps. Shared by the backend and
/// the engine's applier, which sets it around a routine fold and clears
/// it when the writer asks for a fold meanwhile.
#[derive(Clone, Debug, Default)]
pub struct Pace(Arc<AtomicBool>);

impl Pace {
    /// Runs `f` with paced syncs (unless `hurry` is called meanwhile).
    pub fn gently<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Clears the flag however `f` ends, a panic included.
        struct Reset<'a>(&'a AtomicBool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.0.store(true, Ordering::SeqCst);
        let _reset = Reset(&self.0);
        f()
    }

    /// Ends pacing now: the steps left of a write-back in progress are
    /// left to the fdatasync, in one burst.
    pub fn hurry(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    fn is_gentle(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl PacedFile {
    /// Opens (or creates) the file at `path` as redb's own `create` does,
    /// and returns the backend and the switch that paces its syncs.
    pub fn open(path: &Path) -> std::io::Result<(Self, Pace)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        PacedFile::new(file)
    }

    /// The backend for `file`, and the switch that paces its syncs.
    fn new(file: File) -> std::io::Result<(Self, Pace)> {
        let ours = file.try_clone()?;
        let inner = redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?;
        let pace = Pace::default();
        let backend = PacedFile {
            inner,
            file: ours,
            dirty: Mutex::new(Vec::new()),
            pace: pace.clone(),
            unsupported: AtomicBool::new(false),
        };
        Ok((backend, pace))
    }

    /// Writes back the ranges written since the last sync, one step at a
    /// time, while pacing is on.
    ///
    /// An I/O error is returned, not left to the fdatasync: the descriptor
    /// shares redb's open file, and the kernel reports a write-back error
    /// once per open file, so the fdatasync after it would succeed and
    /// redb would take pages that never reached the disk for durable. A
    /// file system without `sync_file_range` only turns pacing off.
    fn write_back(&self) -> std::io::Result<()> {
        let mut ranges = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        if !self.pace.is_gentle() || self.unsupported.load(Ordering::Relaxed) {
            return Ok(());
        }
        for (start, end) in steps(&mut ranges) {
            if !self.pace.is_gentle() {
                break;
            }
            match sync_range(&self.file, start, end - start) {
                Ok(()) => {}
                Err(e) if unsupported(&e) => {
                    tracing::debug!(error = %e, "sync_file_range is not supported here: redb's syncs are not paced");
                    self.unsupported.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Whether `sync_file_range` failed because the file system (or the
/// kernel) does not offer it, rather than because writing failed.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE)
    )
}

/// The ranges sorted, merged across small gaps, and cut into steps of at
/// most `STEP` bytes.
fn steps(ranges: &mut [(u64, u64)]) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(MERGE_GAP) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = Vec::new();
    for (mut start, end) in merged {
        while start < end {
            let next = end.min(start.saturating_add(STEP));
            out.push((start, next));
            start = next;
        }
    }
    out
}

/// Writes back `len` bytes at `offset` and waits until they are written.
fn sync_range(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: sync_file_range only reads its arguments; the descriptor is
    // open for as long as `file` lives.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl StorageBackend for PacedFile {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        self.write_back()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        self.inner.write(offset, data)?;
        let end = offset.saturating_add(data.len() as u64);
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((offset, end));
        Ok(())
    }

    fn close(&self) -> Result<(), BackendIoError> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_merge_near_ranges_and_cut_long_ones() {
        let mut ranges = vec![
            (10_000, 20_000),
            (0, 4096),
            (20_000 + MERGE_GAP + 1, 300_000),
        ];
        let got = steps(&mut ranges);
        assert_eq!(got[0], (0, 20_000));
        let rest: u64 = got[1..].iter().map(|(s, e)| e - s).sum();
        assert_eq!(rest, 300_000 - (20_000 + MERGE_GAP + 1));
        assert!(got.iter().all(|(s, e)| e - s <= STEP && s < e));
        assert!(got.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");

    fn open(path: &Path) -> (redb::Database, Pace) {
        let (backend, pace) = PacedFile::open(path).unwrap();
        (
            redb::Database::builder()
                .create_with_backend(backend)
                .unwrap(),
            pace,
        )
    }

    #[test]
    fn commits_paced_or_not_are_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let value = vec![7u8; 3000];
        {
            let (db, pace) = open(&path);
            for round in 0..4u64 {
                let commit = || {
                    let txn = db.begin_write().unwrap();
                    {
                        let mut t = txn.open_table(T).unwrap();
                        for i in 0..500 {
                            t.insert(round * 1000 + i, value.as_slice()).unwrap();
                        }
                    }
                    txn.commit().unwrap();
                };
                if round % 2 == 0 {
                    pace.gently(commit);
                } else {
                    commit();
                }
            }
        }
        let db = redb::Database::open(&path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let t = txn.open_table(T).unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&t).unwrap(), 2000);
        assert_eq!(t.get(3499).unwrap().unwrap().value(), value.as_slice());
    }

    #[test]
    fn a_second_open_of_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (_db, _) = open(&path);
        let (backend, _) = PacedFile::open(&path).unwrap();
        assert!(matches!(
            redb::Database::builder().create_with_backend(backend),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
    }

    #[test]
    fn pacing_ends_with_its_fold_even_a_panicking_one() {
        let pace = Pace::default();
        assert!(pace.gently(|| pace.is_gentle()));
        assert!(!pace.is_gentle());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pace.gently(|| panic!("a fold failed"))
        }));
        assert!(caught.is_err());
        assert!(!pace.is_gentle());
        assert!(!pace.gently(|| {
            pace.hurry();
            pace.is_gentle()
        }));
    }

    #[test]
    fn steps_of_nothing_are_nothing() {
        assert!(steps(&mut []).is_empty());
    }
}
