//! Replays the fuzz corpus (`fuzz/corpus/<target>/`, kept in the repo)
//! through the same checks as the cargo-fuzz targets, on the stable
//! toolchain: every seed and every crash once found stays a regression
//! test of plain `cargo test`. See docs/FUZZ.md.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `corpus/<target>`, sorted; fails when there are none.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus folder {} is missing: {e}", dir.display()))
        .map(|e| e.expect("read corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    assert!(
        !files.is_empty(),
        "corpus folder {} is empty",
        dir.display()
    );
    files.sort();
    files
}

fn replay(target: &str) {
    let check = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .expect("a target of checks.rs");
    let files = corpus(target);
    let mut failed = Vec::new();
    for file in &files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        if panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files failed (panic messages above):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn feed_frame() {
    replay("feed_frame");
}

#[test]
fn stored_record() {
    replay("stored_record");
}

#[test]
fn key_path() {
    replay("key_path");
}

#[test]
fn accept() {
    replay("accept");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn wal_log() {
    replay("wal_log");
}

/// Every target has a test above, a fuzz target and a corpus folder, and
/// every corpus folder belongs to a target.
#[test]
fn targets_match_corpus_folders() {
    let names: Vec<&str> = checks::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "feed_frame",
            "stored_record",
            "key_path",
            "accept",
            "config",
            "wal_log"
        ],
        "a target was added or removed: add or remove its test above"
    );
    for name in &names {
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
        corpus(name);
    }
    for entry in fs::read_dir(fuzz_dir().join("corpus")).expect("fuzz/corpus") {
        let entry = entry.expect("read fuzz/corpus");
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            names.contains(&name.as_str()),
            "fuzz/corpus/{name} belongs to no target of fuzz/checks.rs"
        );
    }
}
