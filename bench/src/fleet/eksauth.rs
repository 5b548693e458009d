//! EKS Auth as the fleet sees it: the service (a regional token-bucket
//! quota, an outage window, a fixed latency, credentials of a fixed
//! lifetime, expired tokens refused), and each node's AWS SDK client in
//! front of it (standard retry mode: up to 3 attempts with exponential
//! jittered backoff, and the retry quota: 500 tokens, 5 per retry, refilled
//! by successes). Both policies call through the same two models, so every
//! attempt is counted once, per simulated second.
//!
//! [`NodeSdk`] is also the [`Upstream`] the real cache is given.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_smithy_types::DateTime;
use pod_identity_agent::clock::Clock;
use pod_identity_agent::credentials::{Credentials, Secret};
use pod_identity_agent::eksauth::{BoxFuture, EksAuthError, Fault, Issued, Modeled, Upstream};
use tokio::time::Instant;

use super::rng::Rng;

/// Epoch second at which every run starts (the start of the warm-up).
pub const EPOCH_S: u64 = 1_767_225_600;

/// Simulated time: since the run started (warm-up included).
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    pub base: Instant,
}

impl SimClock {
    pub fn since_start(&self) -> Duration {
        self.base.elapsed()
    }

    pub fn epoch_ms(&self) -> u64 {
        EPOCH_S * 1000 + self.since_start().as_millis() as u64
    }
}

/// The agent's clock reads tokio's (paused) clock: the cache's decisions
/// and tokio's sleeps (the call gate, refresh pacing) move together.
impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.epoch_ms()
    }
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Calls per second the region accepts (token bucket), and its burst.
    pub quota: f64,
    pub burst: f64,
    pub latency: Duration,
    pub credential_lifetime: Duration,
    /// Every call fails with ServiceUnavailableException in [from, to)
    /// (time since the run started).
    pub outage: Option<(Duration, Duration)>,
}

/// What one attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    Throttled,
    Unavailable,
    ExpiredToken,
}

impl Fail {
    pub fn status(self) -> u16 {
        match self {
            Fail::Throttled => 429,
            Fail::Unavailable => 503,
            Fail::ExpiredToken => 400,
        }
    }

    fn retryable(self) -> bool {
        self != Fail::ExpiredToken
    }
}

/// Attempts in one simulated second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Second {
    pub calls: u32,
    pub ok: u32,
    pub throttled: u32,
    pub unavailable: u32,
    pub refused: u32,
}

struct Bucket {
    tokens: f64,
    at: Duration,
}

pub struct Service {
    config: ServiceConfig,
    clock: SimClock,
    bucket: Mutex<Bucket>,
    seconds: Mutex<Vec<Second>>,
}

impl Service {
    pub fn new(config: ServiceConfig, clock: SimClock, run: Duration) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: config.burst,
                at: Duration::ZERO,
            }),
            seconds: Mutex::new(vec![Second::default(); run.as_secs() as usize + 2]),
            config,
            clock,
        }
    }

    /// One AssumeRoleForPodIdentity attempt with a token expiring at
    /// `token_exp_s`: the credential's expiration (epoch ms) or the failure.
    pub async fn attempt(&self, token_exp_s: u64) -> Result<u64, Fail> {
        let now = self.clock.since_start();
        let outcome = if self
            .config
            .outage
            .is_some_and(|(from, to)| now >= from && now < to)
        {
            Err(Fail::Unavailable)
        } else if !self.take(now) {
            Err(Fail::Throttled)
        } else if token_exp_s * 1000 <= self.clock.epoch_ms() {
            Err(Fail::ExpiredToken)
        } else {
            Ok(self.clock.epoch_ms() + self.config.credential_lifetime.as_millis() as u64)
        };
        {
            let mut seconds = self.seconds.lock().expect("service lock");
            let last = seconds.len() - 1;
            let s = &mut seconds[(now.as_secs() as usize).min(last)];
            s.calls += 1;
            match outcome {
                Ok(_) => s.ok += 1,
                Err(Fail::Throttled) => s.throttled += 1,
                Err(Fail::Unavailable) => s.unavailable += 1,
                Err(Fail::ExpiredToken) => s.refused += 1,
            }
        }
        tokio::time::sleep(self.config.latency).await;
        outcome
    }

    fn take(&self, now: Duration) -> bool {
        let mut b = self.bucket.lock().expect("service lock");
        b.tokens =
            (b.tokens + (now - b.at).as_secs_f64() * self.config.quota).min(self.config.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn seconds(&self) -> Vec<Second> {
        self.seconds.lock().expect("service lock").clone()
    }
}

const RETRY_QUOTA: u64 = 500;
const RETRY_COST: u64 = 5;

/// One node's AWS SDK client for EKS Auth (standard retry mode).
pub struct NodeSdk {
    service: std::sync::Arc<Service>,
    max_attempts: u32,
    quota: AtomicU64,
    rng: Mutex<Rng>,
}

impl NodeSdk {
    pub fn new(service: std::sync::Arc<Service>, max_attempts: u32, rng: Rng) -> Self {
        Self {
            service,
            max_attempts: max_attempts.max(1),
            quota: AtomicU64::new(RETRY_QUOTA),
            rng: Mutex::new(rng),
        }
    }

    /// One SDK call: attempts until success, a non-retryable failure, the
    /// attempt limit, or an empty retry quota.
    pub async fn call(&self, token_exp_s: u64) -> Result<u64, Fail> {
        let mut attempt = 1;
        loop {
            match self.service.attempt(token_exp_s).await {
                Ok(expiry) => {
                    let refill = if attempt == 1 { 1 } else { RETRY_COST };
                    let q = self.quota.load(Ordering::Relaxed);
                    self.quota
                        .store((q + refill).min(RETRY_QUOTA), Ordering::Relaxed);
                    return Ok(expiry);
                }
                Err(fail) => {
                    let q = self.quota.load(Ordering::Relaxed);
                    if !fail.retryable() || attempt >= self.max_attempts || q < RETRY_COST {
                        return Err(fail);
                    }
                    self.quota.store(q - RETRY_COST, Ordering::Relaxed);
                    let jitter = self.rng.lock().expect("sdk rng lock").unit();
                    let backoff =
                        Duration::from_secs(1 << (attempt - 1)).min(Duration::from_secs(20));
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// Token strings end in `:<exp epoch s>` ([`super::pods::Token`]).
fn token_exp(token: &str) -> u64 {
    token
        .rsplit(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn error(fail: Fail) -> EksAuthError {
    let (modeled, message, fault) = match fail {
        Fail::Throttled => (Modeled::Throttling, "Rate exceeded", Fault::Client),
        Fail::Unavailable => (
            Modeled::ServiceUnavailable,
            "Service unavailable",
            Fault::Server,
        ),
        Fail::ExpiredToken => (Modeled::ExpiredToken, "Token expired", Fault::Client),
    };
    EksAuthError::Service {
        status: fail.status(),
        modeled: Some(modeled),
        code: Some(modeled.code().to_owned()),
        message: message.to_owned(),
        request_id: String::new(),
        fault,
    }
}

impl Upstream for NodeSdk {
    fn assume<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Issued, EksAuthError>> {
        Box::pin(async move {
            let expiry_ms = self.call(token_exp(token)).await.map_err(error)?;
            Ok(Issued {
                credentials: Credentials {
                    access_key_id: "ASIAFLEETSIMULATION0".into(),
                    secret_access_key: Secret::new("fleet-simulation-secret"),
                    session_token: Secret::new("fleet-simulation-session-token"),
                    account_id: "111122223333".into(),
                    expiration: DateTime::from_millis(expiry_ms as i64),
                },
                association_id: Some("a-fleetsimulation".into()),
                assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/fleet/s".into(),
                request_id: None,
            })
        })
    }

    fn cluster_name(&self) -> &str {
        "fleet"
    }
}
