//! `Accept` negotiation (`http::negotiate::choose`) never panics, and
//! `escape_markup` leaves no raw markup and unescapes to its input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::accept(data));
