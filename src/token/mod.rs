//! The pod's projected ServiceAccount token: parsing without a key and the
//! basic claim checks, with upstream v0.1.37's rules and messages
//! (golang-jwt v5 `ParseUnverified` into `RegisteredClaims`, then
//! `NewValidator().Validate`), plus the audience.
//!
//! Wire format: the raw JWT in the `Authorization` header, no `Bearer`.
//! Claims of a projected token (kube-apiserver):
//! `{"aud":["pods.eks.amazonaws.com"],"exp":..,"iat":..,"nbf":..,"iss":..,"jti":..,
//!   "sub":"system:serviceaccount:<ns>:<sa>",
//!   "kubernetes.io":{"namespace":..,"node":{"name","uid"},"pod":{"name","uid"},
//!                    "serviceaccount":{"name","uid"}}}`
//!
//! Parsing order and messages (each a golang-jwt error, wrapped by the
//! agent as `Service account token cannot be parsed: <error>`):
//! 1. exactly three `.`-separated segments, else `token is malformed: token
//!    contains an invalid number of segments`;
//! 2. header: unpadded base64url (Go's non-strict decoder: trailing bits
//!    ignored), else `token is malformed: could not base64 decode header:
//!    illegal base64 data at input byte N`; Go JSON into a map, else `token
//!    is malformed: could not JSON decode header: <Go JSON error>`;
//! 3. claims likewise (`... claim ...`), decoded like Go decodes
//!    `RegisteredClaims` (field names case-insensitive, `exp`/`nbf`/`iat`
//!    numbers or numeric strings, `aud` a string or an array of strings);
//! 4. `alg` a string (else `token is unverifiable: signing method (alg) is
//!    unspecified`) naming a method golang-jwt registers (else `... is
//!    unavailable`). `none` passes here: only local verification refuses it.
//!
//! The signature segment is not decoded here. Nothing here is trusted for
//! caching: claims become an [`Identity`] only after the signature is
//! verified (`verify`).

pub mod algorithm;
mod claims;
mod error;
mod fast;
mod go;

pub(crate) use claims::go_field_matches;
pub use claims::{
    Audience, Claims, Header, Identity, KubernetesClaims, NamedRef, Subject, service_account,
};
pub use error::{ClaimFailures, ParseError, Segment, TokenError};

use std::fmt;

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

/// A token split into its parts; borrowed from the request header.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    pub claims: Claims,
    /// `base64(header) "." base64(claims)`: what the signature covers.
    pub signing_input: &'a str,
    pub signature: &'a str,
}

/// Splits and decodes a JWS compact serialization without checking the
/// signature. `token` is the header's bytes: Go reports base64 errors by
/// byte offset. Well-formed tokens take the fast path ([`fast`]); anything
/// it does not accept is decided by the Go-compatible one ([`go`]), which
/// alone words the errors.
pub fn parse(token: &[u8]) -> Result<Parsed<'_>, TokenError> {
    match fast::parse(token) {
        Some(parsed) => Ok(parsed),
        None => go::parse(token),
    }
}

/// Whether the two parses agree on `token`: where the fast path accepts it,
/// the Go-compatible one must accept it with the same result (the fast path
/// may only decline). `Err` describes the disagreement. For the tests and
/// the fuzz targets.
pub fn paths_agree(token: &[u8]) -> Result<(), String> {
    let Some(fast) = fast::parse(token) else {
        return Ok(());
    };
    let go = go::parse(token)
        .map_err(|e| format!("the fast path accepted, the Go-compatible one refused: {e}"))?;
    let shown = |p: &Parsed<'_>| {
        format!(
            "{:?} {:?} {} {}",
            p.header, p.claims, p.signing_input, p.signature
        )
    };
    let (fast, go) = (shown(&fast), shown(&go));
    if fast != go {
        return Err(format!(
            "the parses differ: fast {fast}, Go-compatible {go}"
        ));
    }
    Ok(())
}

/// The validity window of a token, in epoch seconds, after the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
}

impl Validity {
    /// golang-jwt's rules: expired when `now >= exp`, not yet valid when
    /// `now < nbf` (each widened by `leeway_secs`).
    pub fn check(&self, now_secs: i64, leeway_secs: i64) -> Result<(), TokenError> {
        let failures = self.failures(now_secs, leeway_secs);
        if failures.any() {
            return Err(TokenError::Claims(failures));
        }
        Ok(())
    }

    fn failures(&self, now_secs: i64, leeway_secs: i64) -> ClaimFailures {
        ClaimFailures {
            expired: self
                .expires
                .is_some_and(|exp| now_secs >= exp.saturating_add(leeway_secs)),
            not_yet_valid: self
                .not_before
                .is_some_and(|nbf| now_secs.saturating_add(leeway_secs) < nbf),
            audience: false,
        }
    }
}

/// exp / nbf (with leeway), then the audience. `exp` is optional as in
/// upstream's validator; EKS Auth rejects tokens without one.
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
    // Upstream checks no audience: its words for every token it refuses
    // come first, and the audience (ours) is reported only when they pass.
    validity.check(now_secs, leeway_secs)?;
    if !claims.aud.contains(audience) {
        return Err(TokenError::Claims(ClaimFailures {
            audience: true,
            ..ClaimFailures::default()
        }));
    }
    Ok(validity)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
        let p = parse(t.as_bytes()).unwrap();
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
    fn time_and_audience_checks() {
        let claims =
            parse(tok(r#"{"aud":"pods.eks.amazonaws.com","exp":200,"nbf":100}"#).as_bytes())
                .unwrap()
                .claims;
        let aud = "pods.eks.amazonaws.com";
        assert!(check_basic(&claims, aud, 150, 0).is_ok());
        assert!(check_basic(&claims, aud, 199, 0).is_ok());
        let err = |now, leeway, aud| {
            check_basic(&claims, aud, now, leeway)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(200, 0, aud),
            "Service account token failed basic claim validations: token is expired"
        );
        assert!(check_basic(&claims, aud, 205, 10).is_ok());
        assert_eq!(
            err(99, 0, aud),
            "Service account token failed basic claim validations: token is not valid yet"
        );
        assert_eq!(
            err(150, 0, "sts.amazonaws.com"),
            "Service account token failed basic claim validations: token has invalid audience"
        );
        let both = parse(tok(r#"{"exp":100,"nbf":200}"#).as_bytes())
            .unwrap()
            .claims;
        assert_eq!(
            check_basic(&both, aud, 150, 0).unwrap_err().to_string(),
            "Service account token failed basic claim validations: token is expired, token is not valid yet"
        );
    }

    /// Claims nested to Go's depth limit (which serde_json's fast path
    /// declines at 128) are decided by the Go-compatible path without a deep
    /// stack: building, `kubernetes.io`'s conversion for serde and dropping
    /// all stay flat (issue #25).
    #[test]
    fn deep_claims_with_a_small_stack() {
        crate::gojson::tests::on_small_stack(|| {
            let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
            let t = tok(&format!(
                r#"{{"aud":"pods.eks.amazonaws.com","kubernetes.io":{},"x":{}}}"#,
                deep(9_999),
                deep(9_999)
            ));
            let claims = parse(t.as_bytes()).expect("Go accepts it").claims;
            assert!(claims.kubernetes_malformed);
            assert!(claims.aud.contains("pods.eks.amazonaws.com"));
            let t = tok(&format!(
                r#"{{"kubernetes.io":{{"namespace":"ns","pod":{{"name":"p","x":{}}}}}}}"#,
                deep(9_997)
            ));
            let k = parse(t.as_bytes())
                .unwrap()
                .claims
                .kubernetes
                .expect("well-formed");
            assert_eq!(k.pod.unwrap().name.as_deref(), Some("p"));
            // Go refuses past 10,000 levels, in a member nobody reads too
            // (serde_json, skipping it, did not: the fast path declines).
            let t = tok(&format!(r#"{{"x":{}}}"#, deep(10_000)));
            let refused = |t: &str| parse(t.as_bytes()).err().map(|e| e.to_string());
            assert_eq!(
                refused(&t).as_deref(),
                Some(
                    "Service account token cannot be parsed: token is malformed: could not JSON decode claim: invalid character '[' exceeded max depth"
                )
            );
            let header = format!(r#"{{"alg":"RS256","x":{}}}"#, deep(10_000));
            let t = format!("{}.{}.c2ln", b64(&header), b64("{}"));
            assert_eq!(
                refused(&t).as_deref(),
                Some(
                    "Service account token cannot be parsed: token is malformed: could not JSON decode header: invalid character '[' exceeded max depth"
                )
            );
        });
    }

    /// Where the fast path accepts a token, the Go-compatible one parses it
    /// the same: every token of the golang-jwt corpus, and claim shapes the
    /// fast path must decline or agree on.
    #[test]
    fn the_fast_path_agrees_with_the_go_compatible_one() {
        use base64::engine::general_purpose::STANDARD;
        let corpus = include_str!("../../tests/data/golang-jwt/cases.tsv");
        let mut tokens: Vec<Vec<u8>> = corpus
            .lines()
            .map(|l| STANDARD.decode(l.split('\t').next().unwrap()).unwrap())
            .collect();
        for claims in [
            r#"{"exp":100,"EXP":200}"#,
            r#"{"\u017fub":"system:serviceaccount:a:b"}"#,
            r#"{"sub":"x","sub":"y"}"#,
            r#"{"exp":null}"#,
            r#"{"exp":"100"}"#,
            r#"{"exp":1.9,"nbf":-1.5,"iat":1e20}"#,
            // Found by fuzz/token: serde_json's default float parsing
            // rounded this to 10000000000000002, Go's to 1e16.
            r#"{"exp":4102444800,"iat":10000000000000000.9}"#,
            r#"{"nbf":9007199254740993.5,"exp":1.7976931348623157e308}"#,
            r#"{"aud":[],"jti":5}"#,
            r#"{"kubernetes.io":{"pod":"p"}}"#,
            r#"{"kubernetes.io":{"pod":{"name":"p","uid":"u"},"pod":{"name":"q"}}}"#,
            r#"{"kubernetes.io":null,"Kubernetes.io":{"namespace":"x"}}"#,
        ] {
            tokens.push(tok(claims).into_bytes());
        }
        let header = |alg: &str, extra: &str| {
            format!(
                "{}.{}.c2ln",
                b64(&format!(r#"{{"alg":"{alg}"{extra}}}"#)),
                b64("{}")
            )
            .into_bytes()
        };
        tokens.push(header("RS256", r#","jwk":null"#));
        tokens.push(header("RS256", r#","alg":"none""#));
        tokens.push(header("RS256", r#","kid":5"#));
        // Nested past Go's limit in members nobody reads.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        tokens.push(header("RS256", &format!(r#","x":{deep}"#)));
        tokens.push(tok(&format!(r#"{{"x":{deep}}}"#)).into_bytes());
        let mut fast_accepted = 0;
        for t in &tokens {
            if let Err(e) = paths_agree(t) {
                panic!("{}: {e}", String::from_utf8_lossy(&t[..t.len().min(200)]));
            }
            fast_accepted += usize::from(fast::parse(t).is_some());
        }
        assert!(fast_accepted > 500, "{fast_accepted}");
    }
}
