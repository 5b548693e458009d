//! Per-identity backoff after recoverable EKS Auth failures (throttling,
//! 5xx, timeouts, connection errors) of identities with no credential to
//! fall back on: inside the window, requests get the last answer again
//! (same status and body) and EKS Auth is not called. SDKs retry on their
//! own (botocore three times a second apart, .NET five), so without this a
//! throttled EKS Auth receives several calls per pod that needs one.
//!
//! Window: about 1 s after the first failure, doubling to 30 s, each drawn
//! from [½, 1] of its nominal length so pods that failed together do not
//! return together; reset by a success. Keyed like the cache (a rotated
//! token of a verified pod shares its backoff); bounded in size.

use std::sync::Arc;
use std::time::Duration;

use super::{CacheKey, FetchError};

const FIRST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Backoff {
    failures: u32,
    until_ms: u64,
    error: FetchError,
}

pub(super) struct Backoffs {
    table: moka::sync::Cache<CacheKey, Arc<Backoff>>,
}

impl Backoffs {
    pub(super) fn new(capacity: u64) -> Self {
        Self {
            table: moka::sync::Cache::new(capacity.max(1000)),
        }
    }

    /// The answer to replay for `key` at `now_ms`, if it is backing off.
    pub(super) fn replay(&self, key: &CacheKey, now_ms: u64) -> Option<FetchError> {
        let b = self.table.get(key)?;
        (now_ms < b.until_ms).then(|| b.error.clone())
    }

    /// Records a recoverable failure; returns the window it opened.
    pub(super) fn failed(&self, key: &CacheKey, error: FetchError, now_ms: u64) -> Duration {
        let failures = self.table.get(key).map_or(0, |b| b.failures) + 1;
        let window = window(failures, rand::random::<f64>());
        self.table.insert(
            *key,
            Arc::new(Backoff {
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

/// The window after `failures` consecutive failures, `jitter` in [0, 1).
fn window(failures: u32, jitter: f64) -> Duration {
    let nominal = FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(LONGEST);
    nominal.mul_f64(0.5 + 0.5 * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_thirty() {
        let nominal: Vec<u64> = (1..=8).map(|n| window(n, 1.0).as_millis() as u64).collect();
        assert_eq!(
            nominal,
            [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(window(1, 0.0), Duration::from_millis(500));
        assert_eq!(window(40, 0.0), Duration::from_secs(15));
    }
}
