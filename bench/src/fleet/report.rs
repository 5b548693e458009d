//! The fleet simulation's Markdown: the run's parameters, the table of both
//! policies, the calls around the outage, and the targets.

use std::time::Duration;

use super::eksauth::Second;
use super::{Config, PolicyResult};
use crate::stats::thousands;

fn mean_per_s(r: &PolicyResult) -> f64 {
    let calls: u64 = r.seconds.iter().map(|s| u64::from(s.calls)).sum();
    calls as f64 / r.seconds.len().max(1) as f64
}

fn sum(seconds: &[Second], f: impl Fn(&Second) -> u32) -> u64 {
    seconds.iter().map(|s| u64::from(f(s))).sum()
}

fn slice(seconds: &[Second], from: i64, to: i64) -> &[Second] {
    let clamp = |x: i64| x.clamp(0, seconds.len() as i64) as usize;
    &seconds[clamp(from)..clamp(to)]
}

fn peak(seconds: &[Second]) -> u32 {
    seconds.iter().map(|s| s.calls).max().unwrap_or(0)
}

fn cell(seconds: &[Second]) -> String {
    let (calls, throttled) = (sum(seconds, |s| s.calls), sum(seconds, |s| s.throttled));
    if throttled > 0 {
        format!("{} ({} throttled)", thousands(calls), thousands(throttled))
    } else {
        thousands(calls)
    }
}

fn hours(d: Duration) -> String {
    format!("{:.0} h", d.as_secs_f64() / 3600.0)
}

/// Targets rows: (target, goal, measured, status).
pub type Target = (String, String, String, &'static str);

pub fn markdown(c: &Config, results: &[&PolicyResult], wall: Duration) -> String {
    let mut o = String::new();
    let mut line = |s: &str| {
        o.push_str(s);
        o.push('\n');
    };
    let quota = c.service.quota;
    line(&format!(
        "## 8. Fleet simulation ({} nodes × {} pods, {} simulated)",
        thousands(c.nodes as u64),
        c.pods_per_node,
        hours(c.duration)
    ));
    line("");
    line(&format!(
        "`fleet --seed {}` (deterministic workload and models; see `bench/README.md` for the model). One regional EKS Auth: quota **{quota} calls/s** (token bucket, burst {}), {} ms per call, credentials of {}; {}. Pods: {} % short jobs (2–30 min), the rest services (exponential, mean {}), 1–{} SDK clients each (botocore rules, refresh 5–15 min before expiry), tokens rotated at 80 % of {}. Both policies: retention {}, the node's SDK makes up to {} attempts per call (standard retry, retry quota). Measured after a {} warm-up. Wall time: {:.1} s for both policies on two threads ({}).",
        c.seed,
        c.service.burst,
        c.service.latency.as_millis(),
        hours(c.credential_lifetime),
        match c.outage {
            Some((at, len)) => format!(
                "regional outage (every call 503) at {} for {} min",
                hours(at),
                len.as_secs() / 60
            ),
            None => "no outage".into(),
        },
        (c.short_share * 100.0).round(),
        hours(c.service_mean),
        c.max_clients_per_pod,
        hours(c.token_lifetime),
        hours(c.retention),
        c.agent_attempts,
        hours(c.warmup),
        wall.as_secs_f64(),
        results
            .iter()
            .map(|r| format!("{}: {:.1} s", r.policy.label(), r.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    line("");
    line(
        "| policy | pods | EKS Auth calls | mean calls/s | busiest second | throttled (429) | failed in the outage (503) | credentials served stale | pods that could not get credentials (held one expired) | pod-minutes without credentials | SDK give-ups |",
    );
    line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let s = &r.stats;
        line(&format!(
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} ({}) | {} | {} |",
            r.policy.label(),
            thousands(s.pods),
            thousands(sum(&r.seconds, |s| s.calls)),
            mean_per_s(r),
            peak(&r.seconds),
            thousands(sum(&r.seconds, |s| s.throttled)),
            thousands(sum(&r.seconds, |s| s.unavailable)),
            thousands(s.stale),
            thousands(s.pods_without),
            thousands(s.pods_expired),
            thousands((s.seconds_without / 60.0).round() as u64),
            thousands(s.give_ups)
        ));
    }
    line("");
    line(
        "\"Served stale\": a 200 whose credential was fetched more than the retention ago (its renewal failed or was put off). \"Could not get credentials\": the SDK gave up on a first fetch, or a held credential expired before a refresh succeeded; the minutes run from then until served.",
    );
    line("");
    for r in results {
        if let Some(u) = &r.ours {
            line(&format!(
                "{}: {} requests, {} stale answers from the cache during failures, {} answers replayed from a backoff window, {} gate rate halvings, {} refused (queue full).",
                r.policy.label(),
                thousands(r.stats.requests),
                thousands(u.stale_served),
                thousands(u.backoff_replays),
                thousands(u.rate_halvings),
                thousands(u.queue_rejected)
            ));
        }
        if let Some(u) = &r.upstream {
            line(&format!(
                "{}: {} requests, {} renewals by the janitor ({} put off by its limiter, {} failed).",
                r.policy.label(),
                thousands(r.stats.requests),
                thousands(u.renewals),
                thousands(u.renewals_rate_limited),
                thousands(u.renewals_failed)
            ));
        }
    }
    line("");
    if let Some((at, len)) = c.outage {
        outage(&mut line, c, results, at, len);
    }
    if let [ours, upstream] = results
        && ours.ours.is_some()
        && upstream.upstream.is_some()
    {
        analysis(&mut line, c, ours, upstream);
    }
    o
}

fn wait_pct(r: &PolicyResult, p: f64) -> f64 {
    let mut waits = r.stats.after_recovery.clone();
    waits.sort_by(f64::total_cmp);
    let rank = ((p * waits.len() as f64).ceil() as usize).clamp(1, waits.len().max(1));
    waits.get(rank - 1).copied().unwrap_or(0.0)
}

/// What the numbers show, with the numbers of this run.
fn analysis(line: &mut impl FnMut(&str), c: &Config, ours: &PolicyResult, up: &PolicyResult) {
    let calls = |r: &PolicyResult| sum(&r.seconds, |s| s.calls);
    line("What the numbers show:");
    line("");
    line(&format!(
        "- **Calls.** This agent made {:.1}× fewer EKS Auth calls over the day ({} against {}): it renews a credential ahead once after the request it was fetched for and then only while it is read, while upstream renews every entry each {} until its credential or its token expires, dead pods' included.",
        calls(up) as f64 / calls(ours).max(1) as f64,
        thousands(calls(ours)),
        thousands(calls(up)),
        hours(c.retention)
    ));
    if let Some((at, len)) = c.outage {
        let (from, to) = (at.as_secs() as i64, (at + len).as_secs() as i64);
        let during = |r: &PolicyResult| sum(slice(&r.seconds, from, to), |s| s.calls);
        let (ours_after, up_after) = (
            slice(&ours.seconds, to, to + 600),
            slice(&up.seconds, to, to + 600),
        );
        line(&format!(
            "- **Outage and recovery.** During the outage it made {} calls against {}; in the 10 minutes after recovery its busiest second was {} calls ({} throttled) against upstream's {} ({} throttled): per-identity backoff windows end at jittered times, so waiting pods come back spread out, while upstream's clients and janitor all retry within seconds.",
            thousands(during(ours)),
            thousands(during(up)),
            peak(ours_after),
            thousands(sum(ours_after, |s| s.throttled)),
            peak(up_after),
            thousands(sum(up_after, |s| s.throttled))
        ));
        line(&format!(
            "- **The price: slower recovery for pods.** Clients without a credential at recovery waited p50 {:.1} s, max {:.1} s (upstream: p50 {:.1} s, max {:.1} s): a pod in a backoff window (up to 30 s, jittered ½–1) is answered the replayed 503 until the window ends, even after EKS Auth is back.",
            wait_pct(ours, 0.5),
            wait_pct(ours, 1.0),
            wait_pct(up, 0.5),
            wait_pct(up, 1.0)
        ));
        let (ran_out, up_ran_out) = (ours.stats.pods_expired, up.stats.pods_expired);
        line(&format!(
            "- **Credentials that ran out.** {} pods' held credentials expired before a refresh succeeded here, {} with upstream. {}",
            thousands(ran_out),
            thousands(up_ran_out),
            if ran_out == 0 {
                "SDKs ask about once per credential, 5–15 min before it expires (past the retention); the credential fetched for a pod's request is renewed ahead once, so at that ask during the outage the cache still holds one with hours left, as upstream's every-3-h renewal gives."
            } else {
                "SDKs ask about once per credential, 5–15 min before it expires; when that ask falls in the outage and the cache holds nothing fresher, stale-on-error hands back the same credential, which then runs out."
            }
        ));
    }
    line("");
}

fn outage(
    line: &mut impl FnMut(&str),
    c: &Config,
    results: &[&PolicyResult],
    at: Duration,
    len: Duration,
) {
    let (at, end) = (at.as_secs() as i64, (at + len).as_secs() as i64);
    line("EKS Auth calls per minute around the outage (minute 0 = outage start):");
    line("");
    let mut head = "| minute |".to_string();
    let mut sep = "|---:|".to_string();
    for r in results {
        head.push_str(&format!(" {} |", r.policy.label()));
        sep.push_str("---:|");
    }
    line(&head);
    line(&sep);
    let minutes = len.as_secs() as i64 / 60;
    for m in -2..minutes + 10 {
        let mut row = format!("| {m}{} |", if m == minutes { " (recovery)" } else { "" });
        for r in results {
            row.push_str(&format!(
                " {} |",
                cell(slice(&r.seconds, at + 60 * m, at + 60 * (m + 1)))
            ));
        }
        line(&row);
    }
    line("");
    line("After recovery: calls per second for 30 s, then per 10 s to two minutes:");
    line("");
    line("```");
    for r in results {
        let seconds: Vec<String> = slice(&r.seconds, end, end + 30)
            .iter()
            .map(|s| s.calls.to_string())
            .collect();
        let tens: Vec<String> = (3..12)
            .map(|k| {
                sum(slice(&r.seconds, end + 10 * k, end + 10 * (k + 1)), |s| {
                    s.calls
                })
                .to_string()
            })
            .collect();
        line(&format!(
            "{} (per s):    {}",
            r.policy.label(),
            seconds.join(" ")
        ));
        line(&format!(
            "{} (per 10 s): {}",
            r.policy.label(),
            tens.join(" ")
        ));
    }
    line("```");
    line("");
    for r in results {
        let after = slice(&r.seconds, end, end + 600);
        let mut waits = r.stats.after_recovery.clone();
        waits.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let rank = ((p * waits.len() as f64).ceil() as usize).clamp(1, waits.len().max(1));
            waits.get(rank - 1).copied().unwrap_or(0.0)
        };
        line(&format!(
            "{}: busiest second in the 10 min after recovery {} calls ({:.2}× the quota), {} throttled in them; {} clients were without a credential at recovery, served after p50 {:.1} s, p99 {:.1} s, max {:.1} s.",
            r.policy.label(),
            peak(after),
            f64::from(peak(after)) / c.service.quota,
            thousands(sum(after, |s| s.throttled)),
            thousands(waits.len() as u64),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        ));
    }
    line("");
}

/// The fleet's rows of the targets table.
pub fn targets(c: &Config, ours: &PolicyResult, wall: Duration) -> Vec<Target> {
    let mut t = Vec::new();
    if let Some((at, len)) = c.outage {
        let end = (at + len).as_secs() as i64;
        let after = slice(&ours.seconds, end, end + 600);
        let (p, throttled) = (peak(after), sum(after, |s| s.throttled));
        t.push((
            "Fleet: recovery from the outage without a thundering herd (this agent)".into(),
            "no call throttled in the 10 min after recovery".into(),
            format!(
                "{throttled} throttled; busiest second {p} calls ({:.2}× the {}/s quota)",
                f64::from(p) / c.service.quota,
                c.service.quota
            ),
            if throttled == 0 { "met" } else { "**missed**" },
        ));
    }
    t.push((
        format!(
            "Fleet simulation wall time ({} nodes × {} pods, {})",
            c.nodes,
            c.pods_per_node,
            hours(c.duration)
        ),
        "< 60 s on 2 cores".into(),
        format!("{:.1} s", wall.as_secs_f64()),
        if wall < Duration::from_secs(60) {
            "met"
        } else {
            "**missed**"
        },
    ));
    t
}
