//! Records readable before they are durable on this node: those of a
//! batch pulled from a peer's feed (`Batch::readable_before_durable`),
//! between the write of their log frame and its fdatasync.
//!
//! The embedded writer puts a group's such records here once its frame is
//! written, and takes them out after the fdatasync, once the memtable
//! holds them (or when the group failed). Readers look here before the
//! memtable; the writer inserts into the memtable before it removes from
//! here, so a reader that misses a record here finds it there. Nothing
//! else sees these records early: the feed, folds and cursors go by the
//! memtable, which only durable records enter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use super::memtable::Listed;
use super::{Entry, FastMap};

#[derive(Default)]
pub struct Early {
    /// How many records are held: readers skip the lock while it is 0.
    held: AtomicUsize,
    records: RwLock<FastMap<String, Entry>>,
}

impl Early {
    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, FastMap<String, Entry>> {
        self.records.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes these records readable; a later one of a key (a higher seq)
    /// replaces an earlier one.
    pub fn insert(&self, entries: Vec<Entry>) {
        let mut records = self.lock();
        for e in entries {
            match records.get_mut(&e.record.key) {
                Some(held) if held.seq >= e.seq => {}
                Some(held) => *held = e,
                None => {
                    records.insert(e.record.key.clone(), e);
                }
            }
        }
        self.held.store(records.len(), Ordering::SeqCst);
    }

    /// The record held for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Entry> {
        if self.held.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        records.get(key).cloned()
    }

    /// The keys held that start with `prefix` and sort after
    /// `start_after`, as a listing sees them (unsorted).
    pub fn keys(&self, prefix: &str, start_after: Option<&str>) -> Vec<Listed> {
        if self.held.load(Ordering::SeqCst) == 0 {
            return Vec::new();
        }
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        records
            .values()
            .filter_map(|e| Listed::of(e, prefix, start_after))
            .collect()
    }

    /// Takes these records out again, named by key and seq (each only if
    /// what is held for its key is that very record).
    pub fn remove(&self, keys: &[(String, u64)]) {
        if keys.is_empty() {
            return;
        }
        let mut records = self.lock();
        for (key, seq) in keys {
            if records.get(key).is_some_and(|h| h.seq == *seq) {
                records.remove(key);
            }
        }
        self.held.store(records.len(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::version::Version;
    use crate::storage::Record;

    fn entry(key: &str, seq: u64) -> Entry {
        Entry {
            seq,
            record: Record {
                key: key.into(),
                value: bytes::Bytes::from(format!("v{seq}")),
                content_type: String::new(),
                version: Version {
                    ts: seq,
                    node: "n1".into(),
                },
                tombstone: false,
            },
        }
    }

    #[test]
    fn a_record_is_readable_until_taken_out_and_never_replaced_by_an_older_one() {
        let early = Early::default();
        assert_eq!(early.get("a"), None);
        early.insert(vec![entry("a", 3), entry("b", 4)]);
        early.insert(vec![entry("a", 2)]);
        assert_eq!(early.get("a").map(|e| e.seq), Some(3));
        // Taking out an older record of the key leaves the newer one.
        early.remove(&[("a".into(), 2)]);
        assert_eq!(early.get("a").map(|e| e.seq), Some(3));
        let mut listed: Vec<_> = early.keys("", None).into_iter().map(|l| l.key).collect();
        listed.sort();
        assert_eq!(listed, ["a", "b"]);
        assert_eq!(early.keys("", Some("a")).len(), 1);
        assert_eq!(early.keys("b", None).len(), 1);
        early.remove(&[("a".into(), 3), ("b".into(), 4)]);
        assert_eq!(early.get("a"), None);
        assert_eq!(early.get("b"), None);
        assert_eq!(early.held.load(Ordering::SeqCst), 0);
    }
}
