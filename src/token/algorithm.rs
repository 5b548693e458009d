//! The one table of JWS signing algorithms, keyed by `jsonwebtoken`'s
//! [`Algorithm`] (the vocabulary the project uses for algorithms): which
//! names golang-jwt registers (a token naming any other is "unavailable",
//! as upstream words it) and which of them the agent accepts for
//! verification, with the key type and the aws-lc-rs check each needs.
//! Token parsing, key parsing and verification read it and nothing else,
//! so they cannot disagree.

use aws_lc_rs::signature::{self, VerificationAlgorithm};
pub use jsonwebtoken::Algorithm;

/// The key type an accepted algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    EcP256,
    EcP384,
}

/// How a token signed with an accepted algorithm is checked.
pub struct Verification {
    pub key: KeyType,
    pub check: &'static dyn VerificationAlgorithm,
}

/// One signing method golang-jwt v5 registers.
pub struct Method {
    /// As a token's `alg` names it (case-sensitive).
    pub name: &'static str,
    /// `None` where `jsonwebtoken` has no name for it (`none`, `ES512`).
    pub alg: Option<Algorithm>,
    /// `None`: never accepted (no symmetric keys, no `none`, nothing the
    /// cluster's keys cannot be).
    pub verification: Option<Verification>,
}

const fn accepted(
    name: &'static str,
    alg: Algorithm,
    key: KeyType,
    check: &'static dyn VerificationAlgorithm,
) -> Method {
    Method {
        name,
        alg: Some(alg),
        verification: Some(Verification { key, check }),
    }
}

const fn registered(name: &'static str, alg: Option<Algorithm>) -> Method {
    Method {
        name,
        alg,
        verification: None,
    }
}

/// Every method golang-jwt registers; the RSA modulus range is JOSE's
/// (2,048 bits and more).
pub static METHODS: [Method; 14] = [
    registered("HS256", Some(Algorithm::HS256)),
    registered("HS384", Some(Algorithm::HS384)),
    registered("HS512", Some(Algorithm::HS512)),
    accepted(
        "RS256",
        Algorithm::RS256,
        KeyType::Rsa,
        &signature::RSA_PKCS1_2048_8192_SHA256,
    ),
    accepted(
        "RS384",
        Algorithm::RS384,
        KeyType::Rsa,
        &signature::RSA_PKCS1_2048_8192_SHA384,
    ),
    accepted(
        "RS512",
        Algorithm::RS512,
        KeyType::Rsa,
        &signature::RSA_PKCS1_2048_8192_SHA512,
    ),
    accepted(
        "ES256",
        Algorithm::ES256,
        KeyType::EcP256,
        &signature::ECDSA_P256_SHA256_FIXED,
    ),
    accepted(
        "ES384",
        Algorithm::ES384,
        KeyType::EcP384,
        &signature::ECDSA_P384_SHA384_FIXED,
    ),
    registered("ES512", None),
    accepted(
        "PS256",
        Algorithm::PS256,
        KeyType::Rsa,
        &signature::RSA_PSS_2048_8192_SHA256,
    ),
    accepted(
        "PS384",
        Algorithm::PS384,
        KeyType::Rsa,
        &signature::RSA_PSS_2048_8192_SHA384,
    ),
    accepted(
        "PS512",
        Algorithm::PS512,
        KeyType::Rsa,
        &signature::RSA_PSS_2048_8192_SHA512,
    ),
    registered("EdDSA", Some(Algorithm::EdDSA)),
    registered("none", None),
];

/// The method named `name`, if golang-jwt registers one.
pub fn method(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// The accepted algorithm named `name`.
pub fn accepted_named(name: &str) -> Option<Algorithm> {
    method(name)
        .filter(|m| m.verification.is_some())
        .and_then(|m| m.alg)
}

/// How `alg` is verified, if it is accepted.
pub fn verification(alg: Algorithm) -> Option<&'static Verification> {
    METHODS
        .iter()
        .find(|m| m.alg == Some(alg))
        .and_then(|m| m.verification.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_algorithms_the_cluster_can_sign_with_are_accepted() {
        for name in [
            "none", "HS256", "HS384", "HS512", "EdDSA", "ES512", "rs256", "",
        ] {
            assert!(accepted_named(name).is_none(), "{name}");
        }
        assert_eq!(accepted_named("PS384"), Some(Algorithm::PS384));
        assert_eq!(
            verification(Algorithm::ES384).map(|v| v.key),
            Some(KeyType::EcP384)
        );
        assert!(method("ES512").is_some() && method("Ed25519").is_none());
    }
}
