//! Backoff: waiting after recoverable EKS Auth failures (throttling, 5xx,
//! timeouts, connection errors), one schedule per cause:
//!
//! - [`IDENTITY`]: an identity with nothing to serve failed. Inside the
//!   window its requests get the last answer again (same status and body)
//!   and EKS Auth is not called: SDKs retry on their own (botocore three
//!   times a second apart, .NET five), so without this a throttled EKS
//!   Auth receives several calls per pod that needs one. About 1 s after
//!   the first failure, doubling to 30 s, each window drawn from ½–1 of
//!   its nominal length so pods that failed together do not return
//!   together; reset by a success. Keyed like the cache (a rotated token of
//!   a verified pod shares its window); bounded in size ([`Windows`]).
//! - [`STALE`]: an identity whose credential is still valid failed; it
//!   keeps being served and its renewal is retried 5 s later, doubling to
//!   5 min, each drawn from 1–1.5 of its nominal length.

use std::sync::Arc;
use std::time::Duration;

use super::FetchError;
use crate::key::CacheKey;

/// An exponential schedule: `first`, doubling to `longest`, scaled by a
/// factor drawn from `spread`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub first: Duration,
    pub longest: Duration,
    pub spread: (f64, f64),
}

/// Replayed answers of identities with nothing to serve.
pub const IDENTITY: Schedule = Schedule {
    first: Duration::from_secs(1),
    longest: Duration::from_secs(30),
    spread: (0.5, 1.0),
};

/// Renewals of credentials still served.
pub const STALE: Schedule = Schedule {
    first: Duration::from_secs(5),
    longest: Duration::from_secs(300),
    spread: (1.0, 1.5),
};

impl Schedule {
    /// The wait after `failures` consecutive failures, `jitter` in [0, 1).
    pub fn wait(&self, failures: u32, jitter: f64) -> Duration {
        let nominal = self
            .first
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(self.longest);
        let (lo, hi) = self.spread;
        nominal.mul_f64(lo + (hi - lo) * jitter)
    }
}

#[derive(Clone)]
struct Window {
    failures: u32,
    until_ms: u64,
    error: Arc<FetchError>,
}

/// The open [`IDENTITY`] windows.
pub(super) struct Windows {
    table: moka::sync::Cache<CacheKey, Arc<Window>>,
}

impl Windows {
    pub(super) fn new(capacity: u64) -> Self {
        Self {
            table: moka::sync::Cache::new(capacity.max(1000)),
        }
    }

    /// The answer to replay for `key` at `now_ms`, if it is backing off.
    pub(super) fn replay(&self, key: &CacheKey, now_ms: u64) -> Option<Arc<FetchError>> {
        let w = self.table.get(key)?;
        (now_ms < w.until_ms).then(|| w.error.clone())
    }

    /// Records a recoverable failure; returns the window it opened.
    pub(super) fn failed(&self, key: &CacheKey, error: Arc<FetchError>, now_ms: u64) -> Duration {
        let failures = self.table.get(key).map_or(0, |w| w.failures) + 1;
        let window = IDENTITY.wait(failures, rand::random::<f64>());
        self.table.insert(
            *key,
            Arc::new(Window {
                failures,
                until_ms: now_ms + window.as_millis() as u64,
                error,
            }),
        );
        window
    }

    pub(super) fn succeeded(&self, key: &CacheKey) {
        self.table.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_windows_double_from_one_second_to_thirty() {
        let nominal: Vec<u64> = (1..=8)
            .map(|n| IDENTITY.wait(n, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(
            nominal,
            [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(IDENTITY.wait(1, 0.0), Duration::from_millis(500));
        assert_eq!(IDENTITY.wait(40, 0.0), Duration::from_secs(15));
    }

    #[test]
    fn stale_retries_grow_from_five_seconds_and_cap_at_five_minutes() {
        assert_eq!(STALE.wait(1, 0.0), Duration::from_secs(5));
        assert_eq!(STALE.wait(1, 1.0), Duration::from_millis(7500));
        assert_eq!(STALE.wait(30, 0.0), Duration::from_secs(300));
        assert_eq!(STALE.wait(30, 1.0), Duration::from_secs(450));
    }
}
