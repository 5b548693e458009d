//! Credential cache: identity-keyed, coalescing, refresh-ahead for pods that
//! keep asking. Look up; on a miss ask the [policy](crate::policy) (which
//! decides whether and when EKS Auth is called, and what a failure
//! becomes); store what it says; answer.
//!
//! Invariants:
//! - A credential is served only to a request whose key equals the key it was
//!   fetched under ([`key`]: verified identity or exact token).
//! - A credential is served only while it has more than [`MIN_REMAINING`]
//!   left and, unless EKS Auth is failing recoverably, for at most the
//!   retention (`--max-credential-retention-before-renewal`) after its fetch.
//! - Concurrent misses for one key make one EKS Auth call, run in its own
//!   task so a cancelled first caller does not fail the others; waiters are
//!   woken by a `watch` channel (no polling). The in-flight slot is removed
//!   by a drop guard: a fetch that panics answers its waiters with a 500
//!   and the next request starts a fresh one.
//! - Expiry, renewal and refresh decisions read the injected [`Clock`]; moka
//!   only bounds the number of entries.

mod entry;
mod refresh;
mod store;

pub use crate::credentials::MIN_REMAINING;
pub use crate::key::{CacheKey, TokenRef};
pub use refresh::Maintenance;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::flow::Flow;
use crate::metrics::Metrics;
use crate::policy::{Class, FetchError, Policy};
use crate::token::TokenHash;
use entry::{Entry, tag};

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub retention: Duration,
    pub max_size: u64,
    pub max_service_qps: f64,
}

impl CacheConfig {
    /// Whether credentials are kept at all (upstream: a size or a
    /// retention of 0 turns the cache off).
    pub fn enabled(&self) -> bool {
        self.max_size > 0 && !self.retention.is_zero()
    }
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

/// What one fetch gives every request that waited for it.
type FetchResult = Result<(Bytes, Outcome), Arc<FetchError>>;

struct Inner {
    entries: Option<moka::sync::Cache<CacheKey, Arc<Entry>, ahash::RandomState>>,
    inflight: Mutex<HashMap<CacheKey, watch::Receiver<Option<FetchResult>>>>,
    policy: Policy,
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

/// A key's in-flight slot, removed when its fetch task ends however it
/// ends (a panic unwinds through this drop), so no request ever waits on a
/// fetch that will not answer.
struct InflightSlot {
    inner: Arc<Inner>,
    key: CacheKey,
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl CredentialCache {
    pub fn new(
        config: CacheConfig,
        policy: Policy,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Keys are digests already: a fast keyed hash is enough (moka's
        // default, SipHash, showed in the hit path's profile).
        let entries = config.enabled().then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.max_size)
                .build_with_hasher(ahash::RandomState::new())
        });
        Self {
            inner: Arc::new(Inner {
                entries,
                inflight: Mutex::new(HashMap::new()),
                policy,
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
    ) -> Result<(Bytes, Outcome), Arc<FetchError>> {
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
        if let Some(err) = inner.policy.replay(key, &hash, now_ms) {
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
                // The fetch this request missed may have ended between its
                // look-up and this lock: a fetch stores its entry before
                // giving up its slot, so under the lock the entry is there.
                None if matches!(class, Class::Miss(_))
                    && let Some(entry) = self.inner.entries.as_ref().and_then(|e| e.get(&key))
                    && entry.servable(self.inner.clock.now_ms()) =>
                {
                    self.inner.metrics.coalesced_waits.inc();
                    return Ok((entry.body.clone(), Outcome::Coalesced));
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key, rx.clone());
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        let slot = InflightSlot {
                            inner: inner.clone(),
                            key,
                        };
                        let result = inner.load(&key, token, class).await;
                        drop(slot);
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
            // The fetch task panicked: its slot is gone, the next request
            // starts afresh.
            Err(_) => Err(Arc::new(FetchError::Aborted)),
        };
        match result {
            Ok((body, Outcome::Miss)) if joined => Ok((body, Outcome::Coalesced)),
            other => other,
        }
    }

    /// Whether credentials are kept (see [`CacheConfig::enabled`]).
    pub fn enabled(&self) -> bool {
        self.inner.entries.is_some()
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
