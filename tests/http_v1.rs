//! The v1 API through the real binary over real HTTP: statuses, headers,
//! byte-exact values, awkward keys, listing, conditional requests.

mod common;

use bytes::Bytes;
use common::{error_code, rt, Client, Node};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH};
use hyper::{Method, StatusCode};
use ripple::client::kv_path;

fn h(name: HeaderName, value: &str) -> (HeaderName, HeaderValue) {
    (name, HeaderValue::from_str(value).unwrap())
}

#[test]
fn put_get_head_delete_statuses_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client();
    rt().block_on(async {
        let r = c.get("k").await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(error_code(&r), "not_found");

        let r = c
            .put("k", Bytes::from("v1"), Some("text/plain"))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        let etag1 = r.header("etag").unwrap().to_owned();
        assert!(etag1.starts_with('"') && etag1.ends_with('"'), "{etag1}");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["key"], "k");
        assert_eq!(format!("\"{}\"", body["version"].as_str().unwrap()), etag1);

        let r = c.get("k").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "v1");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("etag"), Some(etag1.as_str()));

        let r = c
            .request(Method::HEAD, "/v1/kv/k", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length"), Some("2"));
        assert_eq!(r.header("etag"), Some(etag1.as_str()));

        let r = c.put("k", Bytes::from("v2"), None).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "a replaced key answers 200");
        let etag2 = r.header("etag").unwrap().to_owned();
        assert_ne!(etag1, etag2);
        let r = c.get("k").await.unwrap();
        assert_eq!(r.body, "v2");
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));

        let r = c.delete("k").await.unwrap();
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert!(r.body.is_empty());
        assert_eq!(c.get("k").await.unwrap().status, StatusCode::NOT_FOUND);
        let r = c.delete("k").await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(error_code(&r), "not_found");

        // A deleted key written again is new.
        assert_eq!(
            c.put("k", Bytes::from("v3"), None).await.unwrap().status,
            StatusCode::CREATED
        );

        let r = c
            .request(Method::GET, "/health", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    });
}

#[test]
fn versions_increase_with_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client();
    rt().block_on(async {
        let mut last = String::new();
        for i in 0..20 {
            let r = c.put("v", Bytes::from(format!("{i}")), None).await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let version = body["version"].as_str().unwrap().to_owned();
            let (ts, node_id) = version.split_once('-').unwrap();
            assert_eq!(node_id, "n1");
            let ts = u64::from_str_radix(ts, 16).unwrap();
            if !last.is_empty() {
                let prev = u64::from_str_radix(last.split_once('-').unwrap().0, 16).unwrap();
                assert!(ts > prev, "version {version} not above {last}");
            }
            last = version;
        }
    });
}

#[test]
fn binary_values_are_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client();
    rt().block_on(async {
        let value: Vec<u8> = (0..=255u8).rev().cycle().take(300_000).collect();
        let r = c
            .put("bin", Bytes::from(value.clone()), Some("image/png"))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        let r = c.get("bin").await.unwrap();
        assert_eq!(r.body.as_ref(), value.as_slice());
        assert_eq!(r.header("content-type"), Some("image/png"));
        // Empty values are values.
        assert_eq!(
            c.put("empty", Bytes::new(), None).await.unwrap().status,
            StatusCode::CREATED
        );
        let r = c.get("empty").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.is_empty());
    });
}

#[test]
fn awkward_keys_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client();
    let keys = [
        "a/b/c",
        "/leading/slash",
        "trailing/",
        "with space",
        "question?mark",
        "hash#tag",
        "per%cent",
        "100%25",
        "plus+sign",
        "ünïcødé/日本語/😀",
        "a//b",
        "..",
        "amp&eq=",
    ];
    rt().block_on(async {
        for (i, key) in keys.iter().enumerate() {
            let r = c
                .put(key, Bytes::from(format!("value {i}")), None)
                .await
                .unwrap();
            assert_eq!(
                r.status,
                StatusCode::CREATED,
                "{key}: {}",
                r.error_message()
            );
        }
        for (i, key) in keys.iter().enumerate() {
            let r = c.get(key).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{key}");
            assert_eq!(r.body, format!("value {i}"), "{key}");
        }
        let (mut listed, cursor) = c.list_page("", None, None).await.unwrap();
        assert_eq!(cursor, None);
        let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        expected.sort();
        listed.sort();
        assert_eq!(listed, expected);
        // Unencoded '/' and encoded '%2F' name the same key.
        let r = c
            .request(Method::GET, "/v1/kv/a%2Fb%2Fc", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.body, "value 0");
        // '+' in a path is a plus, not a space.
        let r = c
            .request(Method::GET, "/v1/kv/plus+sign", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.body, "value 8");
        // A query string is not part of the key.
        let r = c
            .request(
                Method::GET,
                "/v1/kv/with%20space?consistency=any",
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.body, "value 3");
    });
}

#[test]
fn prefix_listing_pages_in_byte_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client();
    rt().block_on(async {
        let mut expected = Vec::new();
        for i in 0..250 {
            let key = format!("users/{i:04}");
            c.put(&key, Bytes::from("x"), None).await.unwrap();
            expected.push(key);
        }
        for key in ["user", "users", "usersz", "other/1"] {
            c.put(key, Bytes::from("x"), None).await.unwrap();
        }
        c.delete("users/0100").await.unwrap();
        expected.retain(|k| k != "users/0100");

        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let (keys, next) = c
                .list_page("users/", cursor.as_deref(), Some(100))
                .await
                .unwrap();
            assert!(keys.len() <= 100);
            pages += 1;
            got.extend(keys);
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(got, expected, "every live key once, in order");

        // Exactly one full page: the cursor is null on it.
        let (keys, next) = c.list_page("users/00", None, Some(100)).await.unwrap();
        assert_eq!(keys.len(), 100);
        assert_eq!(next, None);

        // Default limit and the JSON shape.
        let r = c
            .request(Method::GET, "/v1/kv?prefix=user", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["keys"].as_array().unwrap().len(), 252);
        assert!(v["cursor"].is_null());
        // An encoded prefix with a space and a slash.
        c.put("a b/c", Bytes::from("x"), None).await.unwrap();
        let r = c
            .request(Method::GET, "/v1/kv?prefix=a+b%2F", &[], Bytes::new())
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["keys"], serde_json::json!(["a b/c"]));
    });
}

#[test]
fn conditional_requests() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client();
    let put =
        |c: &Client, key: &str, value: &'static str, headers: Vec<(HeaderName, HeaderValue)>| {
            let c = c.clone();
            let path = kv_path(key);
            async move {
                c.request(Method::PUT, &path, &headers, Bytes::from(value))
                    .await
                    .unwrap()
            }
        };
    rt().block_on(async {
        // If-None-Match: * creates only.
        let r = put(&c, "c", "first", vec![h(IF_NONE_MATCH, "*")]).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let etag = r.header("etag").unwrap().to_owned();
        let r = put(&c, "c", "second", vec![h(IF_NONE_MATCH, "*")]).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(error_code(&r), "precondition_failed");
        assert_eq!(c.get("c").await.unwrap().body, "first");

        // If-Match: the current etag replaces; a stale one fails.
        let r = put(&c, "c", "third", vec![h(IF_MATCH, &etag)]).await;
        assert_eq!(r.status, StatusCode::OK);
        let etag3 = r.header("etag").unwrap().to_owned();
        let r = put(&c, "c", "fourth", vec![h(IF_MATCH, &etag)]).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(c.get("c").await.unwrap().body, "third");
        // A list that contains the current etag matches.
        let r = put(
            &c,
            "c",
            "fifth",
            vec![h(IF_MATCH, &format!("\"nope\", {etag3}"))],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        // If-Match on an absent key fails, even with *.
        let r = put(&c, "absent", "x", vec![h(IF_MATCH, "*")]).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(c.get("absent").await.unwrap().status, StatusCode::NOT_FOUND);

        // GET with If-None-Match: 304 when current, 200 otherwise.
        let cur = c.get("c").await.unwrap().header("etag").unwrap().to_owned();
        let r = c
            .request(
                Method::GET,
                "/v1/kv/c",
                &[h(IF_NONE_MATCH, &cur)],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(cur.as_str()));
        let r = c
            .request(
                Method::GET,
                "/v1/kv/c",
                &[h(IF_NONE_MATCH, &etag)],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "fifth");

        // DELETE with a stale If-Match fails and keeps the value.
        let r = c
            .request(
                Method::DELETE,
                "/v1/kv/c",
                &[h(IF_MATCH, &etag)],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(c.get("c").await.unwrap().status, StatusCode::OK);
        let r = c
            .request(
                Method::DELETE,
                "/v1/kv/c",
                &[h(IF_MATCH, &cur)],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(c.get("c").await.unwrap().status, StatusCode::NOT_FOUND);
    });
}

#[test]
fn conditional_puts_race_to_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client();
    rt().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..16 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let r = c
                    .request(
                        Method::PUT,
                        "/v1/kv/lock",
                        &[h(IF_NONE_MATCH, "*")],
                        Bytes::from(format!("owner {i}")),
                    )
                    .await
                    .unwrap();
                (i, r.status)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (i, status) = t.await.unwrap();
            match status {
                StatusCode::CREATED => winners.push(i),
                StatusCode::PRECONDITION_FAILED => {}
                s => panic!("unexpected status {s}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "exactly one create-only PUT wins: {winners:?}"
        );
        let r = c.get("lock").await.unwrap();
        assert_eq!(r.body, format!("owner {}", winners[0]));
    });
}

#[test]
fn content_type_is_kept_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client();
    rt().block_on(async {
        let r = c
            .request(
                Method::PUT,
                "/v1/kv/json",
                &[h(CONTENT_TYPE, "application/json; charset=utf-8")],
                Bytes::from("{}"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        let r = c.get("json").await.unwrap();
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert!(r.headers.contains_key(ETAG));
    });
}

#[test]
fn data_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let before = rt().block_on(async {
        let c = node.client();
        let r = c.put("keep", Bytes::from("me"), None).await.unwrap();
        c.put("gone", Bytes::from("x"), None).await.unwrap();
        c.delete("gone").await.unwrap();
        version_ts(&r)
    });
    node.sigterm();
    assert_eq!(
        node.wait_exit(std::time::Duration::from_secs(20)),
        Some(0),
        "clean exit on SIGTERM"
    );
    let node = Node::start(dir.path());
    rt().block_on(async {
        let c = node.client();
        assert_eq!(c.get("keep").await.unwrap().body, "me");
        assert_eq!(c.get("gone").await.unwrap().status, StatusCode::NOT_FOUND);
        // Versions keep increasing across the restart.
        let r = c.put("keep", Bytes::from("again"), None).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(version_ts(&r) > before);
    });
}

/// The clock part of a write's ETag.
fn version_ts(r: &common::Reply) -> u64 {
    let etag = r.header("etag").unwrap().trim_matches('"');
    u64::from_str_radix(etag.split('-').next().unwrap(), 16).unwrap()
}
