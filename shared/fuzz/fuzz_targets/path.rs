//! Canonical paths: always rooted, and a fixed point of canonicalisation.
#![no_main]

use portcullis_core::path::canonicalize;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let once = canonicalize(data);
    assert!(once.starts_with('/'));
    assert_eq!(canonicalize(once.as_bytes()), once);
});
