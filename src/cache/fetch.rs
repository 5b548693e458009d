//! One EKS Auth call and what it leaves behind.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::entry::{Entry, backoff, tag};
use super::{CacheKey, FetchResult, Inner, MIN_REMAINING, Outcome, Subject, TokenRef};
use crate::eksauth::{Class, EksAuthError, Saturated};
use crate::logging::Topic;

impl Inner {
    /// One EKS Auth call for `key` (the only one in flight for it), through
    /// the node-wide gate, and what it leaves behind: a cache entry, a
    /// negative entry, a backoff window, or a stale entry kept in service.
    pub(super) async fn load(&self, key: &CacheKey, token: TokenRef, class: Class) -> FetchResult {
        if let Err(Saturated { queued }) = self.gate.acquire(class).await {
            if let Some(suppressed) = self.metrics.logs.allow(Topic::QueueFull) {
                warn!(
                    queued,
                    suppressed, "EKS Auth call queue full; refusing the request until it drains"
                );
            }
            return Err(Arc::new(EksAuthError::Saturated { queued }));
        }
        let result = self.upstream.assume(&token.raw).await;
        self.gate
            .observe(result.as_ref().is_err_and(EksAuthError::is_throttling));
        let now = self.clock.now_ms();
        // Read from the token only now: log lines need it, entries do not.
        let subject = Subject::of(&token.raw);
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
                if let Some(suppressed) = self.metrics.logs.allow(Topic::Fetched) {
                    info!(
                        cluster = self.upstream.cluster_name(),
                        namespace = subject.namespace.as_deref(),
                        serviceaccount = subject.service_account.as_deref(),
                        pod = subject.pod.as_deref(),
                        association_id = issued.association_id.as_deref(),
                        request_id = issued.request_id.as_deref(),
                        role = %issued.assumed_role_arn,
                        expires_in_s = expires_ms.saturating_sub(now) / 1000,
                        suppressed,
                        "fetched credentials from EKS Auth"
                    );
                }
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
                        // A credential fetched for a request was read once
                        // (that request got it): it is renewed ahead once even
                        // if its pod asks only once per credential, as
                        // botocore does (15 min before expiry, past the
                        // retention), so a pod holding it is never left with
                        // a credential about to run out when EKS Auth is down
                        // at that moment. A refreshed one must be read again;
                        // a pod that is gone costs at most this one renewal.
                        read: AtomicBool::new(matches!(class, Class::Miss(_))),
                        failures: AtomicU32::new(0),
                        token_tag: AtomicU64::new(tag(&token.hash)),
                        token: Mutex::new(token),
                        association_id: issued.association_id.map(Into::into),
                    };
                    entries.insert(*key, Arc::new(entry));
                }
                self.backoffs.succeeded(key);
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
                    if let Some(suppressed) = self.metrics.logs.allow(Topic::Refused) {
                        warn!(
                            cluster = self.upstream.cluster_name(),
                            namespace = subject.namespace.as_deref(),
                            serviceaccount = subject.service_account.as_deref(),
                            pod = subject.pod.as_deref(),
                            error = %err,
                            suppressed,
                            "EKS Auth refused the pod; evicted"
                        );
                    }
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
                    let err = Arc::new(err);
                    let window = err
                        .is_recoverable()
                        .then(|| self.backoffs.failed(key, err.clone(), now));
                    if let Some(suppressed) = self.metrics.logs.allow(Topic::CallFailed) {
                        warn!(
                            cluster = self.upstream.cluster_name(),
                            namespace = subject.namespace.as_deref(),
                            serviceaccount = subject.service_account.as_deref(),
                            pod = subject.pod.as_deref(),
                            error = %err,
                            backoff_ms = window.map(|w| w.as_millis() as u64),
                            suppressed,
                            "EKS Auth call failed"
                        );
                    }
                    return Err(err);
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
                if let Some(suppressed) = self.metrics.logs.allow(Topic::Stale) {
                    warn!(
                        cluster = self.upstream.cluster_name(),
                        namespace = subject.namespace.as_deref(),
                        serviceaccount = subject.service_account.as_deref(),
                        pod = subject.pod.as_deref(),
                        association_id = stale.association_id.as_deref(),
                        error = %err,
                        failures,
                        retry_in_ms = retry_ms,
                        suppressed,
                        "EKS Auth failed recoverably; serving the cached credential"
                    );
                }
                Ok((stale.body.clone(), Outcome::Stale))
            }
        }
    }
}
