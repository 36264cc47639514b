//! The CLI client through the binary: values as raw bytes on stdout, errors
//! on stderr with a non-zero exit, stdin and --file, RIPPLE_URL, failover
//! across several URLs; and `serve` draining in-flight requests on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{bin, raw_status, Node};

fn ripple(url: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("RIPPLE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn put_get_list_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let url = node.url.as_str();

    let o = ripple(url, &["put", "greeting", "hello world"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("created greeting"));
    let o = ripple(url, &["get", "greeting"], None);
    assert!(o.status.success());
    assert_eq!(
        o.stdout, b"hello world",
        "the value, raw, with no newline added"
    );

    // stdin, with binary bytes.
    let binary: Vec<u8> = (0..=255u8).collect();
    let o = ripple(url, &["put", "dir/bin key"], Some(&binary));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ripple(url, &["get", "dir/bin key"], None).stdout, binary);

    // --file and --content-type.
    let file = dir.path().join("value.json");
    std::fs::write(&file, br#"{"a":1}"#).unwrap();
    let o = ripple(
        url,
        &[
            "put",
            "dir/json",
            "--file",
            file.to_str().unwrap(),
            "--content-type",
            "application/json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("created"));
    assert_eq!(
        ripple(url, &["get", "dir/json"], None).stdout,
        br#"{"a":1}"#
    );
    let o = ripple(url, &["put", "dir/json", "v2"], None);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("replaced"));

    let o = ripple(url, &["list"], None);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "dir/bin key\ndir/json\ngreeting\n"
    );
    let o = ripple(url, &["list", "--prefix", "dir/"], None);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "dir/bin key\ndir/json\n"
    );

    let o = ripple(url, &["delete", "greeting"], None);
    assert!(o.status.success());
    let o = ripple(url, &["get", "greeting"], None);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    let o = ripple(url, &["delete", "greeting"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not found"));
}

#[test]
fn list_pages_through_everything() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    common::rt().block_on(async {
        let c = node.client();
        for i in 0..2500 {
            c.put(&format!("k{i:05}"), bytes::Bytes::from("v"), None)
                .await
                .unwrap();
        }
    });
    let o = ripple(&node.url, &["list"], None);
    let text = String::from_utf8_lossy(&o.stdout);
    let keys: Vec<&str> = text.lines().collect();
    assert_eq!(keys.len(), 2500, "more than two default pages");
    assert_eq!(keys[0], "k00000");
    assert_eq!(keys[2499], "k02499");
}

#[test]
fn errors_go_to_stderr_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    // Server-side refusal: the server's message is shown.
    let o = ripple(&node.url, &["put", "", "x"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("400"), "{}", stderr(&o));
    // Nobody listening.
    let o = ripple("http://127.0.0.1:1", &["get", "k"], None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no node could be reached"),
        "{}",
        stderr(&o)
    );
    // Not a URL.
    let o = ripple("ftp://x", &["get", "k"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("http://"), "{}", stderr(&o));
    // A missing file.
    let o = ripple(
        &node.url,
        &["put", "k", "--file", "/nonexistent/file"],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
    // Usage errors.
    let o = ripple(&node.url, &["frobnicate"], None);
    assert!(!o.status.success());
}

#[test]
fn url_list_fails_over_to_the_next_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let urls = format!("http://127.0.0.1:1,{}", node.url);
    let o = ripple(&urls, &["put", "k", "v"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new(bin())
        .args(["get", "k", "--url", &urls])
        .env_remove("RIPPLE_URL")
        .output()
        .unwrap();
    assert_eq!(o.stdout, b"v", "{}", stderr(&o));
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    // Start a PUT whose body is not all there yet.
    let mut stream = TcpStream::connect(node.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    node.sigterm();
    std::thread::sleep(Duration::from_millis(200));
    // New connections are refused once shutdown began...
    assert!(
        TcpStream::connect(node.addr()).is_err(),
        "still accepting after SIGTERM"
    );
    // ...but the request in flight completes.
    stream.write_all(b"world").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert_eq!(raw_status(&response), 201, "{response}");
    assert_eq!(node.wait_exit(Duration::from_secs(20)), Some(0));
    let node = Node::start(dir.path());
    let o = ripple(&node.url, &["get", "slow"], None);
    assert_eq!(o.stdout, b"helloworld");
}

#[test]
fn serve_refuses_a_data_dir_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _node = Node::start(dir.path());
    let o = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
}
