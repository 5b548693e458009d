//! A JSON Web Key Set (RFC 7517) as kube-apiserver and OIDC issuers publish
//! it, reduced to the keys that can verify a projected ServiceAccount token.
//!
//! Wire: `{"keys":[{"kty":"RSA","kid":..,"alg":"RS256","use":"sig","n":..,"e":..},
//! {"kty":"EC","crv":"P-256","kid":..,"x":..,"y":..}, ..]}`. Keys that cannot
//! verify a token (`oct`, `use: enc`, unknown `alg`, no `kid`, malformed
//! components) are skipped, not fatal: one odd key must not take the others
//! down.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::ParsedPublicKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::JwksError;
use crate::token::algorithm::{self, Algorithm, KeyType};

/// One verification key, parsed once for its algorithm (aws-lc-rs), so a
/// verification is the signature check and nothing else.
pub struct Key {
    pub kid: String,
    /// The `alg` the key declares, or the family default (RS256 / ES256 / ES384).
    pub alg: Algorithm,
    verifier: ParsedPublicKey,
    /// SHA-256 over the key's type, algorithm and public components: equal
    /// for the same key, different when a kid is reused for other material.
    pub fingerprint: [u8; 32],
}

impl Key {
    /// The token's `alg` must equal the key's.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.alg == alg
    }

    /// Checks `signature` (base64url, unpadded, as in a JWS) over `message`.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|sig| self.verifier.verify_sig(message, &sig).is_ok())
    }
}

/// DER of PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    fn integer(out: &mut Vec<u8>, magnitude: &[u8]) {
        let magnitude = &magnitude[magnitude.iter().take_while(|b| **b == 0).count()..];
        let pad = magnitude.first().is_none_or(|b| b & 0x80 != 0);
        out.push(0x02);
        length(out, magnitude.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(magnitude);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut der = Vec::with_capacity(body.len() + 4);
    der.push(0x30);
    length(&mut der, body.len());
    der.extend_from_slice(&body);
    der
}

pub type Keys = HashMap<String, Arc<Key>>;

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Parses a JWKS document into its usable keys, by kid.
pub fn parse_jwks(doc: &[u8]) -> Result<Keys, JwksError> {
    let set: JwkSet = serde_json::from_slice(doc).map_err(|source| JwksError::Json {
        what: "JWKS".into(),
        source,
    })?;
    let keys: Keys = set
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(key_of)
        .map(|key| (key.kid.clone(), Arc::new(key)))
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(keys)
}

fn key_of(jwk: Jwk) -> Option<Key> {
    let kid = jwk.kid.filter(|k| !k.is_empty())?;
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let declared = match jwk.alg.as_deref() {
        Some(name) => Some(algorithm::accepted_named(name)?),
        None => None,
    };
    let key_type = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => KeyType::Rsa,
        ("EC", Some("P-256")) => KeyType::EcP256,
        ("EC", Some("P-384")) => KeyType::EcP384,
        _ => return None,
    };
    let alg = match declared {
        Some(alg) if algorithm::verification(alg).map(|v| v.key) == Some(key_type) => alg,
        Some(_) => return None,
        None => match key_type {
            KeyType::Rsa => Algorithm::RS256,
            KeyType::EcP256 => Algorithm::ES256,
            KeyType::EcP384 => Algorithm::ES384,
        },
    };
    let (a, b) = match key_type {
        KeyType::Rsa => (jwk.n?, jwk.e?),
        KeyType::EcP256 | KeyType::EcP384 => (jwk.x?, jwk.y?),
    };
    let (da, db) = (
        URL_SAFE_NO_PAD.decode(&a).ok()?,
        URL_SAFE_NO_PAD.decode(&b).ok()?,
    );
    let public = match key_type {
        KeyType::Rsa => rsa_public_key_der(&da, &db),
        KeyType::EcP256 | KeyType::EcP384 => {
            let size = if key_type == KeyType::EcP256 { 32 } else { 48 };
            if da.len() != size || db.len() != size {
                return None;
            }
            [&[4u8][..], &da, &db].concat()
        }
    };
    let verifier = ParsedPublicKey::new(algorithm::verification(alg)?.check, public).ok()?;
    let material = format!("{key_type:?}|{alg:?}|{a}|{b}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, material.as_bytes());
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(digest.as_ref());
    Some(Key {
        kid,
        alg,
        verifier,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_unusable_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","kid":"hs","alg":"HS256","n":"AQAB","e":"AQAB"},
            {"kty":"EC","kid":"ec","crv":"P-256","alg":"ES384","x":"AQAB","y":"AQAB"}
        ]}"#;
        assert!(matches!(parse_jwks(doc), Err(JwksError::NoUsableKeys)));
    }
}
