//! The seed's own test cases, through the real binary over real HTTP.
//!
//! The 2011 Python service tested its routes with `test_canonical_controller.py`
//! and `test_lazy_controller.py`: post a key, read it, overwrite it, delete
//! it, delete and re-insert, read and delete a missing key, refuse a key
//! longer than the limit, list every key. Here every one of those cases runs
//! on both route families (`/bucket/` and `/canonicalbucket/`) and in all four
//! formats the `Accept` header negotiates (HTML by default, XML, JSON, plain
//! text), and each body is checked for its exact shape. On top of the seed's
//! cases: markup in values is escaped (the seed's HTML was not), each format
//! has its content type, PUT stores like POST, an `Accept` we cannot serve
//! gets a JSON 406, and what the seed routes store is what v1 reads.
//!
//! Each test function starts one node and uses keys of its own.

mod common;

use bytes::Bytes;
use common::{raw_request, raw_status, rt, Client, Node, Reply};
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION};
use hyper::{Method, StatusCode};

/// Both route families; on one node they behave alike.
const FAMILIES: [&str; 2] = ["bucket", "canonicalbucket"];

/// The four formats, as chosen by `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fmt {
    /// No `Accept` header at all: the default.
    Html,
    Xml,
    Json,
    Text,
}

const FORMATS: [Fmt; 4] = [Fmt::Html, Fmt::Xml, Fmt::Json, Fmt::Text];

impl Fmt {
    fn name(self) -> &'static str {
        match self {
            Fmt::Html => "html",
            Fmt::Xml => "xml",
            Fmt::Json => "json",
            Fmt::Text => "text",
        }
    }

    /// The `Accept` header that selects this format (none for HTML).
    fn accept(self) -> Option<&'static str> {
        match self {
            Fmt::Html => None,
            Fmt::Xml => Some("application/xml"),
            Fmt::Json => Some("application/json"),
            Fmt::Text => Some("text/plain"),
        }
    }

    /// The media type the answer must carry.
    fn media_type(self) -> &'static str {
        match self {
            Fmt::Html => "text/html",
            Fmt::Xml => "application/xml",
            Fmt::Json => "application/json",
            Fmt::Text => "text/plain",
        }
    }

    fn headers(self) -> Vec<(HeaderName, HeaderValue)> {
        self.accept()
            .map(|a| vec![(ACCEPT, HeaderValue::from_static(a))])
            .unwrap_or_default()
    }
}

/// Sends one request in format `fmt`.
async fn send(c: &Client, method: Method, path: &str, fmt: Fmt, body: &[u8]) -> Reply {
    c.request(
        method.clone(),
        path,
        &fmt.headers(),
        Bytes::copy_from_slice(body),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path} ({fmt:?}) failed: {e:#}"))
}

fn body_text(reply: &Reply) -> String {
    String::from_utf8(reply.body.to_vec())
        .unwrap_or_else(|_| panic!("the body is not UTF-8: {:?}", reply.body))
}

/// Checks the status, with the body in the panic message.
fn expect_status(reply: &Reply, status: StatusCode, what: &str) {
    assert_eq!(
        reply.status,
        status,
        "{what}: body {:?}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// Checks that the reply's `Content-Type` is `fmt`'s media type, with
/// `charset=utf-8` on the text types (HTTP's historical default for
/// `text/*` is Latin-1, which would garble non-ASCII values).
fn expect_content_type(reply: &Reply, fmt: Fmt, what: &str) {
    let ct = reply
        .header("content-type")
        .unwrap_or_else(|| panic!("{what}: no Content-Type"))
        .to_ascii_lowercase();
    let mut parts = ct.split(';').map(str::trim);
    assert_eq!(
        parts.next(),
        Some(fmt.media_type()),
        "{what}: Content-Type {ct:?} for {fmt:?}"
    );
    if matches!(fmt, Fmt::Html | Fmt::Text) {
        assert!(
            parts.any(|p| p.replace(' ', "") == "charset=utf-8"),
            "{what}: Content-Type {ct:?} has no charset=utf-8"
        );
    }
}

/// Undoes HTML/XML escaping: the five named entities and numeric ones.
/// Panics on a bare `&` (not the start of an entity), which would mean the
/// text was not escaped.
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after
            .find(';')
            .filter(|&e| e > 0 && e <= 10)
            .unwrap_or_else(|| panic!("a bare '&' in markup: {text:?}"));
        let name = &after[..end];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            n if n.starts_with("#x") || n.starts_with("#X") => {
                char::from_u32(u32::from_str_radix(&n[2..], 16).expect("hex entity"))
                    .expect("a character")
            }
            n if n.starts_with('#') => {
                char::from_u32(n[1..].parse().expect("decimal entity")).expect("a character")
            }
            n => panic!("unknown entity &{n}; in {text:?}"),
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The text between the only `open` and the `close` after it.
fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    assert_eq!(
        text.matches(open).count(),
        1,
        "expected exactly one {open} in {text:?}"
    );
    let start = text.find(open).unwrap() + open.len();
    let len = text[start..]
        .find(close)
        .unwrap_or_else(|| panic!("no {close} after {open} in {text:?}"));
    &text[start..start + len]
}

/// Checks the envelope of an HTML document and returns its body's markup.
fn html_body(text: &str) -> &str {
    let t = text.trim();
    assert!(
        t.starts_with("<html") && t.ends_with("</html>"),
        "not an HTML document: {text:?}"
    );
    between(t, "<body>", "</body>")
}

/// Checks the envelope of the XML answer and returns the markup inside
/// `<message>`.
fn xml_message(text: &str) -> &str {
    let t = text.trim();
    assert!(
        t.starts_with("<?xml ") && t.ends_with("</message>"),
        "not an XML message document: {text:?}"
    );
    between(t, "<message>", "</message>")
}

/// Parses the JSON answer: an object with `message` (and, for errors,
/// `error`) and nothing else.
fn json_object(reply: &Reply) -> serde_json::Map<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&reply.body)));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {v}"))
        .clone();
    let expected: &[&str] = if reply.status.is_success() {
        &["message"]
    } else {
        &["error", "message"]
    };
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, expected, "unexpected fields in {v}");
    obj
}

/// The one text message of a reply in format `fmt`, after checking the
/// content type and the exact shape of the body.
fn message(reply: &Reply, fmt: Fmt) -> String {
    expect_content_type(reply, fmt, "message");
    let text = body_text(reply);
    match fmt {
        Fmt::Html => {
            let inner = html_body(&text);
            assert!(!inner.contains('<'), "markup inside the message: {text:?}");
            unescape(inner)
        }
        Fmt::Xml => {
            let inner = xml_message(&text);
            assert!(!inner.contains('<'), "markup inside the message: {text:?}");
            unescape(inner)
        }
        Fmt::Json => {
            let obj = json_object(reply);
            obj["message"]
                .as_str()
                .unwrap_or_else(|| panic!("message is not a string: {text:?}"))
                .to_owned()
        }
        Fmt::Text => text,
    }
}

/// The list of a listing reply in format `fmt`, after checking its shape.
fn listing(reply: &Reply, fmt: Fmt) -> Vec<String> {
    expect_content_type(reply, fmt, "listing");
    let text = body_text(reply);
    match fmt {
        Fmt::Html => {
            let body = html_body(&text);
            let ul = between(body, "<ul>", "</ul>");
            let mut items = Vec::new();
            let mut rest = ul;
            while !rest.is_empty() {
                let item = rest
                    .strip_prefix("<li><a href=\"")
                    .unwrap_or_else(|| panic!("not a list of links: {text:?}"));
                let (href, item) = item.split_once("\">").expect("end of href");
                let (label, item) = item.split_once("</a></li>").expect("end of link");
                assert_eq!(href, label, "the link text is not the URL: {text:?}");
                items.push(unescape(href));
                rest = item;
            }
            items
        }
        Fmt::Xml => {
            let inner = xml_message(&text);
            let mut items = Vec::new();
            let mut rest = inner;
            while !rest.is_empty() {
                let item = rest
                    .strip_prefix("<key>")
                    .unwrap_or_else(|| panic!("not a list of <key>s: {text:?}"));
                let (key, item) = item.split_once("</key>").expect("</key>");
                assert!(!key.contains('<'), "markup inside a key: {text:?}");
                items.push(unescape(key));
                rest = item;
            }
            items
        }
        Fmt::Json => {
            let obj = json_object(reply);
            obj["message"]
                .as_array()
                .unwrap_or_else(|| panic!("message is not an array: {text:?}"))
                .iter()
                .map(|v| v.as_str().expect("a URL string").to_owned())
                .collect()
        }
        Fmt::Text => {
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "the text listing does not end its last line: {text:?}"
            );
            text.lines().map(str::to_owned).collect()
        }
    }
}

/// Checks a negotiated error: status, format, and for JSON the error code.
fn expect_error(reply: &Reply, fmt: Fmt, status: StatusCode, code: &str, what: &str) {
    expect_status(reply, status, what);
    let msg = message(reply, fmt);
    assert!(!msg.trim().is_empty(), "{what}: an empty error message");
    if fmt == Fmt::Json {
        let obj = json_object(reply);
        assert_eq!(obj["error"], code, "{what}");
    }
}

/// A store (POST or PUT) that must succeed: 201, `Location`, the location
/// as the message.
async fn store_ok(
    node: &Node,
    c: &Client,
    method: Method,
    family: &str,
    key: &str,
    fmt: Fmt,
    value: &str,
) {
    let path = format!("/{family}/{key}");
    let r = send(c, method.clone(), &path, fmt, value.as_bytes()).await;
    let what = format!("{method} {path} ({fmt:?})");
    expect_status(&r, StatusCode::CREATED, &what);
    let expected = format!("http://{}/bucket/{key}", node.addr());
    assert_eq!(
        r.header("location"),
        Some(expected.as_str()),
        "{what}: Location"
    );
    assert_eq!(message(&r, fmt), expected, "{what}: message");
}

/// A read that must find `value`.
async fn get_ok(c: &Client, family: &str, key: &str, fmt: Fmt, value: &str) {
    let path = format!("/{family}/{key}");
    let r = send(c, Method::GET, &path, fmt, b"").await;
    let what = format!("GET {path} ({fmt:?})");
    expect_status(&r, StatusCode::OK, &what);
    assert_eq!(message(&r, fmt), value, "{what}");
}

/// A read that must find nothing.
async fn get_404(c: &Client, family: &str, key: &str, fmt: Fmt) {
    let path = format!("/{family}/{key}");
    let r = send(c, Method::GET, &path, fmt, b"").await;
    expect_error(
        &r,
        fmt,
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("GET {path} ({fmt:?})"),
    );
}

/// A delete that must be accepted.
async fn delete_ok(c: &Client, family: &str, key: &str, fmt: Fmt) {
    let path = format!("/{family}/{key}");
    let r = send(c, Method::DELETE, &path, fmt, b"").await;
    let what = format!("DELETE {path} ({fmt:?})");
    expect_status(&r, StatusCode::ACCEPTED, &what);
    assert_eq!(message(&r, fmt), "accepted", "{what}");
}

/// The other family: what one writes, the other reads.
fn other(family: &str) -> &'static str {
    if family == "bucket" {
        "canonicalbucket"
    } else {
        "bucket"
    }
}

fn start() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    (dir, node)
}

/// A node whose keys may be at most 32 bytes, as in the seed's config.
fn start_with_key_limit_32() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ripple.toml");
    std::fs::write(&config, "[limits]\nmax_key_bytes = 32\n").unwrap();
    let data = dir.path().join("data");
    let node = Node::start_with(&data, &["--config", config.to_str().unwrap()]);
    (dir, node)
}

// test_set_a_key_value, test_get_with_valid_key
#[test]
fn post_stores_and_get_reads_in_every_format_and_family() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for family in FAMILIES {
            for fmt in FORMATS {
                let key = format!("c225-{family}-{}", fmt.name());
                let value =
                    format!("testing post method:newly set key ({family}, {fmt:?}) café ☕");
                store_ok(&node, &c, Method::POST, family, &key, fmt, &value).await;
                get_ok(&c, family, &key, fmt, &value).await;
                // What one family writes, the other reads (the seed's lazy
                // put, canonical get), in every format.
                for read_fmt in FORMATS {
                    get_ok(&c, other(family), &key, read_fmt, &value).await;
                }
            }
        }
    });
}

// test_set_a_key_value_where_key_exists
#[test]
fn post_over_an_existing_key_replaces_its_value() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for family in FAMILIES {
            for fmt in FORMATS {
                let key = format!("c335-{family}-{}", fmt.name());
                let first = "value exists. should have been overwritten.";
                let second = "overwritten the existing value";
                store_ok(&node, &c, Method::POST, family, &key, fmt, first).await;
                get_ok(&c, family, &key, fmt, first).await;
                store_ok(&node, &c, Method::POST, family, &key, fmt, second).await;
                get_ok(&c, family, &key, fmt, second).await;
                get_ok(&c, other(family), &key, fmt, second).await;
                // Overwriting through the other family works the same.
                let third = format!("third value for {key}");
                store_ok(&node, &c, Method::POST, other(family), &key, fmt, &third).await;
                get_ok(&c, family, &key, fmt, &third).await;
            }
        }
    });
}

// test_delete_a_key_value
#[test]
fn delete_is_accepted_and_then_get_is_404() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for family in FAMILIES {
            for fmt in FORMATS {
                let key = format!("c995-{family}-{}", fmt.name());
                store_ok(
                    &node,
                    &c,
                    Method::POST,
                    family,
                    &key,
                    fmt,
                    "should have a deleted flag",
                )
                .await;
                delete_ok(&c, family, &key, fmt).await;
                for read_fmt in FORMATS {
                    get_404(&c, family, &key, read_fmt).await;
                    get_404(&c, other(family), &key, read_fmt).await;
                }
                // A second delete finds nothing.
                let path = format!("/{family}/{key}");
                let r = send(&c, Method::DELETE, &path, fmt, b"").await;
                expect_error(&r, fmt, StatusCode::NOT_FOUND, "not_found", "second DELETE");
            }
        }
    });
}

// test_delete_and_immediately_insert_a_key_value
#[test]
fn delete_then_reinsert_shows_the_new_value() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for family in FAMILIES {
            for fmt in FORMATS {
                let key = format!("c885-{family}-{}", fmt.name());
                store_ok(
                    &node,
                    &c,
                    Method::POST,
                    family,
                    &key,
                    fmt,
                    "will be deleted and over written",
                )
                .await;
                delete_ok(&c, family, &key, fmt).await;
                let new = "deleted existing. and written a new value";
                store_ok(&node, &c, Method::POST, family, &key, fmt, new).await;
                get_ok(&c, family, &key, fmt, new).await;
                get_ok(&c, other(family), &key, fmt, new).await;
                // And the lazy variant: delete through one family, insert
                // through the other.
                delete_ok(&c, other(family), &key, fmt).await;
                let newer = "deleted again. and written through the other route";
                store_ok(&node, &c, Method::POST, family, &key, fmt, newer).await;
                get_ok(&c, other(family), &key, fmt, newer).await;
            }
        }
    });
}

// test_get_with_invalid_key, test_cannot_delete_a_non_existing_key_value
#[test]
fn missing_keys_are_404_on_get_and_delete() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for family in FAMILIES {
            for fmt in FORMATS {
                let key = format!("c223-{family}-{}", fmt.name());
                get_404(&c, family, &key, fmt).await;
                let path = format!("/{family}/cxyz-{}", fmt.name());
                let r = send(&c, Method::DELETE, &path, fmt, b"").await;
                expect_error(
                    &r,
                    fmt,
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("DELETE {path}"),
                );
            }
        }
        // Neither the failed reads nor the failed deletes stored anything.
        let r = send(&c, Method::GET, "/bucket/", Fmt::Json, b"").await;
        expect_status(&r, StatusCode::OK, "listing");
        assert_eq!(listing(&r, Fmt::Json), Vec::<String>::new());
    });
}

// test_long_key_results_error
#[test]
fn too_long_key_is_400_on_post_and_404_on_get() {
    let (_dir, node) = start_with_key_limit_32();
    let c = node.client();
    rt().block_on(async {
        // The seed's own over-long key: "0123...39", 70 characters.
        let seed_key: String = (0..40).map(|i| i.to_string()).collect();
        let mut accepted = Vec::new();
        for family in FAMILIES {
            for fmt in FORMATS {
                let mut long = format!("long-{family}-{}-", fmt.name());
                while long.len() < 40 {
                    long.push('x');
                }
                for key in [long.as_str(), seed_key.as_str()] {
                    let path = format!("/{family}/{key}");
                    let r = send(
                        &c,
                        Method::POST,
                        &path,
                        fmt,
                        b"very very long. longer key than in database. should not get inserted",
                    )
                    .await;
                    expect_error(
                        &r,
                        fmt,
                        StatusCode::BAD_REQUEST,
                        "key_too_long",
                        &format!("POST {path}"),
                    );
                    assert_eq!(
                        r.header("location"),
                        None,
                        "POST {path}: a Location for a refused key"
                    );
                    let r = send(&c, Method::PUT, &path, fmt, b"x").await;
                    expect_error(
                        &r,
                        fmt,
                        StatusCode::BAD_REQUEST,
                        "key_too_long",
                        &format!("PUT {path}"),
                    );
                    get_404(&c, family, key, fmt).await;
                    get_404(&c, other(family), key, fmt).await;
                    let r = send(&c, Method::DELETE, &path, fmt, b"").await;
                    expect_error(
                        &r,
                        fmt,
                        StatusCode::BAD_REQUEST,
                        "key_too_long",
                        &format!("DELETE {path}"),
                    );
                }
                // A key of exactly the limit is fine: the limit is 32, not less.
                let mut at_limit = format!("ok-{}-{}-", &family[..1], fmt.name());
                while at_limit.len() < 32 {
                    at_limit.push('y');
                }
                store_ok(&node, &c, Method::POST, family, &at_limit, fmt, "fits").await;
                get_ok(&c, family, &at_limit, fmt, "fits").await;
                accepted.push(format!("/bucket/{at_limit}"));
            }
        }
        // Only the keys that fit were stored.
        let r = send(&c, Method::GET, "/bucket/", Fmt::Json, b"").await;
        let mut listed = listing(&r, Fmt::Json);
        listed.sort();
        accepted.sort();
        assert_eq!(listed, accepted);
    });
}

// test_get_with_no_key_should_return_all_keys
#[test]
fn bare_route_lists_every_key_as_a_bucket_url() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        // An empty store lists nothing, in every format.
        for family in FAMILIES {
            for fmt in FORMATS {
                let r = send(&c, Method::GET, &format!("/{family}/"), fmt, b"").await;
                expect_status(&r, StatusCode::OK, "empty listing");
                assert_eq!(listing(&r, fmt), Vec::<String>::new(), "{family} {fmt:?}");
            }
        }
        let keys = ["c221", "c222", "l221", "l222", "dir/sub", "with space", "é"];
        for (i, key) in keys.iter().enumerate() {
            let family = FAMILIES[i % 2];
            let path = format!(
                "/{family}/{}",
                ripple::client::kv_path(key).trim_start_matches("/v1/kv/")
            );
            let r = send(&c, Method::POST, &path, Fmt::Json, b"test").await;
            expect_status(&r, StatusCode::CREATED, &format!("POST {path}"));
        }
        let url = |k: &str| {
            format!(
                "/bucket/{}",
                ripple::client::kv_path(k).trim_start_matches("/v1/kv/")
            )
        };
        let mut expected: Vec<String> = keys.iter().map(|k| url(k)).collect();
        expected.sort();

        let check = |expected: Vec<String>| {
            let c = c.clone();
            async move {
                for family in FAMILIES {
                    for path in [format!("/{family}/"), format!("/{family}")] {
                        for fmt in FORMATS {
                            let r = send(&c, Method::GET, &path, fmt, b"").await;
                            expect_status(&r, StatusCode::OK, &format!("GET {path}"));
                            let mut listed = listing(&r, fmt);
                            listed.sort();
                            assert_eq!(listed, expected, "GET {path} ({fmt:?})");
                        }
                    }
                }
            }
        };
        check(expected.clone()).await;

        // A deleted key drops out of every listing.
        delete_ok(&c, "canonicalbucket", "c222", Fmt::Text).await;
        delete_ok(&c, "bucket", "with%20space", Fmt::Html).await;
        expected.retain(|u| u != "/bucket/c222" && u != "/bucket/with%20space");
        check(expected.clone()).await;

        // And comes back when re-inserted.
        let r = send(&c, Method::POST, "/bucket/c222", Fmt::Xml, b"again").await;
        expect_status(&r, StatusCode::CREATED, "re-insert");
        expected.push("/bucket/c222".to_owned());
        expected.sort();
        check(expected).await;
    });
}

#[test]
fn markup_in_values_and_keys_is_escaped_in_html_and_xml() {
    let (_dir, node) = start();
    let c = node.client();
    let value = r#"<script>alert("x")&</script>"#;
    rt().block_on(async {
        for family in FAMILIES {
            let key = format!("markup-{family}");
            store_ok(&node, &c, Method::POST, family, &key, Fmt::Json, value).await;
            for fmt in FORMATS {
                let r = send(&c, Method::GET, &format!("/{family}/{key}"), fmt, b"").await;
                expect_status(&r, StatusCode::OK, "GET markup");
                let text = body_text(&r);
                match fmt {
                    Fmt::Html | Fmt::Xml => {
                        assert!(!text.contains(value), "raw value in {fmt:?}: {text}");
                        assert!(!text.contains("<script"), "raw <script in {fmt:?}: {text}");
                        assert!(
                            !text.contains("</script"),
                            "raw </script in {fmt:?}: {text}"
                        );
                        assert!(!text.contains("&<"), "raw & in {fmt:?}: {text}");
                    }
                    Fmt::Json | Fmt::Text => {}
                }
                // `message` also rejects bare '&' and markup in the message.
                assert_eq!(message(&r, fmt), value, "{fmt:?}: {text}");
            }
            // The same value in an error: a missing key whose name is markup.
            for fmt in [Fmt::Html, Fmt::Xml] {
                let r = send(
                    &c,
                    Method::GET,
                    &format!("/{family}/%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
                    fmt,
                    b"",
                )
                .await;
                expect_status(&r, StatusCode::NOT_FOUND, "missing markup key");
                let text = body_text(&r);
                assert!(
                    !text.contains("<script"),
                    "raw <script in a {fmt:?} error: {text}"
                );
                assert!(
                    message(&r, fmt).contains("<script>alert(1)</script>"),
                    "{text}"
                );
            }
        }
        // A key full of markup: its Location and listing entry are URLs,
        // percent-encoded, and its value reads back.
        let r = send(
            &c,
            Method::POST,
            "/bucket/%3Cb%3E%26%22",
            Fmt::Html,
            b"bold",
        )
        .await;
        expect_status(&r, StatusCode::CREATED, "POST markup key");
        let loc = format!("http://{}/bucket/%3Cb%3E%26%22", node.addr());
        assert_eq!(r.header("location"), Some(loc.as_str()));
        assert_eq!(message(&r, Fmt::Html), loc);
        get_ok(&c, "canonicalbucket", "%3Cb%3E%26%22", Fmt::Xml, "bold").await;
        for fmt in [Fmt::Html, Fmt::Xml] {
            let r = send(&c, Method::GET, "/bucket/", fmt, b"").await;
            let text = body_text(&r);
            assert!(
                !text.contains("<b>"),
                "raw key markup in a {fmt:?} listing: {text}"
            );
            assert!(
                listing(&r, fmt).contains(&"/bucket/%3Cb%3E%26%22".to_owned()),
                "{text}"
            );
        }
    });
}

#[test]
fn each_format_has_its_content_type_and_accept_preferences_count() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        store_ok(&node, &c, Method::POST, "bucket", "ct", Fmt::Text, "typed").await;
        let cases: [(Option<&str>, Fmt); 12] = [
            (None, Fmt::Html),
            (Some("text/html"), Fmt::Html),
            (Some("*/*"), Fmt::Html),
            (Some("application/xml"), Fmt::Xml),
            (Some("text/xml"), Fmt::Xml),
            (Some("application/json"), Fmt::Json),
            (Some("text/plain"), Fmt::Text),
            (Some("application/json;q=0.2, text/plain;q=0.9"), Fmt::Text),
            (Some("text/*;q=0.5, application/json"), Fmt::Json),
            (Some("*/*;q=0.1, text/html;q=0"), Fmt::Xml),
            (Some("image/png, application/json;q=0.5"), Fmt::Json),
            (Some("TEXT/PLAIN"), Fmt::Text),
        ];
        for family in FAMILIES {
            for (accept, fmt) in cases {
                let headers: Vec<(HeaderName, HeaderValue)> = accept
                    .map(|a| vec![(ACCEPT, HeaderValue::from_str(a).unwrap())])
                    .unwrap_or_default();
                for (method, path, body, status) in [
                    (Method::GET, format!("/{family}/ct"), "", StatusCode::OK),
                    (
                        Method::POST,
                        format!("/{family}/ct"),
                        "typed",
                        StatusCode::CREATED,
                    ),
                    (Method::GET, format!("/{family}/"), "", StatusCode::OK),
                    (
                        Method::GET,
                        format!("/{family}/absent"),
                        "",
                        StatusCode::NOT_FOUND,
                    ),
                ] {
                    let r = c
                        .request(method.clone(), &path, &headers, Bytes::from(body))
                        .await
                        .unwrap();
                    let what = format!("{method} {path} Accept {accept:?}");
                    expect_status(&r, status, &what);
                    expect_content_type(&r, fmt, &what);
                }
                // The stored value in the chosen format.
                let r = c
                    .request(
                        Method::GET,
                        &format!("/{family}/ct"),
                        &headers,
                        Bytes::new(),
                    )
                    .await
                    .unwrap();
                assert_eq!(message(&r, fmt), "typed", "Accept {accept:?}");
            }
        }
    });
}

#[test]
fn put_is_also_a_store_verb() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        for family in FAMILIES {
            for fmt in FORMATS {
                let key = format!("put-{family}-{}", fmt.name());
                store_ok(&node, &c, Method::PUT, family, &key, fmt, "stored by PUT").await;
                get_ok(&c, family, &key, fmt, "stored by PUT").await;
                // PUT over an existing key replaces it, also with 201.
                store_ok(
                    &node,
                    &c,
                    Method::PUT,
                    other(family),
                    &key,
                    fmt,
                    "replaced by PUT",
                )
                .await;
                get_ok(&c, family, &key, fmt, "replaced by PUT").await;
            }
        }
    });
}

#[test]
fn unacceptable_accept_is_406_in_json_and_changes_nothing() {
    let (_dir, node) = start();
    let c = node.client();
    let png = [(ACCEPT, HeaderValue::from_static("image/png"))];
    rt().block_on(async {
        for family in FAMILIES {
            let kept = format!("kept-{family}");
            store_ok(
                &node,
                &c,
                Method::POST,
                family,
                &kept,
                Fmt::Text,
                "still here",
            )
            .await;
            let never = format!("never-{family}");
            for (method, path) in [
                (Method::GET, format!("/{family}/{kept}")),
                (Method::GET, format!("/{family}/absent")),
                (Method::GET, format!("/{family}/")),
                (Method::GET, format!("/{family}")),
                (Method::POST, format!("/{family}/{never}")),
                (Method::PUT, format!("/{family}/{never}")),
                (Method::POST, format!("/{family}/{kept}")),
                (Method::DELETE, format!("/{family}/{kept}")),
            ] {
                let r = c
                    .request(
                        method.clone(),
                        &path,
                        &png,
                        Bytes::from_static(b"overwrite?"),
                    )
                    .await
                    .unwrap();
                let what = format!("{method} {path} Accept: image/png");
                expect_status(&r, StatusCode::NOT_ACCEPTABLE, &what);
                expect_content_type(&r, Fmt::Json, &what);
                let obj = json_object(&r);
                assert_eq!(obj["error"], "not_acceptable", "{what}");
                assert!(
                    obj["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{what}: {obj:?}"
                );
                assert_eq!(r.header("location"), None, "{what}");
            }
            // Nothing was stored, overwritten or deleted.
            get_404(&c, family, &never, Fmt::Json).await;
            get_ok(&c, family, &kept, Fmt::Text, "still here").await;
        }
    });
}

#[test]
fn values_stored_on_seed_routes_read_back_exactly_through_v1() {
    let (_dir, node) = start();
    let c = node.client();
    rt().block_on(async {
        // Bytes that are not UTF-8, a NUL, CRLF, markup and non-ASCII text.
        let mut value = b"line one\r\nline two\0\xff\xfe <b>&amp;</b> caf\xc3\xa9 ".to_vec();
        value.extend((0u8..=255).collect::<Vec<_>>());
        for family in FAMILIES {
            for fmt in FORMATS {
                let key = format!("v1-{family}-{}", fmt.name());
                let path = format!("/{family}/{key}");
                let r = send(&c, Method::POST, &path, fmt, &value).await;
                expect_status(&r, StatusCode::CREATED, &path);
                let got = c.get(&key).await.unwrap();
                expect_status(&got, StatusCode::OK, "v1 GET");
                assert_eq!(got.body.as_ref(), value.as_slice(), "v1 GET {key}");

                // A content type sent with the value is kept.
                let headers = [
                    (
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/x-seed-test"),
                    ),
                    (ACCEPT, HeaderValue::from_static("application/json")),
                ];
                let r = c
                    .request(Method::POST, &path, &headers, Bytes::from(value.clone()))
                    .await
                    .unwrap();
                expect_status(&r, StatusCode::CREATED, &path);
                let got = c.get(&key).await.unwrap();
                assert_eq!(got.body.as_ref(), value.as_slice());
                assert_eq!(got.header("content-type"), Some("application/x-seed-test"));

                // A delete on the seed route is a delete in v1 too.
                delete_ok(&c, family, &key, fmt).await;
                let got = c.get(&key).await.unwrap();
                expect_status(&got, StatusCode::NOT_FOUND, "v1 GET after seed DELETE");
            }
        }
        // And the other way: what v1 stores, the seed routes read.
        let r = c
            .put("from-v1", Bytes::from_static(b"written by v1"), None)
            .await
            .unwrap();
        expect_status(&r, StatusCode::CREATED, "v1 PUT");
        for family in FAMILIES {
            for fmt in FORMATS {
                get_ok(&c, family, "from-v1", fmt, "written by v1").await;
            }
        }
    });
}

#[test]
fn location_uses_the_node_url_without_a_host_and_encodes_the_key() {
    let (_dir, node) = start();
    let c = node.client();
    // HTTP/1.0 without Host: the node's own URL is the base.
    let resp = raw_request(
        &node.addr(),
        b"POST /bucket/nohost HTTP/1.0\r\nAccept: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(raw_status(&resp), 201, "{resp}");
    let expected = format!("{}/bucket/nohost", node.url);
    let location = resp
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Location: {resp}"));
    assert_eq!(location, expected);
    assert!(resp.ends_with(&format!("\r\n\r\n{expected}")), "{resp}");
    rt().block_on(async {
        get_ok(&c, "bucket", "nohost", Fmt::Text, "hello").await;
        // Keys with spaces and slashes come back percent-encoded.
        for family in FAMILIES {
            let r = send(
                &c,
                Method::POST,
                &format!("/{family}/a%20b/c"),
                Fmt::Json,
                b"spaced",
            )
            .await;
            expect_status(&r, StatusCode::CREATED, "POST a b/c");
            let loc = format!("http://{}/bucket/a%20b/c", node.addr());
            assert_eq!(r.header(LOCATION.as_str()), Some(loc.as_str()));
            assert_eq!(message(&r, Fmt::Json), loc);
        }
        let got = c.get("a b/c").await.unwrap();
        assert_eq!(got.body.as_ref(), b"spaced");
    });
}
