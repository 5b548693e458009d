//! The EKS Auth protection policy: everything between "the cache holds no
//! credential it may serve for this key" and the answer a pod gets. Why
//! did this pod get a 503 (or its last answer again, or a stale
//! credential)? Here, in this order:
//!
//! 1. **Negative answers** ([`Policy::replay`]): an irrecoverable answer
//!    (AccessDenied, ExpiredToken, InvalidToken, ResourceNotFound,
//!    InvalidParameter, InvalidRequest) to a token is replayed to the same
//!    token for `--negative-cache-ttl`, without a call.
//! 2. **Backoff** ([`backoff`]): after a recoverable failure (throttling,
//!    5xx, timeouts, connection errors) of an identity with nothing to
//!    serve, its answer is replayed to that identity for a window of 1 s
//!    doubling to 30 s. A success resets it.
//! 3. **The gate** ([`gate`]): the node's budget of calls
//!    (`--eks-auth-rate-limit`, burst `--eks-auth-rate-burst`); calls that
//!    must wait are fair-queued by flow, misses before refreshes; a full
//!    queue (`--eks-auth-queue-size`) answers 503 at once
//!    ([`FetchError::Saturated`]). A throttling answer halves the gate's
//!    rate, which grows back over 10 s.
//! 4. **The call** ([`crate::eksauth`]), and what its answer becomes
//!    ([`Decision`]): credentials with 15 s or less left are an error (500,
//!    [`FetchError::Expiring`]), never served; a recoverable failure of an
//!    identity whose credential is still valid keeps that credential in
//!    service ([`Decision::Stale`]), renewed again 5 s later doubling to
//!    5 min; an irrecoverable one evicts it ([`Decision::Refused`]).
//!
//! The policy keeps no credentials (the cache does): it is told whether a
//! valid one is held ([`Held`]) and says what to do with it.

pub mod backoff;
mod error;
pub mod gate;
mod queue;

pub use error::FetchError;
pub use gate::{Class, Gate, GateConfig, Saturated};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use crate::clock::SharedClock;
use crate::credentials::MIN_REMAINING;
use crate::eksauth::{EksAuthError, Upstream};
use crate::key::{CacheKey, TokenRef};
use crate::logging::Topic;
use crate::metrics::Metrics;
use crate::token::{Subject, TokenHash};
use backoff::{STALE, Windows};

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub gate: GateConfig,
    /// `--negative-cache-ttl`; zero: no negative answers.
    pub negative_ttl: Duration,
    /// Identities the tables keep at most (the cache's size, at least 1,000).
    pub capacity: u64,
}

/// What the cache holds for the key being fetched: a credential still
/// valid (more than 15 s left), and how often renewing it failed in a row.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub failures: u32,
}

/// Credentials EKS Auth issued, ready to serve.
#[derive(Debug, Clone)]
pub struct Fresh {
    /// The pod-facing document.
    pub body: Bytes,
    pub expires_ms: u64,
    pub association_id: Option<String>,
}

/// What one call leaves the cache to do.
#[derive(Debug)]
pub enum Decision {
    /// Store and serve these.
    Issued(Fresh),
    /// EKS Auth failed recoverably (`error`) and a valid credential is
    /// held: keep serving it; this is its `failures`th failure, retry in
    /// `retry_in`.
    Stale {
        failures: u32,
        retry_in: Duration,
        error: Arc<FetchError>,
    },
    /// An irrecoverable answer: evict what is held, answer this.
    Refused(Arc<FetchError>),
    /// Nothing to serve: answer this.
    Failed(Arc<FetchError>),
}

pub struct Policy {
    gate: Arc<Gate>,
    windows: Windows,
    negative: Option<moka::sync::Cache<TokenHash, (u64, Arc<FetchError>), ahash::RandomState>>,
    negative_ttl: Duration,
    upstream: Arc<dyn Upstream>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

/// A log line about a call, with who it was for: the same four fields on
/// every line, so a pod's story reads by filtering on them.
macro_rules! call_event {
    ($level:ident, $policy:expr, $topic:expr, $subject:expr, $($rest:tt)+) => {
        if let Some(suppressed) = $policy.metrics.logs.allow($topic) {
            let subject: &Subject = $subject;
            $level!(
                cluster = $policy.upstream.cluster_name(),
                namespace = subject.namespace.as_deref(),
                serviceaccount = subject.service_account.as_deref(),
                pod = subject.pod.as_deref(),
                suppressed,
                $($rest)+
            );
        }
    };
}

impl Policy {
    /// Starts the gate's dispatcher (it ends with the policy).
    pub fn new(
        config: PolicyConfig,
        upstream: Arc<dyn Upstream>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let negative = (!config.negative_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.capacity.max(1000))
                .build_with_hasher(ahash::RandomState::new())
        });
        Self {
            gate: Gate::new(config.gate, metrics.clone()),
            windows: Windows::new(config.capacity),
            negative,
            negative_ttl: config.negative_ttl,
            upstream,
            clock,
            metrics,
        }
    }

    /// Before a miss calls: the answer already known for this token
    /// (negative) or identity (backoff), if any; counted.
    pub fn replay(&self, key: &CacheKey, hash: &TokenHash, now_ms: u64) -> Option<Arc<FetchError>> {
        if let Some(negative) = &self.negative
            && let Some((until, err)) = negative.get(hash)
        {
            if now_ms < until {
                self.metrics.negative_hits.inc();
                return Some(err);
            }
            negative.invalidate(hash);
        }
        let err = self.windows.replay(key, now_ms)?;
        self.metrics
            .calls_avoided
            .with_label_values(&["backoff"])
            .inc();
        Some(err)
    }

    /// One call for `key` (the only one in flight for it), through the
    /// gate, and what it leaves the cache to do. `held`: a valid credential
    /// the cache holds for the key.
    pub async fn call(
        &self,
        key: &CacheKey,
        token: &TokenRef,
        class: Class,
        held: impl FnOnce() -> Option<Held>,
    ) -> Decision {
        if let Err(Saturated { queued }) = self.gate.acquire(class).await {
            if let Some(suppressed) = self.metrics.logs.allow(Topic::QueueFull) {
                warn!(
                    queued,
                    suppressed, "EKS Auth call queue full; refusing the request until it drains"
                );
            }
            return Decision::Failed(Arc::new(FetchError::Saturated { queued }));
        }
        let answer = self.upstream.assume(&token.raw).await;
        self.gate
            .observe(answer.as_ref().is_err_and(EksAuthError::is_throttling));
        let now = self.clock.now_ms();
        let subject = &token.subject;
        let err = match answer.map_err(FetchError::from).and_then(|issued| {
            // Credentials an SDK could not use are an error, never a 200.
            let body = issued.body()?;
            let expires_ms = issued.credentials.expiration_ms();
            let remaining_ms = expires_ms as i64 - now as i64;
            if remaining_ms <= MIN_REMAINING.as_millis() as i64 {
                return Err(FetchError::Expiring { remaining_ms });
            }
            Ok((issued, body, expires_ms))
        }) {
            Ok((issued, body, expires_ms)) => {
                call_event!(
                    info,
                    self,
                    Topic::Fetched,
                    subject,
                    association_id = issued.association_id.as_deref(),
                    request_id = issued.request_id.as_deref(),
                    role = %issued.assumed_role_arn,
                    expires_in_s = expires_ms.saturating_sub(now) / 1000,
                    "fetched credentials from EKS Auth"
                );
                self.windows.succeeded(key);
                return Decision::Issued(Fresh {
                    body,
                    expires_ms,
                    association_id: issued.association_id,
                });
            }
            Err(err) => Arc::new(err),
        };
        let code = err.code();
        if err.is_irrecoverable() {
            self.metrics
                .cache_errors
                .with_label_values(&["NonRecoverable", code])
                .inc();
            if let Some(negative) = &self.negative {
                let until = now + self.negative_ttl.as_millis() as u64;
                negative.insert(token.hash, (until, err.clone()));
            }
            call_event!(warn, self, Topic::Refused, subject, error = %err, "EKS Auth refused the pod; evicted");
            return Decision::Refused(err);
        }
        self.metrics
            .cache_errors
            .with_label_values(&["Recoverable", code])
            .inc();
        let Some(held) = held() else {
            let window = err
                .is_recoverable()
                .then(|| self.windows.failed(key, err.clone(), now));
            call_event!(
                warn,
                self,
                Topic::CallFailed,
                subject,
                error = %err,
                backoff_ms = window.map(|w| w.as_millis() as u64),
                "EKS Auth call failed"
            );
            return Decision::Failed(err);
        };
        let failures = held.failures + 1;
        let retry_in = STALE.wait(failures, rand::random::<f64>());
        self.metrics.stale_served.inc();
        call_event!(
            warn,
            self,
            Topic::Stale,
            subject,
            error = %err,
            failures,
            retry_in_ms = retry_in.as_millis() as u64,
            "EKS Auth failed recoverably; serving the cached credential"
        );
        Decision::Stale {
            failures,
            retry_in,
            error: err,
        }
    }
}
