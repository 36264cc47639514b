//! Feed frames from a peer (`replication::codec::decode`): never panics;
//! a frame that decodes re-encodes to one that decodes to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::feed_frame(data));
