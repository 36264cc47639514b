//! The embedded engine's write-ahead log (`storage::wal::decode`): never
//! panics, accepts a prefix, and what it accepts round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::wal_log(data));
