//! Issued AWS credentials and their pod-facing wire form.
//!
//! Wire contract (container credential provider, as the SDKs parse it):
//! `200`, `Content-Type: application/json`,
//! `{"AccessKeyId":"ASIA..","SecretAccessKey":"..","Token":"..","AccountId":"123456789012","Expiration":"2026-04-13T00:35:09Z"}`
//! in that order, empty fields omitted, `Expiration` RFC 3339 in UTC ending
//! in `Z` (aws-config and aws-sdk-js-v3 require the `Z`).

use std::fmt;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use bytes::Bytes;
use serde::Serialize;

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("** redacted **")
    }
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    pub account_id: String,
    /// Epoch seconds.
    pub expiration: DateTime,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Wire<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    access_key_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    secret_access_key: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    token: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    account_id: &'a str,
    expiration: &'a str,
}

impl Credentials {
    pub fn expiration_ms(&self) -> u64 {
        let millis = self.expiration.secs() as i128 * 1000
            + self.expiration.subsec_nanos() as i128 / 1_000_000;
        millis.clamp(0, u64::MAX as i128) as u64
    }

    /// The response body, built once and served from the cache as is.
    pub fn to_body(&self) -> Bytes {
        let expiration = self
            .expiration
            .fmt(Format::DateTime)
            .expect("epoch-second timestamps from EKS Auth are in RFC 3339 range");
        let wire = Wire {
            access_key_id: &self.access_key_id,
            secret_access_key: self.secret_access_key.expose(),
            token: self.session_token.expose(),
            account_id: &self.account_id,
            expiration: &expiration,
        };
        Bytes::from(serde_json::to_vec(&wire).expect("string fields always serialize"))
    }
}

/// `arn:aws:sts::123456789012:assumed-role/role/session` → `123456789012`.
pub fn account_from_arn(arn: &str) -> Option<&str> {
    let account = arn.split(':').nth(4)?;
    (!account.is_empty()).then_some(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_order_and_format() {
        let c = Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("s"),
            session_token: Secret::new("t"),
            account_id: "123456789012".into(),
            expiration: DateTime::from_secs(1776040509),
        };
        assert_eq!(
            c.to_body(),
            Bytes::from_static(
                b"{\"AccessKeyId\":\"ASIAEXAMPLE\",\"SecretAccessKey\":\"s\",\"Token\":\"t\",\"AccountId\":\"123456789012\",\"Expiration\":\"2026-04-13T00:35:09Z\"}"
            )
        );
        assert!(!format!("{c:?}").contains("\"s\""));
        assert!(format!("{c:?}").contains("redacted"));
    }

    #[test]
    fn account_ids() {
        assert_eq!(
            account_from_arn("arn:aws:sts::123456789012:assumed-role/r/s"),
            Some("123456789012")
        );
        assert_eq!(account_from_arn("garbage"), None);
    }
}
