//! The fast parse: strict base64url and serde_json over the claims a
//! projected token carries. It accepts only tokens on which it provably
//! agrees with the Go-compatible parse ([`super::go`]) and declines
//! (`None`) everything else, which that parse then decides and words:
//! - strict base64 (canonical, no padding) is a subset of Go's decoder;
//! - serde_json accepts a subset of the documents Go's `encoding/json` does
//!   (it refuses invalid UTF-8, lone surrogates, deep nesting, which Go
//!   takes) and parses the same values from them, except that it skips
//!   unknown members however deep they nest, where Go stops at 10,000
//!   levels: segments with more than a few dozen brackets are declined;
//! - a claim name that only case-insensitively matches a registered one
//!   (`EXP`), a repeated claim, a `null`, a numeric string where Go reads a
//!   number, or `kubernetes.io` of an unexpected shape: declined, because Go
//!   reads those in ways serde does not;
//! - the header must be an object whose `alg` (once) is a registered method.
//!
//! The unit test `the_fast_path_agrees_with_the_go_compatible_one`
//! (`token/mod.rs`) checks the two agree on the whole golang-jwt corpus of
//! `tests/data/golang-jwt`, and the `token` fuzz target on whatever it finds.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{Audience, Claims, Header, KubernetesClaims, Parsed, algorithm, go_field_matches};

pub(super) fn parse(token: &[u8]) -> Option<Parsed<'_>> {
    let text = std::str::from_utf8(token).ok()?;
    let mut parts = text.split('.');
    let (Some(h), Some(c), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let header_json = URL_SAFE_NO_PAD.decode(h).ok().filter(|j| shallow(j))?;
    let header: FastHeader = serde_json::from_slice(&header_json).ok()?;
    algorithm::method(&header.alg)?;
    let claims_json = URL_SAFE_NO_PAD.decode(c).ok().filter(|j| shallow(j))?;
    let claims: FastClaims = serde_json::from_slice(&claims_json).ok()?;
    Some(Parsed {
        header: Header {
            alg: header.alg,
            kid: header.kid,
            embeds_key: header.jwk || header.jku || header.x5u || header.x5c,
        },
        claims: claims.0,
        signing_input: &text[..h.len() + 1 + c.len()],
        signature,
    })
}

/// Opening brackets a segment may hold for the fast path: serde_json skips
/// unknown members without a depth limit, while Go refuses nesting past
/// 10,000 levels; a projected token nests three levels, so anything with
/// many brackets (counted anywhere, strings included) goes to the
/// Go-compatible parse.
const MAX_BRACKETS: usize = 64;

fn shallow(json: &[u8]) -> bool {
    json.iter().filter(|b| matches!(b, b'[' | b'{')).count() <= MAX_BRACKETS
}

/// The header as Go reads it from its map (exact, case-sensitive keys).
/// A repeated field is a serde error, hence declined.
#[derive(Deserialize)]
struct FastHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    jwk: bool,
    #[serde(default, deserialize_with = "present")]
    jku: bool,
    #[serde(default, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, deserialize_with = "present")]
    x5c: bool,
}

/// A member that is there, whatever its value (`null` included, as in Go's
/// map).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

struct FastClaims(Claims);

const REGISTERED: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// A NumericDate given as a JSON number, floored to whole seconds as
/// golang-jwt does (out of int64's range: Go's conversion gives the minimum).
fn seconds(f: f64) -> i64 {
    if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
        return i64::MIN;
    }
    f.floor() as i64
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FastAudience {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for FastClaims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FastClaims;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claims object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FastClaims, A::Error> {
                let decline = || de::Error::custom("declined");
                let mut claims = Claims::default();
                let mut seen = [false; 8];
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match REGISTERED.iter().position(|r| *r == key) {
                        Some(i) => i,
                        None if key == "kubernetes.io" => 7,
                        None if REGISTERED.iter().any(|r| go_field_matches(&key, r)) => {
                            return Err(decline());
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if std::mem::replace(&mut seen[slot], true) {
                        return Err(decline());
                    }
                    match slot {
                        0 => claims.iss = Some(map.next_value::<String>()?),
                        1 => claims.sub = Some(map.next_value::<String>()?),
                        2 => {
                            claims.aud = match map.next_value::<FastAudience>()? {
                                FastAudience::One(a) => Audience::One(a),
                                FastAudience::Many(v) => Audience::Many(v),
                            }
                        }
                        3..=5 => {
                            let at = seconds(map.next_value::<f64>()?);
                            match slot {
                                3 => claims.exp = Some(at),
                                4 => claims.nbf = Some(at),
                                _ => claims.iat = Some(at),
                            }
                        }
                        6 => {
                            map.next_value::<String>()?;
                        }
                        _ => claims.kubernetes = Some(map.next_value::<KubernetesClaims>()?),
                    }
                }
                Ok(FastClaims(claims))
            }
        }
        d.deserialize_map(V)
    }
}
