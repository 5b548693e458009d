//! Admission of a pod's token: the keyless checks (upstream v0.1.37's plus
//! the audience) and, when a key source is configured, JWKS signature
//! verification with the Kubernetes-specific claim rules.
//!
//! Only a signature-verified token yields an [`Identity`], and with it an
//! identity cache key; everything else is keyed by the token's hash.
//! Admitted tokens are remembered by hash until they expire, so a token is
//! RSA-verified once, not per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jsonwebtoken::{Algorithm, DecodingKey};
use tracing::warn;

use crate::cache::{CacheKey, Subject};
use crate::cli::CacheScope;
use crate::jwks::{self, KeyLookup, KeyStore};
use crate::memo::Memo;
use crate::metrics::Metrics;
use crate::token::{self, Claims, Identity, Parsed, TokenError, TokenHash, Validity};

/// Why a signature check refused a token. Messages name no key material and
/// quote nothing from the token but its `alg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token algorithm {0:?} is not allowed")]
    Algorithm(String),
    #[error("token has no key id")]
    MissingKid,
    #[error("token key id is unknown")]
    UnknownKid,
    #[error("token algorithm does not match its key")]
    KeyMismatch,
    #[error("token signature is invalid")]
    Signature,
    #[error("token issuer is not trusted")]
    Issuer,
    #[error("token subject is not a service account")]
    Subject,
    #[error("token kubernetes.io claims disagree with its subject")]
    KubernetesClaims,
}

impl VerifyError {
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Algorithm(_) => "algorithm",
            VerifyError::MissingKid => "missing_kid",
            VerifyError::UnknownKid => "unknown_kid",
            VerifyError::KeyMismatch => "key_mismatch",
            VerifyError::Signature => "signature",
            VerifyError::Issuer => "issuer",
            VerifyError::Subject => "subject",
            VerifyError::KubernetesClaims => "kubernetes_claims",
        }
    }
}

/// Everything a request needs from its token, computed once per distinct token.
#[derive(Debug)]
pub struct Admitted {
    /// The token itself, shared by the memo and the credential cache.
    pub raw: Arc<str>,
    pub hash: TokenHash,
    pub validity: Validity,
    pub key: CacheKey,
    pub subject: Subject,
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("Service account token failed verification: {0}")]
    Verify(#[from] VerifyError),
}

pub struct GateConfig {
    pub audience: String,
    pub leeway_secs: i64,
    pub issuer: Option<String>,
    pub scope: CacheScope,
    pub memo_size: u64,
}

pub struct TokenGate {
    config: GateConfig,
    keys: Option<Arc<KeyStore>>,
    /// Admitted tokens with the key-store generation they were admitted under.
    memo: Memo<(u64, Arc<Admitted>)>,
    metrics: Arc<Metrics>,
    warned_no_keys: AtomicBool,
}

impl TokenGate {
    pub fn new(config: GateConfig, keys: Option<Arc<KeyStore>>, metrics: Arc<Metrics>) -> Self {
        Self {
            memo: Memo::new(config.memo_size.max(1)),
            config,
            keys,
            metrics,
            warned_no_keys: AtomicBool::new(false),
        }
    }

    /// Admission at `now_secs`. A token seen before costs one memo lookup;
    /// the first sighting is parsed, hashed and verified (boxed, to keep
    /// the hit path's future small).
    pub async fn admit(&self, raw: &str, now_secs: i64) -> Result<Arc<Admitted>, AdmitError> {
        if raw.is_empty() {
            return Err(TokenError::Empty.into());
        }
        let epoch = self.keys.as_ref().map_or(0, |k| k.generation());
        if let Some((memo_epoch, admitted)) = self.memo.get(raw)
            && memo_epoch == epoch
        {
            admitted.validity.check(now_secs, self.config.leeway_secs)?;
            if admitted.verified {
                self.outcome("cached");
            }
            return Ok(admitted);
        }
        Box::pin(self.admit_first(raw, now_secs, epoch)).await
    }

    async fn admit_first(
        &self,
        raw: &str,
        now: i64,
        epoch: u64,
    ) -> Result<Arc<Admitted>, AdmitError> {
        let parsed = token::parse(raw)?;
        let validity = token::check_basic(
            &parsed.claims,
            &self.config.audience,
            now,
            self.config.leeway_secs,
        )
        .inspect_err(|e| self.outcome(token_reason(e)))?;
        let identity = match &self.keys {
            None => None,
            Some(keys) => match self.verify(keys, &parsed).await {
                Ok(identity) => identity,
                Err(err) => {
                    self.outcome(err.reason());
                    return Err(err.into());
                }
            },
        };
        let verified = identity.is_some();
        if self.keys.is_some() {
            self.outcome(if verified { "verified" } else { "no_keys" });
        }
        let hash = TokenHash::of(raw);
        let subject = subject_of(&parsed.claims);
        let key = CacheKey::for_request(hash, identity.as_ref(), self.config.scope);
        let raw: Arc<str> = Arc::from(raw);
        let admitted = Arc::new(Admitted {
            raw: raw.clone(),
            hash,
            validity,
            key,
            subject,
            verified,
        });
        self.memo.insert(
            raw,
            validity.expires.unwrap_or(i64::MAX),
            (epoch, admitted.clone()),
            now,
        );
        Ok(admitted)
    }

    /// `Ok(None)`: no key has ever been loaded, so the token is admitted
    /// unverified (EKS Auth still verifies it; the cache keys it by hash).
    async fn verify(
        &self,
        keys: &KeyStore,
        parsed: &Parsed<'_>,
    ) -> Result<Option<Identity>, VerifyError> {
        let (alg, _) = jwks::algorithm(&parsed.header.alg)
            .ok_or_else(|| VerifyError::Algorithm(parsed.header.alg.clone()))?;
        let kid = parsed
            .header
            .kid
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or(VerifyError::MissingKid)?;
        let key = match keys.lookup(kid).await {
            KeyLookup::Found(key) => key,
            KeyLookup::Unknown => return Err(VerifyError::UnknownKid),
            KeyLookup::NoKeys => {
                if !self.warned_no_keys.swap(true, Ordering::Relaxed) {
                    warn!(
                        "no signing keys loaded yet; admitting tokens unverified (EKS Auth still checks them)"
                    );
                }
                return Ok(None);
            }
        };
        if !key.accepts(alg) {
            return Err(VerifyError::KeyMismatch);
        }
        let ok = verify_signature(parsed, &key.decoding, alg);
        if !ok {
            return Err(VerifyError::Signature);
        }
        let claims = &parsed.claims;
        if let Some(iss) = &self.config.issuer
            && claims.iss.as_deref() != Some(iss.as_str())
        {
            return Err(VerifyError::Issuer);
        }
        identity_of(claims).map(Some)
    }

    fn outcome(&self, outcome: &str) {
        if self.keys.is_some() {
            self.metrics
                .token_verifications
                .with_label_values(&[outcome])
                .inc();
        }
    }
}

fn verify_signature(parsed: &Parsed<'_>, key: &DecodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::verify(parsed.signature, parsed.signing_input.as_bytes(), key, alg)
        .unwrap_or(false)
}

fn token_reason(e: &TokenError) -> &'static str {
    match e {
        TokenError::Empty => "empty",
        TokenError::Malformed(_) => "malformed",
        TokenError::Expired => "expired",
        TokenError::NotYetValid => "not_yet_valid",
        TokenError::Audience => "audience",
    }
}

/// `sub` must be `system:serviceaccount:<ns>:<sa>`, and the `kubernetes.io`
/// claims, when present, must name the same namespace and ServiceAccount.
pub fn identity_of(claims: &Claims) -> Result<Identity, VerifyError> {
    let sub = claims.sub.as_deref().ok_or(VerifyError::Subject)?;
    let rest = sub
        .strip_prefix("system:serviceaccount:")
        .ok_or(VerifyError::Subject)?;
    let (namespace, service_account) = rest.split_once(':').ok_or(VerifyError::Subject)?;
    if namespace.is_empty() || service_account.is_empty() || service_account.contains(':') {
        return Err(VerifyError::Subject);
    }
    let mut identity = Identity {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name: None,
        pod_uid: None,
    };
    if let Some(k) = &claims.kubernetes {
        if k.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return Err(VerifyError::KubernetesClaims);
        }
        if let Some(sa) = &k.serviceaccount
            && sa.name.as_deref().is_some_and(|n| n != service_account)
        {
            return Err(VerifyError::KubernetesClaims);
        }
        if let Some(pod) = &k.pod {
            identity.pod_name = pod.name.clone();
            identity.pod_uid = pod.uid.clone().filter(|u| !u.is_empty());
        }
    }
    Ok(identity)
}

/// Log fields; unverified claims are fine here and nowhere else.
fn subject_of(claims: &Claims) -> Subject {
    let (mut ns, mut sa) = (None, None);
    if let Some((n, s)) = claims
        .sub
        .as_deref()
        .and_then(|s| s.strip_prefix("system:serviceaccount:"))
        .and_then(|r| r.split_once(':'))
    {
        ns = Some(Arc::from(n));
        sa = Some(Arc::from(s));
    }
    let pod = claims
        .kubernetes
        .as_ref()
        .and_then(|k| k.pod.as_ref())
        .and_then(|p| p.name.as_deref())
        .map(Arc::from);
    Subject {
        namespace: ns,
        service_account: sa,
        pod,
    }
}
