//! The storage conformance suite: what every engine behind the `Storage`
//! trait must do, written against the trait alone. Each engine gets the
//! whole suite through `conformance!`, unchanged.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::sql::{DbServer, Kind};
use ripple::storage::sql::{Dialect, SqlEngine};

use bytes::Bytes;
use ripple::storage::embedded::Embedded;
use ripple::storage::{Applied, Batch, Cursor, Record, Storage, StorageError, Version};

/// Opens an engine on a location that survives reopening.
trait Harness: Send + Sync {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Storage>> + Send + '_>>;
}

struct EmbeddedHarness {
    dir: tempfile::TempDir,
}

impl EmbeddedHarness {
    fn new() -> Self {
        EmbeddedHarness {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Harness for EmbeddedHarness {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Storage>> + Send + '_>> {
        Box::pin(async { Arc::new(Embedded::open(self.dir.path()).unwrap()) as Arc<dyn Storage> })
    }
}

/// One private server per engine for the whole suite; each case gets
/// tables of its own.
static MARIADB: OnceLock<Option<Mutex<DbServer>>> = OnceLock::new();
static POSTGRES: OnceLock<Option<Mutex<DbServer>>> = OnceLock::new();
static TABLES: AtomicUsize = AtomicUsize::new(0);

struct SqlHarness {
    dialect: Dialect,
    url: String,
    table: String,
}

impl SqlHarness {
    /// `None` (the case is skipped) when the server programs are missing.
    fn new(kind: Kind) -> Option<Self> {
        let cell = match kind {
            Kind::MariaDb => &MARIADB,
            Kind::Postgres => &POSTGRES,
        };
        let server = cell
            .get_or_init(|| {
                DbServer::start(kind).map(|s| {
                    s.create_database("conformance");
                    Mutex::new(s)
                })
            })
            .as_ref()?;
        let url = server.lock().unwrap().url("conformance");
        Some(SqlHarness {
            dialect: match kind {
                Kind::MariaDb => Dialect::MySql,
                Kind::Postgres => Dialect::Postgres,
            },
            url,
            table: format!(
                "t{}_{}",
                std::process::id(),
                TABLES.fetch_add(1, Ordering::SeqCst)
            ),
        })
    }
}

impl Harness for SqlHarness {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Storage>> + Send + '_>> {
        Box::pin(async {
            let engine = SqlEngine::open(
                self.dialect,
                &self.url,
                &self.table,
                4,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            Arc::new(engine) as Arc<dyn Storage>
        })
    }
}

fn rec(key: &str, value: &str, ts: u64) -> Record {
    Record {
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        content_type: "text/plain".into(),
        version: Version {
            ts,
            node: "n1".into(),
        },
        tombstone: false,
    }
}

fn tomb(key: &str, ts: u64) -> Record {
    Record {
        key: key.into(),
        value: Bytes::new(),
        content_type: String::new(),
        version: Version {
            ts,
            node: "n1".into(),
        },
        tombstone: true,
    }
}

async fn apply(s: &Arc<dyn Storage>, records: Vec<Record>) -> Vec<Applied> {
    s.apply(Batch {
        readable_before_durable: None,
        records,
        cursor: None,
    })
    .await
    .unwrap()
}

fn stored(a: &Applied) -> u64 {
    match a {
        Applied::Stored { seq } => *seq,
        Applied::Stale => panic!("expected Stored, got Stale"),
    }
}

async fn missing_key_is_none(h: &dyn Harness) {
    let s = h.open().await;
    assert_eq!(s.get("nope").await.unwrap(), None);
    assert_eq!(s.last_seq().await.unwrap(), 0);
    assert_eq!(s.max_version_ts().await.unwrap(), 0);
}

async fn stored_record_reads_back_exactly(h: &dyn Harness) {
    let s = h.open().await;
    let r = rec("k", "v", 10);
    let a = apply(&s, vec![r.clone()]).await;
    assert_eq!(a, vec![Applied::Stored { seq: 1 }]);
    let e = s.get("k").await.unwrap().unwrap();
    assert_eq!(e.seq, 1);
    assert_eq!(e.record, r);
}

async fn binary_values_are_byte_exact(h: &dyn Harness) {
    let s = h.open().await;
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let mut big = rec("big", "", 1);
    big.value = Bytes::from(all_bytes.clone());
    big.content_type = "application/octet-stream".into();
    let empty = rec("empty", "", 2);
    apply(&s, vec![big, empty]).await;
    assert_eq!(s.get("big").await.unwrap().unwrap().record.value, all_bytes);
    assert!(s
        .get("empty")
        .await
        .unwrap()
        .unwrap()
        .record
        .value
        .is_empty());
}

async fn seq_takes_the_next_number_for_every_stored_record(h: &dyn Harness) {
    let s = h.open().await;
    let a = apply(&s, vec![rec("a", "1", 1), rec("b", "1", 2)]).await;
    assert_eq!(a.iter().map(stored).collect::<Vec<_>>(), vec![1, 2]);
    let a = apply(&s, vec![rec("a", "2", 3)]).await;
    assert_eq!(stored(&a[0]), 3);
    assert_eq!(s.last_seq().await.unwrap(), 3);
}

async fn stale_versions_are_not_applied(h: &dyn Harness) {
    let s = h.open().await;
    apply(&s, vec![rec("k", "new", 20)]).await;
    let a = apply(&s, vec![rec("k", "old", 10), rec("k", "same", 20)]).await;
    assert_eq!(a, vec![Applied::Stale, Applied::Stale]);
    let e = s.get("k").await.unwrap().unwrap();
    assert_eq!(e.record.value, "new");
    assert_eq!(e.seq, 1, "a stale record takes no seq");
    assert_eq!(s.last_seq().await.unwrap(), 1);
    // The node id breaks ties between equal timestamps.
    let mut tie = rec("k", "tie", 20);
    tie.version.node = "n2".into();
    assert_eq!(stored(&apply(&s, vec![tie]).await[0]), 2);
    assert_eq!(s.get("k").await.unwrap().unwrap().record.value, "tie");
}

async fn one_batch_applies_in_order(h: &dyn Harness) {
    let s = h.open().await;
    let a = apply(
        &s,
        vec![rec("k", "v1", 1), rec("k", "v3", 3), rec("k", "v2", 2)],
    )
    .await;
    assert_eq!(a[2], Applied::Stale);
    assert_eq!(s.get("k").await.unwrap().unwrap().record.value, "v3");
}

async fn feed_holds_each_key_once_at_its_latest_seq(h: &dyn Harness) {
    let s = h.open().await;
    apply(
        &s,
        vec![rec("a", "1", 1), rec("b", "1", 2), rec("c", "1", 3)],
    )
    .await;
    apply(&s, vec![rec("a", "2", 4)]).await;
    let feed = s.changes_since(0, 100).await.unwrap();
    let seen: Vec<(u64, &str)> = feed
        .iter()
        .map(|e| (e.seq, e.record.key.as_str()))
        .collect();
    assert_eq!(seen, vec![(2, "b"), (3, "c"), (4, "a")]);
    assert_eq!(feed[2].record.value, "2");
    // Paging: after and limit.
    let page = s.changes_since(2, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, 3);
    assert!(s.changes_since(4, 10).await.unwrap().is_empty());
}

async fn tombstones_are_records_but_not_listed(h: &dyn Harness) {
    let s = h.open().await;
    apply(&s, vec![rec("a", "1", 1), rec("b", "1", 2)]).await;
    let a = apply(&s, vec![tomb("a", 3)]).await;
    assert_eq!(stored(&a[0]), 3);
    let e = s.get("a").await.unwrap().unwrap();
    assert!(e.record.tombstone);
    assert_eq!(s.list_keys("", None, 10).await.unwrap(), vec!["b"]);
    // The tombstone travels in the feed.
    let feed = s.changes_since(2, 10).await.unwrap();
    assert!(feed[0].record.tombstone);
    // An older write cannot resurrect a deleted key.
    assert_eq!(
        apply(&s, vec![rec("a", "late", 2)]).await,
        vec![Applied::Stale]
    );
    assert!(s.get("a").await.unwrap().unwrap().record.tombstone);
    // A newer one can.
    stored(&apply(&s, vec![rec("a", "back", 4)]).await[0]);
    assert_eq!(s.list_keys("", None, 10).await.unwrap(), vec!["a", "b"]);
}

async fn list_keys_by_prefix_in_byte_order_with_paging(h: &dyn Harness) {
    let s = h.open().await;
    let keys = ["b/2", "a", "b/1", "b", "c", "b/10", "é", "z", "b/3"];
    let records = keys
        .iter()
        .enumerate()
        .map(|(i, k)| rec(k, "v", i as u64 + 1))
        .collect();
    apply(&s, records).await;
    assert_eq!(
        s.list_keys("", None, 100).await.unwrap(),
        vec!["a", "b", "b/1", "b/10", "b/2", "b/3", "c", "z", "é"]
    );
    assert_eq!(
        s.list_keys("b/", None, 100).await.unwrap(),
        vec!["b/1", "b/10", "b/2", "b/3"]
    );
    assert_eq!(
        s.list_keys("b/", None, 2).await.unwrap(),
        vec!["b/1", "b/10"]
    );
    assert_eq!(
        s.list_keys("b/", Some("b/10"), 2).await.unwrap(),
        vec!["b/2", "b/3"]
    );
    assert!(s.list_keys("b/", Some("b/3"), 2).await.unwrap().is_empty());
    // A cursor before the prefix starts at the prefix.
    assert_eq!(s.list_keys("c", Some("a"), 10).await.unwrap(), vec!["c"]);
    assert!(s.list_keys("nothing", None, 10).await.unwrap().is_empty());
}

async fn cursor_moves_with_its_batch(h: &dyn Harness) {
    let s = h.open().await;
    assert_eq!(s.cursor("n2").await.unwrap(), 0);
    s.apply(Batch {
        readable_before_durable: None,
        records: vec![rec("k", "v", 5)],
        cursor: Some(Cursor {
            peer: "n2".into(),
            seq: 42,
        }),
    })
    .await
    .unwrap();
    assert_eq!(s.cursor("n2").await.unwrap(), 42);
    assert_eq!(s.cursor("n3").await.unwrap(), 0);
    // A batch whose records are all stale still moves the cursor.
    s.apply(Batch {
        readable_before_durable: None,
        records: vec![rec("k", "old", 1)],
        cursor: Some(Cursor {
            peer: "n2".into(),
            seq: 43,
        }),
    })
    .await
    .unwrap();
    assert_eq!(s.cursor("n2").await.unwrap(), 43);
}

async fn max_version_ts_tracks_the_highest_version(h: &dyn Harness) {
    let s = h.open().await;
    apply(&s, vec![rec("a", "1", 50), rec("b", "1", 7)]).await;
    assert_eq!(s.max_version_ts().await.unwrap(), 50);
}

async fn everything_survives_a_reopen(h: &dyn Harness) {
    let s = h.open().await;
    apply(&s, vec![rec("a", "1", 1), tomb("b", 2)]).await;
    s.apply(Batch {
        readable_before_durable: None,
        records: vec![rec("c", "3", 9)],
        cursor: Some(Cursor {
            peer: "n2".into(),
            seq: 7,
        }),
    })
    .await
    .unwrap();
    s.close().await.unwrap();
    drop(s);
    let s = h.open().await;
    assert_eq!(s.get("a").await.unwrap().unwrap().record.value, "1");
    assert!(s.get("b").await.unwrap().unwrap().record.tombstone);
    assert_eq!(s.last_seq().await.unwrap(), 3);
    assert_eq!(s.max_version_ts().await.unwrap(), 9);
    assert_eq!(s.cursor("n2").await.unwrap(), 7);
    assert_eq!(stored(&apply(&s, vec![rec("d", "4", 10)]).await[0]), 4);
}

async fn concurrent_writers_get_unique_contiguous_seqs(h: &dyn Harness) {
    let s = h.open().await;
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25u64 {
                let r = rec(&format!("t{t}-{i}"), "v", t * 100 + i + 1);
                seqs.push(stored(&apply(&s, vec![r]).await[0]));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    assert_eq!(s.list_keys("", None, 1000).await.unwrap().len(), 400);
}

/// A feed reader never sees a record past the engine's last seq: a peer's
/// cursor comes from the records it was sent, and a cursor past the last
/// seq reads as a store gone back in time (it starts a new feed).
async fn the_feed_never_runs_ahead_of_last_seq(h: &dyn Harness) {
    let s = h.open().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..4u64 {
        let (s, stop) = (s.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 2_000 {
                i += 1;
                apply(&s, vec![rec(&format!("k{t}-{}", i % 50), "v", i)]).await;
            }
        }));
    }
    let mut after = 0;
    let mut reads = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline && writers.iter().any(|w| !w.is_finished()) {
        let seen = s.changes_since(after, 1_000).await.unwrap();
        let last = s.last_seq().await.unwrap();
        if let Some(top) = seen.last() {
            assert!(
                top.seq <= last,
                "the feed showed seq {} with last seq {last}",
                top.seq
            );
            after = top.seq;
        }
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(reads > 0);
}

async fn closed_engine_refuses_writes(h: &dyn Harness) {
    let s = h.open().await;
    s.close().await.unwrap();
    let err = s
        .apply(Batch {
            readable_before_durable: None,
            records: vec![rec("k", "v", 1)],
            cursor: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
}

/// Invariant 2: applying any permutation of a set of records, with
/// duplicates and in any split into batches, leaves each key at its newest
/// version, and the feed holding each key once.
async fn apply_is_idempotent_and_order_insensitive(h: &dyn Harness) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let s = h.open().await;
    let handle = tokio::runtime::Handle::current();
    let strategy = proptest::collection::vec((0..6usize, 1..20u64, 0..3usize), 1..30)
        .prop_flat_map(|records| {
            let n = records.len();
            (
                Just(records.clone()),
                Just(records).prop_shuffle(),
                proptest::collection::vec(0..n, 0..10),
                proptest::collection::vec(1..5usize, 1..10),
            )
        });
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&strategy, |(records, shuffled, dups, splits)| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ns = format!("case{n}/");
        // A version is one write: the same version always carries the same
        // record, so whether it is a tombstone follows from the version.
        let make = |(k, ts, node): (usize, u64, usize)| {
            let key = format!("{ns}{k}");
            let tombstone = (ts + node as u64).is_multiple_of(3);
            let mut r = if tombstone {
                tomb(&key, ts)
            } else {
                rec(&key, &format!("{ts}-{node}"), ts)
            };
            r.version.node = format!("n{node}");
            r
        };
        // The model: each key ends at its greatest version.
        let mut newest: std::collections::BTreeMap<String, Record> = Default::default();
        for r in records.iter().copied().map(make) {
            let e = newest.entry(r.key.clone()).or_insert_with(|| r.clone());
            if r.version > e.version {
                *e = r;
            }
        }
        // The input: a permutation plus duplicates, in batches of varied size.
        let mut input: Vec<Record> = shuffled.iter().copied().map(make).collect();
        for d in dups {
            input.push(make(records[d]));
        }
        let (stored, feed_keys) = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let mut stored = 0;
                let mut rest = input.as_slice();
                let mut sizes = splits.iter().cycle();
                while !rest.is_empty() {
                    let n = (*sizes.next().unwrap()).min(rest.len());
                    let (batch, tail) = rest.split_at(n);
                    rest = tail;
                    let applied = apply(&s, batch.to_vec()).await;
                    stored += applied
                        .iter()
                        .filter(|a| matches!(a, Applied::Stored { .. }))
                        .count();
                }
                let feed: Vec<String> = s
                    .changes_since(0, 1_000_000)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.record.key)
                    .filter(|k| k.starts_with(&ns))
                    .collect();
                for (key, want) in &newest {
                    let got = s.get(key).await.unwrap().unwrap().record;
                    assert_eq!(&got, want, "{key}");
                }
                (stored, feed)
            })
        });
        let mut unique = feed_keys.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), feed_keys.len(), "a key twice in the feed");
        prop_assert_eq!(unique.len(), newest.len());
        prop_assert!(stored >= newest.len() && stored <= records.len());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Tombstones go only when old enough and covered by `max_seq`.
async fn purge_takes_only_old_covered_tombstones(h: &dyn Harness) {
    let s = h.open().await;
    apply(
        &s,
        vec![rec("a", "1", 1), tomb("b", 2), tomb("c", 100), tomb("d", 3)],
    )
    .await;
    assert_eq!(s.tombstone_count().await.unwrap(), 3);
    // b (seq 2) and d (seq 4) are old; only b is at or below max_seq 3.
    assert_eq!(s.purge_tombstones(3, 50, 100).await.unwrap(), 1);
    assert_eq!(s.get("b").await.unwrap(), None);
    assert!(s.get("d").await.unwrap().unwrap().record.tombstone);
    // c is too young whatever max_seq says.
    assert_eq!(s.purge_tombstones(100, 50, 100).await.unwrap(), 1);
    assert!(s.get("c").await.unwrap().unwrap().record.tombstone);
    assert_eq!(s.tombstone_count().await.unwrap(), 1);
    // A tombstone replaced by a value is no longer one.
    apply(&s, vec![rec("c", "back", 101)]).await;
    assert_eq!(s.tombstone_count().await.unwrap(), 0);
    assert_eq!(
        s.purge_tombstones(u64::MAX, u64::MAX, 100).await.unwrap(),
        0
    );
    assert_eq!(s.get("c").await.unwrap().unwrap().record.value, "back");
    // Purged keys leave the feed too.
    let keys: Vec<String> = s
        .changes_since(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record.key)
        .collect();
    assert_eq!(keys, vec!["a", "c"]);
}

async fn feed_id_is_stable_and_nonzero(h: &dyn Harness) {
    let s = h.open().await;
    let id = s.feed_id().await.unwrap();
    assert_ne!(id, 0);
    assert_eq!(s.feed_id().await.unwrap(), id);
    s.close().await.unwrap();
    drop(s);
    assert_eq!(
        h.open().await.feed_id().await.unwrap(),
        id,
        "a reopened store keeps its feed id"
    );
}

async fn a_new_feed_id_is_kept(h: &dyn Harness) {
    let s = h.open().await;
    let old = s.feed_id().await.unwrap();
    let new = s.new_feed_id().await.unwrap();
    assert_ne!(new, old);
    assert_ne!(new, 0);
    assert_eq!(s.feed_id().await.unwrap(), new);
    s.close().await.unwrap();
    drop(s);
    assert_eq!(h.open().await.feed_id().await.unwrap(), new);
}

/// Runs the whole suite on one engine; each case gets a fresh store.
macro_rules! conformance {
    ($engine:ident, $harness:expr) => {
        mod $engine {
            use super::*;
            conformance!(@cases $harness;
                missing_key_is_none,
                stored_record_reads_back_exactly,
                binary_values_are_byte_exact,
                seq_takes_the_next_number_for_every_stored_record,
                stale_versions_are_not_applied,
                one_batch_applies_in_order,
                feed_holds_each_key_once_at_its_latest_seq,
                tombstones_are_records_but_not_listed,
                list_keys_by_prefix_in_byte_order_with_paging,
                cursor_moves_with_its_batch,
                max_version_ts_tracks_the_highest_version,
                everything_survives_a_reopen,
                concurrent_writers_get_unique_contiguous_seqs,
                the_feed_never_runs_ahead_of_last_seq,
                closed_engine_refuses_writes,
                apply_is_idempotent_and_order_insensitive,
                purge_takes_only_old_covered_tombstones,
                feed_id_is_stable_and_nonzero,
                a_new_feed_id_is_kept,
            );
        }
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                // A harness of `None` means the engine is not installed here.
                let Some(h) = $harness else { return };
                super::$case(&h).await;
            }
        )*
    };
}

conformance!(embedded, Some(EmbeddedHarness::new()));
conformance!(mariadb, SqlHarness::new(Kind::MariaDb));
conformance!(postgres, SqlHarness::new(Kind::Postgres));
