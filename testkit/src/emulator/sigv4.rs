//! SigV4 checks of the emulator: every call must be signed for service
//! `eks-auth` with a fresh `X-Amz-Date`; calls signed with a registered
//! access key must carry the signature aws-sigv4 computes for them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use http::header::AUTHORIZATION;

use super::{ApiError, Emulator, api_error};

impl Emulator {
    /// Returns the access key id of a correctly shaped (and, for registered
    /// keys, correctly signed) SigV4 request for service `eks-auth`.
    pub(super) fn check_sigv4(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<String, ApiError> {
        let missing = || {
            api_error(
                403,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        };
        let auth = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(missing)?;
        let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(missing)?;
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for field in rest.split(',') {
            let field = field.trim();
            if let Some(v) = field.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = field.strip_prefix("SignedHeaders=") {
                signed_headers = Some(v);
            } else if let Some(v) = field.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let bad = |m: &str| api_error(403, "IncompleteSignatureException", m.to_owned());
        let credential = credential.ok_or_else(|| bad("Credential missing"))?;
        let signed_headers = signed_headers.ok_or_else(|| bad("SignedHeaders missing"))?;
        let signature = signature.ok_or_else(|| bad("Signature missing"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [akid, _date, region, service, "aws4_request"] = scope[..] else {
            return Err(bad("Credential scope malformed"));
        };
        if service != "eks-auth" {
            return Err(api_error(
                403,
                "InvalidSignatureException",
                format!(
                    "Credential should be scoped to correct service: 'eks-auth', not '{service}'"
                ),
            ));
        }
        let amz_date = parts
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_amz_date)
            .ok_or_else(|| bad("X-Amz-Date missing or malformed"))?;
        let skew = SystemTime::now()
            .duration_since(amz_date)
            .unwrap_or_else(|e| e.duration());
        if skew > Duration::from_secs(15 * 60) {
            return Err(api_error(
                403,
                "InvalidSignatureException",
                "Signature expired",
            ));
        }
        let secret = self
            .node_credentials
            .read()
            .expect("emulator lock")
            .get(akid)
            .cloned();
        if let Some(secret) = secret {
            let mut headers = Vec::new();
            for name in signed_headers.split(';') {
                let value = parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| bad("a signed header is missing"))?;
                headers.push((name, value));
            }
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let uri = format!("http://{host}{path}");
            let identity = Credentials::new(akid, secret, None, None, "emulator").into();
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(region)
                .name("eks-auth")
                .time(amz_date)
                .settings(SigningSettings::default())
                .build()
                .map_err(|_| bad("signing parameters"))?
                .into();
            let signable = SignableRequest::new(
                parts.method.as_str(),
                uri,
                headers.into_iter(),
                SignableBody::Bytes(body),
            )
            .map_err(|_| bad("request not signable"))?;
            let expected = sign(signable, &params)
                .map_err(|_| bad("signing failed"))?
                .into_parts()
                .1;
            if expected != signature {
                return Err(api_error(
                    403,
                    "InvalidSignatureException",
                    "The request signature we calculated does not match the signature you provided.",
                ));
            }
        } else if !self
            .node_credentials
            .read()
            .expect("emulator lock")
            .is_empty()
        {
            return Err(api_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ));
        }
        Ok(akid.to_owned())
    }
}

/// `20261129T060102Z`.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || !s.ends_with('Z') || s.as_bytes()[8] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates() {
        let t = parse_amz_date("20260413T003509Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1776040509);
        assert!(parse_amz_date("2026-04-13T00:35:09Z").is_none());
    }
}
