//! Upstream outage: EKS Auth answers ServiceUnavailableException for a
//! window while credentials pass their retention: share of requests that
//! still got 200 with valid (unexpired) credentials, per window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::R;
use crate::client::Conn;
use crate::ctx::{Ctx, log, warm};

pub struct Params {
    pub identities: usize,
    pub connections: usize,
    /// Seconds of load.
    pub duration: u64,
    /// Second of the load at which EKS Auth starts failing.
    pub start: u64,
    /// Second of the load at which EKS Auth recovers.
    pub end: u64,
}

pub struct Outage {
    pub params: Params,
    /// When the fault was set and cleared, and the load's length, measured.
    pub start: Duration,
    pub end: Duration,
    pub total: Duration,
    pub windows: Vec<OutageWindow>,
}

pub struct OutageWindow {
    pub label: &'static str,
    pub requests: u64,
    pub valid: u64,
    /// Count per HTTP status; 0 stands for a connection error.
    pub statuses: Vec<(u16, u64)>,
    pub calls: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireCreds {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
}

/// Expiration (epoch s) of a well-formed credential body.
fn credential_expiry(body: &[u8]) -> Option<i64> {
    let c: WireCreds = serde_json::from_slice(body).ok()?;
    if !c.access_key_id.starts_with("ASIA") || c.secret_access_key.is_empty() || c.token.is_empty()
    {
        return None;
    }
    aws_smithy_types::DateTime::from_str(
        &c.expiration,
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()
    .map(|d| d.secs())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub async fn run(ctx: &Ctx, params: Params) -> R<Outage> {
    let n = params.identities;
    log(format!(
        "upstream outage: {n} identities, {} s load, EKS Auth failing from {} s to {} s",
        params.duration, params.start, params.end
    ));
    let agent = ctx
        .agent(
            "outage",
            &[
                "--max-credential-retention-before-renewal",
                "10s",
                "--eks-auth-max-attempts",
                "1",
            ],
        )
        .await?;
    warm(agent.addr, ctx.pods.clone(), 0..n, 16).await?;
    let tokens: Arc<Vec<String>> = Arc::new(ctx.pods[..n].to_vec());
    let start = Instant::now();
    let end = start + Duration::from_secs(params.duration);
    let s0 = ctx.emu_stats().await?;
    let mut tasks = Vec::new();
    for j in 0..params.connections {
        let tokens = tokens.clone();
        let addr = agent.addr;
        let conns = params.connections;
        tasks.push(tokio::spawn(async move {
            let mut samples: Vec<(Duration, u16, bool)> = Vec::new();
            let mut expiries: HashMap<Vec<u8>, Option<i64>> = HashMap::new();
            let mut conn: Option<Conn> = None;
            let mut i = j;
            while Instant::now() < end {
                let sent = start.elapsed();
                if conn.as_ref().is_none_or(|c| c.closed()) {
                    conn = Conn::connect(addr).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    samples.push((sent, 0, false));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                match c.credentials(&tokens[i % tokens.len()]).await {
                    Ok(r) => {
                        let valid = r.status == 200 && {
                            let exp = *expiries
                                .entry(r.body.clone())
                                .or_insert_with(|| credential_expiry(&r.body));
                            exp.is_some_and(|e| e > now_secs())
                        };
                        samples.push((sent, r.status, valid));
                    }
                    Err(_) => {
                        samples.push((sent, 0, false));
                        conn = None;
                    }
                }
                i += conns;
            }
            samples
        }));
    }
    // The fault timeline.
    tokio::time::sleep_until((start + Duration::from_secs(params.start)).into()).await;
    let s_on = ctx.emu_stats().await?;
    ctx.emu_faults("{\"force_error\":\"ServiceUnavailableException\"}")
        .await?;
    let t_on = start.elapsed();
    tokio::time::sleep_until((start + Duration::from_secs(params.end)).into()).await;
    let s_off = ctx.emu_stats().await?;
    let reset = ctx.emu_faults("{}").await;
    let t_off = start.elapsed();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    reset?;
    let total = start.elapsed();
    let s_end = ctx.emu_stats().await?;
    agent.child.stop();

    let windows_spec: [(&'static str, Duration, Duration, u64); 3] = [
        ("before", Duration::ZERO, t_on, s_on.calls - s0.calls),
        ("during outage", t_on, t_off, s_off.calls - s_on.calls),
        ("after", t_off, total, s_end.calls - s_off.calls),
    ];
    let windows = windows_spec
        .into_iter()
        .map(|(label, from, to, calls)| {
            let mut statuses: HashMap<u16, u64> = HashMap::new();
            let (mut requests, mut valid) = (0, 0);
            for (t, status, ok) in samples.iter().filter(|(t, _, _)| *t >= from && *t < to) {
                let _ = t;
                requests += 1;
                valid += u64::from(*ok);
                *statuses.entry(*status).or_default() += 1;
            }
            let mut statuses: Vec<_> = statuses.into_iter().collect();
            statuses.sort();
            OutageWindow {
                label,
                requests,
                valid,
                statuses,
                calls,
            }
        })
        .collect::<Vec<_>>();
    for w in &windows {
        log(format!(
            "  {}: {} requests, {:.2} % valid, {} EKS Auth calls",
            w.label,
            w.requests,
            100.0 * w.valid as f64 / w.requests.max(1) as f64,
            w.calls
        ));
    }
    Ok(Outage {
        params,
        start: t_on,
        end: t_off,
        total,
        windows,
    })
}
