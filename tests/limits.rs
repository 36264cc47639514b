//! Limits through the binary: a cap on open connections and on requests in
//! flight (503 with Retry-After, /health still answering), a request
//! timeout for slow clients (408), and a flood that the node survives.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{raw_request, raw_status, rt, Node};
use hyper::StatusCode;

fn node_with(limits: &str) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ripple.toml");
    std::fs::write(&config, format!("[limits]\n{limits}\n")).unwrap();
    let node = Node::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    (dir, node)
}

/// A connection that has sent the head of a PUT and part of its body.
fn stalled_upload(addr: &str, key: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!("PUT /v1/kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .as_bytes(),
    )
    .unwrap();
    s
}

#[test]
fn connections_past_the_cap_get_503_but_health_answers() {
    let (_dir, node) = node_with("max_connections = 4");
    let addr = node.addr();
    // Four connections hold every slot.
    let held: Vec<TcpStream> = (0..4)
        .map(|i| stalled_upload(&addr, &format!("held{i}")))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = raw_request(&addr, b"GET /v1/kv/x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw_status(&r), 503, "{r}");
    assert!(r.contains("\"overloaded\""), "{r}");
    assert!(r.to_ascii_lowercase().contains("retry-after: 1"), "{r}");
    let r = raw_request(&addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw_status(&r), 200, "{r}");
    // Slots free up when the clients go.
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    rt().block_on(async {
        let r = node
            .client()
            .put("after", Bytes::from("v"), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
    });
}

#[test]
fn requests_past_the_in_flight_cap_get_503() {
    let (_dir, node) = node_with("max_in_flight = 2\nmax_connections = 100");
    let addr = node.addr();
    let held: Vec<TcpStream> = (0..2)
        .map(|i| stalled_upload(&addr, &format!("held{i}")))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    rt().block_on(async {
        let c = node.client();
        let r = c.get("x").await.unwrap();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(common::error_code(&r), "overloaded");
        let r = c
            .request(hyper::Method::GET, "/health", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    });
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    rt().block_on(async {
        assert_eq!(
            node.client().get("x").await.unwrap().status,
            StatusCode::NOT_FOUND
        );
    });
}

/// Blocking reads wait without taking the slots of `max_in_flight`: with
/// three of them waiting and a cap of two, a plain read still answers.
#[test]
fn blocking_reads_do_not_hold_in_flight_slots() {
    let (_dir, node) = node_with("max_in_flight = 2\nmax_connections = 100");
    let addr = node.addr();
    let waiting: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(
                format!(
                    "GET /v1/kv/w{i}?min_version=1-n1&wait_ms=10000 HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    rt().block_on(async {
        let r = node.client().get("x").await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.error_message());
        // A write wakes its blocking read.
        let r = node
            .client()
            .put("w0", Bytes::from("v"), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
    });
    let mut first = &waiting[0];
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = [0u8; 64];
    let n = first.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_slow_client_gets_408_and_cannot_hold_the_server() {
    let (_dir, node) = node_with("request_timeout_secs = 1");
    let mut s = stalled_upload(&node.addr(), "slow");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert_eq!(raw_status(&out), 408, "{out}");
    assert!(out.contains("\"request_timeout\""), "{out}");
    assert!(start.elapsed() < Duration::from_secs(5));
    rt().block_on(async {
        let c = node.client();
        assert_eq!(
            c.get("slow").await.unwrap().status,
            StatusCode::NOT_FOUND,
            "nothing stored"
        );
        assert_eq!(
            c.put("fast", Bytes::from("v"), None).await.unwrap().status,
            StatusCode::CREATED
        );
    });
}

#[test]
fn a_flood_gets_answers_not_failures() {
    let (_dir, node) = node_with("max_connections = 16\nmax_in_flight = 8");
    let url = node.url.clone();
    rt().block_on(async {
        // 200 clients at once, 20 requests each, on their own connections.
        let tasks: Vec<_> = (0..200)
            .map(|t| {
                let c = common::Client::new(&url).unwrap();
                tokio::spawn(async move {
                    let (mut ok, mut shed, mut failed) = (0, 0, 0);
                    for i in 0..20 {
                        match c.put(&format!("f{t}-{i}"), Bytes::from("v"), None).await {
                            Ok(r) if r.status.is_success() => ok += 1,
                            Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => shed += 1,
                            _ => failed += 1,
                        }
                    }
                    (ok, shed, failed)
                })
            })
            .collect();
        // /health keeps answering during the flood.
        let health = common::Client::new(&url).unwrap();
        for _ in 0..10 {
            let r = health
                .request(hyper::Method::GET, "/health", &[], Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (mut ok, mut shed, mut failed) = (0, 0, 0);
        for t in tasks {
            let (o, s, f) = t.await.unwrap();
            ok += o;
            shed += s;
            failed += f;
        }
        assert!(ok > 0, "some writes went through");
        assert_eq!(ok + shed + failed, 4000);
        // Every request gets an answer: served or shed with a 503.
        assert_eq!(failed, 0, "ok {ok}, shed {shed}, failed {failed}");
        // And the node is fine afterwards.
        let r = health.put("after", Bytes::from("v"), None).await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
    });
}

#[test]
fn limit_values_are_checked() {
    for (bad, name) in [
        ("max_connections = 0", "max_connections"),
        ("max_in_flight = 0", "max_in_flight"),
        ("request_timeout_secs = 0", "request_timeout_secs"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ripple.toml");
        std::fs::write(&config, format!("[limits]\n{bad}\n")).unwrap();
        let o = std::process::Command::new(common::bin())
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
        assert!(String::from_utf8_lossy(&o.stderr).contains(name));
    }
}
