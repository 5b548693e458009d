//! Token issuer: mints tokens shaped like kube-apiserver's projected
//! ServiceAccount tokens and publishes its keys like kube-apiserver
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`). Used by the
//! demo, the emulator, the agent's tests and the benchmarks. Signing uses
//! aws-lc-rs directly; nothing here comes from the agent crate.
//!
//! Keys are RSA-2048 (RS256) by default, ES256 on request; the `kid` is
//! base64url(SHA-256(SubjectPublicKeyInfo DER)) like kube-apiserver's. The
//! newest key signs; older keys stay published until retired (rotation).

use std::sync::RwLock;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("key generation failed")]
    Generate,
    #[error("private key PEM is not base64: {0}")]
    Pem(#[source] base64::DecodeError),
    #[error("invalid private key: {0}")]
    BadKey(#[source] aws_lc_rs::error::KeyRejected),
    #[error("signing failed")]
    Sign,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct SigningKey {
    kid: String,
    pair: Pair,
    jwk: Value,
}

impl SigningKey {
    fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec(_) => "ES256",
        }
    }

    fn from_rsa(pair: RsaKeyPair) -> Result<Self, IssuerError> {
        let public = pair.public_key();
        let spki = public.as_der().map_err(|_| IssuerError::Generate)?;
        let kid = kid_of(spki.as_ref());
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let jwk = json!({"use":"sig","kty":"RSA","kid":kid,"alg":"RS256","n":n,"e":e});
        Ok(Self {
            kid,
            pair: Pair::Rsa(pair),
            jwk,
        })
    }

    fn from_ec(pair: EcdsaKeyPair) -> Result<Self, IssuerError> {
        let point = pair.public_key().as_ref().to_vec();
        // Uncompressed SEC1 point: 0x04 || X || Y.
        if point.len() != 65 || point[0] != 4 {
            return Err(IssuerError::Generate);
        }
        let kid = kid_of(&point);
        let jwk = json!({"use":"sig","kty":"EC","crv":"P-256","kid":kid,"alg":"ES256",
            "x":URL_SAFE_NO_PAD.encode(&point[1..33]),"y":URL_SAFE_NO_PAD.encode(&point[33..])});
        Ok(Self {
            kid,
            pair: Pair::Ec(pair),
            jwk,
        })
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IssuerError> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(p) => {
                let mut sig = vec![0u8; p.public_modulus_len()];
                p.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| IssuerError::Sign)?;
                Ok(sig)
            }
            Pair::Ec(p) => Ok(p
                .sign(&rng, msg)
                .map_err(|_| IssuerError::Sign)?
                .as_ref()
                .to_vec()),
        }
    }
}

fn kid_of(public: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// What goes into a minted token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// `kubernetes.io.node.name`; `None` leaves the node claim out (clusters
    /// before Kubernetes 1.30).
    pub node: Option<String>,
    pub audience: Vec<String>,
    pub lifetime: Duration,
    /// `iat`/`nbf` in epoch seconds; now when `None`.
    pub issued_at: Option<i64>,
}

impl TokenSpec {
    pub fn pod(namespace: &str, service_account: &str, pod_name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod_name: pod_name.into(),
            pod_uid: uuid(),
            node: Some(NODE.into()),
            audience: vec!["pods.eks.amazonaws.com".into()],
            lifetime: Duration::from_secs(22 * 3600),
            issued_at: None,
        }
    }
}

/// A random (v4) UUID, as Kubernetes uses for uids and `jti`.
/// The node tokens name by default.
pub const NODE: &str = "ip-10-0-0-1.ec2.internal";

pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub struct Issuer {
    url: String,
    /// Oldest first; the last one signs.
    keys: RwLock<Vec<SigningKey>>,
}

impl Issuer {
    /// A fresh RSA-2048 key.
    pub fn generate(url: impl Into<String>) -> Result<Self, IssuerError> {
        let issuer = Self {
            url: url.into(),
            keys: RwLock::new(Vec::new()),
        };
        issuer.rotate()?;
        Ok(issuer)
    }

    /// Loads a PKCS#8 PEM RSA key (as written by [`Issuer::private_key_pem`]).
    pub fn from_pem(url: impl Into<String>, pem: &str) -> Result<Self, IssuerError> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = STANDARD.decode(body.trim()).map_err(IssuerError::Pem)?;
        let pair = RsaKeyPair::from_pkcs8(&der).map_err(IssuerError::BadKey)?;
        Ok(Self {
            url: url.into(),
            keys: RwLock::new(vec![SigningKey::from_rsa(pair)?]),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// PKCS#8 PEM of the current signing key (RSA only).
    pub fn private_key_pem(&self) -> Option<String> {
        let keys = self.keys.read().expect("issuer lock");
        let Pair::Rsa(pair) = &keys.last()?.pair else {
            return None;
        };
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(pair).ok()?;
        let b64 = STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Some(pem)
    }

    /// Adds a new RSA key that signs from now on; returns its kid.
    pub fn rotate(&self) -> Result<String, IssuerError> {
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| IssuerError::Generate)?;
        let key = SigningKey::from_rsa(pair)?;
        let kid = key.kid.clone();
        self.keys.write().expect("issuer lock").push(key);
        Ok(kid)
    }

    /// Adds a new ES256 (P-256) key that signs from now on; returns its kid.
    pub fn rotate_ec(&self) -> Result<String, IssuerError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| IssuerError::Generate)?;
        let key = SigningKey::from_ec(pair)?;
        let kid = key.kid.clone();
        self.keys.write().expect("issuer lock").push(key);
        Ok(kid)
    }

    /// Stops publishing a key.
    pub fn retire(&self, kid: &str) {
        self.keys
            .write()
            .expect("issuer lock")
            .retain(|k| k.kid != kid);
    }

    pub fn current_kid(&self) -> Option<String> {
        self.keys
            .read()
            .expect("issuer lock")
            .last()
            .map(|k| k.kid.clone())
    }

    /// The JWKS document, as kube-apiserver serves it.
    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().expect("issuer lock");
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }

    pub fn discovery(&self, jwks_uri: &str) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        })
    }

    pub fn claims(&self, spec: &TokenSpec) -> Value {
        let iat = spec.issued_at.unwrap_or_else(now_secs);
        let mut claims = json!({
            "aud": spec.audience,
            "exp": iat + spec.lifetime.as_secs() as i64,
            "iat": iat,
            "iss": self.url,
            "jti": uuid(),
            "kubernetes.io": {
                "namespace": spec.namespace,
                "pod": {"name": spec.pod_name, "uid": spec.pod_uid},
                "serviceaccount": {"name": spec.service_account, "uid": uuid()},
            },
            "nbf": iat,
            "sub": format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
        });
        if let Some(node) = &spec.node {
            claims["kubernetes.io"]["node"] = json!({"name": node, "uid": uuid()});
        }
        claims
    }

    pub fn mint(&self, spec: &TokenSpec) -> Result<String, IssuerError> {
        self.sign_claims(&self.claims(spec))
    }

    /// Signs arbitrary claims with the current key (header `alg`, `kid`).
    pub fn sign_claims(&self, claims: &Value) -> Result<String, IssuerError> {
        let keys = self.keys.read().expect("issuer lock");
        let key = keys.last().ok_or(IssuerError::Sign)?;
        let header = json!({"alg": key.alg(), "kid": key.kid});
        sign_with(key, &header, claims)
    }

    /// Signs with a header chosen by the caller (tests of forged headers);
    /// the signature is the current key's whatever the header says.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, IssuerError> {
        let keys = self.keys.read().expect("issuer lock");
        let key = keys.last().ok_or(IssuerError::Sign)?;
        sign_with(key, header, claims)
    }
}

fn sign_with(key: &SigningKey, header: &Value, claims: &Value) -> Result<String, IssuerError> {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}
