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

use std::fmt;

use serde::Deserialize;

use crate::gojson::{self, Value, go_quote};

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
    /// `kubernetes.io.node.name`: the node the pod was scheduled to.
    pub node_name: Option<String>,
}

/// The signing methods golang-jwt v5 registers (case-sensitive).
const GO_JWT_METHODS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
    "PS384", "PS512", "EdDSA", "none",
];

#[derive(Debug, Clone)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    /// `jwk`, `jku`, `x5u` or `x5c` present: a token asking to be checked
    /// with a key it names itself. Kubernetes never issues one.
    pub embeds_key: bool,
}

#[derive(Debug, Clone, Default)]
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

#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Audience,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    /// `kubernetes.io`, when present and well-formed.
    pub kubernetes: Option<KubernetesClaims>,
    /// `kubernetes.io` present but not of the expected shape.
    pub kubernetes_malformed: bool,
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
/// pod-facing messages, upstream's wording; none contains key material, and
/// only parse errors quote the token (as upstream does: Go's JSON errors
/// name the offending character).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Service account token cannot be empty")]
    Empty,
    /// The golang-jwt error text (`token is malformed: ...`).
    #[error("Service account token cannot be parsed: {0}")]
    Parse(String),
    #[error("Service account token failed basic claim validations: {}", .0.message())]
    Claims(ClaimFailures),
}

impl TokenError {
    fn malformed(what: &str) -> Self {
        TokenError::Parse(format!("token is malformed: {what}"))
    }

    /// The `outcome` label of `pod_identity_token_verifications_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Empty => "empty",
            TokenError::Parse(m) if m.starts_with("token is unverifiable") => "unverifiable",
            TokenError::Parse(_) => "malformed",
            TokenError::Claims(f) if f.expired => "expired",
            TokenError::Claims(f) if f.not_yet_valid => "not_yet_valid",
            TokenError::Claims(_) => "audience",
        }
    }
}

/// The claim checks that failed, reported together as golang-jwt joins
/// them: `token is expired, token is not valid yet, token has invalid audience`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimFailures {
    pub expired: bool,
    pub not_yet_valid: bool,
    pub audience: bool,
}

impl ClaimFailures {
    fn any(&self) -> bool {
        self.expired || self.not_yet_valid || self.audience
    }

    fn message(&self) -> String {
        let parts: Vec<&str> = [
            (self.expired, "token is expired"),
            (self.not_yet_valid, "token is not valid yet"),
            (self.audience, "token has invalid audience"),
        ]
        .iter()
        .filter(|(failed, _)| *failed)
        .map(|(_, m)| *m)
        .collect();
        parts.join(", ")
    }
}

/// Splits and decodes a JWS compact serialization without checking the
/// signature. `token` is the header's bytes: Go reports base64 errors by
/// byte offset.
pub fn parse(token: &[u8]) -> Result<Parsed<'_>, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    let mut parts = token.split(|b| *b == b'.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::malformed(
            "token contains an invalid number of segments",
        ));
    };
    let header_json = decode_segment(h).map_err(|at| {
        TokenError::malformed(&format!(
            "could not base64 decode header: illegal base64 data at input byte {at}"
        ))
    })?;
    let header = gojson::parse(&header_json)
        .map_err(|e| TokenError::malformed(&format!("could not JSON decode header: {e}")))?;
    if !matches!(header, Value::Object(_) | Value::Null) {
        return Err(TokenError::malformed(&format!(
            "could not JSON decode header: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            header.kind()
        )));
    }
    let claims_json = decode_segment(c).map_err(|at| {
        TokenError::malformed(&format!(
            "could not base64 decode claim: illegal base64 data at input byte {at}"
        ))
    })?;
    let claims = gojson::parse(&claims_json)
        .map_err(|e| e.to_string())
        .and_then(|v| registered_claims(&v))
        .map_err(|e| TokenError::malformed(&format!("could not JSON decode claim: {e}")))?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => {
            return Err(TokenError::Parse(
                "token is unverifiable: signing method (alg) is unspecified".into(),
            ));
        }
    };
    if !GO_JWT_METHODS.contains(&alg.as_str()) {
        return Err(TokenError::Parse(
            "token is unverifiable: signing method (alg) is unavailable".into(),
        ));
    }
    // Past base64 the first two segments are ASCII; only the signature
    // (never decoded by upstream) can hold other bytes, and an EKS Auth
    // request body must be UTF-8.
    let text = std::str::from_utf8(token)
        .map_err(|_| TokenError::malformed("token is not valid UTF-8"))?;
    let header = Header {
        alg,
        kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
        embeds_key: ["jwk", "jku", "x5u", "x5c"]
            .iter()
            .any(|k| header.get(k).is_some()),
    };
    Ok(Parsed {
        header,
        claims,
        signing_input: &text[..h.len() + 1 + c.len()],
        signature: &text[h.len() + c.len() + 2..],
    })
}

/// Go's `base64.RawURLEncoding.DecodeString` (non-strict): the error is the
/// byte offset Go reports (`CorruptInputError`).
fn decode_segment(seg: &[u8]) -> Result<Vec<u8>, usize> {
    fn sextet(b: u8) -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(seg.len() * 3 / 4);
    let (mut acc, mut n) = (0u32, 0usize);
    for (i, &b) in seg.iter().enumerate() {
        if b == b'\r' || b == b'\n' {
            continue;
        }
        acc = (acc << 6) | sextet(b).ok_or(i)?;
        n += 1;
        if n == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            (acc, n) = (0, 0);
        }
    }
    match n {
        0 => {}
        // One dangling character: Go blames it (its offset is len - 1 when
        // no newline was skipped).
        1 => {
            let last = seg
                .iter()
                .rposition(|b| *b != b'\r' && *b != b'\n')
                .expect("a sextet was read");
            return Err(last);
        }
        2 => out.push((acc >> 4) as u8),
        _ => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
    }
    Ok(out)
}

/// Decodes `v` as Go decodes into `jwt.RegisteredClaims`: members in order,
/// field names matched exactly first, then case-insensitively; an
/// `UnmarshalJSON` error (dates, audience) aborts at once, a plain type error
/// (`iss`, `sub`, `jti`) is reported only if nothing aborts.
fn registered_claims(v: &Value) -> Result<Claims, String> {
    let mut claims = Claims::default();
    let members = match v {
        Value::Null => return Ok(claims),
        Value::Object(members) => members,
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type jwt.RegisteredClaims",
                other.kind()
            ));
        }
    };
    const FIELDS: &[&str] = &["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];
    let mut saved: Option<String> = None;
    for (key, value) in members {
        if key == "kubernetes.io" {
            match value {
                Value::Null => claims.kubernetes = None,
                _ => match serde_json::from_value::<KubernetesClaims>(to_serde(value)) {
                    Ok(k) => {
                        claims.kubernetes = Some(k);
                        claims.kubernetes_malformed = false;
                    }
                    Err(_) => {
                        claims.kubernetes = None;
                        claims.kubernetes_malformed = true;
                    }
                },
            }
            continue;
        }
        let field = FIELDS
            .iter()
            .find(|f| **f == key)
            .or_else(|| FIELDS.iter().find(|f| f.eq_ignore_ascii_case(key)));
        let Some(&field) = field else { continue };
        match field {
            "iss" | "sub" | "jti" => match value {
                Value::Null => {}
                Value::String(s) => match field {
                    "iss" => claims.iss = Some(s.clone()),
                    "sub" => claims.sub = Some(s.clone()),
                    _ => {}
                },
                other => {
                    saved.get_or_insert_with(|| {
                        format!(
                            "json: cannot unmarshal {} into Go struct field RegisteredClaims.{field} of type string",
                            other.kind()
                        )
                    });
                }
            },
            "aud" => {
                claims.aud = match value {
                    Value::Null => claims.aud,
                    Value::String(s) => Audience::One(s.clone()),
                    Value::Array(items) => Audience::Many(
                        items
                            .iter()
                            .map(|i| i.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                            .ok_or("invalid type for claim")?,
                    ),
                    _ => return Err("invalid type for claim".into()),
                }
            }
            _ => {
                if matches!(value, Value::Null) {
                    continue;
                }
                let secs = numeric_date(value)?;
                match field {
                    "exp" => claims.exp = Some(secs),
                    "nbf" => claims.nbf = Some(secs),
                    _ => claims.iat = Some(secs),
                }
            }
        }
    }
    match saved {
        Some(err) => Err(err),
        None => Ok(claims),
    }
}

/// golang-jwt's `NumericDate.UnmarshalJSON`: a JSON number or a string
/// holding one, as whole seconds (fractions truncated toward the past).
fn numeric_date(v: &Value) -> Result<i64, String> {
    let literal = match v {
        Value::Number(n) => n.clone(),
        Value::String(s) if is_go_number(s) => s.clone(),
        Value::String(s) => {
            let raw = format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
            return Err(format!(
                "could not parse NumericData: json: invalid number literal, trying to unmarshal {} into Number",
                go_quote(raw.as_bytes())
            ));
        }
        other => {
            return Err(format!(
                "could not parse NumericData: json: cannot unmarshal {} into Go value of type json.Number",
                other.kind()
            ));
        }
    };
    let f: f64 = literal.parse().map_err(|_| {
        format!("could not convert json number value to float: strconv.ParseFloat: parsing \"{literal}\": invalid syntax")
    })?;
    if f.is_infinite() {
        return Err(format!(
            "could not convert json number value to float: strconv.ParseFloat: parsing \"{literal}\": value out of range"
        ));
    }
    // Go converts out-of-range floats to the minimum int64 (amd64).
    if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
        return Ok(i64::MIN);
    }
    Ok(f.floor() as i64)
}

/// Go's `isValidNumber`: the JSON number grammar, nothing around it.
fn is_go_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        digits(&mut i);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) && i + 1 < b.len() {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
            if i == b.len() {
                return false;
            }
        }
        digits(&mut i);
    }
    i == b.len()
}

fn to_serde(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(n) => serde_json::from_str(n).unwrap_or(serde_json::Value::Null),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(to_serde).collect()),
        Value::Object(members) => serde_json::Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), to_serde(v)))
                .collect(),
        ),
    }
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
    fn base64_offsets_like_go() {
        assert_eq!(decode_segment(b"eyJhb"), Err(4));
        assert_eq!(decode_segment(b"!!!"), Err(0));
        assert_eq!(decode_segment(b"eyJ!"), Err(3));
        assert_eq!(decode_segment(b"ab+d"), Err(2));
        assert_eq!(decode_segment(b"e30="), Err(3));
        // Non-zero trailing bits are accepted (non-strict).
        assert_eq!(decode_segment(b"e31"), Ok(b"{}".to_vec()));
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
}
