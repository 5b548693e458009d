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

pub(super) fn throttle(line: &mut impl FnMut(&str), t: &Throttle, targets: &mut Vec<Target>) {
    let p = &t.params;
    line("## 6. Throttling EKS Auth, new identities");
    line("");
    line(&format!(
        "A fresh agent with default protection (`--eks-auth-rate-limit 20`, burst 40, SDK max attempts 3); the emulator answers `ThrottlingException` (429) above **R = {} calls/s** (token bucket, burst R); {} new identities arrive evenly over {} s. {CLIENT} {} ms later, until served (deadline {} s). \"EKS Auth calls\" are the attempts the emulator saw, including the agent's own SDK retries; \"served\" is an identity's first 200.",
        p.rate,
        thousands(p.identities as u64),
        p.arrival_secs,
        p.app_pause.as_millis(),
        p.deadline.as_secs()
    ));
    line("");
    line(
        "| EKS Auth calls | per identity | throttled (429) | successes | identities served | all served after | wait p50 / p99 / max | client attempts | SDK give-ups (identities) |",
    );
    line("|---:|---:|---:|---:|---:|---:|---|---|---:|");
    line(&format!(
        "| {} | {:.2} | {} | {} | {} / {} | {} | {} / {} / {} | {} | {} ({}) |",
        thousands(t.calls),
        t.calls_per_identity(),
        thousands(t.throttled),
        thousands(t.successes),
        thousands(t.served as u64),
        thousands(p.identities as u64),
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
    line("");
    line(&format!("Agent: {}.", agent(&t.agent)));
    line("");
    line("EKS Auth attempts per second (`calls` or `calls/throttled`), second 0 = first arrival:");
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
    targets.push((
        format!(
            "Throttle (R = {}/s, {} new identities): EKS Auth calls per identity",
            p.rate, p.identities
        ),
        "≤ 1.5 (every retry included)".into(),
        format!(
            "{:.2} ({} calls)",
            t.calls_per_identity(),
            thousands(t.calls)
        ),
        met(t.calls_per_identity() <= 1.5),
    ));
    targets.push((
        "Throttle: time until every identity is served".into(),
        format!(
            "reported (floor: {} identities / R = {:.0} s)",
            p.identities,
            p.identities as f64 / p.rate
        ),
        t.all_served
            .map(fmt_dur)
            .unwrap_or_else(|| format!("{} of {} served", t.served, p.identities)),
        "info",
    ));
    targets.push((
        "Throttle: 429 / 5xx seen by clients".into(),
        "reported".into(),
        format!(
            "{} / {} of {} attempts",
            thousands(t.seen.throttled),
            thousands(t.seen.server_error),
            thousands(t.seen.total())
        ),
        "info",
    ));
}

pub(super) fn outage_new_pods(
    line: &mut impl FnMut(&str),
    o: &OutageNewPods,
    targets: &mut Vec<Target>,
) {
    let p = &o.params;
    line("## 7. EKS Auth outage while new pods arrive");
    line("");
    line(&format!(
        "A fresh agent with default protection; the emulator answers `ServiceUnavailableException` (503) for {} s while {} new pods/s arrive ({} identities), then recovers. {CLIENT} {} ms later, until served (clients stop {} s after recovery). \"Needed a call\": identities that asked before recovery and were not served before it.",
        p.outage_secs,
        p.pods_per_sec,
        thousands(o.identities as u64),
        p.app_pause.as_millis(),
        p.after_secs
    ));
    line("");
    line("| window | EKS Auth calls | per identity that needed one | client attempts | agent |");
    line("|---|---:|---:|---|---|");
    line(&format!(
        "| outage ({:.1} s) | {} | {:.2} ({} identities) | {} | {} |",
        o.recovered_at.as_secs_f64(),
        thousands(o.calls_during),
        o.calls_per_needed(),
        thousands(o.needed as u64),
        seen(&o.seen_during),
        agent(&o.agent_during)
    ));
    line(&format!(
        "| after recovery | {} | | {} | {} |",
        thousands(o.calls_after),
        seen(&o.seen_after),
        agent(&o.agent_after)
    ));
    line("");
    let (peak_s, peak) = o.curve.peak(o.recovery_second, o.curve.seconds.len());
    line(&format!(
        "After recovery: {} of {} identities served, {} within 10 s; wait from recovery p50 {}, p99 {}, max {}. Busiest second after recovery: {} calls (second {}).",
        thousands(o.served as u64),
        thousands(o.needed as u64),
        thousands(o.within_10s as u64),
        fmt_dur(o.after_p50),
        fmt_dur(o.after_p99),
        fmt_dur(o.after_max),
        peak,
        peak_s
    ));
    line("");
    line(&format!(
        "EKS Auth attempts per second (`calls` or `calls/failed`), second 0 = outage start, recovery in second {}:",
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
    let cap = 20 + 40;
    targets.push((
        "Outage: no synchronized burst at recovery".into(),
        format!("busiest second ≤ {cap} (gate cap + burst)"),
        format!("{peak} calls (second {peak_s})"),
        met(peak <= cap),
    ));
}
