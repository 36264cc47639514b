//! The change feed's wire format: compact binary frames, not JSON.
//!
//! A feed answer is one frame:
//!
//! ```text
//! magic  "RPF1"
//! count  u32
//! count x entry:
//!   seq u64 | flags u8 (bit 0 = tombstone) | version_ts u64 |
//!   node_len u8 | node | key_len u32 | key | ct_len u16 | content_type |
//!   value_len u32 | value
//! ```
//!
//! Integers are big-endian. Decoding checks every length against what is
//! left and the limits below, so bytes from a peer can never make it panic
//! or allocate more than the frame holds.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::node::version::Version;
use crate::storage::{Entry, Record};

const MAGIC: &[u8; 4] = b"RPF1";
const TOMBSTONE: u8 = 1;

/// The MIME type of a feed frame.
pub const CONTENT_TYPE: &str = "application/x-ripple-feed";

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a feed frame (bad magic)")]
    BadMagic,
    #[error("frame truncated in entry {0}")]
    Truncated(usize),
    #[error("entry {0}: {1} is not UTF-8")]
    NotUtf8(usize, &'static str),
    #[error("{0} bytes left over after the last entry")]
    Trailing(usize),
}

/// Encodes entries into one frame.
pub fn encode(entries: &[Entry]) -> Bytes {
    let size: usize = entries
        .iter()
        .map(|e| {
            36 + e.record.version.node.len()
                + e.record.key.len()
                + e.record.content_type.len()
                + e.record.value.len()
        })
        .sum();
    let mut out = BytesMut::with_capacity(8 + size);
    out.put_slice(MAGIC);
    out.put_u32(entries.len() as u32);
    for e in entries {
        let r = &e.record;
        let node = &r.version.node.as_bytes()[..r.version.node.len().min(u8::MAX as usize)];
        let ct = &r.content_type.as_bytes()[..r.content_type.len().min(u16::MAX as usize)];
        out.put_u64(e.seq);
        out.put_u8(if r.tombstone { TOMBSTONE } else { 0 });
        out.put_u64(r.version.ts);
        out.put_u8(node.len() as u8);
        out.put_slice(node);
        out.put_u32(r.key.len() as u32);
        out.put_slice(r.key.as_bytes());
        out.put_u16(ct.len() as u16);
        out.put_slice(ct);
        out.put_u32(r.value.len() as u32);
        out.put_slice(&r.value);
    }
    out.freeze()
}

/// Decodes one frame. Values share the frame's buffer (no copies).
pub fn decode(mut buf: Bytes) -> Result<Vec<Entry>, FrameError> {
    if buf.len() < 8 || &buf[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    buf.advance(4);
    let count = buf.get_u32() as usize;
    // Each entry takes at least 36 bytes: never trust `count` further.
    let mut entries = Vec::with_capacity(count.min(buf.len() / 36));
    for i in 0..count {
        let t = FrameError::Truncated(i);
        if buf.remaining() < 18 {
            return Err(t);
        }
        let seq = buf.get_u64();
        let flags = buf.get_u8();
        let ts = buf.get_u64();
        let node = take_str(&mut buf, 1, i, "node id")?;
        let key = take_str(&mut buf, 4, i, "key")?;
        let content_type = take_str(&mut buf, 2, i, "content type")?;
        let value = take(&mut buf, 4, i)?;
        entries.push(Entry {
            seq,
            record: Record {
                key,
                value,
                content_type,
                version: Version { ts, node },
                tombstone: flags & TOMBSTONE != 0,
            },
        });
    }
    if buf.has_remaining() {
        return Err(FrameError::Trailing(buf.remaining()));
    }
    Ok(entries)
}

/// Takes a field preceded by a big-endian length of `width` bytes.
fn take(buf: &mut Bytes, width: usize, entry: usize) -> Result<Bytes, FrameError> {
    if buf.remaining() < width {
        return Err(FrameError::Truncated(entry));
    }
    let len = buf.get_uint(width) as usize;
    if buf.remaining() < len {
        return Err(FrameError::Truncated(entry));
    }
    Ok(buf.split_to(len))
}

fn take_str(
    buf: &mut Bytes,
    width: usize,
    entry: usize,
    what: &'static str,
) -> Result<String, FrameError> {
    let bytes = take(buf, width, entry)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::NotUtf8(entry, what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry_strategy() -> impl Strategy<Value = Entry> {
        (
            any::<u64>(),
            any::<u64>(),
            "[a-z0-9]{1,64}",
            "\\PC{1,64}",
            "[ -~]{0,64}",
            proptest::collection::vec(any::<u8>(), 0..512),
            any::<bool>(),
        )
            .prop_map(
                |(seq, ts, node, key, content_type, value, tombstone)| Entry {
                    seq,
                    record: Record {
                        key,
                        value: Bytes::from(value),
                        content_type,
                        version: Version { ts, node },
                        tombstone,
                    },
                },
            )
    }

    proptest! {
        #[test]
        fn frames_round_trip(entries in proptest::collection::vec(entry_strategy(), 0..20)) {
            let frame = encode(&entries);
            prop_assert_eq!(decode(frame).unwrap(), entries);
        }

        #[test]
        fn truncated_frames_are_refused(entries in proptest::collection::vec(entry_strategy(), 1..5), cut in 1usize..64) {
            let frame = encode(&entries);
            let cut = cut.min(frame.len() - 1);
            prop_assert!(decode(frame.slice(..frame.len() - cut)).is_err());
        }

        #[test]
        fn garbage_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..256), magic: bool) {
            if magic && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(MAGIC);
            }
            let _ = decode(Bytes::from(bytes));
        }
    }

    #[test]
    fn a_huge_count_does_not_allocate() {
        let mut frame = MAGIC.to_vec();
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(Bytes::from(frame)), Err(FrameError::Truncated(0)));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode(&[]).to_vec();
        frame.push(0);
        assert_eq!(decode(Bytes::from(frame)), Err(FrameError::Trailing(1)));
    }
}
