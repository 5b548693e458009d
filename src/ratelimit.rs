//! Request limits on the credential endpoint: upstream's global token
//! bucket (1000/s, burst 500 → 429 `Too Many Requests`) and one bucket per
//! [flow](crate::flow), shared work-conservingly:
//!
//! - a request within its flow's own rate (`--per-client-rate-limit`) takes
//!   a token from its flow and one from the global bucket; it is refused
//!   only when the global bucket is empty;
//! - a request beyond its flow's rate may borrow from the global bucket
//!   while that holds more than a quarter of its burst (the reserve), and
//!   is refused (`Limited::Flow`) otherwise.
//!
//! So a flow alone on the node may use the whole global rate (a
//! host-network CSI driver fetching for hundreds of pods is served), and no
//! flow can spend the reserve the others' own shares draw on: a pod in a
//! retry loop, or one sending a fresh token per request, runs into its own
//! share, not its neighbours'. Without a global bucket (`--rate-limit 0`)
//! there is nothing to borrow and each flow gets its own rate exactly.
//!
//! Flows are keyed hashes; the table is bounded (idle buckets are pruned, a
//! table full of busy ones is started over).
//!
//! Time is the caller's (`now_ms`, from the injected clock), so tests move
//! it instead of sleeping; a clock that steps back only delays refills.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use crate::flow::Flow;

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

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst.max(1) as f64);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Takes a token if that leaves at least `reserve`.
    fn take_above(&mut self, rate: Rate, now_ms: u64, reserve: f64) -> bool {
        self.refill(rate, now_ms);
        if self.tokens >= 1.0 + reserve {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        self.take_above(rate, now_ms, 0.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Global,
    /// Beyond the flow's own rate, with the global bucket down to its reserve.
    Flow,
}

impl Limited {
    /// The `limit` label of `pod_identity_rate_limited_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Global => "global",
            Limited::Flow => "flow",
        }
    }
}

const SHARDS: usize = 16;
/// Per-shard size at which idle (refilled) flow buckets are dropped.
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
    flow_rate: Rate,
    global: Mutex<Bucket>,
    flows: [Mutex<Buckets>; SHARDS],
}

impl RateLimiter {
    /// Buckets start full.
    pub fn new(global: Rate, flow: Rate) -> Self {
        let now = 0;
        Self {
            global_rate: global,
            flow_rate: flow,
            global: Mutex::new(Bucket::full(global, now)),
            flows: std::array::from_fn(|_| Mutex::new(Buckets::default())),
        }
    }

    /// Charges one request of `flow` at `now` (ms).
    pub fn check(&self, flow: Flow, now: u64) -> Result<(), Limited> {
        let within_share = !self.flow_rate.enabled() || self.take_own(flow.as_u64(), now);
        if !self.global_rate.enabled() {
            return if within_share {
                Ok(())
            } else {
                Err(Limited::Flow)
            };
        }
        let reserve = if within_share {
            0.0
        } else {
            f64::from(self.global_rate.burst.max(1)) / 4.0
        };
        let taken = self
            .global
            .lock()
            .expect("rate limiter lock poisoned")
            .take_above(self.global_rate, now, reserve);
        match (taken, within_share) {
            (true, _) => Ok(()),
            (false, true) => Err(Limited::Global),
            (false, false) => Err(Limited::Flow),
        }
    }

    fn take_own(&self, flow: u64, now: u64) -> bool {
        let shard = &self.flows[(flow >> 32) as usize % SHARDS];
        let mut map = shard.lock().expect("rate limiter lock poisoned");
        if map.len() >= PRUNE_AT && !map.contains_key(&flow) {
            let rate = self.flow_rate;
            map.retain(|_, b| {
                let mut probe = *b;
                probe.refill(rate, now);
                probe.tokens + 1.0 < rate.burst.max(1) as f64
            });
            // Still full of busy flows: start the shard over rather than
            // scan it again on every new flow.
            if map.len() >= PRUNE_AT {
                map.clear();
            }
        }
        map.entry(flow)
            .or_insert_with(|| Bucket::full(self.flow_rate, now))
            .take(self.flow_rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Flows;

    fn limiter(global: (f64, u32), flow: (f64, u32)) -> RateLimiter {
        RateLimiter::new(
            Rate {
                per_second: global.0,
                burst: global.1,
            },
            Rate {
                per_second: flow.0,
                burst: flow.1,
            },
        )
    }

    /// Alone, a flow may use the whole global budget; it can never take
    /// the reserve its neighbours' own shares draw on.
    #[test]
    fn work_conserving_shares() {
        let flows = Flows::new();
        let (a, b) = (
            flows.source("10.0.0.1".parse().unwrap()),
            flows.source("10.0.0.2".parse().unwrap()),
        );
        let rl = limiter((0.001, 100), (0.001, 10));
        // 10 of its own, then borrowing down to the reserve (25).
        let served = (0..1000).filter(|_| rl.check(a, 0).is_ok()).count();
        assert_eq!(served, 10 + 65);
        assert_eq!(rl.check(a, 0), Err(Limited::Flow));
        // The neighbour's own share is intact, and the reserve covers it.
        for _ in 0..10 {
            assert_eq!(rl.check(b, 0), Ok(()));
        }
        assert_eq!(rl.check(b, 0), Err(Limited::Flow));
    }

    #[test]
    fn without_a_global_bucket_each_flow_gets_its_own_rate() {
        let flows = Flows::new();
        let a = flows.source("10.0.0.1".parse().unwrap());
        let rl = limiter((0.0, 0), (1.0, 3));
        let served = (0..100).filter(|_| rl.check(a, 0).is_ok()).count();
        assert_eq!(served, 3);
        assert_eq!(rl.check(a, 1000), Ok(()), "refilled a second later");
    }

    #[test]
    fn the_global_bucket_alone_is_upstreams() {
        let flows = Flows::new();
        let rl = limiter((1.0, 5), (0.0, 0));
        let served = (0..20u8)
            .filter(|i| {
                rl.check(flows.source(IpAddr::from([10, 0, 0, *i])), 0)
                    .is_ok()
            })
            .count();
        assert_eq!(served, 5);
    }

    #[test]
    fn disabled_limits_admit_everything() {
        let rl = limiter((0.0, 0), (0.0, 0));
        let a = Flows::new().source("10.0.0.1".parse().unwrap());
        for _ in 0..10_000 {
            assert_eq!(rl.check(a, 0), Ok(()));
        }
    }

    use std::net::IpAddr;
}
