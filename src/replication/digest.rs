//! Range digests: a summary of a node's data that two nodes can compare to
//! find where they differ without sending the data.
//!
//! The key space is cut into `RANGES` ranges by a pinned hash of the key
//! (`range_of`). A range's digest is the count of its live records and the
//! wrapping sum of a 128-bit hash of each one (key, version, content type,
//! value); a sum does not depend on the order records are met in, so two
//! nodes holding the same records have the same digest whatever their
//! feeds look like. Tombstones are left out: a node that has collected a
//! tombstone and one that still holds it agree that the key is absent.
//!
//! A digest is computed by scanning the change feed up to the last seq at
//! the start of the scan, so it is taken as of about that moment; records
//! written meanwhile may be missing from it, which is why a comparison is
//! repeated before a difference is reported (`ripple verify`) and why a
//! repair only ever applies records newer than the ones held (`repair`).

use serde::{Deserialize, Serialize};

use crate::storage::{Entry, Record, Storage, StorageError};

/// How many ranges the key space is cut into: a power of two, so a range is
/// the top bits of the key's hash.
pub const RANGES: usize = 256;

/// Entries read per step of a scan.
const SCAN_STEP: usize = 4096;

/// The range `key` belongs to: the top 8 bits of its hash.
pub fn range_of(key: &str) -> usize {
    (hash64(0, &[key.as_bytes()]) >> 56) as usize
}

/// A range's name on the wire and in reports: two hex digits.
pub fn range_name(range: usize) -> String {
    format!("{range:02x}")
}

/// Parses a range name ("00" to "ff").
pub fn parse_range(name: &str) -> Option<usize> {
    if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    usize::from_str_radix(name, 16).ok().filter(|r| *r < RANGES)
}

/// The 128-bit hash of one live record: every field a reader can see.
pub fn record_hash(r: &Record) -> u128 {
    let ts = r.version.ts.to_be_bytes();
    let parts: [&[u8]; 5] = [
        r.key.as_bytes(),
        &ts,
        r.version.node.as_bytes(),
        r.content_type.as_bytes(),
        &r.value,
    ];
    ((hash64(1, &parts) as u128) << 64) | hash64(2, &parts) as u128
}

/// FNV-1a over length-prefixed parts, seeded, finished with splitmix64's
/// mixer. Pinned here (not the standard library's hasher) because nodes
/// built by different compilers must agree on it.
fn hash64(seed: u64, parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for part in parts {
        for b in (part.len() as u64).to_be_bytes().iter().chain(part.iter()) {
            h ^= *b as u64;
            h = h.wrapping_mul(PRIME);
        }
    }
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One range's digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeDigest {
    /// Live records in the range.
    pub records: u64,
    /// Wrapping sum of their hashes.
    pub sum: u128,
}

impl RangeDigest {
    fn add(&mut self, r: &Record) {
        self.records += 1;
        self.sum = self.sum.wrapping_add(record_hash(r));
    }
}

/// Every range's digest, as a node answers `GET /v1/digest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digests {
    /// The last seq the scan covered.
    pub upto: u64,
    pub ranges: Vec<RangeDigest>,
}

/// One range in the JSON form of a digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RangeJson {
    pub range: String,
    pub records: u64,
    pub digest: String,
}

impl Digests {
    /// The ranges in JSON form, in range order.
    pub fn to_json(&self) -> Vec<RangeJson> {
        self.ranges
            .iter()
            .enumerate()
            .map(|(i, d)| RangeJson {
                range: range_name(i),
                records: d.records,
                digest: format!("{:032x}", d.sum),
            })
            .collect()
    }

    /// Live records on the node.
    pub fn records(&self) -> u64 {
        self.ranges.iter().map(|d| d.records).sum()
    }
}

/// Parses the `ranges` array of a `/v1/digest` answer into per-range
/// (records, digest) pairs, checking that every range is there once.
pub fn parse_json(ranges: &[RangeJson]) -> Result<Vec<RangeDigest>, String> {
    let mut out = vec![None; RANGES];
    for r in ranges {
        let i = parse_range(&r.range).ok_or_else(|| format!("bad range name {:?}", r.range))?;
        let sum = u128::from_str_radix(&r.digest, 16)
            .map_err(|_| format!("bad digest {:?} for range {}", r.digest, r.range))?;
        if out[i]
            .replace(RangeDigest {
                records: r.records,
                sum,
            })
            .is_some()
        {
            return Err(format!("range {} listed twice", r.range));
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, d)| d.ok_or_else(|| format!("range {} is missing", range_name(i))))
        .collect()
}

/// Scans the feed up to the last seq at the start, calling `each` on every
/// entry met (tombstones included).
async fn scan(
    storage: &dyn Storage,
    mut each: impl FnMut(Entry) -> Result<(), StorageError>,
) -> Result<u64, StorageError> {
    let upto = storage.last_seq().await?;
    let mut after = 0;
    while after < upto {
        let entries = storage.changes_since(after, SCAN_STEP).await?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        for e in entries {
            if e.seq > upto {
                return Ok(upto);
            }
            each(e)?;
        }
        after = last;
    }
    Ok(upto)
}

/// Computes every range's digest of `storage`.
pub async fn compute(storage: &dyn Storage) -> Result<Digests, StorageError> {
    let mut ranges = vec![RangeDigest::default(); RANGES];
    let upto = scan(storage, |e| {
        if !e.record.tombstone {
            ranges[range_of(&e.record.key)].add(&e.record);
        }
        Ok(())
    })
    .await?;
    Ok(Digests { upto, ranges })
}

/// The key and version of every record (tombstones included) in `wanted`
/// ranges, at most `max` of them (`None` past that). In place of its value
/// a live record carries its 16-byte `record_hash`, so records of the same
/// version can be compared without sending them.
pub async fn versions(
    storage: &dyn Storage,
    wanted: &[bool; RANGES],
    max: usize,
) -> Result<Option<Vec<Record>>, StorageError> {
    let mut out = Vec::new();
    let mut over = false;
    scan(storage, |e| {
        if wanted[range_of(&e.record.key)] {
            if out.len() >= max {
                over = true;
            } else {
                let value = if e.record.tombstone {
                    bytes::Bytes::new()
                } else {
                    bytes::Bytes::copy_from_slice(&record_hash(&e.record).to_be_bytes())
                };
                out.push(Record {
                    value,
                    content_type: String::new(),
                    ..e.record
                });
            }
        }
        Ok(())
    })
    .await?;
    Ok((!over).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::version::Version;
    use proptest::prelude::*;

    fn record(key: &str, ts: u64, value: &str) -> Record {
        Record {
            key: key.into(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            content_type: "text/plain".into(),
            version: Version {
                ts,
                node: "a".into(),
            },
            tombstone: false,
        }
    }

    #[test]
    fn the_hashes_are_pinned() {
        // Nodes of different builds compare digests: these must never change.
        assert_eq!(range_of("a"), 0x5e);
        assert_eq!(range_of("users/42"), 0xfd);
        assert_eq!(
            format!("{:032x}", record_hash(&record("k", 7, "v"))),
            "45c9763b81cbd769c104646c1d0086f2"
        );
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = record("k", 7, "v");
        let mut others = vec![
            record("k2", 7, "v"),
            record("k", 8, "v"),
            record("k", 7, "w"),
        ];
        let mut ct = base.clone();
        ct.content_type = "text/html".into();
        others.push(ct);
        let mut node = base.clone();
        node.version.node = "b".into();
        others.push(node);
        for o in others {
            assert_ne!(record_hash(&base), record_hash(&o), "{o:?}");
        }
        // Length prefixes: moving bytes between fields changes the hash.
        let mut a = record("ab", 1, "c");
        let mut b = record("a", 1, "bc");
        a.content_type.clear();
        b.content_type.clear();
        assert_ne!(record_hash(&a), record_hash(&b));
    }

    #[test]
    fn range_names_round_trip_and_reject_junk() {
        for r in 0..RANGES {
            assert_eq!(parse_range(&range_name(r)), Some(r));
        }
        for junk in ["", "0", "100", "g0", "-1", "+1", " 1"] {
            assert_eq!(parse_range(junk), None, "{junk:?}");
        }
    }

    proptest! {
        /// The digest of a set of records does not depend on their order.
        #[test]
        fn digests_ignore_order(mut keys in proptest::collection::vec("[a-z]{1,6}", 0..40), seed in any::<u64>()) {
            keys.sort();
            keys.dedup();
            let records: Vec<Record> = keys.iter().enumerate().map(|(i, k)| record(k, i as u64, k)).collect();
            let mut shuffled = records.clone();
            let n = shuffled.len();
            let mut s = seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let digest = |rs: &[Record]| {
                let mut d = vec![RangeDigest::default(); RANGES];
                for r in rs {
                    d[range_of(&r.key)].add(r);
                }
                d
            };
            prop_assert_eq!(digest(&records), digest(&shuffled));
        }

        /// The JSON form parses back to the same digests.
        #[test]
        fn json_round_trips(sums in proptest::collection::vec((any::<u64>(), any::<u128>()), RANGES)) {
            let d = Digests { upto: 0, ranges: sums.iter().map(|(records, sum)| RangeDigest { records: *records, sum: *sum }).collect() };
            prop_assert_eq!(parse_json(&d.to_json()).unwrap(), d.ranges);
        }
    }
}
