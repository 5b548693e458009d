//! Miss storm: N concurrent first requests over M identities on a fresh
//! agent while EKS Auth takes 100 ms: EKS Auth calls made (coalescing means
//! M) and the latency distribution relative to the 100 ms.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::R;
use crate::client::{Conn, credential_request};
use crate::ctx::{Agent, Ctx, log, metric, scrape};
use crate::stats::{fmt_dur, percentile};

pub struct Params {
    /// Requests per round (N), one per connection.
    pub requests: usize,
    /// Identities the requests are spread over (M).
    pub identities: usize,
    /// EKS Auth latency set on the emulator, in ms.
    pub latency_ms: u64,
}

pub struct Storm {
    pub label: &'static str,
    pub requests: usize,
    pub identities: usize,
    pub latency_ms: u64,
    pub calls: u64,
    pub ok: usize,
    pub distinct_bodies: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub wall: Duration,
    /// Mean AssumeRoleForPodIdentity duration seen by the agent.
    pub eks_mean: Option<Duration>,
    /// The agent's CPU time from the release to the last answer.
    pub agent_cpu: Option<Duration>,
}

/// Round 1 on a fresh agent (the scenario); round 2 on the same agent with
/// other identities, so the EKS Auth client is warm (diagnostic).
pub async fn run(ctx: &Ctx, params: Params) -> R<Vec<Storm>> {
    let m = params.identities.max(1);
    log(format!(
        "miss storm: {} requests over {m} identities",
        params.requests
    ));
    let agent = ctx.agent("storm", &[]).await?;
    ctx.emu_faults(&format!("{{\"latency_ms\":{}}}", params.latency_ms))
        .await?;
    let mut rounds = Vec::new();
    let outcome: R<()> = async {
        rounds.push(round(ctx, &params, &agent, "fresh agent", 0).await?);
        if ctx.pods.len() >= 2 * m {
            // Round 1's connections are closed by then; round 2 opens new ones.
            rounds.push(round(ctx, &params, &agent, "same agent, next identities", m).await?);
        }
        Ok(())
    }
    .await;
    let reset = ctx.emu_faults("{}").await;
    agent.child.stop();
    outcome?;
    reset?;
    Ok(rounds)
}

/// One burst of `n` first requests over `m` identities starting at token
/// `first`, all sent at once on pre-opened connections.
async fn round(
    ctx: &Ctx,
    params: &Params,
    agent: &Agent,
    label: &'static str,
    first: usize,
) -> R<Storm> {
    let n = params.requests;
    let m = params.identities.max(1);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::connect(agent.addr).await?);
    }
    let before = ctx.emu_stats().await?;
    let m0 = scrape(agent.metrics).await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let barrier = barrier.clone();
        let req = credential_request(&ctx.pods[first + i % m]);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let t0 = Instant::now();
            let r = conn.roundtrip(&req).await;
            (i % m, r, t0.elapsed())
        }));
    }
    let profile = crate::profile::start(
        agent.child.pid(),
        &format!(
            "storm-{}",
            label.split_whitespace().next().unwrap_or("round")
        ),
    );
    let cpu0 = agent.child.cpu_time();
    barrier.wait().await;
    let released = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    let mut ok = 0;
    let mut bodies: HashMap<usize, HashSet<Vec<u8>>> = HashMap::new();
    for t in tasks {
        let (id, r, took) = t.await?;
        latencies.push(took);
        if let Ok(r) = r
            && r.status == 200
        {
            ok += 1;
            bodies.entry(id).or_default().insert(r.body);
        }
    }
    let wall = released.elapsed();
    let agent_cpu = agent
        .child
        .cpu_time()
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    if let Some(profile) = profile
        && let Err(e) = profile.finish()
    {
        log(format!("  profile: {e}"));
    }
    let after = ctx.emu_stats().await?;
    let m1 = scrape(agent.metrics).await?;
    let sum = "pod_identity_eksauth_duration_seconds_sum{result=\"ok\"}";
    let count = "pod_identity_eksauth_duration_seconds_count{result=\"ok\"}";
    let calls_seen = metric(&m1, count) - metric(&m0, count);
    let eks_mean = (calls_seen > 0.0)
        .then(|| Duration::from_secs_f64((metric(&m1, sum) - metric(&m0, sum)) / calls_seen));
    latencies.sort();
    let storm = Storm {
        label,
        requests: n,
        identities: m,
        latency_ms: params.latency_ms,
        calls: after.calls - before.calls,
        ok,
        distinct_bodies: bodies.values().map(|s| s.len()).sum(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: percentile(&latencies, 100.0),
        wall,
        eks_mean,
        agent_cpu,
    };
    log(format!(
        "  {label}: {} EKS Auth calls, p50 {}, p99 {}, agent-observed EKS Auth call {}, agent CPU {}",
        storm.calls,
        fmt_dur(storm.p50),
        fmt_dur(storm.p99),
        storm.eks_mean.map(fmt_dur).unwrap_or_default(),
        storm.agent_cpu.map(fmt_dur).unwrap_or_default()
    ));
    Ok(storm)
}
