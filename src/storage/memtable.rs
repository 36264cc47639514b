//! The embedded engine's memtable: what the write-ahead log has made
//! durable but the applier has not yet folded into redb.
//!
//! The writer thread logs a group (one append, one fdatasync) and then puts
//! its records and cursors here, which makes them visible. The applier
//! thread now and then freezes what is here (the writer goes on filling a
//! new table), writes the frozen table to redb in one durable
//! transaction, and only then releases it from here. So at any moment a
//! record is in the memtable, or in redb, or both (between the applier's
//! commit and its release); reads look here first, then in redb, and the
//! record with the higher seq wins.
//!
//! Each table holds each key's latest record only, like redb's `records`
//! table, and the same records ordered by seq, like its `feed`; a key in
//! both tables is read from the active one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::{Cursor, Entry, FastMap, Version};

/// Records and cursors not yet in redb: the table the writer fills, and
/// the one the applier is writing to redb, if any. Freezing and releasing
/// swap a table in or out, so neither holds the lock longer than a pointer
/// move: readers and the writer never wait for the applier.
#[derive(Default)]
pub struct Memtable {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    active: Table,
    /// Frozen by the applier, written to redb, then released. Every seq in
    /// it is below every seq in `active`.
    frozen: Option<Arc<Table>>,
    /// Groups put here so far (the writer's count of logged frames).
    groups: u64,
}

/// Each key's latest record, by key and by seq, and the moved cursors.
#[derive(Default)]
struct Table {
    records: FastMap<String, Arc<Entry>>,
    /// The same entries, by seq.
    feed: BTreeMap<u64, Arc<Entry>>,
    cursors: FastMap<String, u64>,
    /// What the records cost in memory, roughly.
    bytes: usize,
    /// Every group up to this count is in this table or an older one.
    groups: u64,
}

/// What the applier writes to redb: a frozen table.
pub struct Snapshot {
    table: Arc<Table>,
    /// Frozen by an earlier round whose write failed.
    left_over: bool,
}

impl Snapshot {
    /// Frozen by an earlier round (whose write failed), not by this one.
    pub fn left_over(&self) -> bool {
        self.left_over
    }

    /// The records, in seq order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.table.feed.values().map(|e| &**e)
    }

    pub fn cursors(&self) -> impl Iterator<Item = Cursor> + '_ {
        self.table.cursors.iter().map(|(peer, seq)| Cursor {
            peer: peer.clone(),
            seq: *seq,
        })
    }

    /// Every group up to this count is in the snapshot or already in redb.
    pub fn groups(&self) -> u64 {
        self.table.groups
    }
}

/// A key as a listing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub seq: u64,
    pub tombstone: bool,
}

impl Listed {
    /// `e` as a listing from `prefix`, after `start_after`, sees it; `None`
    /// when out of that listing's range.
    pub fn of(e: &Entry, prefix: &str, start_after: Option<&str>) -> Option<Listed> {
        let k = e.record.key.as_str();
        (k.starts_with(prefix) && start_after.is_none_or(|after| k > after)).then(|| Listed {
            key: e.record.key.clone(),
            seq: e.seq,
            tombstone: e.record.tombstone,
        })
    }
}

/// What a record costs the memtable: its bytes, and its place in two maps.
fn cost(e: &Entry) -> usize {
    e.footprint() + 160
}

impl Table {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.cursors.is_empty()
    }
}

impl Inner {
    /// The tables a read looks in, newest first.
    fn tables(&self) -> impl Iterator<Item = &Table> {
        std::iter::once(&self.active).chain(self.frozen.as_deref())
    }

    fn record(&self, key: &str) -> Option<&Arc<Entry>> {
        self.tables().find_map(|t| t.records.get(key))
    }
}

impl Memtable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer: one logged group's stored records (in seq order) and
    /// moved cursors, made visible at once. `publish` runs before readers
    /// can see them (the writer's new last seq goes there, so no reader
    /// sees a record past it).
    pub fn insert(&self, entries: Vec<Entry>, cursors: &[Cursor], publish: impl FnOnce()) {
        let entries: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        // Records this group replaced, dropped once the lock is released.
        let mut replaced = Vec::new();
        let mut m = self.write();
        m.groups += 1;
        let groups = m.groups;
        let t = &mut m.active;
        for e in entries {
            t.bytes += cost(&e);
            if let Some(old) = t.records.insert(e.record.key.clone(), e.clone()) {
                t.feed.remove(&old.seq);
                t.bytes -= cost(&old);
                replaced.push(old);
            }
            t.feed.insert(e.seq, e);
        }
        for c in cursors {
            t.cursors.insert(c.peer.clone(), c.seq);
        }
        t.groups = groups;
        publish();
        drop(m);
        drop(replaced);
    }

    /// The unapplied record of `key`, if any.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.read().record(key).map(|e| Entry::clone(e))
    }

    /// The version of `key`'s unapplied record, if any.
    pub fn version(&self, key: &str) -> Option<Version> {
        self.read().record(key).map(|e| e.record.version.clone())
    }

    /// The unapplied cursor of `peer`, if any.
    pub fn cursor(&self, peer: &str) -> Option<u64> {
        self.read()
            .tables()
            .find_map(|t| t.cursors.get(peer).copied())
    }

    /// Unapplied records with seq > `after`, in seq order, one per key:
    /// the first `limit` of them, and whether that is all (a feed read
    /// needs no more than it answers with, however large the memtable).
    pub fn since(&self, after: u64, limit: usize) -> (Vec<Arc<Entry>>, bool) {
        let m = self.read();
        let from = after.saturating_add(1);
        // The frozen table's seqs are all below the active one's.
        let frozen = m.frozen.iter().flat_map(|frozen| {
            frozen
                .feed
                .range(from..)
                .filter(|(_, e)| !m.active.records.contains_key(&e.record.key))
        });
        let mut all = frozen
            .chain(m.active.feed.range(from..))
            .map(|(_, e)| e.clone());
        let out: Vec<Arc<Entry>> = all.by_ref().take(limit).collect();
        let complete = all.next().is_none();
        (out, complete)
    }

    /// The seq of the key's unapplied record, if the memtable holds one.
    pub fn seq_of(&self, key: &str) -> Option<u64> {
        self.read().record(key).map(|e| e.seq)
    }

    /// Unapplied keys starting with `prefix` and after `start_after`, in
    /// byte order, tombstones included.
    pub fn keys(&self, prefix: &str, start_after: Option<&str>) -> Vec<Listed> {
        let m = self.read();
        let mut out: Vec<Listed> = Vec::new();
        for (i, t) in m.tables().enumerate() {
            out.extend(
                t.records
                    .values()
                    .filter_map(|e| Listed::of(e, prefix, start_after))
                    // A key in the active table hides the frozen one.
                    .filter(|l| i == 0 || !m.active.records.contains_key(&l.key)),
            );
        }
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// What the applier writes next: the frozen table if one is still
    /// waiting (its last write failed), else the active one, frozen now;
    /// none when there is nothing to write.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let mut m = self.write();
        let left_over = m.frozen.is_some();
        if !left_over {
            if m.active.is_empty() {
                return None;
            }
            let table = std::mem::take(&mut m.active);
            m.frozen = Some(Arc::new(table));
        }
        m.frozen.clone().map(|table| Snapshot { table, left_over })
    }

    /// The applier: `snap` is durable in redb, so it leaves the memtable.
    pub fn release(&self, snap: Snapshot) {
        let mut m = self.write();
        let frozen = match &m.frozen {
            Some(t) if Arc::ptr_eq(t, &snap.table) => m.frozen.take(),
            _ => None,
        };
        drop(m);
        // The records are freed here, outside the lock.
        drop(frozen);
    }

    /// What the unapplied records cost in memory, roughly.
    pub fn bytes(&self) -> usize {
        self.read().tables().map(|t| t.bytes).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.read().tables().all(Table::is_empty)
    }
}

/// The keys of a feed read's memtable part, with their seqs (see
/// `row_hidden`).
pub fn window_seqs(mem: &[Arc<Entry>]) -> FastMap<&str, u64> {
    mem.iter().map(|e| (e.record.key.as_str(), e.seq)).collect()
}

/// Whether redb's feed row of `key` at `seq` is left out of a feed read.
/// It is when the read's memtable part (`window`) holds the key at that
/// seq or a later one: `merge_feed` drops such a row, so it must not count
/// toward the rows read (redb is read after the memtable, from a snapshot
/// that can be older than a fold the memtable has since let go of: a row
/// the memtable no longer hides can still be one `merge_feed` drops). And
/// it is when the memtable holds a later record of the key now (`live`,
/// asked as the row is read): the key comes at that seq, past this read.
/// A live record at the row's own seq does not hide it: that is the key's
/// latest, folded and not yet let go of, and may be gone from the
/// memtable before the next read.
pub fn row_hidden(window: &FastMap<&str, u64>, live: Option<u64>, key: &str, seq: u64) -> bool {
    window.get(key).is_some_and(|s| *s >= seq) || live.is_some_and(|s| s > seq)
}

/// The change feed after `after`, at most `limit` entries, from the
/// memtable's records (`mem`, read first: its first records after `after`,
/// all of them when `mem_complete`) and redb's (`disk`, read after; all
/// of them after `after` when `disk_complete`), each in seq order with one
/// entry per key. Where a key is in both, the higher seq wins: the applier
/// may have written redb and released the memtable between the two reads,
/// never the other way round. When either side was cut short, nothing past
/// its last seq is returned: the other may hold more below its next one,
/// and a feed must not skip any.
pub fn merge_feed(
    mem: Vec<Arc<Entry>>,
    mem_complete: bool,
    disk: Vec<Entry>,
    disk_complete: bool,
    limit: usize,
) -> Vec<Entry> {
    let cut = |complete: bool, last: Option<u64>| match (complete, last) {
        (false, Some(last)) => last,
        _ => u64::MAX,
    };
    let end = cut(disk_complete, disk.last().map(|e| e.seq))
        .min(cut(mem_complete, mem.last().map(|e| e.seq)));
    let disk_seq: HashMap<&str, u64> = disk
        .iter()
        .map(|e| (e.record.key.as_str(), e.seq))
        .collect();
    let mem_seq = window_seqs(&mem);
    let mut mem = mem
        .iter()
        .filter(|e| {
            disk_seq
                .get(e.record.key.as_str())
                .is_none_or(|s| *s <= e.seq)
        })
        .map(|e| Entry::clone(e))
        .peekable();
    let mut disk = disk
        .iter()
        .filter(|e| {
            mem_seq
                .get(e.record.key.as_str())
                .is_none_or(|s| *s < e.seq)
        })
        .cloned()
        .peekable();
    let mut out = Vec::new();
    while out.len() < limit {
        let next = match (mem.peek(), disk.peek()) {
            (Some(m), Some(d)) if m.seq < d.seq => mem.next(),
            (_, Some(_)) => disk.next(),
            (Some(_), None) => mem.next(),
            (None, None) => None,
        };
        match next {
            Some(e) if e.seq <= end => out.push(e),
            _ => break,
        }
    }
    out
}

/// A listing: the memtable's keys (`mem`, read first) and redb's (`disk`,
/// read after, live keys and the tombstones of keys in `mem`; `complete`
/// unless cut short), each in byte order, merged; where a key is in both,
/// the higher seq decides whether it is live. Returns the live keys, at
/// most `limit`, and none past redb's last key when it was cut short.
pub fn merge_keys(
    mem: Vec<Listed>,
    disk: Vec<Listed>,
    complete: bool,
    limit: usize,
) -> Vec<String> {
    let end = match (complete, disk.last()) {
        (false, Some(last)) => Some(last.key.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    let mut mem = mem.into_iter().peekable();
    let mut disk = disk.into_iter().peekable();
    while out.len() < limit {
        let next = match (mem.peek(), disk.peek()) {
            (Some(m), Some(d)) => match m.key.cmp(&d.key) {
                std::cmp::Ordering::Less => mem.next(),
                std::cmp::Ordering::Greater => disk.next(),
                std::cmp::Ordering::Equal => match (mem.next(), disk.next()) {
                    (Some(m), Some(d)) => Some(if m.seq >= d.seq { m } else { d }),
                    (m, d) => m.or(d),
                },
            },
            (Some(_), None) => mem.next(),
            (None, Some(_)) => disk.next(),
            (None, None) => None,
        };
        let Some(l) = next else { break };
        if end.as_ref().is_some_and(|end| l.key > *end) {
            break;
        }
        if !l.tombstone {
            out.push(l.key);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Record;
    use proptest::prelude::*;

    /// Write `i` (seq `i + 1`) goes to key `keys[i]`; it is a tombstone
    /// when `dead[i]`.
    fn write(i: usize, key: u8, dead: bool) -> Entry {
        Entry {
            seq: i as u64 + 1,
            record: Record {
                key: format!("k{key:02}"),
                value: bytes::Bytes::from(format!("v{i}")),
                content_type: String::new(),
                version: Version {
                    ts: i as u64 + 1,
                    node: "n1".into(),
                },
                tombstone: dead,
            },
        }
    }

    /// Each key's latest write among the first `upto`, in seq order.
    fn latest(writes: &[Entry], upto: usize) -> Vec<Entry> {
        let mut by_key: BTreeMap<String, Entry> = BTreeMap::new();
        for w in &writes[..upto] {
            by_key.insert(w.record.key.clone(), w.clone());
        }
        let mut out: Vec<Entry> = by_key.into_values().collect();
        out.sort_by_key(|e| e.seq);
        out
    }

    /// A history, and the moments of a read: the memtable is read when
    /// `written` writes were made and the applier had `applied_then` of
    /// them in redb; redb is read later, holding the first `applied_now`
    /// (which may be more than were written at the first read).
    fn history() -> impl Strategy<Value = (Vec<Entry>, usize, usize, usize)> {
        proptest::collection::vec((0u8..12, proptest::bool::weighted(0.2)), 1..60).prop_flat_map(
            |ws| {
                let writes: Vec<Entry> = ws
                    .iter()
                    .enumerate()
                    .map(|(i, (k, d))| write(i, *k, *d))
                    .collect();
                let n = writes.len();
                (Just(writes), 0..=n).prop_flat_map(move |(writes, written)| {
                    (Just(writes), Just(written), 0..=written).prop_flat_map(
                        move |(writes, written, applied_then)| {
                            (
                                Just(writes),
                                Just(written),
                                Just(applied_then),
                                applied_then..=n,
                            )
                        },
                    )
                })
            },
        )
    }

    /// The memtable as it was at the first read: the writes up to
    /// `applied_then` were written to redb and released, those up to
    /// `frozen` (if beyond) are frozen, the rest are in the active table.
    fn memtable(writes: &[Entry], written: usize, applied_then: usize, frozen: usize) -> Memtable {
        let mem = Memtable::default();
        for w in &writes[..applied_then] {
            mem.insert(vec![w.clone()], &[], || {});
        }
        if let Some(snap) = mem.snapshot() {
            mem.release(snap);
        }
        let frozen = frozen.clamp(applied_then, written);
        for w in &writes[applied_then..frozen] {
            mem.insert(vec![w.clone()], &[], || {});
        }
        mem.snapshot();
        for w in &writes[frozen..written] {
            mem.insert(vec![w.clone()], &[], || {});
        }
        mem
    }

    proptest! {
        /// Whatever the applier and the writer did meanwhile, a feed read
        /// skips nothing a puller needs. The memtable is read first (when
        /// `written` writes were made and the first `applied_then` were let
        /// go of), redb after, from a snapshot holding the first
        /// `applied_now`; the memtable asked about each redb row is the one
        /// of a later moment (`live_released` let go of, `live_written`
        /// made, and from row `switch` on `later_released` let go of), so
        /// a fold may have committed and let go of what the snapshot does
        /// not show, and let go of more in the middle of the scan. Every entry of the true feed (as of the
        /// end) up to the last seq returned is there, and a short answer
        /// holds every one up to the memtable's read, as the puller then
        /// stores that as its cursor. An answer may also hold a key's
        /// previous record, when redb has the newer one past where its read
        /// stopped; the next read brings that one.
        #[test]
        fn the_merged_feed_skips_nothing(
            (writes, written, applied_then, applied_now) in history(),
            after in 0u64..60,
            limit in 1usize..20,
            frozen in 0usize..60,
            live_released in 0usize..60,
            live_written in 0usize..60,
            later_released in 0usize..60,
            switch in 0usize..60,
        ) {
            let n = writes.len();
            let first = memtable(&writes, written, applied_then, frozen);
            let live_released = live_released.clamp(applied_then, n);
            let live_written = live_written.clamp(written.max(applied_now).max(live_released), n);
            // The memtable asked about the first `switch` rows, and the
            // one asked about the rest, after a fold let go of more.
            let live = memtable(&writes, live_written, live_released, frozen);
            let later_released = later_released.clamp(live_released, live_written);
            let later = memtable(&writes, live_written, later_released, frozen);
            let on_disk: Vec<Entry> = latest(&writes, applied_now)
                .into_iter()
                .filter(|e| e.seq > after)
                .collect();
            // As the engine reads: the memtable's first `window` records,
            // then redb's rows up to `limit` not hidden (`row_hidden`);
            // once more with the whole memtable when a cut window left the
            // answer short.
            let read = |window: usize| {
                let (mem, mem_complete) = first.since(after, window);
                let seqs = window_seqs(&mem);
                let (mut disk, mut complete) = (Vec::new(), true);
                for (i, e) in on_disk.iter().enumerate() {
                    if disk.len() >= limit {
                        complete = false;
                        break;
                    }
                    let key = e.record.key.as_str();
                    let now = if i < switch { &live } else { &later };
                    if row_hidden(&seqs, now.seq_of(key), key, e.seq) {
                        continue;
                    }
                    disk.push(e.clone());
                }
                drop(seqs);
                (merge_feed(mem, mem_complete, disk, complete, limit), !mem_complete)
            };
            let (mut merged, cut) = read(limit);
            if merged.len() < limit && cut {
                merged = read(usize::MAX).0;
            }
            let truth: Vec<Entry> = latest(&writes, live_written)
                .into_iter()
                .filter(|e| e.seq > after)
                .collect();
            prop_assert!(merged.len() <= limit);
            prop_assert!(merged.windows(2).all(|w| w[0].seq < w[1].seq), "in seq order");
            for e in &merged {
                prop_assert!(e.seq > after && writes[e.seq as usize - 1] == *e, "a real write");
            }
            let last = merged.last().map_or(after, |e| e.seq);
            for t in truth.iter().filter(|t| t.seq <= last) {
                prop_assert!(merged.contains(t), "{:?} skipped", t);
            }
            if merged.len() < limit {
                for t in truth.iter().filter(|t| t.seq <= written as u64) {
                    prop_assert!(merged.contains(t), "a short answer lacks {:?}", t);
                }
            }
        }

        /// The same for a listing of live keys.
        #[test]
        fn the_merged_listing_is_a_prefix_of_the_truth(
            (writes, written, applied_then, applied_now) in history(),
            start in 0u8..12,
            limit in 1usize..12,
            frozen in 0usize..60,
        ) {
            let start_after = format!("k{start:02}");
            let mem = memtable(&writes, written, applied_then, frozen).keys("k", Some(&start_after));
            let in_mem: Vec<String> = mem.iter().map(|l| l.key.clone()).collect();
            let mut on_disk: Vec<Entry> = latest(&writes, applied_now)
                .into_iter()
                .filter(|e| e.record.key > start_after)
                .collect();
            on_disk.sort_by(|a, b| a.record.key.cmp(&b.record.key));
            // As the engine reads redb: live keys up to `wanted`, and the
            // tombstones of keys in the memtable.
            let wanted = limit + mem.len();
            let (mut disk, mut live, mut complete) = (Vec::new(), 0, true);
            for e in on_disk {
                if live >= wanted {
                    complete = false;
                    break;
                }
                live += usize::from(!e.record.tombstone);
                if !e.record.tombstone || in_mem.contains(&e.record.key) {
                    disk.push(Listed { key: e.record.key.clone(), seq: e.seq, tombstone: e.record.tombstone });
                }
            }
            let merged = merge_keys(mem, disk, complete, limit);
            let mut truth: Vec<String> = latest(&writes, written.max(applied_now))
                .into_iter()
                .filter(|e| !e.record.tombstone && e.record.key > start_after)
                .map(|e| e.record.key)
                .collect();
            truth.sort();
            prop_assert_eq!(merged.len(), limit.min(truth.len()));
            prop_assert_eq!(&merged[..], &truth[..merged.len()]);
        }
    }
}
