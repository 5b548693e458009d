//! Credential cache: identity-keyed, coalescing, refresh-ahead for pods that
//! keep asking, stale-on-error and negative caching.
//!
//! Invariants:
//! - A credential is served only to a request whose key equals the key it was
//!   fetched under ([`key`]: verified identity or exact token).
//! - A credential is served only while it has more than [`MIN_REMAINING`]
//!   left and, unless EKS Auth is failing recoverably, for at most the
//!   retention (`--max-credential-retention-before-renewal`) after its fetch.
//! - Concurrent misses for one key make one EKS Auth call, run in its own
//!   task so a cancelled first caller does not fail the others; waiters are
//!   woken by a `watch` channel (no polling).
//! - EKS Auth is protected three ways: irrecoverable answers are replayed
//!   per token for `--negative-cache-ttl`; recoverable failures of keys with
//!   no credential open a per-key backoff ([`backoff`]); every call passes
//!   the node-wide gate ([`crate::eksauth::CallGate`]).
//! - Expiry, renewal and refresh decisions read the injected [`Clock`]; moka
//!   only bounds the number of entries.

mod backoff;
mod entry;
mod fetch;
mod key;
mod refresh;

pub use key::{CacheKey, Subject, TokenRef};
pub use refresh::Maintenance;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::eksauth::{CallGate, CallGateConfig, Class, EksAuthError, Upstream};
use crate::flow::Flow;
use crate::metrics::Metrics;
use crate::token::TokenHash;
use backoff::Backoffs;
use entry::{Entry, tag};

/// Credentials with this little left are neither stored nor served from the
/// cache (upstream's 15 s): an SDK needs time to use them.
pub const MIN_REMAINING: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub retention: Duration,
    pub max_size: u64,
    pub max_service_qps: f64,
    pub negative_ttl: Duration,
    /// The node-wide cap on EKS Auth calls.
    pub gate: CallGateConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Coalesced,
    Stale,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Stale => "stale",
        }
    }
}

pub type FetchError = Arc<EksAuthError>;

/// What one fetch gives every request that waited for it.
type FetchResult = Result<(Bytes, Outcome), FetchError>;

struct Inner {
    entries: Option<moka::sync::Cache<CacheKey, Arc<Entry>, ahash::RandomState>>,
    negative: Option<moka::sync::Cache<TokenHash, (u64, FetchError), ahash::RandomState>>,
    inflight: Mutex<HashMap<CacheKey, watch::Receiver<Option<FetchResult>>>>,
    backoffs: Backoffs,
    gate: Arc<CallGate>,
    upstream: Arc<dyn Upstream>,
    clock: SharedClock,
    config: CacheConfig,
    metrics: Arc<Metrics>,
    /// `cache_state{state="hit"}`, resolved once: it is counted per request.
    hits: prometheus::IntCounter,
}

#[derive(Clone)]
pub struct CredentialCache {
    inner: Arc<Inner>,
}

impl CredentialCache {
    pub fn new(
        config: CacheConfig,
        upstream: Arc<dyn Upstream>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let enabled = config.max_size > 0 && !config.retention.is_zero();
        // Keys are digests already: a fast keyed hash is enough (moka's
        // default, SipHash, showed in the hit path's profile).
        let entries = enabled.then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.max_size)
                .build_with_hasher(ahash::RandomState::new())
        });
        let negative = (!config.negative_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.max_size.max(1000))
                .build_with_hasher(ahash::RandomState::new())
        });
        Self {
            inner: Arc::new(Inner {
                entries,
                negative,
                inflight: Mutex::new(HashMap::new()),
                backoffs: Backoffs::new(config.max_size),
                gate: CallGate::new(config.gate, metrics.clone()),
                upstream,
                clock,
                config,
                hits: metrics.cache_state.with_label_values(&["hit"]),
                metrics,
            }),
        }
    }

    /// Credentials for `key` at `now_ms`, from the cache or from EKS Auth
    /// (a call charged to `flow` in the node's call queue). `token` is
    /// called only on a miss or a token rotation, so hits allocate nothing;
    /// the miss path is boxed to keep the hit path's future small.
    pub async fn get(
        &self,
        key: &CacheKey,
        hash: TokenHash,
        token: impl FnOnce() -> TokenRef,
        flow: Flow,
        now_ms: u64,
    ) -> Result<(Bytes, Outcome), FetchError> {
        let inner = &self.inner;
        if let Some(entry) = inner.entries.as_ref().and_then(|e| e.get(key))
            && entry.servable(now_ms)
        {
            if !entry.read.load(Ordering::Relaxed) {
                entry.read.store(true, Ordering::Relaxed);
            }
            if entry.token_tag.load(Ordering::Relaxed) != tag(&hash) {
                // A rotated token of the same verified identity: refreshes use the newest.
                let fresh = token();
                entry.token_tag.store(tag(&fresh.hash), Ordering::Relaxed);
                *entry.token.lock().expect("token lock poisoned") = fresh;
            }
            inner.hits.inc();
            return Ok((entry.body.clone(), Outcome::Hit));
        }
        if let Some(negative) = &inner.negative
            && let Some((until, err)) = negative.get(&hash)
        {
            if now_ms < until {
                inner.metrics.negative_hits.inc();
                return Err(err);
            }
            negative.invalidate(&hash);
        }
        if let Some(err) = inner.backoffs.replay(key, now_ms) {
            inner
                .metrics
                .calls_avoided
                .with_label_values(&["backoff"])
                .inc();
            return Err(err);
        }
        inner.metrics.cache_state.with_label_values(&["miss"]).inc();
        Box::pin(self.fetch_shared(*key, token(), Class::Miss(flow))).await
    }

    /// One EKS Auth call per key at a time; everyone asking meanwhile waits
    /// for its result.
    async fn fetch_shared(&self, key: CacheKey, token: TokenRef, class: Class) -> FetchResult {
        let (mut rx, joined) = {
            let mut inflight = self.inner.inflight.lock().expect("inflight lock poisoned");
            match inflight.get(&key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key, rx.clone());
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        let result = inner.load(&key, token, class).await;
                        inner
                            .inflight
                            .lock()
                            .expect("inflight lock poisoned")
                            .remove(&key);
                        let _ = tx.send(Some(result));
                    });
                    (rx, false)
                }
            }
        };
        if joined {
            self.inner.metrics.coalesced_waits.inc();
        }
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("wait_for returned a filled slot"),
            Err(_) => Err(Arc::new(EksAuthError::Incomplete(
                "result: the fetch task ended without one",
            ))),
        };
        match result {
            Ok((body, Outcome::Miss)) if joined => Ok((body, Outcome::Coalesced)),
            other => other,
        }
    }

    pub fn len(&self) -> u64 {
        self.inner.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            e.entry_count()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
