//! Request admission on the credential endpoint: upstream's global token
//! bucket (1000/s, burst 500 → 429 `Too Many Requests`) plus one bucket per
//! workload, checked first, so a pod in a retry loop (botocore retries every
//! non-200 three times) spends its own budget, not its neighbours'.
//!
//! A workload is the verified pod, or the exact token when tokens are not
//! verified: never the source IP, which host-network callers share (CSI
//! drivers fetch for many pods from the node's IP, and Java, Go and Rust
//! SDKs treat a 429 as final). Keys are hashes chosen by the caller; the
//! table is bounded (idle buckets are pruned, a table full of busy ones is
//! started over).
//!
//! Time is the caller's (`now_ms`, from the injected clock), so tests move
//! it instead of sleeping; a clock that steps back only delays refills.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    fn enabled(&self) -> bool {
        self.per_second > 0.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    fn full(rate: Rate, now_ms: u64) -> Self {
        Self {
            tokens: rate.burst.max(1) as f64,
            last_ms: now_ms,
        }
    }

    fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst.max(1) as f64);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Global,
    Client,
}

impl Limited {
    /// The `limit` label of `pod_identity_rate_limited_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Global => "global",
            Limited::Client => "client",
        }
    }
}

const SHARDS: usize = 16;
/// Per-shard size at which idle (refilled) client buckets are dropped.
const PRUNE_AT: usize = 4096;

/// Keys are already uniform hashes; hashing them again buys nothing.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Buckets = HashMap<u64, Bucket, BuildHasherDefault<KeyHasher>>;

pub struct RateLimiter {
    global_rate: Rate,
    client_rate: Rate,
    global: Mutex<Bucket>,
    clients: [Mutex<Buckets>; SHARDS],
}

impl RateLimiter {
    /// Buckets start full.
    pub fn new(global: Rate, client: Rate) -> Self {
        let now = 0;
        Self {
            global_rate: global,
            client_rate: client,
            global: Mutex::new(Bucket::full(global, now)),
            clients: std::array::from_fn(|_| Mutex::new(Buckets::default())),
        }
    }

    /// Charges one request of workload `client` (a hash) at `now` (ms).
    pub fn check(&self, client: u64, now: u64) -> Result<(), Limited> {
        if self.client_rate.enabled() {
            let shard = &self.clients[(client >> 32) as usize % SHARDS];
            let mut map = shard.lock().expect("rate limiter lock poisoned");
            if map.len() >= PRUNE_AT && !map.contains_key(&client) {
                let rate = self.client_rate;
                map.retain(|_, b| {
                    let mut probe = *b;
                    probe.take(rate, now);
                    probe.tokens + 1.0 < rate.burst.max(1) as f64
                });
                // Still full of busy clients: start the shard over rather
                // than scan it again on every new client.
                if map.len() >= PRUNE_AT {
                    map.clear();
                }
            }
            let bucket = map
                .entry(client)
                .or_insert_with(|| Bucket::full(self.client_rate, now));
            if !bucket.take(self.client_rate, now) {
                return Err(Limited::Client);
            }
        }
        if self.global_rate.enabled()
            && !self
                .global
                .lock()
                .expect("rate limiter lock poisoned")
                .take(self.global_rate, now)
        {
            return Err(Limited::Global);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_budget_does_not_spend_the_neighbours() {
        let rl = RateLimiter::new(
            Rate {
                per_second: 0.001,
                burst: 10,
            },
            Rate {
                per_second: 0.001,
                burst: 3,
            },
        );
        let (a, b) = (0x1111_u64, 0x2222_u64);
        for _ in 0..3 {
            assert_eq!(rl.check(a, 0), Ok(()));
        }
        assert_eq!(rl.check(a, 0), Err(Limited::Client));
        assert_eq!(rl.check(a, 0), Err(Limited::Client));
        assert_eq!(
            rl.check(b, 0),
            Ok(()),
            "refused requests of a spend no global tokens"
        );
    }

    #[test]
    fn disabled_limits_admit_everything() {
        let off = Rate {
            per_second: 0.0,
            burst: 0,
        };
        let rl = RateLimiter::new(off, off);
        for _ in 0..10_000 {
            assert_eq!(rl.check(7, 0), Ok(()));
        }
    }
}
