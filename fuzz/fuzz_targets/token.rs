//! The pod's token, as the `Authorization` header brings it: the fast and
//! the Go-compatible parse agree wherever the fast one accepts (it may only
//! decline), and the claim checks never panic on what parsing returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::token;

fuzz_target!(|data: &[u8]| {
    if let Err(disagreement) = token::paths_agree(data) {
        panic!("{disagreement}");
    }
    match token::parse(data) {
        Ok(parsed) => {
            for (now, leeway) in [
                (0, 0),
                (1_800_000_000, 60),
                (i64::MAX, i64::MAX),
                (i64::MIN, 0),
            ] {
                let _ = token::check_basic(&parsed.claims, "pods.eks.amazonaws.com", now, leeway);
            }
            assert!(data.starts_with(parsed.signing_input.as_bytes()));
        }
        Err(e) => {
            // Every refusal is one line the pod can read.
            let text = e.to_string();
            assert!(!text.contains('\n'), "{text:?}");
            let _ = e.as_str();
        }
    }
});
