//! The byte layout of a stored record, shared by engines that keep a record
//! as one opaque value (the embedded engine does).
//!
//! Layout (integers big-endian):
//! `format:u8 = 1 | flags:u8 (bit 0 = tombstone) | seq:u64 | version_ts:u64 |
//!  node_len:u8 | node | ct_len:u16 | content_type | value...`
//!
//! Decoding never panics: damaged bytes give `StorageError::Corrupt`.

use bytes::Bytes;

use super::{Entry, Record, StorageError};
use crate::node::version::Version;

const FORMAT: u8 = 1;
const TOMBSTONE: u8 = 1;

/// Encodes `record` (without its key, which the engine stores as the key).
pub fn encode(seq: u64, record: &Record) -> Vec<u8> {
    let node = record.version.node.as_bytes();
    let ct = record.content_type.as_bytes();
    // Node ids and content types are bounded by the node core (64 and 256
    // bytes); clamp anyway so a length prefix can never lie.
    let node = &node[..node.len().min(u8::MAX as usize)];
    let ct = &ct[..ct.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(21 + node.len() + ct.len() + record.value.len());
    out.push(FORMAT);
    out.push(if record.tombstone { TOMBSTONE } else { 0 });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&record.version.ts.to_be_bytes());
    out.push(node.len() as u8);
    out.extend_from_slice(node);
    out.extend_from_slice(&(ct.len() as u16).to_be_bytes());
    out.extend_from_slice(ct);
    out.extend_from_slice(&record.value);
    out
}

/// Decodes what `encode` wrote, for `key`.
pub fn decode(key: &str, bytes: &[u8]) -> Result<Entry, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("record for key {key:?}: {what}"));
    let mut r = Reader(bytes);
    let format = r.u8().ok_or_else(|| corrupt("empty"))?;
    if format != FORMAT {
        return Err(corrupt(&format!("unknown format {format}")));
    }
    let flags = r.u8().ok_or_else(|| corrupt("truncated flags"))?;
    let seq = r.u64().ok_or_else(|| corrupt("truncated seq"))?;
    let ts = r.u64().ok_or_else(|| corrupt("truncated version"))?;
    let node_len = r.u8().ok_or_else(|| corrupt("truncated node id"))? as usize;
    let node = r
        .take(node_len)
        .ok_or_else(|| corrupt("truncated node id"))?;
    let node = std::str::from_utf8(node).map_err(|_| corrupt("node id is not UTF-8"))?;
    let ct_len = r.u16().ok_or_else(|| corrupt("truncated content type"))? as usize;
    let ct = r
        .take(ct_len)
        .ok_or_else(|| corrupt("truncated content type"))?;
    let ct = std::str::from_utf8(ct).map_err(|_| corrupt("content type is not UTF-8"))?;
    Ok(Entry {
        seq,
        record: Record {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(r.0),
            content_type: ct.to_owned(),
            version: Version {
                ts,
                node: node.to_owned(),
            },
            tombstone: flags & TOMBSTONE != 0,
        },
    })
}

/// Reads only the seq and version of an encoded record, without copying
/// the value: what the write path needs to compare versions.
pub fn decode_header(key: &str, bytes: &[u8]) -> Result<(u64, Version), StorageError> {
    // The value is the tail, so decoding a prefix is cheap enough: decode
    // the fixed part by hand instead of copying the value.
    let corrupt = || StorageError::Corrupt(format!("record header for key {key:?}"));
    let mut r = Reader(bytes);
    if r.u8() != Some(FORMAT) {
        return Err(corrupt());
    }
    r.u8().ok_or_else(corrupt)?;
    let seq = r.u64().ok_or_else(corrupt)?;
    let ts = r.u64().ok_or_else(corrupt)?;
    let node_len = r.u8().ok_or_else(corrupt)? as usize;
    let node = r.take(node_len).ok_or_else(corrupt)?;
    let node = std::str::from_utf8(node).map_err(|_| corrupt())?;
    Ok((
        seq,
        Version {
            ts,
            node: node.to_owned(),
        },
    ))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(seq: u64, ts: u64, node in "[a-z0-9]{1,64}", ct in "[ -~]{0,256}",
                       value: Vec<u8>, tombstone: bool, key in "\\PC{1,32}") {
            let record = Record {
                key: key.clone(),
                value: Bytes::from(value),
                content_type: ct,
                version: Version { ts, node },
                tombstone,
            };
            let bytes = encode(seq, &record);
            let entry = decode(&key, &bytes).unwrap();
            prop_assert_eq!(entry.seq, seq);
            prop_assert_eq!(&entry.record, &record);
            let (hseq, hversion) = decode_header(&key, &bytes).unwrap();
            prop_assert_eq!(hseq, seq);
            prop_assert_eq!(hversion, record.version);
        }

        #[test]
        fn never_panics_on_garbage(bytes: Vec<u8>) {
            let _ = decode("k", &bytes);
            let _ = decode_header("k", &bytes);
        }
    }
}
