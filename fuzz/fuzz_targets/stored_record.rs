//! Stored records (`storage::codec::decode` and `decode_header`): never
//! panic; a record that decodes re-encodes to one that decodes equal, and
//! `decode_header` agrees with `decode`. Input: key length byte, key, bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::stored_record(data));
