//! Arbitrary bytes as a frame from the network: `Envelope::parse` never
//! panics, and what it accepts has a stable canonical payload (see
//! `socp_protocol_fuzz::envelope`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| socp_protocol_fuzz::envelope(data));
