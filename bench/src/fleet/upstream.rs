//! Upstream's policy (aws/eks-pod-identity-agent v0.1.37,
//! `internal/credsretriever/refreshing_cache.go` and
//! `internal/cache/expiring`), modelled per node:
//!
//! - cache keyed by token; an entry is served while its credential has more
//!   than 15 s left; it is due for renewal `min(time left, retention)`
//!   after its fetch and evicted at the credential's expiry;
//! - a miss calls EKS Auth (the node's SDK, 3 attempts) unless a call for
//!   the same token is in flight, in which case it polls the cache every
//!   200 ms, 9 times, then calls anyway; no backoff, no node-wide cap;
//! - a janitor every minute renews every due entry, dead pods' included,
//!   one after another: `limiter.Allow()` then `limiter.Wait()` on a 3/s
//!   (burst 3) limiter, so each renewal takes two tokens; on a recoverable
//!   failure, or when `Allow` says no, the entry is kept (while valid) and
//!   tried again 1–2 min later; an irrecoverable answer (a dead pod's
//!   expired token) deletes it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::eksauth::{EPOCH_S, Fail, NodeSdk, SimClock};
use super::pods::{Answer, NodeAgent, Token};
use super::rng::Rng;

const MIN_LEFT: Duration = Duration::from_secs(15);
const POLLS: u32 = 9;
const POLL_WAIT: Duration = Duration::from_millis(200);
const JANITOR: Duration = Duration::from_secs(60);
const REFRESH_QPS: f64 = 3.0;

struct Entry {
    /// Credential expiry and renewal time, as time since start.
    expiry: Duration,
    refresh_at: Duration,
    token: Arc<str>,
    token_exp_s: u64,
}

/// `golang.org/x/time/rate.Limiter` with `Allow` and `Wait`.
struct Limiter {
    tokens: f64,
    at: Duration,
}

impl Limiter {
    fn refill(&mut self, now: Duration) {
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * REFRESH_QPS).min(REFRESH_QPS);
        self.at = now;
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamCounts {
    pub renewals: u64,
    pub renewals_rate_limited: u64,
    pub renewals_failed: u64,
}

pub struct UpstreamNode {
    sdk: Arc<NodeSdk>,
    clock: SimClock,
    retention: Duration,
    entries: RefCell<HashMap<Arc<str>, Entry>>,
    inflight: RefCell<HashMap<Arc<str>, u32>>,
    limiter: RefCell<Limiter>,
    rng: RefCell<Rng>,
    pub counts: Rc<RefCell<UpstreamCounts>>,
}

impl UpstreamNode {
    pub fn new(
        sdk: Arc<NodeSdk>,
        clock: SimClock,
        retention: Duration,
        rng: Rng,
        counts: Rc<RefCell<UpstreamCounts>>,
    ) -> Self {
        Self {
            sdk,
            clock,
            retention,
            entries: RefCell::new(HashMap::new()),
            inflight: RefCell::new(HashMap::new()),
            limiter: RefCell::new(Limiter {
                tokens: REFRESH_QPS,
                at: Duration::ZERO,
            }),
            rng: RefCell::new(rng),
            counts,
        }
    }

    fn now(&self) -> Duration {
        self.clock.since_start()
    }

    fn cached(&self, token: &str) -> Option<Duration> {
        let now = self.now();
        self.entries
            .borrow()
            .get(token)
            .filter(|e| e.expiry > now + MIN_LEFT)
            .map(|e| e.expiry)
    }

    fn store(&self, token: &Arc<str>, token_exp_s: u64, expiry_ms: u64) -> Duration {
        let now = self.now();
        let expiry = Duration::from_millis(expiry_ms.saturating_sub(EPOCH_S * 1000));
        let refresh_at = now + expiry.saturating_sub(now).min(self.retention);
        self.entries.borrow_mut().insert(
            token.clone(),
            Entry {
                expiry,
                refresh_at,
                token: token.clone(),
                token_exp_s,
            },
        );
        expiry
    }

    /// The janitor until `end` (time since start).
    pub async fn janitor(self: Rc<Self>, first: Duration, end: Duration) {
        tokio::time::sleep(first).await;
        while self.now() < end {
            self.janitor_pass().await;
            tokio::time::sleep(JANITOR).await;
        }
    }

    async fn janitor_pass(&self) {
        let now = self.now();
        let mut due: Vec<(Duration, Arc<str>, u64)> = self
            .entries
            .borrow()
            .values()
            .filter(|e| e.refresh_at <= now)
            .map(|e| (e.refresh_at, e.token.clone(), e.token_exp_s))
            .collect();
        due.sort();
        for (_, token, exp_s) in due {
            self.renew(&token, exp_s).await;
        }
        let now = self.now();
        self.entries.borrow_mut().retain(|_, e| e.expiry > now);
    }

    async fn renew(&self, token: &Arc<str>, exp_s: u64) {
        let allowed = {
            let mut l = self.limiter.borrow_mut();
            l.refill(self.now());
            if l.tokens >= 1.0 {
                l.tokens -= 1.0;
                true
            } else {
                false
            }
        };
        self.counts.borrow_mut().renewals += 1;
        if allowed {
            // Wait: reserve a token now, sleep until it exists.
            let wait = {
                let mut l = self.limiter.borrow_mut();
                l.refill(self.now());
                l.tokens -= 1.0;
                Duration::from_secs_f64((-l.tokens).max(0.0) / REFRESH_QPS)
            };
            tokio::time::sleep(wait).await;
            match self.sdk.call(exp_s).await {
                Ok(expiry_ms) => {
                    self.store(token, exp_s, expiry_ms);
                    return;
                }
                Err(Fail::ExpiredToken) => {
                    self.entries.borrow_mut().remove(token);
                    return;
                }
                Err(_) => self.counts.borrow_mut().renewals_failed += 1,
            }
        } else {
            self.counts.borrow_mut().renewals_rate_limited += 1;
        }
        let now = self.now();
        let retry =
            Duration::from_secs(60) + Duration::from_secs(60).mul_f64(self.rng.borrow_mut().unit());
        if let Some(e) = self.entries.borrow_mut().get_mut(token)
            && e.expiry > now + MIN_LEFT
        {
            e.refresh_at = now + retry.min(e.expiry - now);
        }
    }
}

impl NodeAgent for UpstreamNode {
    async fn request(&self, token: &Token) -> Answer {
        for poll in 0..=POLLS {
            if let Some(expiry) = self.cached(&token.raw) {
                return Answer::Ok(EPOCH_S * 1000 + expiry.as_millis() as u64);
            }
            if poll == POLLS || !self.inflight.borrow().contains_key(&token.raw) {
                break;
            }
            tokio::time::sleep(POLL_WAIT).await;
        }
        *self
            .inflight
            .borrow_mut()
            .entry(token.raw.clone())
            .or_default() += 1;
        // Dropped when the pod's request is abandoned (its context ends).
        let _guard = Inflight(self, token.raw.clone());
        match self.sdk.call(token.exp_s).await {
            Ok(expiry_ms) => {
                let expiry = self.store(&token.raw, token.exp_s, expiry_ms);
                Answer::Ok(EPOCH_S * 1000 + expiry.as_millis() as u64)
            }
            Err(fail) => Answer::Status(fail.status()),
        }
    }
}

struct Inflight<'a>(&'a UpstreamNode, Arc<str>);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut map = self.0.inflight.borrow_mut();
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}
