//! Pre-generated RSA-4096 keys for tests and benchmarks (feature `fixtures`).
//!
//! Generated once with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096`
//! and committed under `protocol/testdata/keys/`: tests load keys, they never make them.
//! These keys are public; never use them for anything but tests.

use crate::crypto::PrivateKey;

/// How many fixture keys there are.
pub const KEY_COUNT: usize = PEMS.len();

const PEMS: [&str; 32] = [
    include_str!("../testdata/keys/key-00.pem"),
    include_str!("../testdata/keys/key-01.pem"),
    include_str!("../testdata/keys/key-02.pem"),
    include_str!("../testdata/keys/key-03.pem"),
    include_str!("../testdata/keys/key-04.pem"),
    include_str!("../testdata/keys/key-05.pem"),
    include_str!("../testdata/keys/key-06.pem"),
    include_str!("../testdata/keys/key-07.pem"),
    include_str!("../testdata/keys/key-08.pem"),
    include_str!("../testdata/keys/key-09.pem"),
    include_str!("../testdata/keys/key-10.pem"),
    include_str!("../testdata/keys/key-11.pem"),
    include_str!("../testdata/keys/key-12.pem"),
    include_str!("../testdata/keys/key-13.pem"),
    include_str!("../testdata/keys/key-14.pem"),
    include_str!("../testdata/keys/key-15.pem"),
    include_str!("../testdata/keys/key-16.pem"),
    include_str!("../testdata/keys/key-17.pem"),
    include_str!("../testdata/keys/key-18.pem"),
    include_str!("../testdata/keys/key-19.pem"),
    include_str!("../testdata/keys/key-20.pem"),
    include_str!("../testdata/keys/key-21.pem"),
    include_str!("../testdata/keys/key-22.pem"),
    include_str!("../testdata/keys/key-23.pem"),
    include_str!("../testdata/keys/key-24.pem"),
    include_str!("../testdata/keys/key-25.pem"),
    include_str!("../testdata/keys/key-26.pem"),
    include_str!("../testdata/keys/key-27.pem"),
    include_str!("../testdata/keys/key-28.pem"),
    include_str!("../testdata/keys/key-29.pem"),
    include_str!("../testdata/keys/key-30.pem"),
    include_str!("../testdata/keys/key-31.pem"),
];

/// Fixture key number `n` (modulo [`KEY_COUNT`]), parsed afresh.
pub fn key(n: usize) -> PrivateKey {
    // The fixture files are part of the source tree and parsed in this crate's
    // own tests, so a failure here is a broken checkout, not input.
    #[allow(clippy::expect_used)]
    PrivateKey::from_pem(PEMS[n % KEY_COUNT]).expect("fixture key parses")
}

/// The PEM text of fixture key `n` (modulo [`KEY_COUNT`]).
pub fn key_pem(n: usize) -> &'static str {
    PEMS[n % KEY_COUNT]
}
