//! Config files (`config::Config::parse` then `validate`) never panic,
//! and a config that validates lists its own node.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::config(data));
