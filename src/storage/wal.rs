//! The embedded engine's write-ahead log: what makes a group commit durable
//! with one small sequential write and one fdatasync, instead of a durable
//! redb commit (which writes every page the group touched, then fsyncs).
//!
//! The writer thread, for each group: applies it in a redb transaction,
//! appends the effects (every stored record with the seq it took, every
//! cursor moved) to this log as one frame, fdatasyncs, and only then
//! commits the redb transaction without durability, which makes it visible
//! to readers; then it answers. So everything a reader (or a peer pulling
//! the feed) can see is in the log or durably in redb. Every second or so
//! (`checkpoint`) a durable redb commit makes all of it durable in redb,
//! and the log starts over empty.
//!
//! After a crash, redb opens at its last durable commit; `replay` then
//! applies every logged record whose seq is above that commit's last seq,
//! at that very seq, and every logged cursor in order, so the store is
//! exactly as acknowledged, seqs included (peers' cursors depend on them).
//!
//! File layout: frames, each `len:u32 | crc32:u32 | payload`, where payload
//! is `records:u32 | cursors:u32`, then each record
//! `key_len:u32 | key | rec_len:u32 | stored record (see codec)`, then each
//! cursor `peer_len:u16 | peer | seq:u64` (integers big-endian). A frame cut
//! short or failing its checksum ends the log: it was being written when
//! the node stopped, and was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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

    /// The whole frame, header included.
    pub fn finish(self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(8 + self.body.len() + self.cursor_body.len());
        payload.extend_from_slice(&self.records.to_be_bytes());
        payload.extend_from_slice(&self.cursors.to_be_bytes());
        payload.extend_from_slice(&self.body);
        payload.extend_from_slice(&self.cursor_body);
        let mut out = Vec::with_capacity(8 + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }
}

/// Decodes the frames at the start of `bytes`; stops at the first frame
/// that is cut short, fails its checksum or does not parse. Returns the
/// frames and how many bytes they take. Never panics.
pub fn decode(bytes: &[u8]) -> (Vec<Frame>, usize) {
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
        if crc32fast::hash(payload) != crc {
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

/// The open log file.
pub struct Wal {
    file: File,
    path: PathBuf,
    len: u64,
    /// Set when the log could not be cut back after a failed append: its
    /// tail may hold a partial frame, after which nothing may be appended
    /// (replay would stop there). Writes fail until a restart.
    broken: Option<String>,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Unavailable(format!("write-ahead log {}: {what}: {e}", path.display()))
}

impl Wal {
    /// Opens (or creates) the log in `dir`, returning the frames it holds.
    /// A damaged tail is cut off.
    pub fn open(dir: &Path) -> Result<(Wal, Vec<Frame>)> {
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io(&path, "cannot open", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io(&path, "cannot read", e))?;
        let (frames, valid) = decode(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - valid,
                "the write-ahead log ends in a partial frame (written when the node stopped, never acknowledged); cutting it off"
            );
            file.set_len(valid as u64)
                .and_then(|_| file.sync_all())
                .map_err(|e| io(&path, "cannot cut the damaged tail", e))?;
        }
        Ok((
            Wal {
                file,
                path,
                len: valid as u64,
                broken: None,
            },
            frames,
        ))
    }

    /// Appends one frame and waits until it is on disk. On failure the log
    /// is cut back to where it was, so a frame whose group was not
    /// committed never stays in it.
    pub fn append(&mut self, frame: &[u8]) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(StorageError::Unavailable(why.clone()));
        }
        let result = self
            .file
            .write_all(frame)
            .and_then(|_| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                let err = io(&self.path, "cannot append", e);
                self.rollback(self.len)?;
                Err(err)
            }
        }
    }

    /// The log's length: where the next frame goes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Cuts the log back to `len` bytes (a frame whose group then failed
    /// to commit).
    pub fn rollback(&mut self, len: u64) -> Result<()> {
        match self.file.set_len(len).and_then(|_| self.file.sync_data()) {
            Ok(()) => {
                self.len = len;
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

    /// Empties the log: everything in it is durable in redb.
    pub fn reset(&mut self) -> Result<()> {
        self.rollback(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::version::Version;
    use crate::storage::Record;
    use proptest::prelude::*;

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

    fn frame(entries: &[Entry], cursors: &[Cursor]) -> Vec<u8> {
        let mut b = FrameBuilder::default();
        for e in entries {
            b.record(&e.record.key, &codec::encode(e.seq, &e.record));
        }
        for c in cursors {
            b.cursor(c);
        }
        b.finish()
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
    fn the_file_is_cut_back_to_its_last_whole_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, frames) = Wal::open(dir.path()).unwrap();
        assert!(frames.is_empty() && wal.is_empty());
        let one = frame(&[entry(1, "a", b"x", false)], &[]);
        wal.append(&one).unwrap();
        drop(wal);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        f.write_all(&frame(&[entry(2, "b", b"y", false)], &[])[..10])
            .unwrap();
        drop(f);
        let (mut wal, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(wal.len(), one.len() as u64);
        wal.append(&frame(&[entry(2, "b", b"y", false)], &[]))
            .unwrap();
        let (_, frames) = Wal::open(dir.path()).unwrap();
        assert_eq!(frames.len(), 2);
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
