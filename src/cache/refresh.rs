//! Maintenance: credentials past use leave, and credentials of pods that
//! keep asking are renewed ahead of their renewal time (refresh-ahead), so
//! such pods never wait for EKS Auth. The request a credential was fetched
//! for counts as a read, so each is renewed ahead at least once; after that,
//! pods that stopped asking are not renewed (upstream renews every entry,
//! dead pods included: its #171).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::debug;

use super::entry::Entry;
use super::{CacheKey, CredentialCache, Outcome};
use crate::policy::Class;

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Maintenance {
    pub aged_out: usize,
    pub refreshed: usize,
    /// Total pause inserted between refreshes (`--max-service-qps`).
    pub paced: Duration,
}

impl CredentialCache {
    /// One maintenance pass: drop credentials past use, then refresh the
    /// entries due for it that were read since their last fetch (or were
    /// fetched for a request), paced at
    /// `--max-service-qps` with jitter (and through the node-wide call gate).
    /// The background task calls this periodically; tests call it directly
    /// after moving the clock.
    pub async fn maintain(&self) -> Maintenance {
        let inner = &self.inner;
        let mut report = Maintenance::default();
        let Some(entries) = &inner.entries else {
            return report;
        };
        let now = inner.clock.now_ms();
        let mut due = Vec::new();
        for (key, entry) in entries.iter() {
            if !entry.valid(now) {
                entries.invalidate(key.as_ref());
                report.aged_out += 1;
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
        entries.run_pending_tasks();
        inner
            .metrics
            .cache_entries
            .set(entries.entry_count() as i64);
        if inner.config.max_service_qps <= 0.0 {
            return report;
        }
        due.sort_by_key(|(at, _, _)| *at);
        let pace = Duration::from_secs_f64(1.0 / inner.config.max_service_qps);
        for (i, (_, key, entry)) in due.into_iter().enumerate() {
            if i > 0 {
                let gap = pace.mul_f64(0.5 + rand::random::<f64>());
                report.paced += gap;
                tokio::time::sleep(gap).await;
            }
            self.refresh(*key, &entry).await;
            report.refreshed += 1;
        }
        inner
            .metrics
            .cache_entries
            .set(entries.entry_count() as i64);
        report
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
        let result = self.fetch_shared(key, token, Class::Refresh).await;
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
                let _ = CredentialCache { inner }.maintain().await;
            }
        })
    }
}
