//! Invariant 1: an acknowledged write is durable on the master. Concurrent
//! writers stream writes into a node, which is killed with SIGKILL
//! mid-stream; after a restart every acknowledged write is there with its
//! value. Three rounds on one data dir, so recovery itself is also crashed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{rt, Client, Node};
use hyper::StatusCode;

const WRITERS: usize = 8;
/// Acknowledged writes per round before the kill.
const ACKS_BEFORE_KILL: usize = 400;

#[derive(Default)]
struct Acked {
    /// Fresh keys: key -> value.
    fresh: HashMap<String, String>,
    /// Each writer's overwritten key: (last acknowledged, the one in flight).
    last: HashMap<String, (u64, u64)>,
    /// Keys whose delete was acknowledged.
    deleted: Vec<String>,
    /// Fresh keys whose delete was in flight at the kill: either state is
    /// right, the value or nothing.
    maybe_deleted: HashMap<String, String>,
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let acked = Arc::new(Mutex::new(Acked::default()));
    let runtime = rt();

    for round in 0..3 {
        let count = Arc::new(AtomicUsize::new(0));
        let client = node.client();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let client = client.clone();
                let acked = acked.clone();
                let count = count.clone();
                runtime.spawn(write_until_failure(client, round, w, acked, count))
            })
            .collect();
        // Kill once enough writes are acknowledged, with writers mid-stream.
        let start = std::time::Instant::now();
        while count.load(Ordering::SeqCst) < ACKS_BEFORE_KILL {
            assert!(start.elapsed() < Duration::from_secs(60), "writers stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
        node.kill9();
        runtime.block_on(async {
            for w in writers {
                w.await.unwrap();
            }
        });
        node.restart();
        verify(&runtime, &node.client(), &acked.lock().unwrap());
    }
}

async fn write_until_failure(
    client: Client,
    round: usize,
    w: usize,
    acked: Arc<Mutex<Acked>>,
    count: Arc<AtomicUsize>,
) {
    let own = format!("last/{w}");
    let mut counter: u64 = {
        let a = acked.lock().unwrap();
        a.last.get(&own).map(|(acked, _)| *acked).unwrap_or(0)
    };
    for i in 0.. {
        // A fresh key, an overwrite of this writer's own key, and every
        // tenth time a delete of a fresh key written earlier.
        let key = format!("fresh/{round}/{w}/{i}");
        let value = format!("{key} {}", "x".repeat(i % 200));
        match client.put(&key, Bytes::from(value.clone()), None).await {
            Ok(r) if r.status == StatusCode::CREATED => {
                acked.lock().unwrap().fresh.insert(key, value);
            }
            _ => return,
        }
        counter += 1;
        acked.lock().unwrap().last.entry(own.clone()).or_default().1 = counter;
        match client
            .put(&own, Bytes::from(counter.to_string()), None)
            .await
        {
            Ok(r) if r.status.is_success() => {
                acked
                    .lock()
                    .unwrap()
                    .last
                    .insert(own.clone(), (counter, counter));
            }
            _ => return,
        }
        if i % 10 == 9 {
            let victim = format!("fresh/{round}/{w}/{}", i - 5);
            // In doubt from the moment the delete is sent.
            {
                let mut a = acked.lock().unwrap();
                if let Some(v) = a.fresh.remove(&victim) {
                    a.maybe_deleted.insert(victim.clone(), v);
                }
            }
            match client.delete(&victim).await {
                Ok(r) if r.status == StatusCode::NO_CONTENT => {
                    let mut a = acked.lock().unwrap();
                    a.maybe_deleted.remove(&victim);
                    a.deleted.push(victim);
                }
                _ => return,
            }
        }
        count.fetch_add(1, Ordering::SeqCst);
    }
}

/// A node in `dir` whose applier waits ten minutes between folds, so that
/// what a test writes stays in the write-ahead log only; and its data dir.
fn start_without_folds(dir: &std::path::Path) -> (Node, std::path::PathBuf) {
    let config = dir.join("ripple.toml");
    std::fs::write(&config, "[storage]\napply_interval_ms = 600000\n").unwrap();
    let data = dir.join("data");
    let node = Node::start_with(&data, &["--config", config.to_str().unwrap()]);
    (node, data)
}

fn verify(runtime: &tokio::runtime::Runtime, client: &Client, acked: &Acked) {
    runtime.block_on(async {
        assert!(!acked.fresh.is_empty());
        for (key, value) in &acked.fresh {
            let r = client.get(key).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "acknowledged write of {key} lost");
            assert_eq!(r.body, value.as_bytes(), "wrong value for {key}");
        }
        for (key, (acked_n, in_flight)) in &acked.last {
            let r = client.get(key).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{key} lost");
            let n: u64 = std::str::from_utf8(&r.body).unwrap().parse().unwrap();
            assert!(
                n == *acked_n || n == *in_flight,
                "{key} holds {n}; last acknowledged {acked_n}, in flight {in_flight}"
            );
        }
        for (key, value) in &acked.maybe_deleted {
            let r = client.get(key).await.unwrap();
            assert!(
                r.status == StatusCode::NOT_FOUND || r.body == value.as_bytes(),
                "{key}: neither deleted nor its value ({})",
                r.status
            );
        }
        for key in &acked.deleted {
            let r = client.get(key).await.unwrap();
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "acknowledged delete of {key} undone"
            );
        }
    });
}

/// Writes acknowledged since the applier last wrote redb live only in the
/// write-ahead log and the memtable: a kill -9 loses the latter, and the
/// log brings them back, seqs included, so the change feed is the same as
/// before the kill. (The applier is set to wait ten minutes here, so all
/// of them are only in the log.)
#[test]
fn the_write_ahead_log_brings_back_what_redb_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, data) = start_without_folds(dir.path());
    let runtime = rt();
    // The whole feed, as a peer would read it: the feed id first.
    let feed = |node: &Node| {
        runtime.block_on(async {
            let c = node.client();
            let get = |path: String| {
                let c = c.clone();
                async move {
                    let r = c
                        .request(hyper::Method::GET, &path, &[], Bytes::new())
                        .await
                        .unwrap();
                    assert_eq!(r.status, StatusCode::OK);
                    r
                }
            };
            let id = get("/internal/v1/feed?limit=0".into()).await;
            let id = id.header("x-ripple-feed-id").unwrap().to_owned();
            let r = get(format!("/internal/v1/feed?after=0&limit=1000&feed={id}")).await;
            ripple::replication::codec::decode(r.body).unwrap()
        })
    };
    runtime.block_on(async {
        let c = node.client();
        for i in 0..200 {
            let r = c
                .put(&format!("w{i}"), Bytes::from(format!("v{i}")), None)
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::CREATED);
        }
        // Overwrites and deletes move keys in the feed.
        for i in 0..20 {
            c.put(&format!("w{i}"), Bytes::from("again"), None)
                .await
                .unwrap();
            c.delete(&format!("w{}", 100 + i)).await.unwrap();
        }
    });
    let before = feed(&node);
    assert_eq!(before.len(), 200);
    node.kill9();
    let (frames, valid) = ripple::storage::wal::segments(&data)
        .unwrap()
        .iter()
        .map(|(n, path)| ripple::storage::wal::decode_segment(&std::fs::read(path).unwrap(), *n))
        .fold((0, 0), |(f, v), (frames, valid)| {
            (f + frames.len(), v + valid)
        });
    assert!(
        frames >= 240 && valid > 0,
        "every write should still be in the log only: {frames} frames"
    );
    node.restart();
    assert_eq!(feed(&node), before, "the feed after the replay");
    runtime.block_on(async {
        let c = node.client();
        for i in 0..200 {
            let r = c.get(&format!("w{i}")).await.unwrap();
            match i {
                0..20 => assert_eq!(&r.body[..], b"again"),
                100..120 => assert_eq!(r.status, StatusCode::NOT_FOUND),
                _ => assert_eq!(r.body, Bytes::from(format!("v{i}"))),
            }
        }
    });
}

/// A fresh node taking large writes grows its log's first segment; a
/// spare is made ahead off the writer's thread, and the log moves to it.
/// Writes acknowledged on both sides of the move survive a SIGKILL.
#[test]
fn writes_across_a_spare_made_ahead_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // No fold during the test: every write is in the log only.
    let (mut node, data) = start_without_folds(dir.path());
    let runtime = rt();
    let value = |i: usize| Bytes::from(format!("{i:06}").repeat(8 << 10));
    let second = data.join("ripple.wal.00000002");
    let written = runtime.block_on(async {
        let c = node.client();
        let mut i = 0;
        // 48 KiB values: past 4 MiB of growth the spare is made; the log
        // moves to it once it is ready.
        let start = std::time::Instant::now();
        while !second.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the log never moved to a spare"
            );
            let r = c.put(&format!("big{i}"), value(i), None).await.unwrap();
            assert_eq!(r.status, StatusCode::CREATED);
            i += 1;
        }
        for _ in 0..20 {
            let r = c.put(&format!("big{i}"), value(i), None).await.unwrap();
            assert_eq!(r.status, StatusCode::CREATED);
            i += 1;
        }
        i
    });
    // The segment written now is the spare, made at its full size.
    let first = std::fs::metadata(data.join("ripple.wal.00000001"))
        .unwrap()
        .len();
    let size = std::fs::metadata(&second).unwrap().len();
    assert!(
        size >= 64 << 20,
        "segment 2 is {size} bytes: not a spare made ahead"
    );
    assert!(
        first < 32 << 20,
        "segment 1 grew to {first} bytes before the move"
    );
    node.kill9();
    node.restart();
    runtime.block_on(async {
        let c = node.client();
        for i in 0..written {
            let r = c.get(&format!("big{i}")).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "big{i}");
            assert!(r.body == value(i), "big{i} came back changed");
        }
    });
}
