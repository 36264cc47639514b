//! Auth through the binary: bearer tokens with read, write and admin
//! access, /health open, a cluster secret between nodes, and secrets kept
//! out of logs, errors and status.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::cluster::Cluster;
use common::{bin, error_code, rt, Client, Node};
use hyper::{Method, StatusCode};

const READ: &str = "read-token-abcdef0123";
const WRITE: &str = "write-token-abcdef0123";
const ADMIN: &str = "admin-token-abcdef0123";
const SECRET: &str = "cluster-secret-0123456789";

fn tokens() -> String {
    format!(
        "[auth]\ntokens = [ {{ token = \"{READ}\", access = \"read\" }}, {{ token = \"{WRITE}\", access = \"write\" }}, {{ token = \"{ADMIN}\", access = \"admin\" }} ]\n"
    )
}

fn node_with_auth(dir: &std::path::Path) -> Node {
    let config = dir.join("ripple.toml");
    std::fs::write(&config, tokens()).unwrap();
    Node::start_with(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

#[test]
fn tokens_grant_read_write_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_auth(dir.path());
    let as_ = |token: Option<&str>| Client::with_token(&node.url, token).unwrap();
    rt().block_on(async {
        // No token, or a wrong one: 401 with a challenge and a JSON body.
        for c in [as_(None), as_(Some("wrong-token-0123456789"))] {
            let r = c.get("k").await.unwrap();
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            assert_eq!(error_code(&r), "unauthorized");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"ripple\"")
            );
            let r = c.put("k", Bytes::from("v"), None).await.unwrap();
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            let r = c
                .request(Method::POST, "/bucket/k", &[], Bytes::from("v"))
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        }
        // /health stays open.
        let r = as_(None)
            .request(Method::GET, "/health", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);

        // read: reads only.
        let reader = as_(Some(READ));
        let r = reader.put("k", Bytes::from("v"), None).await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(error_code(&r), "forbidden");
        assert_eq!(
            reader.get("k").await.unwrap().status,
            StatusCode::NOT_FOUND,
            "nothing was stored"
        );

        // write: writes and reads, no sync.
        let writer = as_(Some(WRITE));
        assert_eq!(
            writer
                .put("k", Bytes::from("v"), None)
                .await
                .unwrap()
                .status,
            StatusCode::CREATED
        );
        assert_eq!(reader.get("k").await.unwrap().body, "v");
        let r = reader
            .request(Method::GET, "/v1/kv", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let r = writer
            .request(Method::POST, "/v1/sync", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(
            writer.delete("k").await.unwrap().status,
            StatusCode::NO_CONTENT
        );

        // admin: everything.
        let admin = as_(Some(ADMIN));
        let r = admin
            .request(Method::POST, "/v1/sync", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            admin
                .put("k2", Bytes::from("v"), None)
                .await
                .unwrap()
                .status,
            StatusCode::CREATED
        );
        // Without a cluster secret the node-to-node routes need admin.
        let r = reader
            .request(Method::GET, "/internal/v1/feed?limit=0", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    });
}

#[test]
fn the_cli_takes_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_auth(dir.path());
    let run = |args: &[&str], token: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("RIPPLE_URL", &node.url)
            .env_remove("RIPPLE_TOKEN");
        if let Some(t) = token {
            cmd.env("RIPPLE_TOKEN", t);
        }
        cmd.stdin(Stdio::null()).output().unwrap()
    };
    let o = run(&["put", "k", "v"], None);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&["put", "k", "v"], Some(WRITE));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["get", "k", "--token", READ], None);
    assert_eq!(o.stdout, b"v");
    let o = run(&["put", "k", "w", "--token", READ], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("403"));
    let o = run(
        &[
            "bench",
            "--workload",
            "put",
            "--duration",
            "500ms",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--json",
        ],
        Some(WRITE),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["ok"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
}

#[test]
fn nodes_need_the_cluster_secret() {
    let section = format!("secret = \"{SECRET}\"\n{}", tokens());
    // n3 has the wrong secret: the others refuse it, and it them.
    let cluster = Cluster::start_with_storage(
        3,
        "",
        Box::new(move |i, _| {
            if i == 2 {
                section.replace(SECRET, "another-secret-0123456789")
            } else {
                section.clone()
            }
        }),
    );
    let writer = |i: usize| Client::with_token(&cluster.url(i), Some(WRITE)).unwrap();
    rt().block_on(async {
        let mut expected = BTreeMap::new();
        for i in 0..40 {
            let key = format!("k{i}");
            let master = cluster.master_of(&key);
            if master == 2 {
                continue;
            }
            // Writes through the other good node are forwarded with the secret.
            let via = 1 - master;
            let r = writer(via).put(&key, Bytes::from("v"), None).await.unwrap();
            assert!(r.status.is_success(), "{key}: {}", r.error_message());
            expected.insert(key, b"v".to_vec());
        }
        // n1 and n2 converge; n3 got nothing.
        let reader = |i: usize| Client::with_token(&cluster.url(i), Some(READ)).unwrap();
        let start = std::time::Instant::now();
        loop {
            let mut done = true;
            for i in 0..2 {
                let (keys, _) = reader(i).list_page("", None, None).await.unwrap();
                done &= keys.len() == expected.len();
            }
            if done {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "n1 and n2 did not converge"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (keys, _) = reader(2).list_page("", None, None).await.unwrap();
        assert!(keys.is_empty(), "n3 pulled without the secret: {keys:?}");
        // The feed refuses a request without the secret, even from an admin.
        let admin = Client::with_token(&cluster.url(0), Some(ADMIN)).unwrap();
        let r = admin
            .request(Method::GET, "/internal/v1/feed?limit=0", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        // n3's status says why, and shows no secret.
        let r = Client::with_token(&cluster.url(2), Some(READ))
            .unwrap()
            .request(Method::GET, "/v1/status", &[], Bytes::new())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert!(text.contains("401"), "{text}");
        assert!(
            !text.contains(SECRET) && !text.contains("another-secret"),
            "{text}"
        );
    });
}

#[test]
fn secrets_stay_out_of_logs_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ripple.toml");
    std::fs::write(
        &config,
        format!("{}\n[cluster]\nsecret = \"{SECRET}\"\n", tokens()),
    )
    .unwrap();
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    rt().block_on(async {
        for token in [READ, WRITE, ADMIN, "guess-token-0123456789"] {
            let c = Client::with_token(&url, Some(token)).unwrap();
            let r = c.put("k", Bytes::from("v"), None).await.unwrap();
            let body = String::from_utf8_lossy(&r.body);
            assert!(!body.contains(token), "{body}");
        }
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("listening") || logs.contains("storage open"),
        "trace logging ran: {logs}"
    );
    for secret in [READ, WRITE, ADMIN, SECRET, "guess-token-0123456789"] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
    // A bad secret in the config is refused without being echoed.
    std::fs::write(&config, "[cluster]\nsecret = \"short secret\"\n").unwrap();
    let o = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cluster.secret"), "{err}");
    assert!(!err.contains("short secret"), "{err}");
    // Auth on in a cluster without a secret is refused.
    std::fs::write(
        &config,
        format!("{}\n[cluster]\nmembers = [{{ id = \"n1\", url = \"http://127.0.0.1:1\" }}, {{ id = \"n2\", url = \"http://127.0.0.1:2\" }}]\n", tokens()),
    )
    .unwrap();
    let o = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("[cluster] secret"));
}
