//! The report's EKS Auth protection part: the throttling and outage
//! scenarios with new pods, and the fleet simulation's own Markdown, between
//! markers so that `bench/run --protect` can replace just this part of
//! `RESULTS.md`.

use super::{Target, met};
use crate::scenario::curve::AgentCounts;
use crate::scenario::outage_new_pods::OutageNewPods;
use crate::scenario::throttle::Throttle;
use crate::sdk::SeenCounts;
use crate::stats::{fmt_dur, thousands};

pub const BEGIN: &str = "<!-- protect:begin -->";

/// The agent's default EKS Auth gate (rate, burst), read from its own
/// command-line parser so the report never repeats a stale copy.
fn default_gate() -> (f64, u32) {
    use clap::Parser;
    use pod_identity_agent::cli::{Cli, Command};
    let argv = ["eks-pod-identity-agent", "server", "--cluster-name", "x"];
    match Cli::try_parse_from(argv).map(|c| c.command) {
        Ok(Command::Server(s)) => (s.eks_auth_rate_limit, s.eks_auth_rate_burst),
        _ => unreachable!("`server --cluster-name x` parses"),
    }
}
pub const END: &str = "<!-- protect:end -->";

/// `existing` with its protect part replaced by `region` (which carries the
/// markers), or `region` appended when there is none.
pub fn merge(existing: &str, region: &str) -> String {
    match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &existing[..b],
            region.trim_end(),
            &existing[e + END.len()..]
        ),
        _ => format!("{}\n{}\n", existing.trim_end(), region.trim_end()),
    }
}

fn seen(s: &SeenCounts) -> String {
    let mut parts = vec![format!("200: {}", thousands(s.ok))];
    for (label, n) in [
        ("429", s.throttled),
        ("5xx", s.server_error),
        ("other", s.other),
        ("timeout", s.timeouts),
        ("conn error", s.connect_errors),
    ] {
        if n > 0 {
            parts.push(format!("{label}: {}", thousands(n)));
        }
    }
    parts.join(", ")
}

fn agent(a: &AgentCounts) -> String {
    format!(
        "{} calls made, {} answered from a backoff window, {} rate halvings, {} refused (queue full)",
        thousands(a.calls),
        thousands(a.avoided),
        a.rate_decreases,
        thousands(a.queue_rejected)
    )
}

const CLIENT: &str = "Clients: botocore's container provider rules (3 attempts over a keep-alive connection, 2 s timeout each, 1 s sleep after each failure); when the SDK gives up, the application asks it again";

fn attempts(t: &Throttle) -> String {
    match t.params.max_attempts {
        None => "default (3)".into(),
        Some(a) => format!("`--eks-auth-max-attempts {a}`"),
    }
}

/// The runs of the judged configuration (the first one's), in order.
fn judged(runs: &[Throttle]) -> Vec<&Throttle> {
    runs.iter()
        .filter(|r| r.params.max_attempts == runs[0].params.max_attempts)
        .collect()
}

/// `runs` is not empty; the runs with the first one's configuration are
/// judged (their median), the others are what-ifs.
pub(super) fn throttle(line: &mut impl FnMut(&str), runs: &[Throttle], targets: &mut Vec<Target>) {
    let t = &runs[0];
    let p = &t.params;
    line("## 6. Throttling EKS Auth, new identities");
    line("");
    line(&format!(
        "A fresh agent with default protection (`--eks-auth-rate-limit {}`, burst {}); the emulator answers `ThrottlingException` (429) above **R = {} calls/s** (token bucket, burst R); {} new identities arrive evenly over {} s. {CLIENT} {} ms later, until served (deadline {} s). \"EKS Auth calls\" are the attempts the emulator saw, including the agent's own SDK retries; \"served\" is an identity's first 200; \"all served after\" runs from the first arrival to the last identity's first 200. The agent's default SDK attempts run several times (their calls per identity vary from run to run; the median is judged); further rows are what-ifs with other `--eks-auth-max-attempts`.",
        default_gate().0,
        default_gate().1,
        p.rate,
        thousands(p.identities as u64),
        p.arrival_secs,
        p.app_pause.as_millis(),
        p.deadline.as_secs()
    ));
    line("");
    line(
        "| agent SDK attempts | EKS Auth calls | per identity | throttled (429) | successes | identities served | all served after | wait p50 / p99 / max | client attempts | SDK give-ups (identities) |",
    );
    line("|---|---:|---:|---:|---:|---:|---:|---|---|---:|");
    for t in runs {
        line(&format!(
            "| {} | {} | {:.3} | {} | {} | {} / {} | {} | {} / {} / {} | {} | {} ({}) |",
            attempts(t),
            thousands(t.calls),
            t.calls_per_identity(),
            thousands(t.throttled),
            thousands(t.successes),
            thousands(t.served as u64),
            thousands(t.params.identities as u64),
            t.all_served
                .map(fmt_dur)
                .unwrap_or_else(|| "not all".into()),
            fmt_dur(t.wait_p50),
            fmt_dur(t.wait_p99),
            fmt_dur(t.wait_max),
            seen(&t.seen),
            thousands(t.give_ups),
            thousands(t.identities_with_give_up as u64)
        ));
    }
    line("");
    let firsts: Vec<&Throttle> = runs
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            runs[..*i]
                .iter()
                .all(|o| o.params.max_attempts != r.params.max_attempts)
        })
        .map(|(_, r)| r)
        .collect();
    for t in &firsts {
        line(&format!(
            "Agent, SDK attempts {} (its first run): {}.",
            attempts(t),
            agent(&t.agent)
        ));
        line("");
    }
    for t in &firsts {
        line(&format!(
            "EKS Auth attempts per second, SDK attempts {} (`calls` or `calls/throttled`), second 0 = first arrival (its first run):",
            attempts(t)
        ));
        line("");
        line("```");
        let end = t
            .all_served
            .map_or(t.curve.seconds.len(), |d| d.as_secs() as usize + 2);
        for row in t.curve.rows(0, end) {
            line(&row);
        }
        line("```");
        line("");
    }
    let mut judged = judged(runs);
    judged.sort_by(|a, b| a.calls_per_identity().total_cmp(&b.calls_per_identity()));
    let median = judged[judged.len() / 2];
    let (low, high) = (judged[0], judged[judged.len() - 1]);
    if let Some(one) = runs.iter().find(|r| r.params.max_attempts == Some(1))
        && t.params.max_attempts.is_none()
    {
        let t = median;
        let retries = t.calls.saturating_sub(t.agent.calls);
        let sdk = if retries > 0 {
            format!(
                "{} of the {} calls ({:.2} per identity) were the agent's own SDK retries, which go out past the node-wide gate",
                thousands(retries),
                thousands(t.calls),
                retries as f64 / p.identities.max(1) as f64,
            )
        } else {
            format!(
                "all {} calls ({:.3} per identity) were the agent's own, each through the node-wide gate: the SDK retries transient failures but never a throttled attempt (that retry would go out 0–1 s later past the gate, into the same empty bucket)",
                thousands(t.calls),
                t.calls_per_identity(),
            )
        };
        line(&format!(
            "What the numbers show: with the default SDK attempts (median run), {sdk}. With `--eks-auth-max-attempts 1` (no SDK retries at all): {} calls ({:.3} per identity), {} throttled, every identity served after {} (floor: (N − R) / R = {:.0} s, the emulator's bucket starting full). Clients mostly saw timeouts, not 429s: a miss waits in the gate's queue longer than botocore's 2 s.",
            thousands(one.calls),
            one.calls_per_identity(),
            thousands(one.throttled),
            one.all_served.map(fmt_dur).unwrap_or_else(|| "—".into()),
            floor(p)
        ));
        line("");
    }
    targets.push((
        format!(
            "Throttle (R = {}/s, {} new identities): EKS Auth calls per identity",
            p.rate, p.identities
        ),
        "≤ 1.5 (every retry included), median of the runs".into(),
        format!(
            "{:.3} ({} calls); {} runs: {:.3}–{:.3}",
            median.calls_per_identity(),
            thousands(median.calls),
            judged.len(),
            low.calls_per_identity(),
            high.calls_per_identity()
        ),
        met(median.calls_per_identity() <= 1.5),
    ));
    targets.push((
        "Throttle: time until every identity is served".into(),
        format!("reported (floor: (N − R) / R = {:.0} s)", floor(p)),
        median
            .all_served
            .map(fmt_dur)
            .unwrap_or_else(|| format!("{} of {} served", median.served, p.identities)),
        "info",
    ));
    targets.push((
        "Throttle: 429 / 5xx seen by clients".into(),
        "reported (median run)".into(),
        format!(
            "{} / {} of {} attempts",
            thousands(median.seen.throttled),
            thousands(median.seen.server_error),
            thousands(median.seen.total())
        ),
        "info",
    ));
}

/// The least time N identities need at R calls/s from a full bucket of R.
fn floor(p: &crate::scenario::throttle::Params) -> f64 {
    (p.identities as f64 - p.rate).max(0.0) / p.rate
}

fn gate(o: &OutageNewPods) -> String {
    match o.params.rate_limit {
        None => {
            let (rate, burst) = default_gate();
            format!("default ({rate}/s, burst {burst})")
        }
        Some(r) => format!("`--eks-auth-rate-limit {r}` (burst {})", r.ceil()),
    }
}

/// `runs` is not empty; the first is judged, the others are what-ifs.
pub(super) fn outage_new_pods(
    line: &mut impl FnMut(&str),
    runs: &[OutageNewPods],
    targets: &mut Vec<Target>,
) {
    let o = &runs[0];
    let p = &o.params;
    line("## 7. EKS Auth outage while new pods arrive");
    line("");
    line(&format!(
        "A fresh agent; the emulator answers `ServiceUnavailableException` (503) for {} s while {} new pods/s arrive ({} identities), then recovers. {CLIENT} {} ms later, until served (clients stop {} s after recovery). \"Needed a call\": identities that asked before recovery and were not served before it. The first row is the agent's default gate (judged); further rows rerun the scenario with a higher gate cap, to show what recovering in 10 s would take.",
        p.outage_secs,
        p.pods_per_sec,
        thousands(o.identities as u64),
        p.app_pause.as_millis(),
        p.after_secs
    ));
    line("");
    line(
        "| node-wide gate | EKS Auth calls during the outage | per identity that needed one | calls after recovery | served within 10 s of recovery | wait from recovery p50 / p99 / max | busiest second after recovery | client attempts (outage; after) |",
    );
    line("|---|---:|---:|---:|---:|---|---:|---|");
    for o in runs {
        let (peak_s, peak) = o.curve.peak(o.recovery_second, o.curve.seconds.len());
        line(&format!(
            "| {} | {} | {:.2} ({} identities) | {} | {} / {} | {} / {} / {} | {} (second {}) | {}; {} |",
            gate(o),
            thousands(o.calls_during),
            o.calls_per_needed(),
            thousands(o.needed as u64),
            thousands(o.calls_after),
            thousands(o.within_10s as u64),
            thousands(o.needed as u64),
            fmt_dur(o.after_p50),
            fmt_dur(o.after_p99),
            fmt_dur(o.after_max),
            peak,
            peak_s,
            seen(&o.seen_during),
            seen(&o.seen_after)
        ));
    }
    line("");
    for o in runs {
        line(&format!(
            "Agent, gate {}: during the outage {}; after recovery {}.",
            gate(o),
            agent(&o.agent_during),
            agent(&o.agent_after)
        ));
        line("");
    }
    for o in runs {
        line(&format!(
            "EKS Auth attempts per second, gate {} (`calls` or `calls/failed`), second 0 = outage start, recovery in second {}:",
            gate(o),
            o.recovery_second
        ));
        line("");
        line("```");
        let last_busy = o
            .curve
            .seconds
            .iter()
            .rposition(|c| c.calls > 0)
            .map_or(0, |i| i + 2);
        for row in o.curve.rows(0, last_busy) {
            line(&row);
        }
        line("```");
        line("");
    }
    if let Some(high) = runs.get(1) {
        line(&format!(
            "What the numbers show: calls during the outage stayed low because of the gate, which lets at most {} calls/s through (plus the agent's SDK retries while its retry quota lasts) however many identities wait; the per-identity backoff alone allows one call per window (about 1, 2, 4, 8, 16 s, then every 15–30 s), which is what the second row shows: {:.2} calls per identity. The same gate makes recovery take identities / cap = {} s; with the cap at {} calls/s, {} of {} identities were served within 10 s and the last after {}: the rest of the wait is the backoff window each identity still had open at recovery (up to 30 s), during which it is answered the replayed 503.",
            p.rate_limit.unwrap_or(default_gate().0),
            high.calls_per_needed(),
            (o.needed as f64 / p.rate_limit.unwrap_or(default_gate().0)).round(),
            high.params.rate_limit.unwrap_or(default_gate().0),
            thousands(high.within_10s as u64),
            thousands(high.needed as u64),
            fmt_dur(high.after_max)
        ));
        line("");
    }
    let (peak_s, peak) = o.curve.peak(o.recovery_second, o.curve.seconds.len());
    targets.push((
        format!(
            "Outage ({} s, {} new pods/s): EKS Auth calls during the outage",
            p.outage_secs, p.pods_per_sec
        ),
        "≤ 2× identities that needed one".into(),
        format!(
            "{:.2}× ({} calls, {} identities)",
            o.calls_per_needed(),
            thousands(o.calls_during),
            thousands(o.needed as u64)
        ),
        met(o.calls_per_needed() <= 2.0),
    ));
    targets.push((
        "Outage: every identity served within 10 s of recovery".into(),
        "all within 10 s".into(),
        format!(
            "{} of {} (last after {})",
            thousands(o.within_10s as u64),
            thousands(o.needed as u64),
            fmt_dur(o.after_max)
        ),
        met(o.within_10s == o.needed),
    ));
    // The gate's cap plus its burst bounds any one second.
    let cap = p.rate_limit.map_or_else(
        || {
            let (rate, burst) = default_gate();
            rate.ceil() as u64 + u64::from(burst)
        },
        |r| 2 * r.ceil() as u64,
    );
    targets.push((
        "Outage: no synchronized burst at recovery".into(),
        format!("busiest second ≤ {cap} (gate cap + burst)"),
        format!("{peak} calls (second {peak_s})"),
        met(peak <= cap),
    ));
}
