//! Token rotation: verified mode; K pods warmed, then every request
//! presents a token of one of them that the agent has not verified before
//! (verified-token memo of size 1), versus the same tokens answered from
//! the memo (default size, primed): EKS Auth calls, req/s, latency, and
//! the wall time per request that signature verification costs.

use crate::R;
use crate::ctx::{Ctx, log, metric, scrape, warm};
use crate::stats::fmt_us;
use crate::wrk::Wrk;

pub struct Params {
    /// Pods warmed with one token each (K); the fresh tokens are theirs.
    pub pods: usize,
    /// wrk connections.
    pub connections: usize,
    /// Seconds per measured wrk run.
    pub secs: u64,
}

pub struct Rotation {
    pub params: Params,
    /// Without the memo, then with it.
    pub rows: Vec<RotationRow>,
}

pub struct RotationRow {
    pub label: &'static str,
    pub wrk: Wrk,
    pub calls: u64,
    pub verified: u64,
    pub memo_hits: u64,
}

pub async fn run(ctx: &Ctx, params: Params) -> R<Rotation> {
    let mut rows = Vec::new();
    let pods = params.pods;
    let variants: [(&'static str, &[&str]); 2] = [
        (
            "without memo (`--verified-token-cache-size 1`)",
            &["--verified-token-cache-size", "1"],
        ),
        ("with memo (default 20,000, primed)", &[]),
    ];
    for (label, extra) in variants {
        log(format!("token rotation: {label}"));
        let mut flags = vec!["--jwks-source", ctx.emu_url.as_str()];
        flags.extend_from_slice(extra);
        let agent = ctx.agent("rotation", &flags).await?;
        warm(agent.addr, ctx.pods.clone(), 0..pods, 16).await?;
        if extra.is_empty() {
            warm(agent.addr, ctx.rotation.clone(), 0..ctx.rotation.len(), 16).await?;
        }
        let m0 = scrape(agent.metrics).await?;
        let s0 = ctx.emu_stats().await?;
        let w = ctx
            .wrk(
                "rotation",
                agent.addr,
                &ctx.rotation_file,
                params.connections,
                params.secs,
            )
            .await?;
        let s1 = ctx.emu_stats().await?;
        let m1 = scrape(agent.metrics).await?;
        let key_v = "pod_identity_token_verifications_total{outcome=\"verified\"}";
        let key_c = "pod_identity_token_verifications_total{outcome=\"cached\"}";
        let row = RotationRow {
            label,
            calls: s1.calls - s0.calls,
            verified: (metric(&m1, key_v) - metric(&m0, key_v)) as u64,
            memo_hits: (metric(&m1, key_c) - metric(&m0, key_c)) as u64,
            wrk: w,
        };
        log(format!(
            "  {:.0} req/s, p99 {}, {} verifications, {} EKS Auth calls",
            row.wrk.rps(),
            fmt_us(row.wrk.p99),
            row.verified,
            row.calls
        ));
        rows.push(row);
        agent.child.stop();
    }
    Ok(Rotation { params, rows })
}
