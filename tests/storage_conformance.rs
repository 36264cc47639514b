//! The storage conformance suite: what every engine behind the `Storage`
//! trait must do, written against the trait alone. Each engine gets the
//! whole suite through `conformance!`, unchanged.

use std::sync::Arc;

use bytes::Bytes;
use ripple::storage::embedded::Embedded;
use ripple::storage::{Applied, Batch, Cursor, Record, Storage, StorageError, Version};

/// Opens an engine on a location that survives reopening.
trait Harness: Send + Sync {
    fn open(&self) -> Arc<dyn Storage>;
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
    fn open(&self) -> Arc<dyn Storage> {
        Arc::new(Embedded::open(self.dir.path()).unwrap())
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
    let s = h.open();
    assert_eq!(s.get("nope").await.unwrap(), None);
    assert_eq!(s.last_seq().await.unwrap(), 0);
    assert_eq!(s.max_version_ts().await.unwrap(), 0);
}

async fn stored_record_reads_back_exactly(h: &dyn Harness) {
    let s = h.open();
    let r = rec("k", "v", 10);
    let a = apply(&s, vec![r.clone()]).await;
    assert_eq!(a, vec![Applied::Stored { seq: 1 }]);
    let e = s.get("k").await.unwrap().unwrap();
    assert_eq!(e.seq, 1);
    assert_eq!(e.record, r);
}

async fn binary_values_are_byte_exact(h: &dyn Harness) {
    let s = h.open();
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
    let s = h.open();
    let a = apply(&s, vec![rec("a", "1", 1), rec("b", "1", 2)]).await;
    assert_eq!(a.iter().map(stored).collect::<Vec<_>>(), vec![1, 2]);
    let a = apply(&s, vec![rec("a", "2", 3)]).await;
    assert_eq!(stored(&a[0]), 3);
    assert_eq!(s.last_seq().await.unwrap(), 3);
}

async fn stale_versions_are_not_applied(h: &dyn Harness) {
    let s = h.open();
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
    let s = h.open();
    let a = apply(
        &s,
        vec![rec("k", "v1", 1), rec("k", "v3", 3), rec("k", "v2", 2)],
    )
    .await;
    assert_eq!(a[2], Applied::Stale);
    assert_eq!(s.get("k").await.unwrap().unwrap().record.value, "v3");
}

async fn feed_holds_each_key_once_at_its_latest_seq(h: &dyn Harness) {
    let s = h.open();
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
    let s = h.open();
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
    let s = h.open();
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
    let s = h.open();
    assert_eq!(s.cursor("n2").await.unwrap(), 0);
    s.apply(Batch {
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
    let s = h.open();
    apply(&s, vec![rec("a", "1", 50), rec("b", "1", 7)]).await;
    assert_eq!(s.max_version_ts().await.unwrap(), 50);
}

async fn everything_survives_a_reopen(h: &dyn Harness) {
    let s = h.open();
    apply(&s, vec![rec("a", "1", 1), tomb("b", 2)]).await;
    s.apply(Batch {
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
    let s = h.open();
    assert_eq!(s.get("a").await.unwrap().unwrap().record.value, "1");
    assert!(s.get("b").await.unwrap().unwrap().record.tombstone);
    assert_eq!(s.last_seq().await.unwrap(), 3);
    assert_eq!(s.max_version_ts().await.unwrap(), 9);
    assert_eq!(s.cursor("n2").await.unwrap(), 7);
    assert_eq!(stored(&apply(&s, vec![rec("d", "4", 10)]).await[0]), 4);
}

async fn concurrent_writers_get_unique_contiguous_seqs(h: &dyn Harness) {
    let s = h.open();
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

async fn closed_engine_refuses_writes(h: &dyn Harness) {
    let s = h.open();
    s.close().await.unwrap();
    let err = s
        .apply(Batch {
            records: vec![rec("k", "v", 1)],
            cursor: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
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
                closed_engine_refuses_writes,
            );
        }
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let h = $harness;
                super::$case(&h).await;
            }
        )*
    };
}

conformance!(embedded, EmbeddedHarness::new());
