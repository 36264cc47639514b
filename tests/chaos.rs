//! `ripple chaos` through the binary: a 3-node and a 5-node run under
//! faults must end with every node converged and no violation, and bad
//! arguments must be refused with a clear message. Each run is bounded: it
//! is killed after `LIMIT` (its nodes die with it).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(150);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ripple ARGS`, killing it after `LIMIT`.
fn ripple(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ripple"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ripple");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Run {
        code,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The value of `name=` in the summary line.
fn field(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name}= in {summary:?}"))
}

fn chaos_passes(nodes: &str, seed: &str) {
    let run = ripple(&[
        "chaos",
        "--nodes",
        nodes,
        "--duration",
        "20s",
        "--seed",
        seed,
    ]);
    let context = format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_eq!(run.code, Some(0), "the chaos run failed:\n{context}");
    let summary = run
        .stdout
        .lines()
        .rfind(|l| l.starts_with("chaos: seed="))
        .unwrap_or_else(|| panic!("no summary line:\n{context}"));
    assert!(
        summary.starts_with(&format!("chaos: seed={seed} nodes={nodes} duration=20s ")),
        "{summary}"
    );
    assert_eq!(field(summary, "violations"), 0, "{context}");
    assert!(field(summary, "ops") > 0, "{context}");
    assert!(field(summary, "faults") > 0, "{context}");
    assert!(
        !summary.contains("converged_in=timeout"),
        "no convergence:\n{context}"
    );
}

#[test]
fn three_nodes_under_faults_lose_nothing() {
    chaos_passes("3", "1");
}

#[test]
fn five_nodes_under_faults_lose_nothing() {
    chaos_passes("5", "2");
}

#[test]
fn bad_arguments_get_a_clear_error() {
    for (args, expect) in [
        (&["--nodes", "1"][..], "--nodes"),
        (&["--nodes", "3x"][..], "from 3 to 9"),
        (&["--duration", "5x"][..], "--duration"),
        (&["--duration", "0s"][..], "at least 1s"),
        (&["--keys", "0"][..], "--keys"),
        (&["--clients", "0"][..], "from 1 to 64"),
        (&["--seed", "x"][..], "--seed"),
        (&["--converge-timeout", "soon"][..], "--converge-timeout"),
        (&["--bogus"][..], "--bogus"),
    ] {
        let mut all = vec!["chaos"];
        all.extend_from_slice(args);
        let run = ripple(&all);
        assert_eq!(run.code, Some(2), "{all:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(expect),
            "{all:?}: the error does not name {expect:?}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{all:?}: {}", run.stdout);
    }
}

#[test]
fn a_work_dir_that_is_not_empty_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let run = ripple(&[
        "chaos",
        "--duration",
        "1s",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("is not empty"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
}
