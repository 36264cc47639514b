//! The checks behind every fuzz target, written once: the fuzz targets in
//! `fuzz_targets/` and the corpus replay test (`tests/fuzz_corpus.rs`, run
//! by plain `cargo test`) both include this file with `#[path]`.
//!
//! Each check takes arbitrary bytes, feeds them to one decoder of untrusted
//! input, and panics (a crash, to the fuzzer) when the decoder panics or
//! breaks one of its invariants.

// Each fuzz target uses one check; the others are dead code there.
#![allow(dead_code)]

use bytes::Bytes;

use ripple::config::Config;
use ripple::http::{keypath, negotiate};
use ripple::replication::codec as feed_codec;
use ripple::storage::codec as record_codec;
use ripple::storage::wal;

/// A check: panics when the input breaks the decoder.
pub type Check = fn(&[u8]);

/// Every target: its name (the file in `fuzz_targets/`, the folder in
/// `corpus/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("feed_frame", feed_frame),
    ("stored_record", stored_record),
    ("key_path", key_path),
    ("accept", accept),
    ("config", config),
    ("wal_log", wal_log),
];

/// A feed frame from a peer: decoding never panics, and what decodes
/// encodes to a frame of the same length that decodes to the same entries.
pub fn feed_frame(data: &[u8]) {
    let Ok(entries) = feed_codec::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let frame = feed_codec::encode(&entries);
    // Every field has a fixed width or a length prefix, so only flag bits
    // other than the tombstone can differ; the length cannot.
    assert_eq!(frame.len(), data.len(), "re-encoded frame changed length");
    let again = feed_codec::decode(frame).expect("a re-encoded frame must decode");
    assert_eq!(again, entries, "frame did not round-trip");
}

/// Splits input into a key and the stored bytes: the first byte is the key
/// length (cut to what is there), the key is taken lossily as UTF-8.
pub fn split_key(data: &[u8]) -> (String, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (String::new(), data);
    };
    let n = (n as usize).min(rest.len());
    let (key, bytes) = rest.split_at(n);
    (String::from_utf8_lossy(key).into_owned(), bytes)
}

/// A stored record read back from an engine (see `split_key` for the input
/// layout): decoding never panics; what decodes re-encodes to bytes that
/// decode equal; `decode_header` agrees with `decode`.
pub fn stored_record(data: &[u8]) {
    let (key, bytes) = split_key(data);
    let full = record_codec::decode(&key, bytes);
    let header = record_codec::decode_header(&key, bytes);
    let Ok(entry) = full else {
        return;
    };
    assert_eq!(
        entry.record.key, key,
        "decode must keep the key it was given"
    );
    let (seq, version) = header.expect("decode_header refused what decode took");
    assert_eq!(seq, entry.seq, "decode_header and decode disagree on seq");
    assert_eq!(
        version, entry.record.version,
        "decode_header and decode disagree on the version"
    );
    let encoded = record_codec::encode(entry.seq, &entry.record);
    assert_eq!(
        encoded.len(),
        bytes.len(),
        "re-encoded record changed length"
    );
    let again = record_codec::decode(&key, &encoded).expect("a re-encoded record must decode");
    assert_eq!(again, entry, "record did not round-trip");
}

/// A key or query component from a URL: decoding never panics; a refused
/// escape is reported at a '%'; whatever decodes (and the raw text itself,
/// as a key) encodes to plain ASCII that decodes back to the same key.
pub fn key_path(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    for (decoded, plus_is_space) in [
        (keypath::decode_path(&raw), false),
        (keypath::decode_query(&raw), true),
    ] {
        match decoded {
            Ok(key) => {
                round_trip_key(&key);
                let escapes = raw.contains('%') || (plus_is_space && raw.contains('+'));
                if !escapes {
                    assert_eq!(key, raw, "text without escapes must decode to itself");
                }
            }
            Err(keypath::DecodeError::BadEscape(at)) => {
                assert_eq!(
                    raw.as_bytes().get(at),
                    Some(&b'%'),
                    "BadEscape({at}) not at a '%'"
                );
            }
            Err(keypath::DecodeError::NotUtf8) => {
                assert!(raw.contains('%'), "only escapes can make invalid UTF-8");
            }
        }
    }
    round_trip_key(&raw);
}

fn round_trip_key(key: &str) {
    let path = keypath::encode_path(key);
    assert!(
        path.bytes()
            .all(|b| b.is_ascii_graphic() && !b"?#+".contains(&b)),
        "encode_path({key:?}) = {path:?} is not safe in a path"
    );
    assert_eq!(
        keypath::decode_path(&path).as_deref(),
        Ok(key),
        "path round trip"
    );
    let query = keypath::encode_query(key);
    assert!(
        query
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
        "encode_query({key:?}) = {query:?} is not safe in a query"
    );
    assert_eq!(
        keypath::decode_query(&query).as_deref(),
        Ok(key),
        "query round trip"
    );
}

/// An `Accept` header, and text put into HTML or XML answers: negotiation
/// never panics; escaped text has no raw markup ('<', '>', quotes, '&'
/// outside an entity) and no character XML cannot carry, and unescapes to
/// the input.
pub fn accept(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = negotiate::choose(Some(&text));
    let escaped = negotiate::escape_markup(&text);
    let mut unescaped = String::with_capacity(escaped.len());
    let mut rest = escaped.as_str();
    while let Some(c) = rest.chars().next() {
        match c {
            '<' | '>' | '"' | '\'' => panic!("raw {c:?} in {escaped:?}"),
            '&' => {
                let (entity, plain) = [
                    ("&amp;", '&'),
                    ("&lt;", '<'),
                    ("&gt;", '>'),
                    ("&quot;", '"'),
                    ("&#39;", '\''),
                ]
                .into_iter()
                .find(|(entity, _)| rest.starts_with(entity))
                .unwrap_or_else(|| panic!("'&' outside an entity in {escaped:?}"));
                unescaped.push(plain);
                rest = &rest[entity.len()..];
                continue;
            }
            c if (c < ' ' && !"\t\n\r".contains(c)) || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                panic!("{c:?} cannot be carried in XML: {escaped:?}")
            }
            c => unescaped.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    let expected: String = text
        .chars()
        .map(|c| {
            if (c < ' ' && !"\t\n\r".contains(c)) || c == '\u{FFFE}' || c == '\u{FFFF}' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    assert_eq!(
        unescaped, expected,
        "escaped text does not unescape to the input"
    );
}

/// A configuration file: parsing and validation never panic, and a config
/// that validates lists its own node among the members and validates again.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(mut config) = Config::parse(&text) else {
        return;
    };
    if config.validate().is_ok() {
        assert!(
            config
                .cluster
                .members
                .iter()
                .any(|m| m.id == config.node_id),
            "a valid config must list its node"
        );
        config
            .validate()
            .expect("a validated config must validate again");
    }
}

/// The embedded engine's write-ahead log as read back at start (a damaged
/// disk, a torn write): decoding never panics and accepts a prefix; the
/// frames it accepts, written again, decode to the same frames.
pub fn wal_log(data: &[u8]) {
    let (frames, valid) = wal::decode(data);
    assert!(valid <= data.len(), "accepted more bytes than given");
    let mut again = Vec::new();
    for f in &frames {
        let mut b = wal::FrameBuilder::default();
        for e in &f.records {
            b.record(&e.record.key, &record_codec::encode(e.seq, &e.record));
        }
        for c in &f.cursors {
            b.cursor(c);
        }
        again.extend(b.finish());
    }
    let (decoded, len) = wal::decode(&again);
    assert_eq!(len, again.len(), "a re-written log was cut short");
    assert_eq!(decoded, frames, "the log did not round-trip");
}
