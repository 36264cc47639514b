//! Bad input, through the real binary over real HTTP: every kind gets a
//! clear 4xx with a JSON `{"error", "message"}` body, nothing (partial or
//! whole) is stored, and the server keeps serving afterwards. Invalid
//! configuration files stop `ripple serve` at once, with a message that
//! names the offending key.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{raw_status, rt, Client, Node, Reply};
use hyper::header::{HeaderName, HeaderValue, ACCEPT, IF_MATCH, IF_NONE_MATCH};
use hyper::{Method, StatusCode};

/// A node with small limits: keys up to 32 bytes, values up to 1000.
fn start_limited() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ripple.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_key_bytes = 32\nmax_value_bytes = 1000\n",
    )
    .unwrap();
    let node = Node::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    (dir, node)
}

fn start() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    (dir, node)
}

fn body_lossy(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Checks a JSON error body: an object with a string `error` equal to
/// `code` and a non-empty string `message`.
fn check_json_error(content_type: Option<&str>, body: &[u8], code: &str, what: &str) {
    assert_eq!(
        content_type.map(|c| c.split(';').next().unwrap().trim().to_ascii_lowercase()),
        Some("application/json".to_owned()),
        "{what}: Content-Type of {:?}",
        body_lossy(body)
    );
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", body_lossy(body)));
    assert_eq!(v["error"].as_str(), Some(code), "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.trim().is_empty()),
        "{what}: no message in {v}"
    );
}

/// Checks a reply is `status` with a JSON error `code`.
fn expect_error(reply: &Reply, status: StatusCode, code: &str, what: &str) {
    assert_eq!(
        reply.status,
        status,
        "{what}: {:?}",
        body_lossy(&reply.body)
    );
    check_json_error(reply.header("content-type"), &reply.body, code, what);
}

/// The node still answers: `/health` is 200 with `{"status": "ok"}`.
async fn assert_serving(c: &Client, after: &str) {
    let r = c
        .request(Method::GET, "/health", &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("the node stopped serving after {after}: {e:#}"));
    assert_eq!(r.status, StatusCode::OK, "/health after {after}");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], "ok", "/health after {after}");
}

/// Every key the node holds.
async fn all_keys(c: &Client) -> Vec<String> {
    let (keys, cursor) = c.list_page("", None, Some(10_000)).await.unwrap();
    assert_eq!(cursor, None);
    keys
}

async fn req(
    c: &Client,
    method: Method,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: &[u8],
) -> Reply {
    c.request(method.clone(), path, headers, Bytes::copy_from_slice(body))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

/// A raw response, split up.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn parse(text: &str) -> Raw {
        let status = raw_status(text);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers: {text:?}"));
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            })
            .collect();
        Raw {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn expect_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {:?}", self.body);
        check_json_error(
            self.header("content-type"),
            self.body.as_bytes(),
            code,
            what,
        );
    }
}

/// How a raw exchange ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed (or reset) the connection.
    Closed,
    /// A whole response arrived (the connection may stay open).
    Answered,
    /// Nothing more came for `QUIET`: the server is waiting for more.
    Quiet,
}

const QUIET: Duration = Duration::from_secs(5);

/// Sends `bytes` on a fresh connection and reads until the server closes,
/// a whole response has arrived, or it goes quiet; tells which.
fn raw_exchange(addr: &str, bytes: &[u8]) -> (String, End) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(QUIET)).unwrap();
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        match stream.read(&mut buf) {
            Ok(0) => break End::Closed,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if complete(&out) {
                    break End::Answered;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break End::Quiet
            }
            Err(_) => break End::Closed,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), end)
}

/// Whether `out` holds a whole response with a Content-Length body.
fn complete(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let Some(len) = text[..end].lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    }) else {
        return false;
    };
    out.len() >= end + 4 + len
}

#[test]
fn malformed_percent_encoding_in_the_key_is_400() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        let paths = [
            "/v1/kv/%zz",
            "/v1/kv/ab%4",
            "/v1/kv/%FF",
            "/v1/kv/%",
            "/v1/kv/ok/%C3",
            "/v1/kv/%C3%28",
        ];
        for path in paths {
            for method in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
                let r = req(&c, method.clone(), path, &[], b"value").await;
                let what = format!("{method} {path}");
                if method == Method::HEAD {
                    // The same status, without a body.
                    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}");
                } else {
                    expect_error(&r, StatusCode::BAD_REQUEST, "invalid_key", &what);
                    let msg = r.error_message();
                    assert!(
                        msg.contains("percent-encoding") || msg.contains("UTF-8"),
                        "{what}: the message does not say what is wrong: {msg}"
                    );
                }
                assert_serving(&c, &what).await;
            }
        }
        // The seed routes refuse them too, in the format asked for.
        let json = [(ACCEPT, HeaderValue::from_static("application/json"))];
        for path in ["/bucket/%zz", "/canonicalbucket/ab%4", "/bucket/%FF"] {
            for method in [Method::GET, Method::POST, Method::DELETE] {
                let r = req(&c, method.clone(), path, &json, b"value").await;
                expect_error(
                    &r,
                    StatusCode::BAD_REQUEST,
                    "invalid_key",
                    &format!("{method} {path}"),
                );
            }
        }
        assert_eq!(
            all_keys(&c).await,
            Vec::<String>::new(),
            "something was stored"
        );
        assert_serving(&c, "malformed keys").await;
    });
}

#[test]
fn empty_key_is_400() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for method in [Method::GET, Method::PUT, Method::DELETE, Method::POST] {
            let r = req(&c, method.clone(), "/v1/kv/", &[], b"value").await;
            expect_error(
                &r,
                StatusCode::BAD_REQUEST,
                "invalid_key",
                &format!("{method} /v1/kv/"),
            );
        }
        assert_eq!(
            all_keys(&c).await,
            Vec::<String>::new(),
            "something was stored"
        );
        assert_serving(&c, "empty keys").await;
    });
}

#[test]
fn over_long_key_is_400_and_not_stored() {
    let (_dir, node) = start_limited();
    let c = node.client();
    rt().block_on(async {
        let long = "k".repeat(33);
        let r = c.put(&long, Bytes::from_static(b"v"), None).await.unwrap();
        expect_error(
            &r,
            StatusCode::BAD_REQUEST,
            "key_too_long",
            "PUT 33-byte key",
        );
        assert!(
            r.error_message().contains("32"),
            "the limit is not named: {}",
            r.error_message()
        );
        let r = c.get(&long).await.unwrap();
        expect_error(
            &r,
            StatusCode::BAD_REQUEST,
            "key_too_long",
            "GET 33-byte key",
        );
        let r = c.delete(&long).await.unwrap();
        expect_error(
            &r,
            StatusCode::BAD_REQUEST,
            "key_too_long",
            "DELETE 33-byte key",
        );
        // The limit counts bytes: 17 two-byte characters are 34 bytes.
        let wide = "é".repeat(17);
        let r = c.put(&wide, Bytes::from_static(b"v"), None).await.unwrap();
        expect_error(
            &r,
            StatusCode::BAD_REQUEST,
            "key_too_long",
            "PUT 34-byte key",
        );
        assert_eq!(
            all_keys(&c).await,
            Vec::<String>::new(),
            "an over-long key was stored"
        );
        assert_serving(&c, "over-long keys").await;

        // Exactly the limit is fine.
        let fits = "k".repeat(32);
        let r = c.put(&fits, Bytes::from_static(b"v"), None).await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.error_message());
        assert_eq!(all_keys(&c).await, vec![fits]);
    });

    // Without a config the limit is 1024 bytes.
    let (_dir2, node) = start();
    let c = node.client();
    rt().block_on(async {
        let r = c
            .put(&"d".repeat(1025), Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        expect_error(
            &r,
            StatusCode::BAD_REQUEST,
            "key_too_long",
            "PUT 1025-byte key",
        );
        assert_eq!(all_keys(&c).await, Vec::<String>::new());
        let r = c
            .put(&"d".repeat(1024), Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.error_message());
        assert_serving(&c, "a 1025-byte key").await;
    });
}

#[test]
fn oversize_value_is_413_and_not_stored() {
    let (_dir, node) = start_limited();
    let c = node.client();
    rt().block_on(async {
        // With Content-Length.
        let r = c
            .put("big", Bytes::from(vec![b'x'; 1001]), None)
            .await
            .unwrap();
        expect_error(
            &r,
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            "PUT 1001 bytes",
        );
        assert!(
            r.error_message().contains("1000"),
            "the limit is not named: {}",
            r.error_message()
        );
        let r = c.get("big").await.unwrap();
        expect_error(
            &r,
            StatusCode::NOT_FOUND,
            "not_found",
            "GET after a refused PUT",
        );
        // Over the limit on the seed routes too.
        let json = [(ACCEPT, HeaderValue::from_static("application/json"))];
        let r = req(&c, Method::POST, "/bucket/big", &json, &[b'x'; 1001]).await;
        expect_error(
            &r,
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            "POST /bucket/big",
        );
        // A replaced value is not clobbered by a refused one.
        let r = c
            .put("kept", Bytes::from_static(b"small"), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        let r = c
            .put("kept", Bytes::from(vec![b'y'; 1001]), None)
            .await
            .unwrap();
        expect_error(
            &r,
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            "PUT over kept",
        );
        assert_eq!(c.get("kept").await.unwrap().body.as_ref(), b"small");
        // Exactly the limit is fine.
        let r = c
            .put("fits", Bytes::from(vec![b'z'; 1000]), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.error_message());
        assert_eq!(c.get("fits").await.unwrap().body.len(), 1000);
        assert_serving(&c, "oversize values").await;
    });

    // Bodies far over the limit, whose end the server never reads. These go
    // over a raw socket that reads the answer even after the server stopped
    // reading the body: the point is what the server sends.
    let addr = node.addr();
    for len in [100_000usize, 4 << 20] {
        let mut req =
            format!("PUT /v1/kv/big HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n")
                .into_bytes();
        req.extend(vec![b'x'; len]);
        let (resp, end) = raw_exchange(&addr, &req);
        assert_ne!(end, End::Quiet, "PUT {len} bytes: no answer: {resp:?}");
        Raw::parse(&resp).expect_error(413, "value_too_large", &format!("PUT {len} bytes"));
    }

    // Chunked: no length up front, so the limit must hold while reading.
    let chunked = |key: &str, chunks: &[usize]| -> String {
        let mut req = format!(
            "PUT /v1/kv/{key} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            node.addr()
        )
        .into_bytes();
        for &n in chunks {
            req.extend(format!("{n:x}\r\n").into_bytes());
            req.extend(vec![b'c'; n]);
            req.extend(b"\r\n");
        }
        req.extend(b"0\r\n\r\n");
        let (resp, end) = raw_exchange(&node.addr(), &req);
        assert_ne!(end, End::Quiet, "chunked {chunks:?}: no answer: {resp:?}");
        resp
    };
    let ok = Raw::parse(&chunked("chunked-ok", &[400, 400, 200]));
    assert_eq!(
        ok.status, 201,
        "a chunked value of exactly the limit: {:?}",
        ok.body
    );
    for chunks in [
        &[1001][..],
        &[500, 500, 1][..],
        &[400, 400, 400, 400][..],
        &[16 << 10; 16][..],
    ] {
        let resp = chunked("chunked-big", chunks);
        Raw::parse(&resp).expect_error(413, "value_too_large", &format!("chunked {chunks:?}"));
    }
    rt().block_on(async {
        let r = c.get("chunked-big").await.unwrap();
        expect_error(
            &r,
            StatusCode::NOT_FOUND,
            "not_found",
            "GET after a refused chunked PUT",
        );
        assert_eq!(c.get("chunked-ok").await.unwrap().body.len(), 1000);
        let mut keys = all_keys(&c).await;
        keys.sort();
        assert_eq!(keys, ["chunked-ok", "fits", "kept"]);
        assert_serving(&c, "oversize chunked values").await;
    });
}

#[test]
fn oversize_headers_are_431() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        // One 100 KiB header: over the 64 KiB limit, inside hyper's buffer.
        let big = HeaderValue::from_str(&"a".repeat(100 << 10)).unwrap();
        let headers = [(HeaderName::from_static("x-big"), big)];
        for (method, path) in [
            (Method::GET, "/health"),
            (Method::PUT, "/v1/kv/hdr"),
            (Method::GET, "/v1/kv/hdr"),
            (Method::POST, "/bucket/hdr"),
        ] {
            let r = req(&c, method.clone(), path, &headers, b"value").await;
            expect_error(
                &r,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                &format!("100 KiB header on {method} {path}"),
            );
            assert_serving(&c, "a 100 KiB header").await;
        }
        // 150 header fields: over the 100-field limit.
        let many: Vec<(HeaderName, HeaderValue)> = (0..150)
            .map(|i| {
                (
                    HeaderName::from_bytes(format!("x-field-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                )
            })
            .collect();
        let r = req(&c, Method::PUT, "/v1/kv/hdr", &many, b"value").await;
        expect_error(
            &r,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "150 header fields",
        );
        assert_serving(&c, "150 header fields").await;
        // 100 fields in all (with Host and Content-Length) are fine.
        let r = req(&c, Method::PUT, "/v1/kv/hdr-ok", &many[..98], b"value").await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "98 extra header fields: {:?}",
            r.error_message()
        );
        assert_eq!(
            all_keys(&c).await,
            ["hdr-ok"],
            "a request with oversize headers stored something"
        );
    });

    // Past hyper's own limits (buffer and field count): at least a 431.
    let addr = node.addr();
    let mut huge = format!("PUT /v1/kv/huge HTTP/1.1\r\nHost: {addr}\r\nX-Huge: ").into_bytes();
    huge.extend(vec![b'h'; 300 << 10]);
    huge.extend(b"\r\nContent-Length: 1\r\n\r\nv");
    let mut fields = format!("PUT /v1/kv/huge HTTP/1.1\r\nHost: {addr}\r\n").into_bytes();
    for i in 0..300 {
        fields.extend(format!("X-F{i}: v\r\n").into_bytes());
    }
    fields.extend(b"Content-Length: 1\r\n\r\nv");
    for (what, bytes) in [("a 300 KiB header", huge), ("300 header fields", fields)] {
        let (resp, end) = raw_exchange(&addr, &bytes);
        assert_ne!(
            end,
            End::Quiet,
            "{what}: the server neither answered nor closed"
        );
        assert!(
            !resp.is_empty(),
            "{what}: the server closed without an answer"
        );
        assert_eq!(raw_status(&resp), 431, "{what}: {resp:?}");
        rt().block_on(assert_serving(&c, what));
    }
    rt().block_on(async {
        let r = c.get("huge").await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    });
}

#[test]
fn malformed_if_match_is_400() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        let r = c
            .put("cond", Bytes::from_static(b"original"), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        for bad in [
            "abc",
            "\"unterminated",
            "\"a\"b\"",
            "W/abc",
            "",
            ",",
            "\"ok\", bare",
        ] {
            for name in [IF_MATCH, IF_NONE_MATCH] {
                let h = [(name.clone(), HeaderValue::from_str(bad).unwrap())];
                let what = |m: &str| format!("{m} with {name}: {bad:?}");
                let r = req(&c, Method::PUT, "/v1/kv/cond", &h, b"changed").await;
                expect_error(&r, StatusCode::BAD_REQUEST, "bad_header", &what("PUT"));
                let r = req(&c, Method::PUT, "/v1/kv/cond-new", &h, b"new").await;
                expect_error(&r, StatusCode::BAD_REQUEST, "bad_header", &what("PUT new"));
                let r = req(&c, Method::DELETE, "/v1/kv/cond", &h, b"").await;
                expect_error(&r, StatusCode::BAD_REQUEST, "bad_header", &what("DELETE"));
                let r = req(&c, Method::GET, "/v1/kv/cond", &h, b"").await;
                expect_error(&r, StatusCode::BAD_REQUEST, "bad_header", &what("GET"));
            }
        }
        // Not ASCII at all.
        let h = [(
            IF_MATCH,
            HeaderValue::from_bytes(b"\"caf\xc3\xa9\"").unwrap(),
        )];
        let r = req(&c, Method::PUT, "/v1/kv/cond", &h, b"changed").await;
        expect_error(
            &r,
            StatusCode::BAD_REQUEST,
            "bad_header",
            "non-ASCII If-Match",
        );
        // Nothing changed, nothing was created.
        assert_eq!(c.get("cond").await.unwrap().body.as_ref(), b"original");
        assert_eq!(all_keys(&c).await, ["cond"]);
        // A well-formed one that does not match is a 412, not a 400.
        let h = [(IF_MATCH, HeaderValue::from_static("\"nope\""))];
        let r = req(&c, Method::PUT, "/v1/kv/cond", &h, b"changed").await;
        expect_error(
            &r,
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "non-matching If-Match",
        );
        assert_serving(&c, "malformed If-Match").await;
    });
}

/// The anti-entropy routes refuse bad ranges, bodies and queries with 400,
/// and answer good ones.
#[test]
fn bad_digest_and_repair_requests_are_400() {
    let (_dir, node) = start_limited();
    let c = node.client();
    rt().block_on(async {
        c.put("a", Bytes::from_static(b"v"), None).await.unwrap();
        let json = [(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        )];
        let long_key = format!("{{\"keys\": [\"{}\"]}}", "k".repeat(33));
        let too_many = format!("{{\"keys\": [{}]}}", vec!["\"k\""; 1001].join(","));
        let cases: Vec<(Method, &str, &[u8], &str)> = vec![
            (Method::GET, "/v1/digest?x=1", b"", "bad_query"),
            (Method::POST, "/v1/repair?timeout_ms=0", b"", "bad_query"),
            (Method::POST, "/v1/repair?timeout_ms=abc", b"", "bad_query"),
            (Method::POST, "/v1/repair?colour=blue", b"", "bad_query"),
            (Method::GET, "/internal/v1/versions", b"", "bad_query"),
            (
                Method::GET,
                "/internal/v1/versions?ranges=",
                b"",
                "bad_query",
            ),
            (
                Method::GET,
                "/internal/v1/versions?ranges=1",
                b"",
                "bad_query",
            ),
            (
                Method::GET,
                "/internal/v1/versions?ranges=100",
                b"",
                "bad_query",
            ),
            (
                Method::GET,
                "/internal/v1/versions?ranges=zz",
                b"",
                "bad_query",
            ),
            (
                Method::GET,
                "/internal/v1/versions?ranges=+1",
                b"",
                "bad_query",
            ),
            (
                Method::GET,
                "/internal/v1/versions?ranges=00,",
                b"",
                "bad_query",
            ),
            (
                Method::GET,
                "/internal/v1/versions?ranges=00&x=1",
                b"",
                "bad_query",
            ),
            (Method::POST, "/internal/v1/records", b"", "bad_body"),
            (
                Method::POST,
                "/internal/v1/records",
                b"{\"keys\": 3}",
                "bad_body",
            ),
            (Method::POST, "/internal/v1/records", b"[\"a\"]", "bad_body"),
            (
                Method::POST,
                "/internal/v1/records",
                b"{\"keys\": [\"\"]}",
                "invalid_key",
            ),
            (
                Method::POST,
                "/internal/v1/records",
                long_key.as_bytes(),
                "key_too_long",
            ),
            (
                Method::POST,
                "/internal/v1/records",
                too_many.as_bytes(),
                "bad_body",
            ),
        ];
        for (method, path, body, code) in cases {
            let what = format!("{method} {path} {:?}", body_lossy(body));
            let r = req(&c, method, path, &json, body).await;
            expect_error(&r, StatusCode::BAD_REQUEST, code, &what);
            assert_serving(&c, &what).await;
        }
        // Good requests work.
        let r = req(&c, Method::GET, "/v1/digest", &[], b"").await;
        assert_eq!(r.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["records"], 1, "{v}");
        assert_eq!(v["ranges"].as_array().unwrap().len(), 256, "{v}");
        let r = req(&c, Method::POST, "/v1/repair", &[], b"").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.error_message());
        let r = req(
            &c,
            Method::GET,
            "/internal/v1/versions?ranges=00,FF,3a",
            &[],
            b"",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.error_message());
        let r = req(
            &c,
            Method::POST,
            "/internal/v1/records",
            &json,
            b"{\"keys\": [\"a\", \"b\", \"a\"]}",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.error_message());
        assert_eq!(r.header("x-ripple-covered"), Some("3"));
        let entries = ripple::replication::codec::decode(r.body.clone()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(&entries[0].record.value[..], b"v");
    });
}

#[test]
fn bad_list_params_are_400() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for key in ["a", "b", "c"] {
            c.put(key, Bytes::from_static(b"v"), None).await.unwrap();
        }
        for query in [
            "limit=0",
            "limit=abc",
            "limit=10001",
            "limit=-1",
            "limit=",
            "limit=1.5",
            "limit=99999999999999999999999",
            "colour=blue",
            "prefix=a&bogus",
            "prefix=%zz",
            "cursor=%FF",
        ] {
            let path = format!("/v1/kv?{query}");
            let r = req(&c, Method::GET, &path, &[], b"").await;
            expect_error(&r, StatusCode::BAD_REQUEST, "bad_query", &path);
            assert_serving(&c, &path).await;
        }
        // The edges of the range work.
        for (query, expected) in [("limit=1", vec!["a"]), ("limit=10000", vec!["a", "b", "c"])] {
            let r = req(&c, Method::GET, &format!("/v1/kv?{query}"), &[], b"").await;
            assert_eq!(r.status, StatusCode::OK, "{query}: {:?}", r.error_message());
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["keys"], serde_json::json!(expected), "{query}");
        }
    });
}

#[test]
fn wrong_method_is_405_json_with_allow() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for (method, path, must_allow) in [
            (Method::POST, "/v1/kv/k", &["GET", "PUT", "DELETE"][..]),
            (Method::PATCH, "/v1/kv/k", &["GET", "PUT", "DELETE"][..]),
            (Method::POST, "/v1/kv", &["GET"][..]),
            (Method::DELETE, "/health", &["GET"][..]),
            (
                Method::PATCH,
                "/bucket/k",
                &["GET", "POST", "PUT", "DELETE"][..],
            ),
        ] {
            let r = req(&c, method.clone(), path, &[], b"value").await;
            let what = format!("{method} {path}");
            expect_error(
                &r,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &what,
            );
            let allow = r
                .header("allow")
                .unwrap_or_else(|| panic!("{what}: no Allow header"));
            let allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
            for m in must_allow {
                assert!(allowed.contains(m), "{what}: Allow {allow:?} lacks {m}");
            }
            assert!(
                !allowed.contains(&method.as_str()),
                "{what}: Allow {allow:?} lists {method}"
            );
        }
        // The refused POST stored nothing.
        let r = c.get("k").await.unwrap();
        expect_error(&r, StatusCode::NOT_FOUND, "not_found", "GET after POST");
        assert_serving(&c, "wrong methods").await;
    });
}

#[test]
fn unknown_path_is_404_json() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for (method, path) in [
            (Method::GET, "/nope"),
            (Method::GET, "/"),
            (Method::GET, "/v1"),
            (Method::GET, "/v2/kv/k"),
            (Method::PUT, "/v1/other/k"),
            (Method::DELETE, "/lazybucket/k"),
        ] {
            let r = req(&c, method.clone(), path, &[], b"value").await;
            let what = format!("{method} {path}");
            expect_error(&r, StatusCode::NOT_FOUND, "not_found", &what);
            assert!(
                r.error_message().contains(path),
                "{what}: the message does not name the path: {}",
                r.error_message()
            );
        }
        assert_eq!(all_keys(&c).await, Vec::<String>::new());
        assert_serving(&c, "unknown paths").await;
    });
}

#[test]
fn garbage_that_is_not_http_gets_400_or_a_close() {
    let (_dir, node) = start();
    let c = node.client();
    let addr = node.addr();
    let cases: &[&[u8]] = &[
        b"\x00\x01\x02\x03\xff\xfe garbage\r\n\r\n",
        b"HELLO WORLD\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost localhost\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"PUT /v1/kv/g HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"PUT /v1/kv/g HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET /he\x00lth HTTP/1.1\r\n\r\n",
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let (resp, end) = raw_exchange(&addr, bytes);
        let what = format!("garbage #{i} {:?}", String::from_utf8_lossy(bytes));
        assert_ne!(
            end,
            End::Quiet,
            "{what}: the server neither answered nor closed: {resp:?}"
        );
        if !resp.is_empty() {
            assert!(
                resp.starts_with("HTTP/1."),
                "{what}: not an HTTP answer: {resp:?}"
            );
            assert_eq!(raw_status(&resp), 400, "{what}: {resp:?}");
        }
        rt().block_on(assert_serving(&c, &what));
    }
    rt().block_on(async {
        let r = c.get("g").await.unwrap();
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "garbage stored a value: {:?}",
            r.body
        );
    });
}

/// Runs `ripple serve --config FILE --data-dir DATA`; its exit code and
/// stderr. Kills it and fails when it still runs after 10 seconds.
fn serve_guarded(file: &Path, data: &Path, what: &str) -> (Option<i32>, String) {
    let mut child = Command::new(common::bin())
        .arg("serve")
        .arg("--config")
        .arg(file)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ripple");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: ripple serve was still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

/// Writes `config` to `dir/name.toml` and runs `serve_guarded` on it.
fn serve_with_config(dir: &Path, name: &str, config: &str) -> (Option<i32>, String) {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, config).unwrap();
    serve_guarded(
        &file,
        &dir.join(format!("{name}-data")),
        &format!("{name} ({config:?})"),
    )
}

#[test]
fn invalid_config_files_stop_the_binary_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // Each file listens on port 0, so a wrongly accepted one cannot clash.
    let cases: &[(&str, &str, &[&str])] = &[
        ("unknown-key", "listen = \"127.0.0.1:0\"\nnodeid = \"x\"\n", &["nodeid"]),
        (
            "unknown-nested-key",
            "listen = \"127.0.0.1:0\"\n[limits]\nmax_keys = 5\n",
            &["max_keys"],
        ),
        (
            "wrong-type",
            "listen = \"127.0.0.1:0\"\n[limits]\nmax_key_bytes = \"big\"\n",
            &["max_key_bytes"],
        ),
        (
            "negative",
            "listen = \"127.0.0.1:0\"\n[limits]\nmax_value_bytes = -1\n",
            &["max_value_bytes"],
        ),
        ("bad-listen", "listen = \"nowhere\"\n", &["listen"]),
        ("zero-cache", "[storage]\ncache_mib = 0\n", &["storage.cache_mib"]),
        (
            "anti-entropy-too-rare",
            "[replication]\nanti_entropy_interval_secs = 700000\n",
            &["replication.anti_entropy_interval_secs"],
        ),
        (
            "node-id-with-spaces",
            "listen = \"127.0.0.1:0\"\nnode_id = \"a b\"\n",
            &["node_id"],
        ),
        (
            "oracle-engine",
            "listen = \"127.0.0.1:0\"\n[storage]\nengine = \"oracle\"\n",
            &["engine", "oracle"],
        ),
        (
            "zero-key-limit",
            "listen = \"127.0.0.1:0\"\n[limits]\nmax_key_bytes = 0\n",
            &["max_key_bytes"],
        ),
        (
            "members-without-self",
            "listen = \"127.0.0.1:0\"\nnode_id = \"n1\"\n[cluster]\nmembers = [{ id = \"n2\", url = \"http://127.0.0.1:7072\" }]\n",
            &["cluster.members", "n1"],
        ),
        (
            "duplicate-members",
            "listen = \"127.0.0.1:0\"\nnode_id = \"n1\"\n[cluster]\nmembers = [\n  { id = \"n1\", url = \"http://127.0.0.1:7071\" },\n  { id = \"n1\", url = \"http://127.0.0.1:7072\" },\n]\n",
            &["cluster.members", "n1"],
        ),
        (
            "member-bad-url",
            "listen = \"127.0.0.1:0\"\n[cluster]\nmembers = [{ id = \"n1\", url = \"ftp://h\" }]\n",
            &["members[0].url"],
        ),
        ("not-toml", "listen = \n", &["listen"]),
    ];
    for (name, config, needles) in cases {
        let (code, stderr) = serve_with_config(dir.path(), name, config);
        assert!(
            matches!(code, Some(c) if c != 0),
            "{name}: exit code {code:?}, stderr {stderr:?}"
        );
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{name}: stderr does not name {needle:?}: {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{name}: a panic: {stderr}");
        assert!(
            !dir.path().join(format!("{name}-data")).exists(),
            "{name}: a data dir was made before the config was checked"
        );
    }

    // A missing file is named too.
    let missing = dir.path().join("no-such-file.toml");
    let (code, stderr) = serve_guarded(
        &missing,
        &dir.path().join("missing-data"),
        "a missing config file",
    );
    assert!(
        matches!(code, Some(c) if c != 0),
        "missing file: exit code {code:?}"
    );
    assert!(
        stderr.contains("no-such-file.toml"),
        "missing file: {stderr}"
    );

    // The control: a valid file of the same shape starts a node.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "node_id = \"n1\"\n[storage]\nengine = \"embedded\"\n[limits]\nmax_key_bytes = 32\n[cluster]\nmembers = [{ id = \"n1\", url = \"http://127.0.0.1:7071\" }]\n",
    )
    .unwrap();
    let node = Node::start_with(
        &dir.path().join("good-data"),
        &["--config", good.to_str().unwrap()],
    );
    rt().block_on(assert_serving(&node.client(), "a valid config"));
}

#[test]
fn an_oversize_upload_gets_its_413_while_still_sending() {
    // The server answers before the body is all there; it reads and drops
    // the rest, so a client that is still sending reads the 413 every time
    // instead of a reset connection.
    let (_dir, node) = start_limited();
    let c = node.client();
    rt().block_on(async {
        for i in 0..20 {
            let r = c
                .put(
                    &format!("big{i}"),
                    Bytes::from(vec![b'x'; 100_000 + i * 10_000]),
                    None,
                )
                .await
                .expect("an answer, not a broken connection");
            expect_error(
                &r,
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                "oversize upload",
            );
        }
        assert!(all_keys(&c).await.is_empty());
    });
}
