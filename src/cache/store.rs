//! One fetch for a key: ask the policy, then keep what it says.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::entry::{Entry, tag};
use super::{CacheKey, FetchResult, Inner, MIN_REMAINING, Outcome, TokenRef};
use crate::policy::{Class, Decision, Held};

impl Inner {
    /// The one fetch in flight for `key`: the policy's decision, applied.
    pub(super) async fn load(&self, key: &CacheKey, token: TokenRef, class: Class) -> FetchResult {
        let held = || {
            let now = self.clock.now_ms();
            self.held(key).filter(|e| e.valid(now)).map(|e| Held {
                failures: e.failures.load(Ordering::Relaxed),
            })
        };
        match self.policy.call(key, &token, class, held).await {
            Decision::Issued(fresh) => {
                let now = self.clock.now_ms();
                if let Some(entries) = &self.entries {
                    let span_ms = (fresh.expires_ms.saturating_sub(now))
                        .min(self.config.retention.as_millis() as u64);
                    let entry = Entry {
                        body: fresh.body.clone(),
                        expires_ms: fresh.expires_ms,
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
                        association_id: fresh.association_id.map(Into::into),
                    };
                    entries.insert(*key, Arc::new(entry));
                }
                Ok((fresh.body, Outcome::Miss))
            }
            Decision::Stale {
                failures,
                retry_in,
                error,
            } => {
                // Evicted meanwhile (capacity): nothing left to serve.
                let Some(stale) = self.held(key) else {
                    return Err(error);
                };
                let now = self.clock.now_ms();
                stale.failures.store(failures, Ordering::Relaxed);
                let retry_at = now + retry_in.as_millis() as u64;
                stale.refresh_at_ms.store(retry_at, Ordering::Relaxed);
                let cap = stale.expires_ms - MIN_REMAINING.as_millis() as u64;
                let renew_at = stale.renew_at_ms.load(Ordering::Relaxed);
                stale
                    .renew_at_ms
                    .store(renew_at.max(retry_at.min(cap)), Ordering::Relaxed);
                Ok((stale.body.clone(), Outcome::Stale))
            }
            Decision::Refused(err) => {
                if let Some(entries) = &self.entries
                    && entries.remove(key).is_some()
                {
                    self.metrics
                        .cache_state
                        .with_label_values(&["evicted"])
                        .inc();
                }
                Err(err)
            }
            Decision::Failed(err) => Err(err),
        }
    }

    fn held(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.as_ref().and_then(|e| e.get(key))
    }
}
