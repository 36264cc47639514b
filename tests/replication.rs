//! Replication through real nodes on loopback: writes through any node
//! converge everywhere; a killed node catches up; a wiped node refills; a
//! partition heals; concurrent writes to one key settle on one value;
//! deletes never come back; replicas=all and consistency=master are
//! immediate; an unreachable master refuses writes with a 503 naming it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::cluster::{node_id, Cluster};
use common::sql::{DbServer, Kind};
use common::{error_code, rt};
use hyper::{Method, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

const CONVERGE: Duration = Duration::from_secs(30);

/// Where the nodes keep their data: every test runs twice, on embedded
/// nodes and on a mixed cluster (embedded, MariaDB, PostgreSQL).
#[derive(Clone, Copy, Debug)]
enum Setup {
    Embedded,
    Mixed,
}

static MARIADB: OnceLock<Option<DbServer>> = OnceLock::new();
static POSTGRES: OnceLock<Option<DbServer>> = OnceLock::new();
static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

fn server(kind: Kind) -> Option<&'static DbServer> {
    let cell = match kind {
        Kind::MariaDb => &MARIADB,
        Kind::Postgres => &POSTGRES,
    };
    cell.get_or_init(|| DbServer::start(kind).inspect(|s| s.create_database("replication")))
        .as_ref()
}

/// Starts a cluster for `setup`; `None` (the test is skipped) when a mixed
/// cluster's database servers are not installed.
fn start(n: usize, extra: &str, setup: Setup) -> Option<Cluster> {
    match setup {
        Setup::Embedded => Some(Cluster::start(n, extra)),
        Setup::Mixed => {
            let urls = [
                server(Kind::MariaDb)?.url("replication"),
                server(Kind::Postgres)?.url("replication"),
            ];
            let id = CLUSTERS.fetch_add(1, Ordering::SeqCst);
            let pid = std::process::id();
            Some(Cluster::start_with_storage(
                n,
                extra,
                Box::new(move |i, generation| {
                    // Node 1 embedded, node 2 MariaDB, node 3 PostgreSQL, ...
                    let engine = match i % 3 {
                        0 => return String::new(),
                        1 => "mysql",
                        _ => "postgres",
                    };
                    let url = &urls[(i % 3) - 1];
                    format!("[storage]\nengine = \"{engine}\"\nurl = \"{url}\"\ntable = \"r{pid}_{id}_{i}_{generation}\"\n")
                }),
            ))
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn writes_through_every_node_converge_on_every_node(setup: Setup) {
    let Some(cluster) = start(3, "", setup) else {
        return;
    };
    rt().block_on(async {
        let mut expected = BTreeMap::new();
        for i in 0..90 {
            let key = format!("k{i}");
            let value = format!("value {i}");
            let via = i % 3;
            let r = cluster
                .client(via)
                .put(&key, b(&value), None)
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
            // The version names the key's master, whichever node took it.
            let etag = r.header("etag").unwrap();
            assert!(
                etag.ends_with(&format!("-{}\"", node_id(cluster.master_of(&key)))),
                "{key}: {etag}"
            );
            expected.insert(key, value.into_bytes());
        }
        // Overwrites and deletes through other nodes than the first write.
        for i in 0..30 {
            let key = format!("k{i}");
            let via = (i + 1) % 3;
            if i % 2 == 0 {
                let r = cluster
                    .client(via)
                    .put(&key, b("again"), None)
                    .await
                    .unwrap();
                assert_eq!(r.status, StatusCode::OK);
                expected.insert(key, b"again".to_vec());
            } else {
                let r = cluster.client(via).delete(&key).await.unwrap();
                assert_eq!(r.status, StatusCode::NO_CONTENT);
                expected.remove(&key);
            }
        }
        cluster.converge_to(&expected, CONVERGE).await;
    });
}

fn a_killed_node_misses_writes_and_catches_up(setup: Setup) {
    let Some(mut cluster) = start(3, "", setup) else {
        return;
    };
    let runtime = rt();
    let mut expected = BTreeMap::new();
    runtime.block_on(async {
        for i in 0..20 {
            let key = format!("before{i}");
            cluster.client(0).put(&key, b("v"), None).await.unwrap();
            expected.insert(key, b"v".to_vec());
        }
        cluster.converge_to(&expected, CONVERGE).await;
    });
    cluster.kill9(2);
    runtime.block_on(async {
        let mut refused = Vec::new();
        for i in 0..300 {
            let key = format!("during{i}");
            let r = cluster
                .client(i % 2)
                .put(&key, b(&format!("d{i}")), None)
                .await
                .unwrap();
            if cluster.master_of(&key) == 2 {
                // Its master is down: refused, naming the master.
                assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(error_code(&r), "master_unavailable");
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(body["master"], "n3");
                refused.push(key);
            } else {
                assert!(r.status.is_success(), "{key}: {}", r.error_message());
                expected.insert(key, format!("d{i}").into_bytes());
            }
        }
        assert!(!refused.is_empty());
        // Deletes while it is down, of keys it holds.
        for i in 0..5 {
            let key = format!("before{i}");
            if cluster.master_of(&key) != 2 {
                assert_eq!(
                    cluster.client(0).delete(&key).await.unwrap().status,
                    StatusCode::NO_CONTENT
                );
                expected.remove(&key);
            }
        }
    });
    cluster.restart(2);
    runtime.block_on(async {
        cluster.converge_to(&expected, CONVERGE).await;
    });
}

fn a_wiped_node_refills_from_its_peers(setup: Setup) {
    let Some(mut cluster) = start(3, "", setup) else {
        return;
    };
    let runtime = rt();
    let mut expected = BTreeMap::new();
    runtime.block_on(async {
        for i in 0..200 {
            let key = format!("k{i}");
            let value = format!("{i}").repeat(i % 50 + 1);
            cluster
                .client(i % 3)
                .put(&key, b(&value), None)
                .await
                .unwrap();
            expected.insert(key, value.into_bytes());
        }
        cluster.client(1).delete("k7").await.unwrap();
        expected.remove("k7");
        cluster.converge_to(&expected, CONVERGE).await;
    });
    cluster.wipe(1);
    runtime.block_on(async {
        cluster.converge_to(&expected, CONVERGE).await;
        // The refilled node serves writes again, and its peers follow its
        // new feed from the start.
        let key = cluster.key_mastered_by(1, "after-wipe");
        let r = cluster.client(0).put(&key, b("fresh"), None).await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        expected.insert(key, b"fresh".to_vec());
        cluster.converge_to(&expected, CONVERGE).await;
    });
}

fn a_partition_heals_and_converges(setup: Setup) {
    let Some(cluster) = start(3, "", setup) else {
        return;
    };
    rt().block_on(async {
        let mut expected = BTreeMap::new();
        for i in 0..30 {
            let key = format!("pre{i}");
            cluster.client(0).put(&key, b("pre"), None).await.unwrap();
            expected.insert(key, b"pre".to_vec());
        }
        cluster.converge_to(&expected, CONVERGE).await;

        cluster.partition(&[0]);
        let mut refused = 0;
        for i in 0..60 {
            // Each side writes what it masters; the rest is refused.
            for side in [0usize, 1] {
                let key = format!("split{side}-{i}");
                let master = cluster.master_of(&key);
                let reachable = if side == 0 { master == 0 } else { master != 0 };
                let r = cluster.client(side).put(&key, b(&key), None).await.unwrap();
                if reachable {
                    assert!(r.status.is_success(), "{key}: {}", r.error_message());
                    expected.insert(key.clone(), key.into_bytes());
                } else {
                    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{key}");
                    refused += 1;
                }
            }
        }
        assert!(refused > 0);
        // Default reads keep working on both sides while split.
        let r = cluster.client(0).get("pre1").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        // The minority has not seen the majority's writes.
        let majority_key = expected
            .keys()
            .find(|k| k.starts_with("split1-"))
            .unwrap()
            .clone();
        assert_eq!(
            cluster.client(0).get(&majority_key).await.unwrap().status,
            StatusCode::NOT_FOUND
        );

        cluster.heal();
        cluster.converge_to(&expected, CONVERGE).await;
    });
}

fn concurrent_writes_to_one_key_end_with_one_value_everywhere(setup: Setup) {
    let Some(cluster) = start(3, "", setup) else {
        return;
    };
    rt().block_on(async {
        let mut tasks = Vec::new();
        for w in 0..6 {
            let c = cluster.client(w % 3);
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..30 {
                    let v = format!("w{w}-{i}");
                    let r = c
                        .put("contended", Bytes::from(v.clone()), None)
                        .await
                        .unwrap();
                    assert!(r.status.is_success());
                    acked.push((r.header("etag").unwrap().to_owned(), v));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        let state = cluster.converge(CONVERGE).await;
        let value = String::from_utf8(state["contended"].clone()).unwrap();
        // The value everywhere is the write with the greatest version.
        let versions: Vec<(u64, String)> = acked
            .iter()
            .map(|(etag, v)| {
                let ts = etag.trim_matches('"').split('-').next().unwrap();
                (u64::from_str_radix(ts, 16).unwrap(), v.clone())
            })
            .collect();
        let winner = versions.iter().max().unwrap();
        assert_eq!(value, winner.1);
        let mut all: Vec<u64> = versions.iter().map(|(ts, _)| *ts).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(
            all.len(),
            versions.len(),
            "every acknowledged write has its own version"
        );
    });
}

fn deletes_never_come_back(setup: Setup) {
    // Tombstones are collected quickly here, to check that collection
    // waits for every peer.
    let Some(mut cluster) = start(
        3,
        "[replication]\ntombstone_grace_secs = 0\ngc_interval_secs = 1\nlong_poll_ms = 1000\n",
        setup,
    ) else {
        return;
    };
    let runtime = rt();
    let key = cluster.key_mastered_by(0, "doomed");
    let keep = cluster.key_mastered_by(0, "kept");
    runtime.block_on(async {
        cluster.client(1).put(&key, b("old"), None).await.unwrap();
        cluster.client(1).put(&keep, b("kept"), None).await.unwrap();
        cluster.converge(CONVERGE).await;
    });
    // Node 3 is down (holding the old value) while the key is deleted.
    cluster.kill9(2);
    runtime.block_on(async {
        let r = cluster.client(1).delete(&key).await.unwrap();
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        // With a peer down, its tombstone is kept however short the grace.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let status = status(&cluster, 0).await;
        assert!(status["tombstones"].as_u64().unwrap() >= 1, "{status}");
    });
    cluster.restart(2);
    runtime.block_on(async {
        let mut expected = BTreeMap::new();
        expected.insert(keep.clone(), b"kept".to_vec());
        cluster.converge_to(&expected, CONVERGE).await;
        // Once every peer has it, the tombstones go, and the key stays gone.
        let start = std::time::Instant::now();
        loop {
            let mut held = 0;
            for i in 0..3 {
                held += status(&cluster, i).await["tombstones"].as_u64().unwrap();
            }
            if held == 0 {
                break;
            }
            assert!(start.elapsed() < CONVERGE, "tombstones never collected");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.converge_to(&expected, CONVERGE).await;
    });
    // The node that held the old value, restarted from its files after the
    // tombstones went, does not bring the key back.
    cluster.restart(2);
    runtime.block_on(async {
        let mut expected = BTreeMap::new();
        expected.insert(keep.clone(), b"kept".to_vec());
        cluster.converge_to(&expected, CONVERGE).await;
    });
}

async fn status(cluster: &Cluster, i: usize) -> serde_json::Value {
    let r = cluster
        .client(i)
        .request(Method::GET, "/v1/status", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    serde_json::from_slice(&r.body).unwrap()
}

/// Invariant 3: a replica killed while it applies a stream of changes
/// resumes from a cursor that never passed anything it had not stored.
fn a_replica_killed_while_applying_misses_nothing(setup: Setup) {
    let Some(mut cluster) = start(3, "[replication]\nbatch_max_records = 50\n", setup) else {
        return;
    };
    let runtime = rt();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let c = cluster.client(w % 2);
            runtime.spawn(async move {
                let mut acked = BTreeMap::new();
                for i in 0..400 {
                    let key = format!("stream{w}-{i}");
                    match c.put(&key, Bytes::from(key.clone()), None).await {
                        Ok(r) if r.status.is_success() => {
                            acked.insert(key.clone(), key.into_bytes());
                        }
                        _ => {}
                    }
                }
                acked
            })
        })
        .collect();
    // Kill n3 twice while the stream is flowing into it.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(400));
        cluster.kill9(2);
        cluster.restart(2);
    }
    runtime.block_on(async {
        let mut acked = BTreeMap::new();
        for w in writers {
            acked.extend(w.await.unwrap());
        }
        assert!(acked.len() > 1000, "the stream ran: {}", acked.len());
        // Every node ends identical, holding every acknowledged write (and
        // perhaps a write whose answer the kill cut off).
        let state = cluster.converge(CONVERGE).await;
        for (key, value) in &acked {
            assert_eq!(state.get(key), Some(value), "{key} missing");
        }
        assert!(state.keys().all(|k| k.starts_with("stream")));
    });
}

fn replicas_all_and_consistency_master_are_immediate(setup: Setup) {
    let Some(mut cluster) = start(3, "[replication]\nreplica_timeout_ms = 1500\n", setup) else {
        return;
    };
    let runtime = rt();
    runtime.block_on(async {
        for i in 0..20 {
            let key = format!("now{i}");
            let via = i % 3;
            let path = format!("{}?replicas=all", ripple::client::kv_path(&key));
            let r = cluster
                .client(via)
                .request(Method::PUT, &path, &[], b(&key))
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
            assert_eq!(r.header("x-ripple-replicas"), Some("2"));
            // Every node has it, the moment the write is acknowledged.
            for n in 0..3 {
                let r = cluster.client(n).get(&key).await.unwrap();
                assert_eq!(r.status, StatusCode::OK, "{key} not on n{}", n + 1);
                assert_eq!(r.body, key.as_bytes());
            }
        }
        // A lazy write read at the master from another node is immediate.
        for i in 0..20 {
            let key = format!("master{i}");
            cluster.client(i % 3).put(&key, b("m"), None).await.unwrap();
            let reader = (i + 1) % 3;
            let path = format!("{}?consistency=master", ripple::client::kv_path(&key));
            let r = cluster
                .client(reader)
                .request(Method::GET, &path, &[], Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK, "{key}");
            assert_eq!(r.body, "m");
        }
        // replicas=1 and bad values.
        let path = format!("{}?replicas=1", ripple::client::kv_path("one"));
        let r = cluster
            .client(0)
            .request(Method::PUT, &path, &[], b("1"))
            .await
            .unwrap();
        assert!(r.status.is_success());
        assert!(
            r.header("x-ripple-replicas")
                .unwrap()
                .parse::<u32>()
                .unwrap()
                >= 1
        );
        for bad in ["replicas=3", "replicas=some", "replicas=all&timeout_ms=0"] {
            let path = format!("{}?{bad}", ripple::client::kv_path("bad"));
            let r = cluster
                .client(0)
                .request(Method::PUT, &path, &[], b("x"))
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(error_code(&r), "bad_query");
        }
    });
    // With a replica down, replicas=all times out with 504 and a count,
    // and the write stays durable at the master.
    cluster.kill9(2);
    runtime.block_on(async {
        let key = cluster.key_mastered_by(0, "partial");
        let path = format!("{}?replicas=all", ripple::client::kv_path(&key));
        let r = cluster
            .client(1)
            .request(Method::PUT, &path, &[], b("p"))
            .await
            .unwrap();
        assert_eq!(
            r.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            r.error_message()
        );
        assert_eq!(error_code(&r), "replication_timeout");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["replicas"], 1);
        assert_eq!(body["wanted"], 2);
        let path = format!("{}?consistency=master", ripple::client::kv_path(&key));
        let r = cluster
            .client(1)
            .request(Method::GET, &path, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.body, "p");
    });
    cluster.restart(2);
    runtime.block_on(async {
        let key = cluster.key_mastered_by(0, "partial");
        let r = cluster.client(2).get(&key).await.unwrap();
        let start = std::time::Instant::now();
        let mut r = r;
        while r.status != StatusCode::OK && start.elapsed() < CONVERGE {
            tokio::time::sleep(Duration::from_millis(100)).await;
            r = cluster.client(2).get(&key).await.unwrap();
        }
        assert_eq!(r.body, "p", "the timed-out write propagated lazily");
    });
}

fn an_unreachable_master_stores_nothing(setup: Setup) {
    let Some(mut cluster) = start(3, "", setup) else {
        return;
    };
    let runtime = rt();
    let key = cluster.key_mastered_by(2, "orphan");
    cluster.kill9(2);
    runtime.block_on(async {
        let r = cluster.client(0).put(&key, b("lost"), None).await.unwrap();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.error_message().contains("n3"), "{}", r.error_message());
        let path = format!("{}?consistency=master", ripple::client::kv_path(&key));
        let r = cluster
            .client(0)
            .request(Method::GET, &path, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        // Default reads still answer.
        assert_eq!(
            cluster.client(0).get(&key).await.unwrap().status,
            StatusCode::NOT_FOUND
        );
    });
    cluster.restart(2);
    runtime.block_on(async {
        cluster.converge_to(&BTreeMap::new(), CONVERGE).await;
    });
}

fn canonical_seed_routes_have_the_seeds_meaning(setup: Setup) {
    let Some(cluster) = start(3, "", setup) else {
        return;
    };
    rt().block_on(async {
        let json = [(
            hyper::header::ACCEPT,
            hyper::header::HeaderValue::from_static("application/json"),
        )];
        for i in 0..10 {
            let key = format!("canon{i}");
            let r = cluster
                .client(i % 3)
                .request(
                    Method::POST,
                    &format!("/canonicalbucket/{key}"),
                    &json,
                    b("c"),
                )
                .await
                .unwrap();
            assert_eq!(
                r.status,
                StatusCode::CREATED,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            // Location names the node the client spoke to.
            let loc = r.header("location").unwrap();
            assert_eq!(loc, format!("{}/bucket/{key}", cluster.url(i % 3)));
            // A canonical write is on every node when acknowledged.
            for n in 0..3 {
                let r = cluster
                    .client(n)
                    .request(Method::GET, &format!("/bucket/{key}"), &json, Bytes::new())
                    .await
                    .unwrap();
                assert_eq!(r.status, StatusCode::OK);
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(v["message"], "c");
            }
        }
        // A lazy write is readable canonically (at the master) at once.
        cluster
            .client(0)
            .request(Method::POST, "/bucket/lazy", &json, b("l"))
            .await
            .unwrap();
        let r = cluster
            .client(2)
            .request(Method::GET, "/canonicalbucket/lazy", &json, Bytes::new())
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["message"], "l");
        // The canonical listing is the union of every node's keys.
        let r = cluster
            .client(1)
            .request(Method::GET, "/canonicalbucket/", &json, Bytes::new())
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let urls: Vec<&str> = v["message"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        assert!(urls.contains(&"/bucket/lazy"), "{urls:?}");
        assert_eq!(
            urls.iter()
                .filter(|u| u.starts_with("/bucket/canon"))
                .count(),
            10
        );
        // Canonical delete: gone everywhere when acknowledged.
        let r = cluster
            .client(1)
            .request(
                Method::DELETE,
                "/canonicalbucket/canon3",
                &json,
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::ACCEPTED);
        for n in 0..3 {
            assert_eq!(
                cluster.client(n).get("canon3").await.unwrap().status,
                StatusCode::NOT_FOUND
            );
        }
    });
}

fn status_and_sync_through_the_cli(setup: Setup) {
    let Some(mut cluster) = start(3, "", setup) else {
        return;
    };
    let runtime = rt();
    runtime.block_on(async {
        for i in 0..50 {
            cluster
                .client(i % 3)
                .put(&format!("s{i}"), b("v"), None)
                .await
                .unwrap();
        }
    });
    cluster.kill9(2);
    runtime.block_on(async {
        for i in 50..80 {
            let key = format!("s{i}");
            if cluster.master_of(&key) != 2 {
                cluster.client(0).put(&key, b("v"), None).await.unwrap();
            }
        }
    });
    cluster.restart(2);
    let sync = std::process::Command::new(common::bin())
        .args(["sync", "--url", &cluster.url(2)])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&sync.stdout);
    assert!(
        sync.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    assert!(
        out.contains("n1: cursor") && out.contains("caught up"),
        "{out}"
    );
    // Right after a sync the node holds everything the others do. (Not
    // the other way round: a peer may not have pulled the node's last
    // writes before it was killed, and may still be backing off.)
    runtime.block_on(async {
        let mine = cluster.contents(2).await.unwrap();
        for i in [0, 1] {
            for (key, value) in cluster.contents(i).await.unwrap() {
                assert_eq!(
                    mine.get(&key),
                    Some(&value),
                    "n3 lacks {key} after its sync"
                );
            }
        }
    });
    let status_out = std::process::Command::new(common::bin())
        .args(["status", "--url", &cluster.url(2)])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&status_out.stdout);
    assert!(status_out.status.success());
    assert!(out.contains("node n3"), "{out}");
    for id in ["n1", "n2", "n3 (self)"] {
        assert!(
            out.lines().any(|l| l.starts_with(id)),
            "{id} missing:\n{out}"
        );
    }
    assert!(
        out.lines().filter(|l| l.contains(" yes ")).count() == 2,
        "{out}"
    );
    // With a peer down, status says so and sync fails.
    cluster.kill9(0);
    let sync = std::process::Command::new(common::bin())
        .args(["sync", "--url", &cluster.url(2), "--timeout-ms", "2000"])
        .output()
        .unwrap();
    assert!(!sync.status.success());
    assert!(String::from_utf8_lossy(&sync.stdout).contains("n1: cursor"));
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n1 = member(&cluster, 2, 0).await;
        assert_eq!(n1["reachable"], false, "{n1}");
    });
}

/// Every test above, on embedded nodes and on a mixed cluster.
/// Damages node `i`'s embedded store while it is down (stopped cleanly),
/// as a bad disk or a bug would: the records of `lose` vanish (with their feed entries), and
/// each key of `stale` goes back to an older live value `"stale"`. The
/// change feeds cannot bring any of it back: every peer's cursor is past it.
fn damage_embedded_store(cluster: &mut Cluster, i: usize, lose: &[String], stale: &[String]) {
    use redb::{ReadableDatabase, TableDefinition};
    const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
    const FEED: TableDefinition<u64, &str> = TableDefinition::new("feed");
    const TOMBSTONES: TableDefinition<u64, &str> = TableDefinition::new("tombstones");
    // A clean stop checkpoints: everything is in the redb file, none of it
    // left in the write-ahead log to be replayed over the damage.
    cluster.nodes[i].sigterm();
    assert!(cluster.nodes[i]
        .wait_exit(Duration::from_secs(30))
        .is_some());
    let path = cluster.dirs[i]
        .join("data")
        .join(ripple::storage::embedded::FILE_NAME);
    let db = redb::Database::open(&path).unwrap();
    let read = |key: &str| {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(RECORDS).unwrap();
        let bytes = table.get(key).unwrap().unwrap().value().to_vec();
        ripple::storage::codec::decode(key, &bytes).unwrap()
    };
    let entries: Vec<_> = lose.iter().chain(stale).map(|k| read(k)).collect();
    let txn = db.begin_write().unwrap();
    {
        let mut records = txn.open_table(RECORDS).unwrap();
        let mut feed = txn.open_table(FEED).unwrap();
        let mut tombstones = txn.open_table(TOMBSTONES).unwrap();
        for e in &entries[..lose.len()] {
            records.remove(e.record.key.as_str()).unwrap();
            feed.remove(e.seq).unwrap();
            tombstones.remove(e.seq).unwrap();
        }
        for e in &entries[lose.len()..] {
            let mut old = e.record.clone();
            old.version.ts -= 1;
            old.tombstone = false;
            old.value = b("stale");
            let bytes = ripple::storage::codec::encode(e.seq, &old);
            records.insert(old.key.as_str(), bytes.as_slice()).unwrap();
            tombstones.remove(e.seq).unwrap();
        }
    }
    txn.commit().unwrap();
    drop(db);
    cluster.restart(i);
}

fn verify(cluster: &Cluster, extra: &[&str]) -> (bool, String) {
    let urls: Vec<String> = (0..cluster.len()).map(|i| cluster.url(i)).collect();
    let out = std::process::Command::new(common::bin())
        .args(["verify", "--url", &urls.join(","), "--settle-ms", "2000"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A replica that lost records, or holds stale ones, where the change
/// feeds cannot see it: `ripple verify` names the ranges that differ, and
/// `--repair` heals them from the peers without a full copy.
fn verify_finds_a_damaged_replica_and_repair_heals_it(setup: Setup) {
    let Some(mut cluster) = start(3, "[replication]\nanti_entropy_interval_secs = 0\n", setup)
    else {
        return;
    };
    let runtime = rt();
    let mut expected = BTreeMap::new();
    runtime.block_on(async {
        for i in 0..300 {
            let key = format!("v{i}");
            cluster
                .client(i % 3)
                .put(&key, b(&format!("value {i}")), None)
                .await
                .unwrap();
            expected.insert(key, format!("value {i}").into_bytes());
        }
        for i in 0..10 {
            let key = format!("v{i}");
            cluster.client(1).delete(&key).await.unwrap();
            expected.remove(&key);
        }
        cluster.converge_to(&expected, CONVERGE).await;
    });
    let (ok, out) = verify(&cluster, &[]);
    assert!(ok && out.contains("consistent: 3 nodes"), "{out}");

    // Node 1 (embedded in both setups) loses 20 records, and 5 keys go
    // back to an older value, 3 of them deleted keys.
    let lose: Vec<String> = (100..120).map(|i| format!("v{i}")).collect();
    let stale: Vec<String> = [0, 1, 2, 200, 201]
        .iter()
        .map(|i| format!("v{i}"))
        .collect();
    damage_embedded_store(&mut cluster, 0, &lose, &stale);
    runtime.block_on(async {
        let r = cluster.client(0).get("v110").await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND, "the damage took");
    });
    let (ok, out) = verify(&cluster, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("ranges differ between 3 nodes"), "{out}");
    let ranges: std::collections::BTreeSet<String> = lose
        .iter()
        .chain(&stale)
        .map(|k| ripple::replication::digest::range_name(ripple::replication::digest::range_of(k)))
        .collect();
    for r in &ranges {
        assert!(
            out.contains(&format!("range {r}: ")),
            "range {r} not named:\n{out}"
        );
    }
    assert_eq!(
        out.matches("\nrange ").count() + usize::from(out.starts_with("range ")),
        ranges.len(),
        "{out}"
    );

    let (ok, out) = verify(&cluster, &["--repair"]);
    assert!(ok, "{out}");
    assert!(out.contains("n1: pulled 25 records"), "{out}");
    assert!(
        out.contains("n2: pulled 0 records") && out.contains("n3: pulled 0 records"),
        "{out}"
    );
    assert!(out.contains("consistent: 3 nodes"), "{out}");
    runtime.block_on(async {
        // Everything is back, the deleted keys stay deleted, and no stale
        // value reached the other nodes.
        assert_eq!(cluster.contents(0).await.unwrap(), expected);
        cluster.converge_to(&expected, CONVERGE).await;
    });
}

/// With `anti_entropy_interval_secs` set, a damaged replica heals on its
/// own.
#[test]
fn anti_entropy_heals_a_damaged_replica_on_its_own() {
    let mut cluster = Cluster::start(3, "[replication]\nanti_entropy_interval_secs = 1\n");
    let runtime = rt();
    let mut expected = BTreeMap::new();
    runtime.block_on(async {
        for i in 0..100 {
            let key = format!("a{i}");
            cluster.client(i % 3).put(&key, b("x"), None).await.unwrap();
            expected.insert(key, b"x".to_vec());
        }
        cluster.converge_to(&expected, CONVERGE).await;
    });
    let lose: Vec<String> = (0..30).map(|i| format!("a{i}")).collect();
    damage_embedded_store(&mut cluster, 2, &lose, &[]);
    runtime.block_on(async {
        cluster.converge_to(&expected, CONVERGE).await;
    });
    let (ok, out) = verify(&cluster, &[]);
    assert!(ok, "{out}");
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::Setup::Embedded) } )*
        }
        mod mixed {
            $( #[test] fn $name() { super::$name(super::Setup::Mixed) } )*
        }
    };
}

on_both!(
    writes_through_every_node_converge_on_every_node,
    a_replica_killed_while_applying_misses_nothing,
    a_killed_node_misses_writes_and_catches_up,
    a_wiped_node_refills_from_its_peers,
    a_partition_heals_and_converges,
    concurrent_writes_to_one_key_end_with_one_value_everywhere,
    deletes_never_come_back,
    replicas_all_and_consistency_master_are_immediate,
    an_unreachable_master_stores_nothing,
    canonical_seed_routes_have_the_seeds_meaning,
    status_and_sync_through_the_cli,
    verify_finds_a_damaged_replica_and_repair_heals_it
);

/// A node restored from a backup of its data dir holds a feed that went
/// back in time; its peers must follow it from the start, or they would
/// skip the seqs it takes again and miss its new writes.
#[test]
fn a_node_restored_from_a_backup_is_followed_again() {
    let mut cluster = Cluster::start(3, "");
    let runtime = rt();
    let mut expected = BTreeMap::new();
    let write =
        |cluster: &Cluster, expected: &mut BTreeMap<String, Vec<u8>>, stem: &str, n: usize| {
            runtime.block_on(async {
                for i in 0..n {
                    let key = cluster.key_mastered_by(0, &format!("{stem}{i}"));
                    let r = cluster.client(0).put(&key, b(&key), None).await.unwrap();
                    assert!(r.status.is_success(), "{key}: {}", r.error_message());
                    expected.insert(key.clone(), key.into_bytes());
                }
                cluster.converge_to(expected, CONVERGE).await;
            })
        };
    write(&cluster, &mut expected, "before-backup", 10);
    cluster.kill9(0);
    let data = cluster.dirs[0].join("data");
    let backup = cluster.dirs[0].join("backup");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&backup)
        .status()
        .unwrap();
    assert!(cp.success());
    cluster.restart(0);
    // Overwrites: the peers hold only the last one, so when n1 refills from
    // them it takes fewer seqs than it had taken.
    runtime.block_on(async {
        let key = cluster.key_mastered_by(0, "overwritten");
        for i in 0..20 {
            let v = format!("v{i}");
            let r = cluster.client(0).put(&key, b(&v), None).await.unwrap();
            assert!(r.status.is_success());
            expected.insert(key.clone(), v.into_bytes());
        }
        cluster.converge_to(&expected, CONVERGE).await;
    });
    // Restore the backup: n1 forgets its last writes (its peers have them).
    cluster.kill9(0);
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&backup, &data).unwrap();
    cluster.restart(0);
    // New writes at n1 reach every node, and n1 gets back what it lost.
    write(&cluster, &mut expected, "after-restore", 10);
}

/// A peer that asks with `x-ripple-skip-own: 1` is not sent back the
/// records it made as master, yet its cursor moves past them; without the
/// header it gets everything.
#[test]
fn a_peer_is_not_sent_back_what_it_mastered() {
    let cluster = Cluster::start(3, "");
    let runtime = rt();
    runtime.block_on(async {
        let mut expected = BTreeMap::new();
        for (master, stem) in [(0, "by-n1-"), (1, "by-n2-")] {
            for i in 0..5 {
                let key = cluster.key_mastered_by(master, &format!("{stem}{i}"));
                let r = cluster.client(0).put(&key, b("v"), None).await.unwrap();
                assert!(r.status.is_success(), "{}", r.error_message());
                expected.insert(key, b"v".to_vec());
            }
        }
        cluster.converge_to(&expected, CONVERGE).await;

        // n2's feed, as n1 asks for it.
        let n2 = cluster.client(1);
        let id = cluster.feed_id(1).await;
        let skip = [(
            hyper::header::HeaderName::from_static("x-ripple-skip-own"),
            hyper::header::HeaderValue::from_static("1"),
        )];
        let feed = |after: u64, wait_ms: u64, skip_own: bool| {
            let (n2, id) = (n2.clone(), id.clone());
            let headers = if skip_own { skip.to_vec() } else { Vec::new() };
            async move {
                let path = format!(
                    "/internal/v1/feed?after={after}&limit=1000&wait_ms={wait_ms}&feed={id}&from=n1"
                );
                let r = n2
                    .request(Method::GET, &path, &headers, Bytes::new())
                    .await
                    .unwrap();
                assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
                let upto: u64 = r.header("x-ripple-feed-upto").unwrap().parse().unwrap();
                let last: u64 = r.header("x-ripple-last-seq").unwrap().parse().unwrap();
                let masters: Vec<String> = ripple::replication::codec::decode(r.body)
                    .unwrap()
                    .into_iter()
                    .map(|e| e.record.version.node)
                    .collect();
                (masters, upto, last)
            }
        };
        let (all, upto, last) = feed(0, 0, false).await;
        assert_eq!(all.iter().filter(|m| *m == "n1").count(), 5, "{all:?}");
        assert_eq!(all.iter().filter(|m| *m == "n2").count(), 5, "{all:?}");
        assert_eq!(upto, last);
        let (others, upto, last) = feed(0, 0, true).await;
        assert_eq!(others, vec!["n2"; 5]);
        assert_eq!(upto, last, "the answer covers the records it left out");

        // Waiting at the end of the feed: a record n1 made reaches n2. The
        // request waits on a little for others, then answers with no
        // records and a cursor past it, long before its 20 s are up.
        let waiting = tokio::spawn(feed(last, 20_000, true));
        let key = cluster.key_mastered_by(0, "later-by-n1");
        cluster.client(0).put(&key, b("v"), None).await.unwrap();
        expected.insert(key, b"v".to_vec());
        let (masters, upto, last) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the request answers once only the asker's records came")
            .unwrap();
        assert!(masters.is_empty(), "{masters:?}");
        assert!(upto > 0 && upto == last, "upto {upto}, last seq {last}");
        cluster.converge_to(&expected, CONVERGE).await;
        // A record of n2's right after one of n1's: sent, n1's not.
        let waiting = tokio::spawn(feed(last, 20_000, true));
        let key = cluster.key_mastered_by(0, "then-by-n1");
        cluster.client(0).put(&key, b("v"), None).await.unwrap();
        let key = cluster.key_mastered_by(1, "then-by-n2");
        cluster.client(1).put(&key, b("v"), None).await.unwrap();
        let (masters, _, _) = waiting.await.unwrap();
        assert!(masters.iter().all(|m| m == "n2"), "{masters:?}");
        for i in 0..5 {
            let key = cluster.key_mastered_by(0, &format!("before-sync-{i}"));
            cluster.client(0).put(&key, b("v"), None).await.unwrap();
        }
    });
    // A sync right after writes made here: the peers' feeds now end with
    // this node's own records, which they leave out, and their answers
    // still move its cursors past them soon (not at the end of a 20 s
    // long poll).
    let sync = std::process::Command::new(common::bin())
        .args(["sync", "--url", &cluster.url(0), "--timeout-ms", "5000"])
        .output()
        .unwrap();
    assert!(
        sync.status.success(),
        "{}{}",
        String::from_utf8_lossy(&sync.stdout),
        String::from_utf8_lossy(&sync.stderr)
    );
}

/// A blocking read (`min_version=` with `wait_ms=`) on a replica answers
/// once the version arrives there, with the value; 504 when it does not
/// within the wait; 404 once a later version deleted the key.
#[test]
fn a_blocking_read_answers_when_the_version_arrives() {
    let cluster = Cluster::start(3, "");
    let runtime = rt();
    runtime.block_on(async {
        let key = cluster.key_mastered_by(0, "blocking");
        let path = ripple::client::kv_path(&key);
        let r = cluster.client(0).put(&key, b("v1"), None).await.unwrap();
        assert!(r.status.is_success(), "{}", r.error_message());
        let etag = r.header("etag").unwrap().to_owned();
        let (ts, node) = etag.trim_matches('"').split_once('-').unwrap();
        let ts = u64::from_str_radix(ts, 16).unwrap();
        let node = node.to_owned();
        let read = |i: usize, min: String, wait_ms: u64| {
            let (client, path) = (cluster.client(i), path.clone());
            async move {
                let min = ripple::http::keypath::encode_query(&min);
                let query = format!("{path}?min_version={min}&wait_ms={wait_ms}");
                client
                    .request(Method::GET, &query, &[], Bytes::new())
                    .await
                    .unwrap()
            }
        };

        // The version written, read on each replica (quoted, as the ETag).
        for i in [1, 2] {
            let r = read(i, etag.clone(), 10_000).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
            assert_eq!(r.body, "v1");
        }

        // The next version n1 will give the key is above (ts + 1, n1): a
        // read for it waits until the second write arrives.
        let next = format!("{:x}-{node}", ts + 1);
        let waiting = tokio::spawn(read(2, next.clone(), 20_000));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "answered before the version existed"
        );
        let r = cluster.client(1).put(&key, b("v2"), None).await.unwrap();
        assert!(r.status.is_success(), "{}", r.error_message());
        let v2 = r.header("etag").unwrap().trim_matches('"').to_owned();
        let v2_ts = u64::from_str_radix(v2.split_once('-').unwrap().0, 16).unwrap();
        let r = waiting.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
        assert_eq!(r.body, "v2");

        // A version that never comes: 504 after the wait, with the
        // version the key has.
        let far = format!("{:x}-{node}", ts + (1 << 40));
        let r = read(1, far.clone(), 200).await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(error_code(&r), "version_not_reached");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let now = body["version"].as_str().unwrap();
        assert!(now.ends_with(&format!("-{node}")), "{now}");
        // HEAD waits the same way.
        let head = format!("{path}?min_version={far}&wait_ms=100");
        let r = cluster
            .client(1)
            .request(Method::HEAD, &head, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);

        // A delete is a version too: once it arrives, 404.
        let r = cluster
            .client(2)
            .request(Method::DELETE, &path, &[], Bytes::new())
            .await
            .unwrap();
        assert!(r.status.is_success(), "{}", r.error_message());
        let after_v2 = format!("{:x}-{node}", v2_ts + 1);
        let r = read(1, after_v2, 10_000).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.error_message());

        // wait_ms alone is a plain read: nothing to wait for.
        let r = cluster
            .client(1)
            .request(
                Method::GET,
                &format!("{path}?wait_ms=100"),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.error_message());
        assert_eq!(error_code(&r), "not_found");

        // Bad options.
        for bad in [
            "min_version=nonsense",
            "min_version=zz-n1",
            "wait_ms=abc",
            &format!("min_version={next}&wait_ms=0"),
            &format!("min_version={next}&wait_ms=600001"),
            &format!("min_version={next}&wait=1"),
        ] {
            let r = cluster
                .client(1)
                .request(Method::GET, &format!("{path}?{bad}"), &[], Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(error_code(&r), "bad_query", "{bad}");
        }
    });
}

/// The member entry that node `i` shows for node `of`.
async fn member(cluster: &Cluster, i: usize, of: usize) -> serde_json::Value {
    let status = status(cluster, i).await;
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == node_id(of).as_str())
        .unwrap_or_else(|| panic!("no member {} in {status}", node_id(of)))
        .clone()
}

/// `batch_linger_ms`: a caught-up puller waits that long after an answer
/// of more than one change, so a stream of writes reaches it in a few
/// answers instead of one each; a lone write is fetched at once, and a
/// write with `replicas=` gets its acknowledgement without waiting out the
/// linger each time.
#[test]
fn a_puller_lingers_to_batch_a_stream_of_writes() {
    // The longest linger allowed.
    const LINGER_MS: u64 = 100;
    let cluster = Cluster::start(
        2,
        &format!("[replication]\nbatch_linger_ms = {LINGER_MS}\n"),
    );
    let runtime = rt();
    runtime.block_on(async {
        let batches = || async { member(&cluster, 1, 0).await["batches_applied"].as_u64().unwrap() };
        let mut expected = BTreeMap::new();
        let first = cluster.key_mastered_by(0, "first");
        cluster.client(0).put(&first, b("1"), None).await.unwrap();
        expected.insert(first, b"1".to_vec());
        cluster.converge_to(&expected, CONVERGE).await;
        // The counter moves just after the records become visible.
        let start = std::time::Instant::now();
        while batches().await == 0 {
            assert!(start.elapsed() < CONVERGE, "no batch counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // A lone write at a time: each answer carries one change, and the
        // puller asks again at once, so each write is on n2 long before a
        // linger would have passed (a blocking read on n2 answers the
        // moment it applies the write).
        tokio::time::sleep(Duration::from_millis(LINGER_MS + 50)).await;
        let start = std::time::Instant::now();
        for i in 0..10 {
            let key = cluster.key_mastered_by(0, &format!("lone{i}"));
            let r = cluster.client(0).put(&key, b("l"), None).await.unwrap();
            assert!(r.status.is_success(), "{}", r.error_message());
            let version = ripple::http::keypath::encode_query(
                r.header("etag").unwrap().trim_matches('"'),
            );
            let path = format!(
                "{}?min_version={version}&wait_ms=10000",
                ripple::client::kv_path(&key)
            );
            let r = cluster
                .client(1)
                .request(Method::GET, &path, &[], Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
            expected.insert(key, b"l".to_vec());
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed < Duration::from_millis(10 * LINGER_MS / 2),
            "10 lone writes took {elapsed:?} to reach n2: the puller lingered after single changes"
        );

        // A stream: 4 writers, 30 writes each, then until n2 has them all.
        let before = batches().await;
        let start = std::time::Instant::now();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let keys: Vec<String> = (0..30)
                    .map(|i| cluster.key_mastered_by(0, &format!("stream{w}-{i}")))
                    .collect();
                let client = cluster.client(0);
                tokio::spawn(async move {
                    for key in &keys {
                        let r = client.put(key, b("s"), None).await.unwrap();
                        assert!(r.status.is_success(), "{}", r.error_message());
                    }
                    keys
                })
            })
            .collect();
        for writer in writers {
            for key in writer.await.unwrap() {
                expected.insert(key, b"s".to_vec());
            }
        }
        cluster.converge_to(&expected, CONVERGE).await;
        let elapsed = start.elapsed();
        let applied = batches().await - before;
        // One answer of more than one change at most per linger, each
        // followed by at most one of a single change, plus the one that
        // ended a linger begun before the stream.
        let bound = 2 * (elapsed.as_millis() as u64 / LINGER_MS + 2);
        assert!(
            (1..=bound).contains(&applied),
            "120 writes over {elapsed:?} came in {applied} answers; at most {bound} expected"
        );

        // replicas=1, through the master and forwarded to it: the peer asks
        // again at once after applying each, so the acknowledgements do not
        // wait out the linger (which would take 20 lingers at least).
        tokio::time::sleep(Duration::from_millis(LINGER_MS + 50)).await;
        let start = std::time::Instant::now();
        for i in 0..20 {
            let key = cluster.key_mastered_by(0, &format!("acked{i}"));
            let path = format!("{}?replicas=1", ripple::client::kv_path(&key));
            let r = cluster
                .client(i % 2)
                .request(Method::PUT, &path, &[], b("a"))
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
            assert_eq!(r.header("x-ripple-replicas"), Some("1"));
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed < Duration::from_millis(20 * LINGER_MS * 3 / 4),
            "20 writes with replicas=1 took {elapsed:?}: their acknowledgements waited out the linger"
        );
    });
}

/// A node far behind catches up in many small answers while its peers'
/// records are split between redb and the memtable (folds every 25 ms),
/// keys overwritten and deleted meanwhile: each answer reads only what it
/// holds from either, and none skips a change.
#[test]
fn a_node_far_behind_catches_up_in_small_answers_across_folds() {
    let mut cluster = Cluster::start(
        3,
        "[storage]\napply_interval_ms = 25\n\n[replication]\nbatch_max_records = 7\n",
    );
    let runtime = rt();
    let mut expected = BTreeMap::new();
    runtime.block_on(async {
        for i in 0..20 {
            let key = format!("early{i}");
            cluster.client(i % 3).put(&key, b("v"), None).await.unwrap();
            expected.insert(key, b"v".to_vec());
        }
        cluster.converge_to(&expected, CONVERGE).await;
    });
    cluster.kill9(2);
    runtime.block_on(async {
        for i in 0..600 {
            // 150 keys, each written about four times, some deleted.
            let key = format!("far{}", (i * 7) % 150);
            if cluster.master_of(&key) == 2 {
                continue;
            }
            if i % 13 == 0 {
                let r = cluster.client(i % 2).delete(&key).await.unwrap();
                assert!(r.status.is_success() || r.status == StatusCode::NOT_FOUND);
                expected.remove(&key);
            } else {
                let value = format!("{i}");
                let r = cluster
                    .client(i % 2)
                    .put(&key, b(&value), None)
                    .await
                    .unwrap();
                assert!(r.status.is_success(), "{key}: {}", r.error_message());
                expected.insert(key, value.into_bytes());
            }
            if i % 50 == 49 {
                // Let a fold take some of it into redb.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });
    cluster.restart(2);
    runtime.block_on(async {
        cluster.converge_to(&expected, CONVERGE).await;
    });
}

/// A puller reading ahead of its durable cursor names that cursor in
/// `x-ripple-acked`: the peer records it as the acknowledgement, not
/// `after`. Without the header `after` is the acknowledgement; a bad value
/// answers 400.
#[test]
fn the_acknowledgement_is_the_durable_cursor_a_puller_names() {
    let mut cluster = Cluster::start(3, "");
    // n3 is down: nothing but this test speaks for it.
    cluster.kill9(2);
    let runtime = rt();
    runtime.block_on(async {
        let n1 = cluster.client(0);
        for i in 0..5 {
            let key = cluster.key_mastered_by(0, &format!("acked-{i}"));
            let r = n1.put(&key, b("v"), None).await.unwrap();
            assert!(r.status.is_success(), "{}", r.error_message());
        }
        let id = cluster.feed_id(0).await;
        let ask = |acked: Option<&'static str>| {
            let (n1, id) = (n1.clone(), id.clone());
            async move {
                let headers: Vec<_> = acked
                    .map(|v| {
                        (
                            hyper::header::HeaderName::from_static("x-ripple-acked"),
                            hyper::header::HeaderValue::from_static(v),
                        )
                    })
                    .into_iter()
                    .collect();
                let path = format!("/internal/v1/feed?after=4&limit=10&feed={id}&from=n3");
                n1.request(Method::GET, &path, &headers, Bytes::new())
                    .await
                    .unwrap()
            }
        };
        let acked_of_n3 = || async {
            let r = n1
                .request(Method::GET, "/v1/status", &[], Bytes::new())
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let members = v["members"].as_array().unwrap().clone();
            members.into_iter().find(|m| m["id"] == "n3").unwrap()["acked"].clone()
        };
        let r = ask(Some("2")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
        assert_eq!(acked_of_n3().await, 2);
        let r = ask(None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
        assert_eq!(acked_of_n3().await, 4);
        let r = ask(Some("two")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(common::error_code(&r), "bad_query");
        assert_eq!(
            acked_of_n3().await,
            4,
            "a refused request acknowledges nothing"
        );
    });
}
