//! Fleet simulation (`fleet` binary): a deterministic discrete-event
//! simulation of N nodes × P pod slots over a simulated day, against one
//! regional EKS Auth with a token-bucket quota and an outage window, under
//! two policies facing the same workload (same seed):
//!
//! - [`ours`]: the agent's real cache, refresh, backoff and call-gate code
//!   on every node ([`pod_identity_agent::cache::CredentialCache`]);
//! - [`upstream`]: a model of upstream's policy.
//!
//! Time: each policy runs on a current-thread tokio runtime with paused
//! time, so the runtime jumps from one timer to the next; the cache's
//! injected clock reads the same tokio clock ([`eksauth::SimClock`]), so its
//! decisions and tokio's sleeps (the gate, refresh pacing, the models'
//! latencies and the clients' pauses) agree. Tokio's timer wheel is the
//! event queue. The two policies run on two threads.
//!
//! Determinism: every draw of the workload and of the models comes from a
//! generator derived from the seed ([`rng`]); the upstream model is fully
//! reproducible. The real cache draws its own jitter (refresh-ahead point,
//! backoff windows, pacing) from the thread RNG, which cannot be seeded from
//! outside, so our policy's totals vary slightly between runs.
//!
//! Modules: [`eksauth`] (the service and each node's SDK), [`pods`] (the
//! workload and what clients saw), [`ours`], [`upstream`], [`report`].

pub mod eksauth;
pub mod ours;
pub mod pods;
pub mod report;
pub mod rng;
pub mod upstream;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use pod_identity_agent::metrics::Metrics;
use tokio::time::Instant;

use eksauth::{NodeSdk, Second, Service, ServiceConfig, SimClock};
use ours::OursNode;
use pods::{Env, PodStats};
use rng::Rng;
use upstream::{UpstreamCounts, UpstreamNode};

/// The pod's SDK (see [`pods`]).
#[derive(Debug, Clone)]
pub struct SdkConfig {
    pub attempts: u32,
    pub pause: Duration,
    pub timeout: Duration,
    pub app_pause: Duration,
    /// Refresh this long before expiry: uniform in [.0, .1).
    pub refresh_margin: (Duration, Duration),
    /// A credential already inside the refresh window is asked again after this.
    pub reask: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    pub pods_per_node: usize,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    pub warmup: Duration,
    pub service: ServiceConfig,
    /// Outage start (after the warm-up) and length.
    pub outage: Option<(Duration, Duration)>,
    pub retention: Duration,
    pub credential_lifetime: Duration,
    pub token_lifetime: Duration,
    pub short_share: f64,
    pub service_mean: Duration,
    pub max_clients_per_pod: u32,
    pub sdk: SdkConfig,
    /// The agent's SDK attempts per EKS Auth call (both policies).
    pub agent_attempts: u32,
    /// Our nodes' maintenance period when nothing fails ([`ours`]).
    pub maintenance: Duration,
}

impl Config {
    fn end(&self) -> Duration {
        self.warmup + self.duration
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Ours,
    Upstream,
}

impl Policy {
    pub fn label(self) -> &'static str {
        match self {
            Policy::Ours => "this agent",
            Policy::Upstream => "upstream's policy (model)",
        }
    }
}

/// Our nodes' own counters, from the agent's metrics (summed over nodes).
#[derive(Debug, Clone, Copy, Default)]
pub struct OursCounts {
    pub stale_served: u64,
    pub backoff_replays: u64,
    pub rate_halvings: u64,
    pub queue_rejected: u64,
}

pub struct PolicyResult {
    pub policy: Policy,
    /// Per second of the measured window.
    pub seconds: Vec<Second>,
    pub stats: PodStats,
    pub ours: Option<OursCounts>,
    pub upstream: Option<UpstreamCounts>,
    /// Wall time of this policy's run.
    pub wall: Duration,
}

/// Runs one policy to the end of the measured window.
pub fn run(config: &Config, policy: Policy) -> PolicyResult {
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime with time builds");
    let local = tokio::task::LocalSet::new();
    let mut result = local.block_on(&runtime, simulate(config.clone(), policy));
    drop(local);
    drop(runtime);
    result.wall = started.elapsed();
    result
}

async fn simulate(config: Config, policy: Policy) -> PolicyResult {
    let clock = SimClock {
        base: Instant::now(),
    };
    let end = config.end();
    let mut service_config = config.service.clone();
    service_config.outage = config
        .outage
        .map(|(at, len)| (config.warmup + at, config.warmup + at + len));
    let service = Arc::new(Service::new(service_config, clock, end));
    let env = Rc::new(Env {
        config: config.clone(),
        clock,
        stats: RefCell::new(PodStats::default()),
    });
    let mut metrics: Vec<Arc<Metrics>> = Vec::new();
    let upstream_counts = Rc::new(RefCell::new(UpstreamCounts::default()));
    for node in 0..config.nodes {
        let sdk = Arc::new(NodeSdk::new(
            service.clone(),
            config.agent_attempts,
            Rng::derive(&[config.seed, 3, node as u64]),
        ));
        let mut rng = Rng::derive(&[config.seed, 4, node as u64]);
        match policy {
            Policy::Ours => {
                let agent = Rc::new(OursNode::new(
                    ours::agent_config(config.retention),
                    sdk,
                    clock,
                ));
                metrics.push(agent.metrics.clone());
                let first = rng.between(Duration::ZERO, config.maintenance);
                tokio::task::spawn_local(agent.clone().maintain(first, config.maintenance, end));
                spawn_slots(&env, agent, node);
            }
            Policy::Upstream => {
                let agent = Rc::new(UpstreamNode::new(
                    sdk,
                    clock,
                    config.retention,
                    rng.clone(),
                    upstream_counts.clone(),
                ));
                let first = rng.between(Duration::ZERO, Duration::from_secs(60));
                tokio::task::spawn_local(agent.clone().janitor(first, end));
                spawn_slots(&env, agent, node);
            }
        }
    }
    tokio::time::sleep_until(clock.base + end).await;
    let all = service.seconds();
    let from = config.warmup.as_secs() as usize;
    let to = (end.as_secs() as usize).min(all.len());
    let stats = env.stats.borrow().clone();
    PolicyResult {
        policy,
        seconds: all[from..to].to_vec(),
        stats,
        ours: (policy == Policy::Ours).then(|| {
            let total = |f: &dyn Fn(&Metrics) -> u64| metrics.iter().map(|m| f(m)).sum();
            OursCounts {
                stale_served: total(&|m| m.stale_served.get()),
                backoff_replays: total(&|m| m.calls_avoided.with_label_values(&["backoff"]).get()),
                rate_halvings: total(&|m| m.eksauth_throttled.get()),
                queue_rejected: total(&|m| m.queue_rejected()),
            }
        }),
        upstream: (policy == Policy::Upstream).then(|| *upstream_counts.borrow()),
        wall: Duration::ZERO,
    }
}

fn spawn_slots<A: pods::NodeAgent>(env: &Rc<Env>, agent: Rc<A>, node: usize) {
    for slot in 0..env.config.pods_per_node {
        tokio::task::spawn_local(pods::slot(env.clone(), agent.clone(), node, slot));
    }
}

/// Both policies, on two threads.
pub fn run_both(config: &Config) -> (PolicyResult, PolicyResult) {
    std::thread::scope(|s| {
        let up = s.spawn(|| run(config, Policy::Upstream));
        let ours = run(config, Policy::Ours);
        (
            ours,
            up.join().expect("the upstream simulation thread panicked"),
        )
    })
}
