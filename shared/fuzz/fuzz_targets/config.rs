//! Any bytes as a policy document: compiled or rejected with a field path, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(err) = portcullis_core::Policy::from_json(data) {
        assert!(!err.path.is_empty(), "an error always names where it is");
    }
});
