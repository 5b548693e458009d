//! The Go-compatible parse: Go's base64 decoder, Go's JSON (via
//! [`crate::gojson`]) and `RegisteredClaims` decoding, in golang-jwt's order
//! and with its messages. Slower than [`super::fast`]; decides every token
//! the fast path declines.

use super::{
    Audience, Claims, Header, KubernetesClaims, ParseError, Parsed, Segment, TokenError, algorithm,
    go_field_matches,
};
use crate::gojson::{self, Value, go_quote};

/// Parses like golang-jwt's `ParseUnverified` into `RegisteredClaims`, with
/// its messages.
pub(super) fn parse(token: &[u8]) -> Result<Parsed<'_>, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    let mut parts = token.split(|b| *b == b'.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Segments.into());
    };
    let header_json = decode_segment(h).map_err(|at| ParseError::Base64(Segment::Header, at))?;
    let header = gojson::parse(&header_json)
        .map_err(|e| ParseError::Json(Segment::Header, e.to_string()))?;
    if !matches!(header, Value::Object(_) | Value::Null) {
        return Err(ParseError::Json(
            Segment::Header,
            format!(
                "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                header.kind()
            ),
        )
        .into());
    }
    let claims_json = decode_segment(c).map_err(|at| ParseError::Base64(Segment::Claim, at))?;
    let claims = gojson::parse(&claims_json)
        .map_err(|e| e.to_string())
        .and_then(|v| registered_claims(&v))
        .map_err(|e| ParseError::Json(Segment::Claim, e))?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(ParseError::AlgUnspecified.into()),
    };
    if algorithm::method(&alg).is_none() {
        return Err(ParseError::AlgUnavailable.into());
    }
    // Past base64 the first two segments are ASCII; only the signature
    // (never decoded by upstream) can hold other bytes, and an EKS Auth
    // request body must be UTF-8.
    let text = std::str::from_utf8(token).map_err(|_| ParseError::NotUtf8)?;
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
                _ => match serde_json::from_value::<KubernetesClaims>(to_serde(value, 0)) {
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
            .or_else(|| FIELDS.iter().find(|f| go_field_matches(key, f)));
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

/// `kubernetes.io` for serde, cut at [`KUBERNETES_DEPTH`]: the claims
/// read there are at most two containers deep (`kubernetes.io.pod.name`), so
/// a container below that is only ever a type error (where a string is
/// read) or skipped, whatever it holds; it is kept as an empty container of
/// its kind. A claim nested to Go's depth limit thus costs no deep copy and
/// no deep recursion.
fn to_serde(v: &Value, depth: usize) -> serde_json::Value {
    let nested = depth < KUBERNETES_DEPTH;
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(n) => serde_json::from_str(n).unwrap_or(serde_json::Value::Null),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Array(items) => serde_json::Value::Array(if nested {
            items.iter().map(|i| to_serde(i, depth + 1)).collect()
        } else {
            Vec::new()
        }),
        Value::Object(members) => serde_json::Value::Object(if nested {
            members
                .iter()
                .map(|(k, v)| (k.clone(), to_serde(v, depth + 1)))
                .collect()
        } else {
            serde_json::Map::new()
        }),
    }
}

/// Containers below `kubernetes.io` whose contents [`KubernetesClaims`]
/// reads: the claim itself and its `pod`/`serviceaccount`/`node`.
const KUBERNETES_DEPTH: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;

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
}
