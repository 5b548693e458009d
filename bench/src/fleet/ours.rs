//! Our policy: the agent's real [`CredentialCache`] on every node (its
//! coalescing, refresh-ahead, stale-on-error, negative cache, per-identity
//! backoff and node-wide call gate, with the agent's defaults), in front of
//! the node's SDK model ([`NodeSdk`]), driven through the injected clock.
//!
//! Maintenance: the agent runs [`CredentialCache::maintain`] every 5 s. A
//! pass costs tens of µs even on a small cache (moka's iterator walks its
//! 64 segments), and 1,000 nodes every 5 simulated seconds is 17 million
//! passes a day, so a node's pass runs every `maintenance` period (10 min
//! by default), and every 5 s from the moment the node served a stale
//! credential until 8 minutes after the last one (a stale entry is retried
//! 5 s to 7.5 min after each failure). What a pass decides is untouched;
//! only when it runs moves: refresh-ahead is due at 75–85 % of a 3 h span
//! and renewal at 100 %, so a pass up to 10 minutes late changes when, not
//! whether, an entry is refreshed ahead; aging out changes memory, not
//! calls.
//! `fleet --maintenance 5` runs every node at the agent's period.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use pod_identity_agent::cache::{CacheConfig, CacheKey, CredentialCache, Outcome, TokenRef};
use pod_identity_agent::clock::Clock;
use pod_identity_agent::eksauth::{CallGateConfig, EksAuthError};
use pod_identity_agent::metrics::Metrics;
use tokio::sync::Notify;

use super::eksauth::{NodeSdk, SimClock};
use super::pods::{Answer, NodeAgent, Token};

/// A stale answer this recent keeps a node's maintenance at the agent's 5 s.
const FINE_AFTER_STALE: Duration = Duration::from_secs(8 * 60);
const AGENT_PERIOD: Duration = Duration::from_secs(5);

/// The agent's defaults (`server` flags).
pub fn agent_config(retention: Duration) -> CacheConfig {
    CacheConfig {
        retention,
        max_size: 2000,
        max_service_qps: 3.0,
        negative_ttl: Duration::from_secs(5),
        gate: CallGateConfig {
            rate: 20.0,
            burst: 40,
            queue_size: 1000,
        },
    }
}

pub struct OursNode {
    cache: CredentialCache,
    pub metrics: Arc<Metrics>,
    clock: SimClock,
    /// A request was served stale: the maintenance loop starts its 5 s passes.
    stale: Notify,
    flows: pod_identity_agent::flow::Flows,
}

impl OursNode {
    pub fn new(config: CacheConfig, sdk: Arc<NodeSdk>, clock: SimClock) -> Self {
        let metrics = Arc::new(Metrics::new());
        Self {
            cache: CredentialCache::new(config, sdk, Arc::new(clock), metrics.clone()),
            metrics,
            clock,
            stale: Notify::new(),
            flows: pod_identity_agent::flow::Flows::new(),
        }
    }

    /// The maintenance loop until `end` (time since start).
    pub async fn maintain(self: Rc<Self>, first: Duration, coarse: Duration, end: Duration) {
        tokio::time::sleep(first).await;
        let (mut stale_count, mut stale_at) = (0, None);
        while self.clock.since_start() < end {
            self.cache.maintain().await;
            let now = self.clock.since_start();
            let count = self.metrics.stale_served.get();
            if count != stale_count {
                (stale_count, stale_at) = (count, Some(now));
            }
            let fine = stale_at.is_some_and(|at: Duration| now - at < FINE_AFTER_STALE);
            let period = if fine {
                AGENT_PERIOD.min(coarse)
            } else {
                coarse
            };
            tokio::select! {
                biased;
                () = self.stale.notified(), if !fine => {}
                () = tokio::time::sleep(period) => {}
            }
        }
    }
}

/// The status the endpoint would answer (`endpoint::RequestError::status`).
fn status(err: &EksAuthError) -> u16 {
    match err {
        EksAuthError::Saturated { .. } => 503,
        e => e
            .upstream_status()
            .filter(|s| (400..600).contains(s))
            .unwrap_or(500),
    }
}

/// `Expiration` of a pod-facing body, in epoch ms.
fn expiration_ms(body: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = b"\"Expiration\":\"";
    let at = body.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let len = body[at..].iter().position(|&b| b == b'"')?;
    let text = std::str::from_utf8(&body[at..at + len]).ok()?;
    let t = DateTime::from_str(text, Format::DateTime).ok()?;
    Some(t.to_millis().ok()? as u64)
}

impl NodeAgent for OursNode {
    async fn request(&self, token: &Token) -> Answer {
        let key = CacheKey::Token(token.hash);
        let token_ref = || TokenRef {
            raw: token.raw.clone(),
            hash: token.hash,
            expires: Some(token.exp_s as i64),
        };
        // Each simulated pod is its own flow (a pod has its own address);
        // the token's digest stands in for it.
        let pod = std::net::Ipv6Addr::from(u128::from_le_bytes(
            token.hash.0[..16]
                .try_into()
                .expect("a SHA-256 digest has 16 bytes and more"),
        ));
        let flow = self.flows.source(pod.into());
        let got = self
            .cache
            .get(&key, token.hash, token_ref, flow, self.clock.now_ms())
            .await;
        match got {
            Ok((body, outcome)) => {
                if outcome == Outcome::Stale {
                    self.stale.notify_one();
                }
                expiration_ms(&body).map_or(Answer::Status(500), Answer::Ok)
            }
            Err(e) => Answer::Status(status(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_expiration() {
        let body = br#"{"AccessKeyId":"ASIA","Expiration":"2026-01-01T06:00:00Z"}"#;
        assert_eq!(expiration_ms(body), Some(1_767_247_200_000));
    }
}
