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
//! - Expiry, renewal and refresh decisions read the injected [`Clock`]; moka
//!   only bounds the number of entries.

mod entry;
mod key;

pub use key::{CacheKey, Subject, TokenRef};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::clock::SharedClock;
use crate::eksauth::{EksAuth, EksAuthError};
use crate::metrics::Metrics;
use crate::token::TokenHash;
use entry::{Entry, backoff, tag};

/// Credentials with this little left are neither stored nor served from the
/// cache (upstream's 15 s): an SDK needs time to use them.
pub const MIN_REMAINING: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub retention: Duration,
    pub max_size: u64,
    pub max_service_qps: f64,
    pub negative_ttl: Duration,
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
    entries: Option<moka::sync::Cache<CacheKey, Arc<Entry>>>,
    negative: Option<moka::sync::Cache<TokenHash, (u64, FetchError)>>,
    inflight: Mutex<HashMap<CacheKey, watch::Receiver<Option<FetchResult>>>>,
    eksauth: EksAuth,
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
        eksauth: EksAuth,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let enabled = config.max_size > 0 && !config.retention.is_zero();
        let entries = enabled.then(|| moka::sync::Cache::new(config.max_size));
        let negative = (!config.negative_ttl.is_zero())
            .then(|| moka::sync::Cache::new(config.max_size.max(1000)));
        Self {
            inner: Arc::new(Inner {
                entries,
                negative,
                inflight: Mutex::new(HashMap::new()),
                eksauth,
                clock,
                config,
                hits: metrics.cache_state.with_label_values(&["hit"]),
                metrics,
            }),
        }
    }

    /// Credentials for `key` at `now_ms`, from the cache or from EKS Auth. `token` is called only on a miss
    /// or a token rotation, so hits allocate nothing; the miss path is boxed
    /// to keep the hit path's future small.
    pub async fn get(
        &self,
        key: &CacheKey,
        hash: TokenHash,
        token: impl FnOnce() -> TokenRef,
        subject: &Subject,
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
        inner.metrics.cache_state.with_label_values(&["miss"]).inc();
        Box::pin(self.fetch_shared(key.clone(), token(), subject.clone())).await
    }

    /// One EKS Auth call per key at a time; everyone asking meanwhile waits
    /// for its result.
    async fn fetch_shared(&self, key: CacheKey, token: TokenRef, subject: Subject) -> FetchResult {
        let (mut rx, joined) = {
            let mut inflight = self.inner.inflight.lock().expect("inflight lock poisoned");
            match inflight.get(&key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx.clone());
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        let result = inner.load(&key, token, subject).await;
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

    /// One maintenance pass: drop credentials past use, then refresh the
    /// entries due for it that were read since their last fetch, paced at
    /// `--max-service-qps` with jitter. The background task calls this
    /// periodically; tests call it directly after moving the clock.
    pub async fn maintain(&self) {
        let inner = &self.inner;
        let Some(entries) = &inner.entries else {
            return;
        };
        let now = inner.clock.now_ms();
        let mut due = Vec::new();
        for (key, entry) in entries.iter() {
            if !entry.valid(now) {
                entries.invalidate(key.as_ref());
                inner
                    .metrics
                    .cache_state
                    .with_label_values(&["expired"])
                    .inc();
                debug!(
                    association_id = entry.association_id.as_deref(),
                    "credential aged out"
                );
            } else if now >= entry.refresh_at_ms.load(Ordering::Relaxed)
                && entry.read.load(Ordering::Relaxed)
            {
                due.push((entry.refresh_at_ms.load(Ordering::Relaxed), key, entry));
            }
        }
        if let Some(negative) = &inner.negative {
            negative.run_pending_tasks();
        }
        entries.run_pending_tasks();
        inner
            .metrics
            .cache_entries
            .set(entries.entry_count() as i64);
        if inner.config.max_service_qps <= 0.0 {
            return;
        }
        due.sort_by_key(|(at, _, _)| *at);
        let pace = Duration::from_secs_f64(1.0 / inner.config.max_service_qps);
        for (i, (_, key, entry)) in due.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(pace.mul_f64(0.5 + rand::random::<f64>())).await;
            }
            self.refresh(key.as_ref().clone(), &entry).await;
        }
        inner
            .metrics
            .cache_entries
            .set(entries.entry_count() as i64);
    }

    async fn refresh(&self, key: CacheKey, entry: &Entry) {
        let token = entry.token.lock().expect("token lock poisoned").clone();
        let now_secs = (self.inner.clock.now_ms() / 1000) as i64;
        if token.expires.is_some_and(|exp| exp <= now_secs) {
            self.inner
                .metrics
                .refreshes
                .with_label_values(&["skipped"])
                .inc();
            return;
        }
        let result = self.fetch_shared(key, token, entry.subject.clone()).await;
        let label = match &result {
            Ok((_, Outcome::Miss | Outcome::Coalesced)) => {
                self.inner
                    .metrics
                    .cache_state
                    .with_label_values(&["refreshed"])
                    .inc();
                "ok"
            }
            Ok(_) => "recoverable_error",
            Err(e) if e.is_irrecoverable() => "irrecoverable_error",
            Err(_) => "recoverable_error",
        };
        self.inner
            .metrics
            .refreshes
            .with_label_values(&[label])
            .inc();
    }

    /// Runs [`maintain`](Self::maintain) every `period` until the cache is dropped.
    pub fn spawn_maintenance(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                CredentialCache { inner }.maintain().await;
            }
        })
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

impl Inner {
    async fn load(&self, key: &CacheKey, token: TokenRef, subject: Subject) -> FetchResult {
        let result = self.eksauth.assume(&token.raw).await;
        let now = self.clock.now_ms();
        // Credentials an SDK could not use are an error, never a 200.
        let result = result
            .and_then(|issued| {
                let remaining_ms = issued.credentials.expiration_ms() as i64 - now as i64;
                if remaining_ms <= MIN_REMAINING.as_millis() as i64 {
                    Err(EksAuthError::Expiring { remaining_ms })
                } else {
                    Ok(issued)
                }
            })
            .map_err(|err| match err {
                // Upstream words it so when its cache made the call.
                EksAuthError::Arn { source, .. } if self.entries.is_some() => EksAuthError::Arn {
                    source,
                    via_cache: true,
                },
                other => other,
            });
        match result {
            Ok(issued) => {
                let body = issued.credentials.to_body();
                let expires_ms = issued.credentials.expiration_ms();
                info!(
                    cluster = self.eksauth.cluster_name(),
                    namespace = subject.namespace.as_deref(),
                    serviceaccount = subject.service_account.as_deref(),
                    pod = subject.pod.as_deref(),
                    association_id = issued.association_id.as_deref(),
                    request_id = issued.request_id.as_deref(),
                    role = %issued.assumed_role_arn,
                    expires_in_s = expires_ms.saturating_sub(now) / 1000,
                    "fetched credentials from EKS Auth"
                );
                if let Some(entries) = &self.entries {
                    let span_ms = (expires_ms.saturating_sub(now))
                        .min(self.config.retention.as_millis() as u64);
                    let entry = Entry {
                        body: body.clone(),
                        expires_ms,
                        renew_at_ms: AtomicU64::new(now + span_ms),
                        // Refresh-ahead at 75–85 % of the span, spread so that
                        // pods started together do not refresh together.
                        refresh_at_ms: AtomicU64::new(
                            now + (span_ms as f64 * (0.75 + 0.1 * rand::random::<f64>())) as u64,
                        ),
                        read: AtomicBool::new(false),
                        failures: AtomicU32::new(0),
                        token_tag: AtomicU64::new(tag(&token.hash)),
                        token: Mutex::new(token),
                        subject,
                        association_id: issued.association_id,
                    };
                    entries.insert(key.clone(), Arc::new(entry));
                }
                Ok((body, Outcome::Miss))
            }
            Err(err) => {
                let code = err.code().to_owned();
                if err.is_irrecoverable() {
                    self.metrics
                        .cache_errors
                        .with_label_values(&["NonRecoverable", &code])
                        .inc();
                    let err = Arc::new(err);
                    if let Some(entries) = &self.entries
                        && entries.remove(key).is_some()
                    {
                        self.metrics
                            .cache_state
                            .with_label_values(&["evicted"])
                            .inc();
                    }
                    if let Some(negative) = &self.negative {
                        let until = now + self.config.negative_ttl.as_millis() as u64;
                        negative.insert(token.hash, (until, err.clone()));
                    }
                    warn!(
                        cluster = self.eksauth.cluster_name(),
                        namespace = subject.namespace.as_deref(),
                        serviceaccount = subject.service_account.as_deref(),
                        pod = subject.pod.as_deref(),
                        error = %err,
                        "EKS Auth refused the pod; evicted"
                    );
                    return Err(err);
                }
                self.metrics
                    .cache_errors
                    .with_label_values(&["Recoverable", &code])
                    .inc();
                let stale = self
                    .entries
                    .as_ref()
                    .and_then(|e| e.get(key))
                    .filter(|e| e.valid(now));
                let Some(stale) = stale else {
                    warn!(
                        cluster = self.eksauth.cluster_name(),
                        namespace = subject.namespace.as_deref(),
                        serviceaccount = subject.service_account.as_deref(),
                        pod = subject.pod.as_deref(),
                        error = %err,
                        "EKS Auth call failed"
                    );
                    return Err(Arc::new(err));
                };
                let failures = stale.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let retry_ms = backoff(failures).as_millis() as u64;
                let retry_at = now + retry_ms;
                stale.refresh_at_ms.store(retry_at, Ordering::Relaxed);
                let cap = stale.expires_ms - MIN_REMAINING.as_millis() as u64;
                let renew_at = stale.renew_at_ms.load(Ordering::Relaxed);
                stale
                    .renew_at_ms
                    .store(renew_at.max(retry_at.min(cap)), Ordering::Relaxed);
                self.metrics.stale_served.inc();
                warn!(
                    cluster = self.eksauth.cluster_name(),
                    namespace = subject.namespace.as_deref(),
                    serviceaccount = subject.service_account.as_deref(),
                    pod = subject.pod.as_deref(),
                    association_id = stale.association_id.as_deref(),
                    error = %err,
                    failures,
                    retry_in_ms = retry_ms,
                    "EKS Auth failed recoverably; serving the cached credential"
                );
                Ok((stale.body.clone(), Outcome::Stale))
            }
        }
    }
}
