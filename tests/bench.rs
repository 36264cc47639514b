//! `ripple bench` through the binary, against real nodes: each workload's
//! JSON report and its effect on the store (keys written, keys deleted),
//! --preload making every GET hit, replication lag samples across a
//! 3-node cluster, and bad input refused with a message and a non-zero
//! exit. Every run is short (about a second) to keep the file quick.

mod common;

use std::process::{Command, Output, Stdio};

use common::cluster::Cluster;
use common::{bin, rt, Node};
use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("bench")
        .args(args)
        .env_remove("RIPPLE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run ripple bench")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a bench with --json that must succeed; its report.
fn bench_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = bench(&all);
    assert!(
        out.status.success(),
        "ripple bench {args:?} failed: {}",
        stderr(&out)
    );
    // No progress line (stderr is not a terminal) and nothing but the
    // JSON object on stdout.
    assert!(
        !stderr(&out).contains("ops/s"),
        "progress on stderr: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not a whole number: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The fields every report has, consistent with each other.
fn check_report(r: &Value, workload: &str) {
    assert_eq!(r["workload"], workload, "{r}");
    let requests = u(&r["requests"]);
    assert!(requests > 0, "no requests: {r}");
    assert_eq!(
        u(&r["ok"]) + u(&r["misses"]) + u(&r["errors"]),
        requests,
        "{r}"
    );
    assert_eq!(u(&r["errors"]), 0, "errors: {r}");
    assert!(f(&r["throughput_ops_per_sec"]) > 0.0, "{r}");
    assert!(f(&r["elapsed_s"]) > 0.0, "{r}");
    let lat = &r["latency_ms"];
    let qs: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
        .iter()
        .map(|q| f(&lat[*q]))
        .collect();
    assert!(qs[0] > 0.0, "{lat}");
    assert!(qs.windows(2).all(|w| w[0] <= w[1]), "not ordered: {lat}");
    assert!(r["errors_by_status"].as_object().unwrap().is_empty(), "{r}");
    assert!(r["errors_by_kind"].as_object().unwrap().is_empty(), "{r}");
    let per_op: u64 = r["ops"]
        .as_object()
        .unwrap()
        .values()
        .map(|o| u(&o["requests"]))
        .sum();
    assert_eq!(per_op, requests, "{r}");
}

#[test]
fn put_workload_writes_the_keys_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let r = bench_json(&[
        "--url",
        &node.url,
        "--workload",
        "put",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--connections",
        "4",
        "--keys",
        "50",
        "--key-prefix",
        "p/",
        "--value-size",
        "37",
        "--seed",
        "7",
    ]);
    check_report(&r, "put");
    assert_eq!(u(&r["ok"]), u(&r["requests"]), "{r}");
    assert_eq!(u(&r["ops"]["put"]["requests"]), u(&r["requests"]));
    assert_eq!(r["connections"], 4);
    assert_eq!(r["threads"], 1, "one client thread unless asked");
    assert_eq!(r["seed"], 7);
    assert_eq!(r["duration_s"], 1.0);
    assert!(f(&r["elapsed_s"]) >= 1.0 && f(&r["elapsed_s"]) < 3.0, "{r}");
    assert!(r["replication_lag"].is_null(), "one node, no lag: {r}");
    assert!(r["preload"].is_null());

    // The keys are really there, with values of the size asked for.
    rt().block_on(async {
        let c = node.client();
        let (keys, _) = c.list_page("p/", None, Some(100)).await.unwrap();
        assert!(keys.len() > 10, "few keys written: {keys:?}");
        for k in &keys {
            let n: u64 = k.strip_prefix("p/").unwrap().parse().unwrap();
            assert!(n < 50 && k.len() == 2 + 8, "unexpected key {k}");
        }
        let reply = c.get(&keys[0]).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), 37);
    });
}

#[test]
fn get_after_preload_never_misses() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let r = bench_json(&[
        "--url",
        &node.url,
        "--workload",
        "get",
        "--preload",
        "--keys",
        "300",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "-c",
        "8",
    ]);
    check_report(&r, "get");
    assert_eq!(u(&r["misses"]), 0, "{r}");
    assert_eq!(u(&r["preload"]["keys"]), 300, "{r}");
    assert_eq!(u(&r["preload"]["ok"]), 300, "{r}");
    assert_eq!(u(&r["preload"]["errors"]), 0, "{r}");
    rt().block_on(async {
        let (keys, _) = node
            .client()
            .list_page("bench:", None, Some(1000))
            .await
            .unwrap();
        assert_eq!(keys.len(), 300);
        assert_eq!(keys[0], "bench:00000000");
        assert_eq!(keys[299], "bench:00000299");
    });
}

#[test]
fn mixed_workload_counts_exactly_the_requests_asked() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let r = bench_json(&[
        "--url",
        &node.url,
        "--workload",
        "mixed",
        "--read-ratio",
        "0.5",
        "--requests",
        "400",
        "--warmup",
        "0s",
        "--keys",
        "20",
        "-c",
        "5",
    ]);
    check_report(&r, "mixed");
    assert_eq!(u(&r["requests"]), 400, "{r}");
    assert_eq!(r["requests_target"], 400);
    assert!(r["duration_s"].is_null());
    assert_eq!(r["read_ratio"], 0.5);
    let gets = u(&r["ops"]["get"]["requests"]);
    let puts = u(&r["ops"]["put"]["requests"]);
    assert_eq!(gets + puts, 400);
    // Half and half, give or take chance.
    assert!((100..=300).contains(&gets), "{gets} gets of 400");
    assert_eq!(u(&r["ops"]["put"]["misses"]), 0);
}

#[test]
fn delete_workload_deletes_every_preloaded_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let r = bench_json(&[
        "--url",
        &node.url,
        "--workload",
        "delete",
        "--preload",
        "--keys",
        "120",
        "--requests",
        "120",
        "--warmup",
        "0s",
        "-c",
        "6",
    ]);
    check_report(&r, "delete");
    assert_eq!(u(&r["ok"]), 120, "every delete found its key: {r}");
    assert_eq!(u(&r["misses"]), 0, "{r}");
    rt().block_on(async {
        let (keys, _) = node
            .client()
            .list_page("bench:", None, Some(1000))
            .await
            .unwrap();
        assert!(keys.is_empty(), "left over: {keys:?}");
    });
}

#[test]
fn human_report_is_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let out = bench(&[
        "--url",
        &node.url,
        "--workload",
        "mixed",
        "--requests",
        "60",
        "--warmup",
        "0s",
        "-c",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "throughput",
        "ops/s",
        "requests",
        "60 in",
        "p99.9",
        "misses",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    let header = text
        .lines()
        .find(|l| l.starts_with("latency (ms)"))
        .unwrap();
    let all = text.lines().find(|l| l.starts_with("all ")).unwrap();
    // Right-aligned columns end at the same place.
    assert_eq!(header.len(), all.len(), "\n{header}\n{all}");
}

#[test]
fn several_urls_spread_the_load_and_measure_replication_lag() {
    let cluster = Cluster::start(3, "");
    let urls = (0..3).map(|i| cluster.url(i)).collect::<Vec<_>>().join(",");
    let r = bench_json(&[
        "--url",
        &urls,
        "--workload",
        "mixed",
        "--read-ratio",
        "0.3",
        "--duration",
        "2s",
        "--warmup",
        "0s",
        "--keys",
        "1000",
        "-c",
        "6",
        "--threads",
        "2",
    ]);
    assert_eq!(r["workload"], "mixed");
    assert_eq!(r["threads"], 2);
    assert!(u(&r["ops"]["put"]["ok"]) > 0, "{r}");
    assert_eq!(u(&r["errors"]), 0, "{r}");
    assert_eq!(r["urls"].as_array().unwrap().len(), 3);
    let lag = &r["replication_lag"];
    assert!(u(&lag["samples"]) > 0, "no lag samples: {r}");
    assert_eq!(u(&lag["not_visible"]), 0, "{lag}");
    assert!(f(&lag["median_ms"]) > 0.0, "{lag}");
    assert!(f(&lag["median_ms"]) <= f(&lag["p99_ms"]), "{lag}");
    assert!(f(&lag["p99_ms"]) <= f(&lag["max_ms"]), "{lag}");
    assert!(f(&lag["max_ms"]) < 5000.0, "{lag}");

    // Writes went through every node: all three hold the keys now.
    rt().block_on(async {
        for i in 0..3 {
            let (keys, _) = cluster
                .client(i)
                .list_page("bench:", None, Some(10))
                .await
                .unwrap();
            assert!(!keys.is_empty(), "node {i} has no key");
        }
    });
}

#[test]
fn an_unreachable_node_among_several_counts_connect_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    // Port 1 on loopback: nothing listens there.
    let urls = format!("{},http://127.0.0.1:1", node.url);
    let out = bench(&[
        "--url",
        &urls,
        "--workload",
        "put",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "-c",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(u(&r["ok"]) > 0, "{r}");
    assert!(u(&r["errors_by_kind"]["connect"]) > 0, "{r}");
    assert_eq!(u(&r["errors"]), u(&r["errors_by_kind"]["connect"]), "{r}");
}

#[test]
fn bad_input_exits_non_zero_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--url", "not a url"], "not a URL"),
        (&["--url", "https://127.0.0.1:1"], "http://"),
        (&["--url", ","], "no URL"),
        (&["--connections", "0"], "connections"),
        (&["--threads", "0"], "threads"),
        (&["--threads", "many"], "threads"),
        (&["--read-ratio", "1.5"], "ratio"),
        (&["--read-ratio", "-0.1"], "ratio"),
        (&["--duration", "10x"], "not a duration"),
        (&["--duration", "10"], "unit"),
        (&["--duration", "0s"], "more than 0"),
        (&["--warmup", "soon"], "not a duration"),
        (&["--rate", "0"], "rate"),
        (&["--keys", "0"], "at least 1"),
        (&["--workload", "scan"], "scan"),
        (
            &["--duration", "1s", "--requests", "5"],
            "cannot be used with",
        ),
        (&["--url", "http://127.0.0.1:1"], "no node could be reached"),
    ];
    for (args, want) in cases {
        let out = bench(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: no {want:?} in {err:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: stdout {:?}", out.stdout);
    }
}

#[test]
fn a_run_where_nothing_succeeds_exits_non_zero_after_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    // Keys longer than the node's limit (1024 bytes): every PUT gets 400.
    let prefix = "k".repeat(1100);
    let out = bench(&[
        "--url",
        &node.url,
        "--workload",
        "put",
        "--key-prefix",
        &prefix,
        "--requests",
        "20",
        "--warmup",
        "0s",
        "-c",
        "2",
        "--json",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no request succeeded"),
        "{}",
        stderr(&out)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&r["errors_by_status"]["400"]), 20, "{r}");
    assert_eq!(u(&r["ok"]), 0);
}

#[test]
fn rate_paces_the_requests() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let r = bench_json(&[
        "--url",
        &node.url,
        "--workload",
        "put",
        "--rate",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "-c",
        "4",
    ]);
    check_report(&r, "put");
    assert_eq!(r["rate"], 100.0);
    let n = u(&r["requests"]);
    assert!((85..=110).contains(&n), "{n} requests at 100/s for 1 s");
}
