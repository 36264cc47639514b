//! Keys in URL paths and queries (`http::keypath::decode_path` and
//! `decode_query`): never panic; what decodes re-encodes to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::key_path(data));
