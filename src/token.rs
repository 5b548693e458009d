//! The pod's projected ServiceAccount token: parsing without a key and the
//! basic claim checks upstream v0.1.37 does (exp, nbf) plus the audience.
//!
//! Wire format: the raw JWT in the `Authorization` header, no `Bearer`.
//! Claims of a projected token (kube-apiserver):
//! `{"aud":["pods.eks.amazonaws.com"],"exp":..,"iat":..,"nbf":..,"iss":..,"jti":..,
//!   "sub":"system:serviceaccount:<ns>:<sa>",
//!   "kubernetes.io":{"namespace":..,"node":{"name","uid"},"pod":{"name","uid"},
//!                    "serviceaccount":{"name","uid"}}}`
//!
//! Nothing here is trusted for caching: claims become an [`Identity`] only
//! after the signature is verified (`verify`).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// SHA-256 of the raw token. Byte-equal tokens, and only those, share a hash
/// (collision resistance is what makes keying by hash as strict as keying by
/// the token itself).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl fmt::Debug for TokenHash {
    // A prefix is enough to correlate log lines and reveals nothing usable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x})",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The workload a *verified* token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedRef {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KubernetesClaims {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod: Option<NamedRef>,
    #[serde(default)]
    pub serviceaccount: Option<NamedRef>,
    #[serde(default)]
    pub node: Option<NamedRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub aud: Audience,
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub nbf: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub iat: Option<i64>,
    #[serde(default, rename = "kubernetes.io")]
    pub kubernetes: Option<KubernetesClaims>,
}

/// RFC 7519 NumericDate: JSON number, possibly fractional.
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v: Option<f64> = Option::deserialize(d)?;
    Ok(v.map(|f| f as i64))
}

/// A token split into its parts; borrowed from the request header.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    pub claims: Claims,
    /// `base64(header) "." base64(claims)`: what the signature covers.
    pub signing_input: &'a str,
    pub signature: &'a str,
}

/// Why a token was refused before reaching EKS Auth. Display strings are the
/// pod-facing messages (upstream wording where upstream has the case); none
/// of them contains the token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Service account token cannot be empty")]
    Empty,
    #[error("Service account token cannot be parsed: token is malformed: {0}")]
    Malformed(String),
    #[error("Service account token failed basic claim validations: token is expired")]
    Expired,
    #[error("Service account token failed basic claim validations: token is not valid yet")]
    NotYetValid,
    #[error("Service account token failed basic claim validations: token has invalid audience")]
    Audience,
}

/// Splits and decodes a JWS compact serialization without checking the
/// signature.
pub fn parse(token: &str) -> Result<Parsed<'_>, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "token contains an invalid number of segments".into(),
        ));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| TokenError::Malformed("could not base64 decode header".into()))?;
    let header: Header = serde_json::from_slice(&header_json)
        .map_err(|_| TokenError::Malformed("could not JSON decode header".into()))?;
    let claims_json = URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| TokenError::Malformed("could not base64 decode claim".into()))?;
    let claims: Claims = serde_json::from_slice(&claims_json)
        .map_err(|_| TokenError::Malformed("could not JSON decode claim".into()))?;
    if s.is_empty() && header.alg != "none" {
        return Err(TokenError::Malformed("token signature is empty".into()));
    }
    Ok(Parsed {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + c.len()],
        signature: s,
    })
}

/// The validity window of a token, in epoch seconds, after the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
}

impl Validity {
    /// Same checks as [`check_basic`] for a token already seen.
    pub fn check(&self, now_secs: i64, leeway_secs: i64) -> Result<(), TokenError> {
        if self.expires.is_some_and(|exp| now_secs > exp + leeway_secs) {
            return Err(TokenError::Expired);
        }
        if self
            .not_before
            .is_some_and(|nbf| now_secs + leeway_secs < nbf)
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

/// exp / nbf (with leeway) and audience. `exp` is optional as in upstream's
/// validator; EKS Auth rejects tokens without one anyway.
pub fn check_basic(
    claims: &Claims,
    audience: &str,
    now_secs: i64,
    leeway_secs: i64,
) -> Result<Validity, TokenError> {
    let validity = Validity {
        not_before: claims.nbf,
        expires: claims.exp,
    };
    validity.check(now_secs, leeway_secs)?;
    if !claims.aud.contains(audience) {
        return Err(TokenError::Audience);
    }
    Ok(validity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn tok(claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64(claims)
        )
    }

    #[test]
    fn parses_projected_token_claims() {
        let t = tok(
            r#"{"aud":["pods.eks.amazonaws.com"],"exp":200,"nbf":100,"sub":"system:serviceaccount:ns:sa",
               "kubernetes.io":{"namespace":"ns","pod":{"name":"p","uid":"u"},"serviceaccount":{"name":"sa","uid":"x"}}}"#,
        );
        let p = parse(&t).unwrap();
        assert_eq!(p.header.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims.exp, Some(200));
        assert!(p.claims.aud.contains("pods.eks.amazonaws.com"));
        assert_eq!(
            p.claims.kubernetes.unwrap().pod.unwrap().uid.as_deref(),
            Some("u")
        );
        assert_eq!(p.signature, "c2ln");
        assert!(t.starts_with(p.signing_input));
    }

    #[test]
    fn malformed_tokens() {
        assert_eq!(parse("").unwrap_err(), TokenError::Empty);
        assert!(matches!(parse("abc"), Err(TokenError::Malformed(_))));
        assert!(matches!(parse("a.b.c.d"), Err(TokenError::Malformed(_))));
        assert!(matches!(
            parse("!!.e30.c2ln"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            parse(&format!("{}.{}.c2ln", b64("{}"), b64("{}"))),
            Err(TokenError::Malformed(m)) if m == "could not JSON decode header"
        ));
    }

    #[test]
    fn time_and_audience_checks() {
        let claims = parse(&tok(
            r#"{"aud":"pods.eks.amazonaws.com","exp":200,"nbf":100}"#,
        ))
        .unwrap()
        .claims;
        let aud = "pods.eks.amazonaws.com";
        assert!(check_basic(&claims, aud, 150, 0).is_ok());
        assert_eq!(check_basic(&claims, aud, 201, 0), Err(TokenError::Expired));
        assert!(check_basic(&claims, aud, 205, 10).is_ok());
        assert_eq!(
            check_basic(&claims, aud, 99, 0),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            check_basic(&claims, "sts.amazonaws.com", 150, 0),
            Err(TokenError::Audience)
        );
    }
}
