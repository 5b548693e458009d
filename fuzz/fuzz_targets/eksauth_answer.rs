//! What EKS Auth answers: an error answer (status, `X-Amzn-ErrorType`,
//! body) is worded without panicking and keeps its status; a credential's
//! expiration, whatever epoch seconds the answer carries, is either written
//! as RFC 3339 or refused, never a panic; an assumed-role ARN parses or is
//! refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::credentials::{Credentials, Secret, account_from_arn};
use pod_identity_agent::eksauth::EksAuthError;
use pod_identity_agent::eksauth::answer::from_answer;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]);
    let epoch = f64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
    let header_len = usize::from(data[10]).min(data.len() - 11);
    let header = String::from_utf8_lossy(&data[11..11 + header_len]);
    let body = &data[11 + header_len..];

    let err = from_answer(status, "req-1".into(), &header, body);
    let text = err.to_string();
    assert!(text.starts_with("[req-1]"), "{text}");
    assert_eq!(err.upstream_status(), Some(status));
    match &err {
        EksAuthError::Service { code, .. } => {
            if let Some(code) = code {
                assert!(!code.contains(':'), "sanitized: {code}");
            }
        }
        EksAuthError::Undecodable { .. } => {}
        other => panic!("an error answer read as {other:?}"),
    }
    let _ = (
        err.is_irrecoverable(),
        err.is_recoverable(),
        err.is_throttling(),
        err.code(),
    );

    if !epoch.is_finite() {
        // The SDK refuses NaN and infinity before we see them.
        return;
    }
    let creds = Credentials {
        access_key_id: "ASIA".into(),
        secret_access_key: Secret::new("s"),
        session_token: Secret::new(String::from_utf8_lossy(body)),
        account_id: account_from_arn(&header).unwrap_or_default().to_owned(),
        expiration: aws_smithy_types::DateTime::from_secs_f64(epoch),
    };
    let _ = creds.expiration_ms();
    match creds.to_body() {
        Ok(doc) => {
            let v: serde_json::Value = serde_json::from_slice(&doc).expect("the body is JSON");
            let at = v["Expiration"].as_str().expect("Expiration");
            assert!(at.ends_with('Z'), "{at}");
            assert!(creds.check_expiration().is_ok());
        }
        Err(_) => assert!(creds.check_expiration().is_err()),
    }
});
