//! The workload, identical for both policies: pod slots on every node, pods
//! that come and go, and the SDK clients inside them, and what the clients
//! saw ([`PodStats`]).
//!
//! - Every node has a fixed number of pod slots; a slot's first pod starts
//!   during the warm-up, each next one up to a minute after the previous
//!   ends. Lifetimes: a share of short jobs (2–30 min, uniform), the rest
//!   services (exponential, mean 12 h by default).
//! - A pod runs 1–3 SDK clients (uniform: containers, processes), the first
//!   at pod start, the others within its first minute.
//! - The projected token is rotated by the kubelet at 80 % of its 24 h
//!   lifetime; clients read the current one for each request.
//! - A client fetches by botocore's rules (3 attempts, 2 s timeout each, 1 s
//!   sleep after each failure); when the SDK gives up, the application asks
//!   again after a pause, until served or the pod ends. It refreshes
//!   5–15 min (uniform) before the expiry of the credential it holds; a
//!   credential already inside that window is asked for again 30 s later
//!   (SDKs retry on next use).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use pod_identity_agent::token::TokenHash;
use tokio::time::{sleep, sleep_until, timeout};

use super::Config;
use super::eksauth::{EPOCH_S, SimClock};
use super::rng::Rng;

pub struct Token {
    pub raw: Arc<str>,
    pub hash: TokenHash,
    pub exp_s: u64,
}

/// What a credential request got.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// A credential expiring at this epoch ms.
    Ok(u64),
    Status(u16),
    Timeout,
}

/// A node's agent, as a pod sees it.
pub trait NodeAgent: 'static {
    fn request(&self, token: &Token) -> impl std::future::Future<Output = Answer>;
}

#[derive(Debug, Clone, Default)]
pub struct PodStats {
    pub pods: u64,
    pub requests: u64,
    pub ok: u64,
    pub throttled: u64,
    pub server_errors: u64,
    pub other_errors: u64,
    pub timeouts: u64,
    /// 200s whose credential was fetched more than the retention ago.
    pub stale: u64,
    /// Times an SDK gave up (the application saw an error).
    pub give_ups: u64,
    /// Pods that had no valid credential when they needed one: a first
    /// fetch the SDK gave up on, or a held credential that expired before
    /// a refresh succeeded.
    pub pods_without: u64,
    /// Of those, pods whose held credential expired.
    pub pods_expired: u64,
    pub seconds_without: f64,
    /// For each time without a credential that spans the end of the
    /// outage: seconds from then until served.
    pub after_recovery: Vec<f64>,
}

struct Pod {
    node: usize,
    slot: usize,
    seq: u64,
    start: Duration,
    end: Duration,
    token: RefCell<Option<(u64, Rc<Token>)>>,
    counted_without: Cell<bool>,
}

/// What the tasks of one run share.
pub struct Env {
    pub config: Config,
    pub clock: SimClock,
    pub stats: RefCell<PodStats>,
}

impl Env {
    fn now(&self) -> Duration {
        self.clock.since_start()
    }

    fn measured(&self, t: Duration) -> bool {
        t >= self.config.warmup
    }

    fn pod_token(&self, pod: &Pod, now: Duration) -> Rc<Token> {
        let rotation = self.config.token_lifetime.mul_f64(0.8);
        let generation = ((now - pod.start).as_secs_f64() / rotation.as_secs_f64()) as u64;
        let mut slot = pod.token.borrow_mut();
        if let Some((g, t)) = slot.as_ref()
            && *g == generation
        {
            return t.clone();
        }
        let issued = pod.start + rotation * generation as u32;
        let exp_s = EPOCH_S + (issued + self.config.token_lifetime).as_secs();
        let raw: Arc<str> = format!(
            "n{}.s{}.p{}.g{generation}:{exp_s}",
            pod.node, pod.slot, pod.seq
        )
        .into();
        let token = Rc::new(Token {
            hash: TokenHash::of(&raw),
            raw,
            exp_s,
        });
        *slot = Some((generation, token.clone()));
        token
    }

    fn count(&self, at: Duration, answer: Answer) {
        if !self.measured(at) {
            return;
        }
        let mut s = self.stats.borrow_mut();
        s.requests += 1;
        match answer {
            Answer::Ok(expiry_ms) => {
                s.ok += 1;
                let fetched_ms =
                    expiry_ms.saturating_sub(self.config.credential_lifetime.as_millis() as u64);
                if self.clock.epoch_ms() > fetched_ms + self.config.retention.as_millis() as u64 {
                    s.stale += 1;
                }
            }
            Answer::Status(429) => s.throttled += 1,
            Answer::Status(c) if c >= 500 => s.server_errors += 1,
            Answer::Status(_) => s.other_errors += 1,
            Answer::Timeout => s.timeouts += 1,
        }
    }

    /// Time without a valid credential, from `from`, ending now; `expired`:
    /// a held credential ran out.
    fn without(&self, pod: &Pod, from: Duration, expired: bool) {
        let from = from.max(self.config.warmup);
        let now = self.now();
        if now <= from {
            return;
        }
        let mut s = self.stats.borrow_mut();
        s.seconds_without += (now - from).as_secs_f64();
        if let Some((at, len)) = self.config.outage {
            let recovery = self.config.warmup + at + len;
            if from < recovery && now >= recovery {
                s.after_recovery.push((now - recovery).as_secs_f64());
            }
        }
        if !pod.counted_without.replace(true) {
            s.pods_without += 1;
            s.pods_expired += u64::from(expired);
        }
    }
}

/// The SDK's fetch: the credential's expiry, or `None` when it gives up.
async fn fetch<A: NodeAgent>(env: &Env, agent: &A, pod: &Pod) -> Option<u64> {
    let sdk = &env.config.sdk;
    for _ in 0..sdk.attempts {
        let now = env.now();
        if now >= pod.end {
            return None;
        }
        let token = env.pod_token(pod, now);
        let answer = timeout(sdk.timeout, agent.request(&token))
            .await
            .unwrap_or(Answer::Timeout);
        env.count(now, answer);
        if let Answer::Ok(expiry_ms) = answer {
            return Some(expiry_ms);
        }
        sleep(sdk.pause).await;
    }
    None
}

/// One SDK client in `pod`, from `start` until the pod ends.
async fn client<A: NodeAgent>(
    env: Rc<Env>,
    agent: Rc<A>,
    pod: Rc<Pod>,
    mut rng: Rng,
    start: Duration,
) {
    sleep_until(env.clock.base + start).await;
    let c = &env.config;
    // The held credential's expiry (time since start), once there is one.
    let mut held: Option<Duration> = None;
    loop {
        let asked = env.now();
        let mut gave_up = false;
        let expiry_ms = loop {
            if env.now() >= pod.end {
                return;
            }
            if let Some(e) = fetch(&env, &*agent, &pod).await {
                break e;
            }
            gave_up = true;
            if env.measured(env.now()) {
                env.stats.borrow_mut().give_ups += 1;
            }
            sleep(c.sdk.app_pause).await;
        };
        match held {
            None if gave_up => env.without(&pod, asked, false),
            Some(expired) if env.now() > expired => env.without(&pod, expired, true),
            _ => {}
        }
        let expiry = Duration::from_millis(expiry_ms.saturating_sub(EPOCH_S * 1000));
        held = Some(expiry);
        let margin = rng.between(c.sdk.refresh_margin.0, c.sdk.refresh_margin.1);
        let next = expiry.saturating_sub(margin).max(env.now() + c.sdk.reask);
        if next >= pod.end {
            return;
        }
        sleep_until(env.clock.base + next).await;
    }
}

/// One pod slot on `node`: pods one after another until the run ends.
pub async fn slot<A: NodeAgent>(env: Rc<Env>, agent: Rc<A>, node: usize, slot: usize) {
    let c = env.config.clone();
    let mut rng = Rng::derive(&[c.seed, 1, node as u64, slot as u64]);
    let mut start = rng.between(Duration::ZERO, c.warmup);
    let end_of_run = c.warmup + c.duration;
    let mut seq = 0u64;
    while start < end_of_run {
        sleep_until(env.clock.base + start).await;
        let life = if rng.chance(c.short_share) {
            rng.between(Duration::from_secs(120), Duration::from_secs(1800))
        } else {
            rng.exponential(c.service_mean)
        };
        let pod = Rc::new(Pod {
            node,
            slot,
            seq,
            start,
            end: start + life,
            token: RefCell::new(None),
            counted_without: Cell::new(false),
        });
        if pod.end > c.warmup {
            env.stats.borrow_mut().pods += 1;
        }
        let clients = 1 + (rng.unit() * c.max_clients_per_pod as f64) as u64;
        for k in 0..clients {
            let offset = if k == 0 {
                Duration::ZERO
            } else {
                rng.between(Duration::ZERO, Duration::from_secs(60))
            };
            let client_rng = Rng::derive(&[c.seed, 2, node as u64, slot as u64, seq, k]);
            tokio::task::spawn_local(client(
                env.clone(),
                agent.clone(),
                pod.clone(),
                client_rng,
                start + offset,
            ));
        }
        start = pod.end + rng.between(Duration::ZERO, Duration::from_secs(60));
        seq += 1;
    }
}
