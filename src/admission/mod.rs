//! Admission: what happens to a pod's token before anything is asked of
//! the cache. The keyless checks (upstream v0.1.37's plus the audience)
//! and, when a key source is configured, JWKS signature verification with
//! the Kubernetes-specific claim rules.
//!
//! Outcomes of local verification (README: "Verification decision table"):
//! - **verified**: the token gets an [`Identity`] and an identity cache key;
//! - **definite refusal** (400, EKS Auth never called): a known kid with a
//!   bad signature, `alg` none/HS*/not the key's, a key embedded in the
//!   header, claims that contradict each other, an `iss` other than the
//!   expected issuer (`--token-issuer`, else the one the key source names),
//!   a node claim naming another node (`--node-name`);
//! - **inconclusive** (no key loaded, kid still unknown after the coalesced
//!   refetch, no kid): the token goes to EKS Auth like an unverified one,
//!   keyed by its hash, counted, and warned about at most once a minute per
//!   reason; `--strict-verification` refuses it instead.
//!
//! The issuer and node checks read claims before the signature is checked:
//! they can only refuse (a token naming another issuer or node cannot be
//! this cluster's token for this node), never admit.
//!
//! Only a signature-verified token yields an identity key and a workload
//! [flow](crate::flow); everything else is keyed by the token's hash and
//! charged to its caller's address. Confirmed tokens (verified, or answered
//! with credentials by EKS Auth: [`Admission::confirm`]) are remembered
//! ([`memo`]) until they expire or the key set changes, so a token is
//! checked once, not per request; nothing is kept for a token neither has
//! confirmed. The token is parsed here once: what the rest of the request
//! path needs of it travels in [`Admitted`] (its [`Subject`] for logs).
//!
//! - [`refusal`]: why a token is refused, or could not be decided.
//! - [`memo`]: the remembered tokens.

mod memo;
mod refusal;

pub use refusal::Refusal;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use crate::cli::CacheScope;
use crate::flow::{Flow, Flows};
use crate::jwks::{KeyLookup, KeyStore};
use crate::key::{CacheKey, TokenRef};
use crate::logging::Topic;
use crate::metrics::Metrics;
use crate::token::{
    self, Claims, Identity, Parsed, Subject, TokenError, TokenHash, Validity, algorithm,
};
use memo::Memo;

/// Everything a request needs from its token, computed once per distinct token.
#[derive(Debug)]
pub struct Admitted {
    /// The token itself, shared by the memo and the credential cache.
    pub raw: Arc<str>,
    pub hash: TokenHash,
    pub validity: Validity,
    pub key: CacheKey,
    /// The verified workload's flow; `None` when not verified (the caller's
    /// address is the flow then).
    pub flow: Option<Flow>,
    pub verified: bool,
    /// Who it says it is, for logs (read once, here).
    pub subject: Arc<Subject>,
    /// The key-store generation it was admitted under.
    generation: u64,
}

impl Admitted {
    /// What the cache keeps of the token to fetch and refresh with.
    pub fn token_ref(&self) -> TokenRef {
        TokenRef {
            raw: self.raw.clone(),
            hash: self.hash,
            expires: self.validity.expires,
            subject: self.subject.clone(),
        }
    }
}

/// Why a token was not admitted (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("Service account token failed verification: {0}")]
    Refused(#[from] Refusal),
}

pub struct AdmissionConfig {
    pub audience: String,
    pub leeway_secs: i64,
    pub issuer: Option<String>,
    pub scope: CacheScope,
    pub memo_size: u64,
    /// Bytes of remembered tokens, at most (about).
    pub memo_bytes: usize,
    /// Refuse inconclusive tokens instead of forwarding them.
    pub strict: bool,
    /// `--node-name`: tokens naming another node are refused.
    pub node_name: Option<String>,
    pub require_node_claim: bool,
}

pub struct Admission {
    config: AdmissionConfig,
    keys: Option<Arc<KeyStore>>,
    /// Admitted tokens with the key-store generation they were admitted under.
    memo: Memo<Arc<Admitted>>,
    flows: Flows,
    metrics: Arc<Metrics>,
    /// Last warning per inconclusive reason (epoch seconds), one a minute.
    warned: [AtomicU64; 3],
}

impl Admission {
    pub fn new(
        config: AdmissionConfig,
        keys: Option<Arc<KeyStore>>,
        flows: Flows,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            memo: Memo::new(config.memo_size.max(1), config.memo_bytes),
            config,
            keys,
            flows,
            metrics,
            warned: Default::default(),
        }
    }

    /// A remembered (confirmed) token at `now_secs`: one memo lookup and
    /// its time checks. `None`: not remembered, [`admit`](Self::admit) it.
    pub fn remembered(
        &self,
        raw: &[u8],
        now_secs: i64,
    ) -> Result<Option<Arc<Admitted>>, AdmissionError> {
        if raw.is_empty() {
            return Err(TokenError::Empty.into());
        }
        let generation = self.keys.as_ref().map_or(0, |k| k.generation());
        let Some(admitted) = self.memo.get(raw) else {
            return Ok(None);
        };
        if admitted.generation != generation {
            return Ok(None);
        }
        admitted.validity.check(now_secs, self.config.leeway_secs)?;
        if admitted.verified {
            self.outcome("cached");
        }
        Ok(Some(admitted))
    }

    /// Admission of a token not remembered: parsed, checked and (with keys)
    /// verified (boxed, to keep the caller's future small). A verified
    /// token is remembered; an unverified one only once EKS Auth confirms it.
    pub async fn admit(&self, raw: &[u8], now_secs: i64) -> Result<Arc<Admitted>, AdmissionError> {
        if raw.is_empty() {
            return Err(TokenError::Empty.into());
        }
        let generation = self.keys.as_ref().map_or(0, |k| k.generation());
        Box::pin(self.admit_first(raw, now_secs, generation)).await
    }

    /// [`remembered`](Self::remembered), else [`admit`](Self::admit): what
    /// the endpoint does, without the rate limit in between (benchmarks).
    pub async fn lookup_or_admit(
        &self,
        raw: &[u8],
        now_secs: i64,
    ) -> Result<Arc<Admitted>, AdmissionError> {
        match self.remembered(raw, now_secs)? {
            Some(admitted) => Ok(admitted),
            None => self.admit(raw, now_secs).await,
        }
    }

    /// EKS Auth answered `admitted` (an unverified token) with credentials:
    /// it is genuine, remember it.
    pub fn confirm(&self, admitted: &Arc<Admitted>, now_secs: i64) {
        if !admitted.verified {
            self.remember(admitted.clone(), now_secs);
        }
    }

    /// Tokens remembered, and their bytes as the memo counts them.
    pub fn remembered_size(&self) -> (usize, usize) {
        (self.memo.len(), self.memo.bytes())
    }

    fn remember(&self, admitted: Arc<Admitted>, now_secs: i64) {
        self.memo.insert(
            admitted.raw.clone(),
            admitted.validity.expires.unwrap_or(i64::MAX),
            admitted,
            now_secs,
        );
    }

    async fn admit_first(
        &self,
        raw: &[u8],
        now: i64,
        generation: u64,
    ) -> Result<Arc<Admitted>, AdmissionError> {
        let parsed = token::parse(raw).inspect_err(|e| self.outcome(e.as_str()))?;
        let validity = token::check_basic(
            &parsed.claims,
            &self.config.audience,
            now,
            self.config.leeway_secs,
        )
        .inspect_err(|e| self.outcome(e.as_str()))?;
        if let Err(err) = self.check_node(&parsed.claims) {
            self.outcome(err.as_str());
            if let Some(suppressed) = self.metrics.logs.allow(Topic::OtherNode) {
                warn!(
                    reason = err.as_str(),
                    node = self.config.node_name.as_deref(),
                    suppressed,
                    "refused a token bound to another node"
                );
            }
            return Err(err.into());
        }
        if let Err(err) = self.check_issuer(&parsed.claims) {
            self.outcome(err.as_str());
            return Err(err.into());
        }
        let identity = match &self.keys {
            None => None,
            Some(keys) => match self.verify(keys, &parsed).await {
                Ok(identity) => {
                    self.outcome("verified");
                    Some(identity)
                }
                Err(err) if err.inconclusive() && !self.config.strict => {
                    self.outcome(err.forwarded_as_str());
                    self.warn_inconclusive(&err, now);
                    None
                }
                Err(err) => {
                    self.outcome(err.as_str());
                    return Err(err.into());
                }
            },
        };
        let raw: Arc<str> = Arc::from(
            std::str::from_utf8(raw).expect("a parsed token is UTF-8 (token::parse checks it)"),
        );
        let hash = TokenHash::of(&raw);
        let flow = identity.as_ref().map(|id| {
            self.flows.workload(
                &id.namespace,
                &id.service_account,
                id.pod_uid.as_deref().unwrap_or_default(),
            )
        });
        let admitted = Arc::new(Admitted {
            subject: Arc::new(Subject::of(&parsed.claims)),
            hash,
            validity,
            key: CacheKey::for_request(hash, identity.as_ref(), self.config.scope),
            flow,
            verified: identity.is_some(),
            raw,
            generation,
        });
        if admitted.verified {
            self.remember(admitted.clone(), now);
        }
        Ok(admitted)
    }

    /// `--node-name`: the node claim as written. Without local verification
    /// this can only refuse: a forged claim naming this node still meets
    /// EKS Auth's signature check.
    fn check_node(&self, claims: &Claims) -> Result<(), Refusal> {
        let Some(node) = &self.config.node_name else {
            return Ok(());
        };
        let claimed = claims
            .kubernetes
            .as_ref()
            .and_then(|k| k.node.as_ref())
            .and_then(|n| n.name.as_deref());
        match claimed {
            Some(name) if name != node => Err(Refusal::OtherNode),
            None if self.config.require_node_claim => Err(Refusal::NoNodeClaim),
            _ => Ok(()),
        }
    }

    /// The expected issuer: `--token-issuer`, else the one the key source
    /// names (unknown until keys load).
    fn check_issuer(&self, claims: &Claims) -> Result<(), Refusal> {
        let from_keys = self.keys.as_ref().and_then(|k| k.issuer());
        match self.config.issuer.as_deref().or(from_keys.as_deref()) {
            Some(expected) if claims.iss.as_deref() != Some(expected) => Err(Refusal::Issuer),
            _ => Ok(()),
        }
    }

    async fn verify(&self, keys: &KeyStore, parsed: &Parsed<'_>) -> Result<Identity, Refusal> {
        let header = &parsed.header;
        let alg = algorithm::accepted_named(&header.alg)
            .ok_or_else(|| Refusal::Algorithm(header.alg.clone()))?;
        if header.embeds_key {
            return Err(Refusal::EmbeddedKey);
        }
        let kid = header
            .kid
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or(Refusal::MissingKid)?;
        let key = match keys.lookup(kid).await {
            KeyLookup::Found(key) => key,
            KeyLookup::Unknown => return Err(Refusal::UnknownKid),
            KeyLookup::NoKeys => return Err(Refusal::NoKeys),
        };
        if !key.accepts(alg) {
            return Err(Refusal::KeyMismatch);
        }
        if !key.verify(parsed.signing_input.as_bytes(), parsed.signature) {
            return Err(Refusal::Signature);
        }
        // The key may have been loaded with its issuer since the early check.
        self.check_issuer(&parsed.claims)?;
        identity_of(&parsed.claims)
    }

    fn warn_inconclusive(&self, err: &Refusal, now: i64) {
        let slot = match err {
            Refusal::NoKeys => 0,
            Refusal::UnknownKid => 1,
            _ => 2,
        };
        let last = self.warned[slot].load(Ordering::Relaxed);
        if now >= last as i64 + 60
            && self.warned[slot]
                .compare_exchange(last, now as u64, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                reason = err.as_str(),
                "local verification inconclusive; forwarding the token to EKS Auth (keyed by the exact token)"
            );
        }
    }

    fn outcome(&self, outcome: &str) {
        if self.keys.is_some() || self.config.node_name.is_some() {
            self.metrics
                .token_verifications
                .with_label_values(&[outcome])
                .inc();
        }
    }
}

/// `sub` must be `system:serviceaccount:<ns>:<sa>`, and the `kubernetes.io`
/// claims, when present, must be well-formed and name the same namespace
/// and ServiceAccount.
pub fn identity_of(claims: &Claims) -> Result<Identity, Refusal> {
    let (namespace, service_account) = claims
        .sub
        .as_deref()
        .and_then(token::service_account)
        .ok_or(Refusal::Subject)?;
    if claims.kubernetes_malformed {
        return Err(Refusal::KubernetesClaims);
    }
    let mut identity = Identity {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name: None,
        pod_uid: None,
        node_name: None,
    };
    if let Some(k) = &claims.kubernetes {
        if k.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return Err(Refusal::KubernetesClaims);
        }
        if let Some(sa) = &k.serviceaccount
            && sa.name.as_deref().is_some_and(|n| n != service_account)
        {
            return Err(Refusal::KubernetesClaims);
        }
        if let Some(pod) = &k.pod {
            identity.pod_name = pod.name.clone();
            identity.pod_uid = pod.uid.clone().filter(|u| !u.is_empty());
        }
        identity.node_name = k.node.as_ref().and_then(|n| n.name.clone());
    }
    Ok(identity)
}
