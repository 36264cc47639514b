//! Nodes on MySQL/MariaDB and PostgreSQL through the binary: the v1 API and
//! durability across kill -9, and a database stopped mid-load: 503 while it
//! is away, the node stays up, nothing acknowledged is lost, and replication
//! to and from the node pauses and resumes. (The storage conformance suite
//! and the mixed-cluster replication tests run on these engines too.)

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::Cluster;
use common::sql::{DbServer, Kind};
use common::{error_code, rt, Node};
use hyper::{Method, StatusCode};

fn storage_section(server: &DbServer, db: &str, table: &str) -> String {
    format!(
        "[storage]\nengine = \"{}\"\nurl = \"{}\"\ntable = \"{table}\"\nconnect_timeout_secs = 30\n",
        server.engine(),
        server.url(db)
    )
}

fn node_on(server: &DbServer, dir: &std::path::Path, table: &str) -> Node {
    server.create_database("nodes");
    let config = dir.join("ripple.toml");
    std::fs::write(&config, storage_section(server, "nodes", table)).unwrap();
    Node::start_with(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn serves_the_api_and_survives_kill_9(kind: Kind) {
    let Some(server) = DbServer::start(kind) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut node = node_on(&server, dir.path(), "api");
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let keys = ["plain", "a/b c", "ünï/😀", "per%cent?#"];
    rt().block_on(async {
        let c = node.client();
        for k in keys {
            let r = c
                .put(k, Bytes::from(binary.clone()), Some("image/png"))
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::CREATED, "{k}: {}", r.error_message());
        }
        let r = c.put("plain", Bytes::from("v2"), None).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let r = c.get("a/b c").await.unwrap();
        assert_eq!(r.body.as_ref(), binary.as_slice());
        assert_eq!(r.header("content-type"), Some("image/png"));
        assert_eq!(
            c.delete("ünï/😀").await.unwrap().status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(c.get("ünï/😀").await.unwrap().status, StatusCode::NOT_FOUND);
        let (listed, _) = c.list_page("", None, None).await.unwrap();
        assert_eq!(listed, vec!["a/b c", "per%cent?#", "plain"]);
        let (listed, _) = c.list_page("p", None, Some(1)).await.unwrap();
        assert_eq!(listed, vec!["per%cent?#"]);
    });
    node.kill9();
    let node = node_on(&server, dir.path(), "api");
    rt().block_on(async {
        let c = node.client();
        assert_eq!(c.get("plain").await.unwrap().body, "v2");
        assert_eq!(
            c.get("per%cent?#").await.unwrap().body.as_ref(),
            binary.as_slice()
        );
        assert_eq!(c.get("ünï/😀").await.unwrap().status, StatusCode::NOT_FOUND);
        // Versions keep growing after the restart.
        assert_eq!(
            c.put("plain", Bytes::from("v3"), None)
                .await
                .unwrap()
                .status,
            StatusCode::OK
        );
    });
}

#[test]
fn mariadb_node_serves_the_api_and_survives_kill_9() {
    serves_the_api_and_survives_kill_9(Kind::MariaDb);
}

#[test]
fn postgres_node_serves_the_api_and_survives_kill_9() {
    serves_the_api_and_survives_kill_9(Kind::Postgres);
}

/// n1 embedded, n2 on the database; the database stops mid-load.
fn an_outage_is_503_and_loses_nothing(kind: Kind) {
    let Some(mut server) = DbServer::start(kind) else {
        return;
    };
    server.create_database("outage");
    let section = storage_section(&server, "outage", "outage");
    let cluster = Cluster::start_with_storage(
        2,
        "",
        Box::new(move |i, _| {
            if i == 1 {
                section.clone()
            } else {
                String::new()
            }
        }),
    );
    let runtime = rt();
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    fn write(
        runtime: &tokio::runtime::Runtime,
        cluster: &Cluster,
        acked: &mut BTreeMap<String, String>,
        round: &str,
        n: usize,
    ) -> (usize, usize) {
        runtime.block_on(async {
            let (mut ok, mut refused) = (0, 0);
            for i in 0..n {
                let key = format!("{round}-{i}");
                let via = cluster.master_of(&key);
                let r = cluster
                    .client(via)
                    .put(&key, Bytes::from(key.clone()), None)
                    .await
                    .unwrap();
                if r.status.is_success() {
                    acked.insert(key.clone(), key);
                    ok += 1;
                } else {
                    assert_eq!(
                        r.status,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{key}: {}",
                        r.error_message()
                    );
                    assert_eq!(error_code(&r), "storage_unavailable");
                    refused += 1;
                }
            }
            (ok, refused)
        })
    }
    let (ok, refused) = write(&runtime, &cluster, &mut acked, "before", 100);
    assert_eq!((ok, refused), (100, 0));
    server.stop();
    let (ok, refused) = write(&runtime, &cluster, &mut acked, "during", 16);
    assert!(ok > 0, "the embedded node kept taking its writes");
    assert!(refused > 0, "the database node refused its writes");
    runtime.block_on(async {
        // The node stays up: health answers, and reads of its database fail
        // with a clear 503 rather than hanging.
        let r = cluster
            .client(1)
            .request(Method::GET, "/health", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let r = cluster.client(1).get("before-1").await.unwrap();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&r), "storage_unavailable");
    });
    server.resume();
    // It recovers by itself: writes succeed again without a restart.
    let start = Instant::now();
    loop {
        let (ok, _) = runtime.block_on(async {
            let key = cluster.key_mastered_by(1, "probe");
            let r = cluster
                .client(1)
                .put(&key, Bytes::from(key.clone()), None)
                .await
                .unwrap();
            if r.status.is_success() {
                acked.insert(key.clone(), key);
                (1, 0)
            } else {
                (0, 1)
            }
        });
        if ok == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the node did not recover"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, refused) = write(&runtime, &cluster, &mut acked, "after", 50);
    assert_eq!((ok, refused), (50, 0));
    // Both nodes hold every acknowledged write: replication resumed.
    let expected: BTreeMap<String, Vec<u8>> = acked
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    runtime.block_on(async {
        cluster
            .converge_to(&expected, Duration::from_secs(30))
            .await;
    });
}

#[test]
fn mariadb_outage_is_503_and_loses_nothing() {
    an_outage_is_503_and_loses_nothing(Kind::MariaDb);
}

#[test]
fn postgres_outage_is_503_and_loses_nothing() {
    an_outage_is_503_and_loses_nothing(Kind::Postgres);
}

#[test]
fn sql_config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[storage]\nengine = \"mysql\"\n", "storage.url is required"),
        ("[storage]\nengine = \"postgres\"\nurl = \"mysql://x/y\"\n", "storage.url must start with"),
        ("[storage]\nengine = \"mysql\"\nurl = \"mysql://x/y\"\ntable = \"bad-name\"\n", "storage.table"),
        ("[storage]\nengine = \"mysql\"\nurl = \"mysql://x/y\"\n[limits]\nmax_key_bytes = 4000\n", "3072"),
        ("[storage]\nurl = \"mysql://x/y\"\n", "storage.url is for the mysql and postgres engines"),
    ];
    for (config, expect) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(common::bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
                path.to_str().unwrap(),
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{config}: {err}");
    }
}

#[test]
fn mysql_refuses_a_value_limit_its_packet_limit_cannot_take() {
    let Some(server) = DbServer::start(Kind::MariaDb) else {
        return;
    };
    server.create_database("nodes");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ripple.toml");
    // The test server's max_allowed_packet is 64 MiB.
    std::fs::write(
        &config,
        format!(
            "{}\n[limits]\nmax_value_bytes = 100000000\n",
            storage_section(&server, "nodes", "big")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_allowed_packet"), "{err}");
}

/// One batch the database refuses fails alone: the batches that shared its
/// group commit are retried on their own and succeed.
#[test]
fn a_refused_batch_does_not_fail_its_group() {
    use ripple::storage::sql::{Dialect, SqlEngine};
    use ripple::storage::{Batch, Record, Storage, Version};
    let Some(server) = DbServer::start(Kind::MariaDb) else {
        return;
    };
    server.create_database("groups");
    let url = server.url("groups");
    rt().block_on(async {
        let engine = std::sync::Arc::new(
            SqlEngine::open(Dialect::MySql, &url, "groups", 4, Duration::from_secs(10))
                .await
                .unwrap(),
        );
        let record = |key: &str, ct_len: usize, ts: u64| Record {
            key: key.into(),
            value: Bytes::from("v"),
            content_type: "x".repeat(ct_len),
            version: Version {
                ts,
                node: "n1".into(),
            },
            tombstone: false,
        };
        for round in 0..5u64 {
            let mut tasks = Vec::new();
            for i in 0..20u64 {
                let engine = engine.clone();
                // Batch 7 carries a content type longer than the column.
                let ct = if i == 7 { 5000 } else { 10 };
                let r = record(&format!("r{round}-{i}"), ct, round * 100 + i + 1);
                tasks.push(tokio::spawn(async move {
                    engine
                        .apply(Batch {
                            readable_before_durable: None,
                            records: vec![r],
                            cursor: None,
                        })
                        .await
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let result = t.await.unwrap();
                if i == 7 {
                    assert!(result.is_err(), "the bad batch fails");
                } else {
                    assert!(
                        result.is_ok(),
                        "batch {i} failed with the bad one: {result:?}"
                    );
                }
            }
        }
        let keys = engine.list_keys("", None, 1000).await.unwrap();
        assert_eq!(keys.len(), 5 * 19);
    });
}
