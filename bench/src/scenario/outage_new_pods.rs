//! An EKS Auth outage while new pods arrive: the emulator answers
//! ServiceUnavailableException (503) for a window during which new pods
//! arrive at a steady rate, each with a botocore-like client and an
//! application that asks again after the SDK gives up ([`crate::sdk`]).
//! None of them can be served until EKS Auth recovers. Measured: EKS Auth
//! calls during the outage against the identities that needed one, how long
//! after recovery each identity waited, and the per-second call curve (a
//! synchronized burst at recovery would show as a spike).

use std::time::Duration;

use tokio::time::Instant;

use crate::R;
use crate::ctx::{Ctx, log, scrape};
use crate::scenario::curve::{AgentCounts, Curve};
use crate::scenario::throttle::{clients, epoch_ms};
use crate::sdk::SeenCounts;
use crate::stats::{fmt_dur, percentile};

pub struct Params {
    pub pods_per_sec: f64,
    /// Seconds of 503; the pods arrive during it.
    pub outage_secs: u64,
    /// Clients stop asking this long after recovery.
    pub after_secs: u64,
    /// The application asks the SDK again this long after it gives up.
    pub app_pause: Duration,
    /// The agent's `--eks-auth-rate-limit` (and burst); `None`: its default.
    pub rate_limit: Option<f64>,
}

pub struct OutageNewPods {
    pub params: Params,
    pub identities: usize,
    /// Measured: when the fault was set (0) and cleared.
    pub recovered_at: Duration,
    /// Emulator attempts while it answered 503, and after.
    pub calls_during: u64,
    pub calls_after: u64,
    pub agent_during: AgentCounts,
    pub agent_after: AgentCounts,
    /// Identities that asked before recovery and were not served before it.
    pub needed: usize,
    /// Per identity, from recovery to its first 200.
    pub after_p50: Duration,
    pub after_p99: Duration,
    pub after_max: Duration,
    pub served: usize,
    pub within_10s: usize,
    pub seen_during: SeenCounts,
    pub seen_after: SeenCounts,
    pub curve: Curve,
    /// Whole seconds of the curve: the one recovery happened in.
    pub recovery_second: usize,
}

impl OutageNewPods {
    pub fn calls_per_needed(&self) -> f64 {
        self.calls_during as f64 / self.needed.max(1) as f64
    }
}

pub async fn run(ctx: &Ctx, params: Params) -> R<OutageNewPods> {
    let n = ((params.pods_per_sec * params.outage_secs as f64) as usize).min(ctx.pods.len());
    log(format!(
        "outage with new pods: {} s of 503, {n} new identities ({}/s), then {} s; gate {}",
        params.outage_secs,
        params.pods_per_sec,
        params.after_secs,
        params
            .rate_limit
            .map_or("default".into(), |r| format!("{r}/s"))
    ));
    let limit = params.rate_limit.map(|r| r.to_string());
    let burst = params
        .rate_limit
        .map(|r| (r.ceil() as u64).max(1).to_string());
    let extra: Vec<&str> = match (&limit, &burst) {
        (Some(l), Some(b)) => vec!["--eks-auth-rate-limit", l, "--eks-auth-rate-burst", b],
        _ => Vec::new(),
    };
    let agent = ctx.agent_with_gate("outage-new-pods", &extra).await?;
    let outcome: R<_> = async {
        let m0 = scrape(agent.metrics).await?;
        let s0 = ctx.emu_stats().await?;
        ctx.emu_faults("{\"force_error\":\"ServiceUnavailableException\"}")
            .await?;
        let start_ms = epoch_ms();
        let start = Instant::now();
        let arrival = Duration::from_secs(params.outage_secs);
        let deadline = arrival + Duration::from_secs(params.after_secs);
        let tokens = ctx.pods[..n].to_vec();
        let addr = agent.addr;
        let pause = params.app_pause;
        let all =
            tokio::spawn(
                async move { clients(addr, &tokens, arrival, pause, start, deadline).await },
            );
        tokio::time::sleep_until(start + arrival).await;
        let s_off = ctx.emu_stats().await?;
        let m_off = scrape(agent.metrics).await?;
        ctx.emu_faults("{}").await?;
        let recovered_at = start.elapsed();
        let logs = all.await??;
        let end_ms = epoch_ms();
        let s1 = ctx.emu_stats().await?;
        let m1 = scrape(agent.metrics).await?;
        let curve = Curve::fetch(ctx, start_ms, end_ms).await?;
        let recovery_second =
            ((start_ms % 1000) as u128 + recovered_at.as_millis()) as usize / 1000;
        Ok((
            s0,
            s_off,
            s1,
            [m0, m_off, m1],
            logs,
            curve,
            recovered_at,
            recovery_second,
        ))
    }
    .await;
    let reset = ctx.emu_faults("{}").await;
    agent.child.stop();
    let (s0, s_off, s1, [m0, m_off, m1], logs, curve, recovered_at, recovery_second) = outcome?;
    reset?;

    let needed: Vec<_> = logs
        .iter()
        .filter(|l| l.arrived < recovered_at && l.served.is_none_or(|s| s >= recovered_at))
        .collect();
    let mut after: Vec<Duration> = needed
        .iter()
        .filter_map(|l| l.served.map(|s| s - recovered_at))
        .collect();
    after.sort();
    let split = |before: bool| {
        SeenCounts::of(
            logs.iter()
                .flat_map(|l| l.attempts.iter())
                .filter(|(t, _)| (*t < recovered_at) == before)
                .map(|(_, s)| s),
        )
    };
    let o = OutageNewPods {
        identities: n,
        recovered_at,
        calls_during: s_off.calls - s0.calls,
        calls_after: s1.calls - s_off.calls,
        agent_during: AgentCounts::between(&m0, &m_off),
        agent_after: AgentCounts::between(&m_off, &m1),
        needed: needed.len(),
        after_p50: percentile(&after, 50.0),
        after_p99: percentile(&after, 99.0),
        after_max: percentile(&after, 100.0),
        served: after.len(),
        within_10s: after
            .iter()
            .filter(|d| **d <= Duration::from_secs(10))
            .count(),
        seen_during: split(true),
        seen_after: split(false),
        curve,
        recovery_second,
        params,
    };
    log(format!(
        "  {} EKS Auth calls during the outage for {} identities ({:.2} each); after recovery {}/{} served, {} within 10 s, last after {}",
        o.calls_during,
        o.needed,
        o.calls_per_needed(),
        o.served,
        o.needed,
        o.within_10s,
        fmt_dur(o.after_max)
    ));
    Ok(o)
}
