//! Throttling EKS Auth: the emulator answers ThrottlingException (429) above
//! R calls/s while N new identities arrive within a few seconds, each with a
//! botocore-like client ([`crate::sdk`]) and an application that asks again
//! after the SDK gives up. Measured: EKS Auth calls per identity (every
//! attempt the emulator saw, the agent's own SDK retries included), the time
//! until every identity was served, and what the clients saw.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::R;
use crate::ctx::{Ctx, log, scrape};
use crate::scenario::curve::{AgentCounts, Curve};
use crate::sdk::{ClientLog, SdkRules, SeenCounts, until_served};
use crate::stats::{fmt_dur, percentile};

pub struct Params {
    pub identities: usize,
    /// The identities arrive evenly spread over this many seconds.
    pub arrival_secs: f64,
    /// EKS Auth throttles above this many calls per second (R).
    pub rate: f64,
    /// The application asks the SDK again this long after it gives up.
    pub app_pause: Duration,
    /// Clients stop asking this long after the first arrival.
    pub deadline: Duration,
    /// The agent's `--eks-auth-max-attempts`; `None`: its default (3).
    pub max_attempts: Option<u32>,
}

pub struct Throttle {
    pub params: Params,
    /// Attempts the emulator saw, and how they were answered.
    pub calls: u64,
    pub throttled: u64,
    pub successes: u64,
    pub agent: AgentCounts,
    pub served: usize,
    /// From the first arrival to the last identity served.
    pub all_served: Option<Duration>,
    /// Per identity, from its arrival to its first 200 (served ones only).
    pub wait_p50: Duration,
    pub wait_p99: Duration,
    pub wait_max: Duration,
    pub seen: SeenCounts,
    pub give_ups: u64,
    /// Identities whose SDK gave up at least once (the application saw an error).
    pub identities_with_give_up: usize,
    pub curve: Curve,
}

impl Throttle {
    pub fn calls_per_identity(&self) -> f64 {
        self.calls as f64 / self.params.identities.max(1) as f64
    }
}

/// Epoch milliseconds of the wall clock (the emulator's clock).
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts one client per token, arriving evenly over `arrival` from
/// `start`; returns their logs in token order.
pub async fn clients(
    addr: std::net::SocketAddr,
    tokens: &[String],
    arrival: Duration,
    app_pause: Duration,
    start: Instant,
    deadline: Duration,
) -> R<Vec<ClientLog>> {
    let n = tokens.len().max(1);
    let mut tasks = Vec::with_capacity(n);
    for (i, token) in tokens.iter().enumerate() {
        let token: Arc<str> = token.as_str().into();
        let arrive = arrival.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            until_served(
                addr,
                &token,
                SdkRules::BOTOCORE,
                app_pause,
                start,
                arrive,
                deadline,
            )
            .await
        }));
    }
    let mut logs = Vec::with_capacity(n);
    for t in tasks {
        logs.push(t.await?);
    }
    Ok(logs)
}

pub async fn run(ctx: &Ctx, params: Params) -> R<Throttle> {
    let n = params.identities.min(ctx.pods.len());
    log(format!(
        "throttle: {n} new identities over {} s, EKS Auth throttling above {} calls/s, agent SDK attempts {}",
        params.arrival_secs,
        params.rate,
        params
            .max_attempts
            .map_or("default".into(), |a| a.to_string())
    ));
    let attempts = params.max_attempts.map(|a| a.to_string());
    let extra: Vec<&str> = attempts
        .iter()
        .flat_map(|a| ["--eks-auth-max-attempts", a.as_str()])
        .collect();
    let agent = ctx.agent_with_gate("throttle", &extra).await?;
    ctx.emu_faults(&format!("{{\"throttle_above_per_s\":{}}}", params.rate))
        .await?;
    let outcome: R<_> = async {
        let s0 = ctx.emu_stats().await?;
        let m0 = scrape(agent.metrics).await?;
        let start_ms = epoch_ms();
        let start = Instant::now();
        let logs = clients(
            agent.addr,
            &ctx.pods[..n],
            Duration::from_secs_f64(params.arrival_secs),
            params.app_pause,
            start,
            params.deadline,
        )
        .await?;
        let end_ms = epoch_ms();
        let s1 = ctx.emu_stats().await?;
        let m1 = scrape(agent.metrics).await?;
        let curve = Curve::fetch(ctx, start_ms, end_ms).await?;
        Ok((s0, s1, m0, m1, logs, curve))
    }
    .await;
    let reset = ctx.emu_faults("{}").await;
    agent.child.stop();
    let (s0, s1, m0, m1, logs, curve) = outcome?;
    reset?;

    let mut waits: Vec<Duration> = logs
        .iter()
        .filter_map(|l| l.served.map(|s| s.saturating_sub(l.arrived)))
        .collect();
    waits.sort();
    let t = Throttle {
        calls: s1.calls - s0.calls,
        throttled: s1.throttled - s0.throttled,
        successes: s1.successes - s0.successes,
        agent: AgentCounts::between(&m0, &m1),
        served: waits.len(),
        all_served: (waits.len() == n)
            .then(|| logs.iter().filter_map(|l| l.served).max())
            .flatten(),
        wait_p50: percentile(&waits, 50.0),
        wait_p99: percentile(&waits, 99.0),
        wait_max: percentile(&waits, 100.0),
        seen: SeenCounts::of(logs.iter().flat_map(|l| l.attempts.iter().map(|(_, s)| s))),
        give_ups: logs.iter().map(|l| u64::from(l.give_ups)).sum(),
        identities_with_give_up: logs.iter().filter(|l| l.give_ups > 0).count(),
        curve,
        params,
    };
    log(format!(
        "  {} EKS Auth calls ({:.2} per identity, {} throttled), {}/{n} served, all served in {}",
        t.calls,
        t.calls_per_identity(),
        t.throttled,
        t.served,
        t.all_served.map(fmt_dur).unwrap_or_else(|| "never".into())
    ));
    Ok(t)
}
