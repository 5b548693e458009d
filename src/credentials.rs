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

/// Credentials with this little left are neither served nor stored
/// (upstream's 15 s): an SDK needs time to use them.
pub const MIN_REMAINING: std::time::Duration = std::time::Duration::from_secs(15);

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

/// The last second the pod-facing `Expiration` can name: RFC 3339 (and
/// the SDKs reading it) stop at 9999-12-31T23:59:59Z.
pub const MAX_EXPIRATION_SECS: i64 = 253_402_300_799;

/// An expiration the pod-facing document cannot carry: before the epoch
/// (EKS Auth sends epoch seconds; a negative count is no credential anyone
/// issued) or after year 9999 (which RFC 3339 cannot write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expiration {secs} s after the epoch, outside 1970-01-01..9999-12-31")]
pub struct ExpirationOutOfRange {
    pub secs: i64,
}

impl Credentials {
    /// Whether `Expiration` can be written (see [`ExpirationOutOfRange`]).
    pub fn check_expiration(&self) -> Result<(), ExpirationOutOfRange> {
        let secs = self.expiration.secs();
        if (0..=MAX_EXPIRATION_SECS).contains(&secs) {
            Ok(())
        } else {
            Err(ExpirationOutOfRange { secs })
        }
    }

    /// Milliseconds since the epoch, clamped to `u64` (callers check the
    /// range first: [`check_expiration`](Self::check_expiration)).
    pub fn expiration_ms(&self) -> u64 {
        let millis = self.expiration.secs() as i128 * 1000
            + self.expiration.subsec_nanos() as i128 / 1_000_000;
        millis.clamp(0, u64::MAX as i128) as u64
    }

    /// The response body, built once and served from the cache as is.
    /// `Expiration` has millisecond precision at most, trailing zeros
    /// trimmed, as upstream prints the epoch seconds EKS Auth sends. An
    /// expiration out of range is an error, never a panic: the body is built
    /// inside the shared fetch.
    pub fn to_body(&self) -> Result<Bytes, ExpirationOutOfRange> {
        self.check_expiration()?;
        let out_of_range = || ExpirationOutOfRange {
            secs: self.expiration.secs(),
        };
        let millis = DateTime::from_secs_and_nanos(
            self.expiration.secs(),
            self.expiration.subsec_nanos() / 1_000_000 * 1_000_000,
        );
        let expiration = millis.fmt(Format::DateTime).map_err(|_| out_of_range())?;
        let wire = Wire {
            access_key_id: &self.access_key_id,
            secret_access_key: self.secret_access_key.expose(),
            token: self.session_token.expose(),
            account_id: &self.account_id,
            expiration: &expiration,
        };
        let mut body = serde_json::to_vec(&wire).expect("string fields always serialize");
        // The serializer doubles its buffer as it goes; the body lives as
        // long as its cache entry, so it keeps only its own length.
        body.shrink_to_fit();
        Ok(Bytes::from(body))
    }
}

/// Why an ARN did not parse (aws-sdk-go-v2 `arn.Parse`'s errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    #[error("arn: invalid prefix")]
    Prefix,
    #[error("arn: not enough sections")]
    Sections,
}

/// `arn:aws:sts::123456789012:assumed-role/role/session` → `123456789012`,
/// with upstream's parse rules: the `arn:` prefix and six `:`-separated
/// sections are required; the account may be empty (then the JSON field is
/// omitted).
pub fn account_from_arn(arn: &str) -> Result<&str, ArnError> {
    if !arn.starts_with("arn:") {
        return Err(ArnError::Prefix);
    }
    let sections: Vec<&str> = arn.splitn(6, ':').collect();
    match sections[..] {
        [_, _, _, _, account, _] => Ok(account),
        _ => Err(ArnError::Sections),
    }
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
            c.to_body().unwrap(),
            Bytes::from_static(
                b"{\"AccessKeyId\":\"ASIAEXAMPLE\",\"SecretAccessKey\":\"s\",\"Token\":\"t\",\"AccountId\":\"123456789012\",\"Expiration\":\"2026-04-13T00:35:09Z\"}"
            )
        );
        assert!(!format!("{c:?}").contains("\"s\""));
        assert!(format!("{c:?}").contains("redacted"));
    }

    /// Year 10000 panicked the shared fetch (issue #25); epoch seconds
    /// EKS Auth could send that RFC 3339 cannot write are refused instead.
    #[test]
    fn unrepresentable_expirations_are_errors() {
        let at = |secs: f64| Credentials {
            access_key_id: "A".into(),
            secret_access_key: Secret::new("s"),
            session_token: Secret::new("t"),
            account_id: String::new(),
            expiration: DateTime::from_secs_f64(secs),
        };
        for secs in [
            253_402_300_800.0,
            253_402_300_800.5,
            1e300,
            -1.0,
            -0.001,
            -1e300,
        ] {
            let c = at(secs);
            assert!(c.to_body().is_err(), "{secs}");
            assert!(c.check_expiration().is_err(), "{secs}");
        }
        for secs in [0.0, 1.5, 253_402_300_799.999] {
            assert!(at(secs).to_body().is_ok(), "{secs}");
        }
        assert_eq!(
            at(1e300).to_body().unwrap_err().to_string(),
            "expiration 9223372036854775807 s after the epoch, outside 1970-01-01..9999-12-31"
        );
    }

    #[test]
    fn account_ids() {
        assert_eq!(
            account_from_arn("arn:aws:sts::123456789012:assumed-role/r/s"),
            Ok("123456789012")
        );
        assert_eq!(account_from_arn("arn:aws:sts:::assumed-role/r/s"), Ok(""));
        assert_eq!(account_from_arn("garbage"), Err(ArnError::Prefix));
        assert_eq!(account_from_arn("ARN:aws:sts::1:x"), Err(ArnError::Prefix));
        assert_eq!(account_from_arn("arn:aws:sts::1"), Err(ArnError::Sections));
    }
}
