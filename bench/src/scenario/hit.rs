//! Cache hit: wrk req/s and p50/p99/p99.9 of the agent warmed with K
//! identities (K distinct tokens, rotated by `wrk/rotate.lua`) at several
//! connection counts, next to the same wrk runs against `baseline` (a bare
//! hyper server answering the same bytes), as ratios.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::R;
use crate::client::Conn;
use crate::ctx::{Ctx, free_ports, log, warm};
use crate::procs::{Child, Placement};
use crate::stats::fmt_us;
use crate::wrk::Wrk;

pub struct Params {
    /// Identity counts K the agent is warmed with (one agent each).
    pub identities: Vec<usize>,
    /// wrk connection counts, per K.
    pub connections: Vec<usize>,
    /// Seconds per measured wrk run.
    pub secs: u64,
}

pub struct HitRow {
    pub identities: usize,
    pub conns: usize,
    pub agent: Wrk,
    pub base: Wrk,
    /// The baseline with the agent's hyper settings (64 connections only).
    pub hardened: Option<Wrk>,
    pub calls: u64,
}

pub async fn run(ctx: &Ctx, params: Params) -> R<Vec<HitRow>> {
    let secs = params.secs;
    let mut rows = Vec::new();
    let mut baseline: Option<((Child, SocketAddr), (Child, SocketAddr))> = None;
    for &k in &params.identities {
        log(format!("cache hit: {k} identities"));
        let agent = ctx.agent(&format!("hit-{k}"), &[]).await?;
        let body = warm(agent.addr, ctx.pods.clone(), 0..k, 16).await?;
        if baseline.is_none() {
            let body_file = ctx.workdir.join("body.json");
            std::fs::write(&body_file, &body)?;
            let plain = start_baseline(ctx, &body_file, false).await?;
            let hardened = start_baseline(ctx, &body_file, true).await?;
            baseline = Some((plain, hardened));
        }
        let (base_addr, hard_addr) = baseline
            .as_ref()
            .map(|(p, h)| (p.1, h.1))
            .ok_or("no baseline")?;
        let file = &ctx.files[&k];
        // Unreported warm-up of both servers (connections, allocator, page faults).
        ctx.wrk(&format!("warmup-agent-{k}"), agent.addr, file, 64, 1)
            .await?;
        ctx.wrk(&format!("warmup-base-{k}"), base_addr, file, 64, 1)
            .await?;
        for &c in &params.connections {
            let before = ctx.emu_stats().await?;
            let a = ctx
                .wrk(&format!("hit-agent-{k}-{c}"), agent.addr, file, c, secs)
                .await?;
            let after = ctx.emu_stats().await?;
            let b = ctx
                .wrk(&format!("hit-base-{k}-{c}"), base_addr, file, c, secs)
                .await?;
            let hardened = if c == 64 {
                Some(
                    ctx.wrk(&format!("hit-hardened-{k}-{c}"), hard_addr, file, c, secs)
                        .await?,
                )
            } else {
                None
            };
            log(format!(
                "  {c} conns: agent {:.0} req/s p99 {}, baseline {:.0} req/s p99 {}",
                a.rps(),
                fmt_us(a.p99),
                b.rps(),
                fmt_us(b.p99)
            ));
            rows.push(HitRow {
                identities: k,
                conns: c,
                agent: a,
                base: b,
                hardened,
                calls: after.calls - before.calls,
            });
        }
        // A profiled run after the measured ones (BENCH_PERF), so perf's
        // cost never reaches the reported numbers.
        if let Some(profile) = crate::profile::start(agent.child.pid(), &format!("hit-{k}-64")) {
            let run = ctx
                .wrk(&format!("profile-agent-{k}"), agent.addr, file, 64, secs)
                .await;
            let finished = profile.finish();
            run?;
            if let Err(e) = finished {
                log(format!("  profile: {e}"));
            }
        }
        agent.child.stop();
    }
    Ok(rows)
}

/// Starts `baseline` (optionally `--hardened`) on the server CPUs.
async fn start_baseline(ctx: &Ctx, body_file: &Path, hardened: bool) -> R<(Child, SocketAddr)> {
    let port = free_ports(1)?[0];
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = Placement::command(ctx.placement.server_cpus.as_deref(), &ctx.baseline_bin);
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--body-file")
        .arg(body_file);
    if hardened {
        cmd.arg("--hardened");
    }
    let name = if hardened {
        "baseline-hardened"
    } else {
        "baseline"
    };
    let mut child = Child::spawn(cmd, name, &ctx.workdir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Conn::connect(addr).await.is_err() {
        if child.exited().is_some() || Instant::now() > deadline {
            return Err(format!("{name} did not start:\n{}", child.log_tail()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, addr))
}
