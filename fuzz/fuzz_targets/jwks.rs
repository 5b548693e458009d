//! A JWKS document as a key source serves it: usable keys are kept, odd
//! ones skipped, nothing panics (aws-lc-rs parses every key), and a key
//! verifies or refuses any signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::jwks::parse_jwks;

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = parse_jwks(data) else {
        return;
    };
    assert!(!keys.is_empty(), "an Ok key set holds a usable key");
    for (kid, key) in &keys {
        assert_eq!(kid, &key.kid);
        assert!(!key.verify(b"header.claims", "c2ln"));
        let _ = key.verify(data, "");
        let _ = key.verify(b"", "!!not base64!!");
    }
});
