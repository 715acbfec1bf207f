//! Arbitrary bytes as JSON: canonical JSON of any value is a fixed point,
//! `canonical(parse(canonical(x))) == canonical(x)` (see
//! `socp_protocol_fuzz::canonical`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| socp_protocol_fuzz::canonical(data));
