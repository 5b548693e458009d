//! Memory: VmRSS of the agent idle, and with 1,000 and 10,000 cached
//! identities (unverified and verified mode).

use std::time::Duration;

use crate::R;
use crate::ctx::{Ctx, log, warm};
use crate::stats::mib;

pub struct Params {
    /// Cumulative identity counts at which RSS is read, ascending.
    pub points: Vec<usize>,
}

pub struct Memory {
    pub params: Params,
    /// Unverified, then verified mode.
    pub rows: Vec<MemoryRow>,
}

pub struct MemoryRow {
    pub mode: &'static str,
    pub idle_kib: u64,
    pub points: Vec<(usize, u64)>,
    pub hwm_kib: u64,
}

pub async fn run(ctx: &Ctx, params: Params) -> R<Memory> {
    let mut rows = Vec::new();
    let emu = ctx.emu_url.clone();
    let modes: [(&'static str, Vec<&str>); 2] = [
        ("unverified tokens (default)", vec![]),
        (
            "verified tokens (`--jwks-source`)",
            vec!["--jwks-source", emu.as_str()],
        ),
    ];
    for (mode, flags) in modes {
        log(format!("memory: {mode}"));
        let agent = ctx.agent("memory", &flags).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (idle, _) = agent.child.rss_kib().ok_or("cannot read the agent's RSS")?;
        let mut points = Vec::new();
        let mut done = 0;
        for &p in &params.points {
            warm(agent.addr, ctx.pods.clone(), done..p, 16).await?;
            done = p;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (rss, _) = agent.child.rss_kib().ok_or("cannot read the agent's RSS")?;
            points.push((p, rss));
        }
        let (_, hwm) = agent.child.rss_kib().ok_or("cannot read the agent's RSS")?;
        log(format!(
            "  idle {}, {}",
            mib(idle),
            points
                .iter()
                .map(|(p, r)| format!("{p}: {}", mib(*r)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        rows.push(MemoryRow {
            mode,
            idle_kib: idle,
            points,
            hwm_kib: hwm,
        });
        agent.child.stop();
    }
    Ok(Memory { params, rows })
}
