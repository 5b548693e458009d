//! The Markdown report: the run's header (date, commit, machine, CPU
//! placement), one section per scenario that ran (`sections`), the medians
//! of the criterion micro-benchmarks when `--criterion-dir` is given, and
//! the targets, each reported as a ratio with "met" or "missed"; then the
//! EKS Auth protection part (`protect`), which `bench/run --protect` can
//! replace on its own.

mod goals;
pub mod protect;
mod sections;

use std::path::{Path, PathBuf};

use crate::ctx::{Ctx, online_cpus};
use crate::scenario::hit::HitRow;
use crate::scenario::memory::Memory;
use crate::scenario::outage::Outage;
use crate::scenario::outage_new_pods::OutageNewPods;
use crate::scenario::rotation::Rotation;
use crate::scenario::storm::Storm;
use crate::scenario::throttle::Throttle;
use crate::stats::fmt_ns;

/// Results of the scenarios that ran.
#[derive(Default)]
pub struct Report {
    pub hit: Vec<HitRow>,
    pub storm: Vec<Storm>,
    pub rotation: Option<Rotation>,
    pub memory: Option<Memory>,
    pub outage: Option<Outage>,
    /// The first run is judged; the others ran with other agent SDK attempts.
    pub throttle: Vec<Throttle>,
    /// The first run is judged; the others ran with another gate cap.
    pub outage_new_pods: Vec<OutageNewPods>,
    /// The fleet simulation's Markdown (`fleet --markdown`).
    pub fleet: Option<String>,
    /// Runs 2 and later of the judged configurations (`--runs`).
    pub repeats: Vec<Report>,
}

impl Report {
    fn has_protect(&self) -> bool {
        !self.throttle.is_empty() || !self.outage_new_pods.is_empty() || self.fleet.is_some()
    }
}

/// What the report says about the run itself.
pub struct RunInfo {
    pub date: String,
    pub commit: String,
    pub quick: bool,
    /// Only the protection part ran (`bench/run --protect`).
    pub protect_only: bool,
    /// Seconds per measured wrk run.
    pub duration: u64,
    /// `target/criterion`, when the micro-benchmarks ran.
    pub criterion_dir: Option<PathBuf>,
}

/// A row of the targets table: target, goal, measured, status.
type Target = (String, String, String, &'static str);

const CRITERION: &[(&str, &str)] = &[
    (
        "admission/verified_cold",
        "Token admission, RS256 signature verified (verified-token memo miss)",
    ),
    (
        "admission/verified_cached",
        "Token admission, verified-token memo hit (same token again)",
    ),
    (
        "admission/unverified_cold",
        "Token admission without keys: SHA-256, JWT parse, claim checks (memo miss)",
    ),
    (
        "admission/rsa2048_verify_bare",
        "Bare RSA-2048 PKCS#1 v1.5 SHA-256 verify, same library (the floor of a verified admission)",
    ),
    (
        "token_hash/sha256",
        "`TokenHash::of` on a real token (once per distinct token, at admission)",
    ),
    (
        "cache/hit_1_key",
        "`CredentialCache::get` hit, one warm key",
    ),
    (
        "cache/hit_10000_keys",
        "`CredentialCache::get` hit, rotating over 10,000 warm keys",
    ),
];

fn criterion_median_ns(dir: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(id).join("new").join("estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| format!(", {:.0} GiB RAM", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} cores (`nproc`), {model}{mem}, Linux {}",
        online_cpus(),
        kernel.trim()
    )
}

fn placement(ctx: &Ctx) -> String {
    match (&ctx.placement.server_cpus, &ctx.placement.load_cpus) {
        (Some(s), Some(l)) => format!(
            "server under test (agent or baseline) pinned to CPU {s}; wrk, the Rust load client and the emulator pinned to CPU {l}"
        ),
        _ => "no CPU pinning (server and load generator share all cores)".into(),
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

pub fn render(ctx: &Ctx, run: &RunInfo, r: &Report) -> String {
    let mut o = render_main(ctx, run, r);
    if r.has_protect() {
        o.push_str(&render_protect(ctx, run, r));
    }
    o
}

/// The protect part alone, between its markers: its own run line and
/// targets, so it can be merged into an existing `RESULTS.md`.
pub fn render_protect(ctx: &Ctx, run: &RunInfo, r: &Report) -> String {
    let mut o = String::new();
    let mut line = |s: &str| {
        o.push_str(s);
        o.push('\n');
    };
    line(protect::BEGIN);
    line("");
    line("# Protecting EKS Auth");
    line("");
    line(&format!(
        "Run of {} {}, commit `{}`, {}; {}; release builds; loopback; the fleet simulation runs in-process on two threads before the scenarios. See `bench/README.md` (scenarios 6–8).",
        match (run.protect_only, run.quick) {
            (true, true) => "`bench/run --quick --protect`",
            (true, false) => "`bench/run --protect`",
            (false, true) => "`bench/run --quick`",
            (false, false) => "`bench/run`",
        },
        run.date,
        run.commit,
        machine(),
        placement(ctx)
    ));
    line("");
    let mut targets: Vec<Target> = Vec::new();
    if !r.throttle.is_empty() {
        protect::throttle(&mut line, &r.throttle, &mut targets);
    }
    if !r.outage_new_pods.is_empty() {
        protect::outage_new_pods(&mut line, &r.outage_new_pods, &mut targets);
    }
    if let Some(fleet) = &r.fleet {
        for l in fleet.lines() {
            line(l);
        }
        line("");
    }
    if !targets.is_empty() {
        line("## Targets (EKS Auth protection, scenarios 6 and 7)");
        line("");
        line("| target | goal | measured | status |");
        line("|---|---|---|---|");
        for (t, goal, m, status) in &targets {
            line(&format!("| {t} | {goal} | {m} | {status} |"));
        }
        line("");
    }
    line(protect::END);
    o
}

fn render_main(ctx: &Ctx, run: &RunInfo, r: &Report) -> String {
    let mut o = String::new();
    let mut line = |s: &str| {
        o.push_str(s);
        o.push('\n');
    };
    line("# Benchmark results");
    line("");
    line(
        "Latest run of `bench/run`; see `bench/README.md` for what each scenario measures and how.",
    );
    line("Numbers are measurements, not assertions; targets are goals reported as ratios.");
    line("");
    line(&format!("- Date: {}", run.date));
    line(&format!("- Commit: `{}`", run.commit));
    line(&format!("- Machine: {}", machine()));
    let placement = placement(ctx);
    line(&format!(
        "- Mode: {} ({} s per wrk run, `wrk -t{}`); {placement}; release builds; loopback",
        if run.quick { "quick" } else { "full" },
        run.duration,
        ctx.wrk_threads
    ));
    line("");

    let mut targets: Vec<Target> = Vec::new();
    if !r.hit.is_empty() {
        sections::hit(&mut line, &r.hit, &mut targets);
    }
    if !r.storm.is_empty() {
        sections::storm(&mut line, &r.storm, &mut targets);
    }
    if let Some(rotation) = &r.rotation {
        sections::rotation(&mut line, rotation, ctx.rotation.len(), &mut targets);
    }
    if let Some(memory) = &r.memory {
        sections::memory(&mut line, memory, &mut targets);
    }
    if let Some(outage) = &r.outage {
        sections::outage(&mut line, outage, &mut targets);
    }

    line("## Micro-benchmarks (criterion, median)");
    line("");
    match &run.criterion_dir {
        None => {
            line("Skipped (`--quick`).");
            line("");
        }
        Some(dir) => {
            line("| benchmark | what | median |");
            line("|---|---|---:|");
            for (id, what) in CRITERION {
                let v = criterion_median_ns(dir, id)
                    .map(fmt_ns)
                    .unwrap_or_else(|| "not run".into());
                line(&format!("| `{id}` | {what} | {v} |"));
            }
            line("");
        }
    }

    let runs: Vec<&Report> = std::iter::once(r).chain(&r.repeats).collect();
    let goals = goals::collect(&runs, run.criterion_dir.as_deref());
    goals::render(&mut line, &goals, runs.len());
    if !goals.is_empty() {
        line(
            "CPU profiles (flame graphs) of the hit path before and after, and of the miss storm, with how they were made: [`flamegraphs/`](flamegraphs/README.md).",
        );
        line("");
    }

    if !targets.is_empty() {
        line("## Targets");
        line("");
        line("| target | goal | measured | status |");
        line("|---|---|---|---|");
        for (t, goal, m, status) in &targets {
            line(&format!("| {t} | {goal} | {m} | {status} |"));
        }
        line("");
    }
    o
}

pub const HANDOVER_BEGIN: &str = "<!-- handover:begin -->";
pub const HANDOVER_END: &str = "<!-- handover:end -->";

/// `text` followed by the hand-over section of `existing`, if it has one.
pub fn keep_handover(existing: &str, mut text: String) -> String {
    if let Some(begin) = existing.find(HANDOVER_BEGIN)
        && let Some(end) = existing[begin..].find(HANDOVER_END)
    {
        if !text.ends_with("\n\n") {
            text.push('\n');
        }
        text.push_str(&existing[begin..begin + end + HANDOVER_END.len()]);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pass_keeps_the_handover_section() {
        let existing = "# old\n\n<!-- handover:begin -->\nH\n<!-- handover:end -->\ntrailing\n";
        let kept = keep_handover(existing, "# new\n".into());
        assert_eq!(
            kept,
            "# new\n\n<!-- handover:begin -->\nH\n<!-- handover:end -->\n"
        );
        assert_eq!(keep_handover("# old\n", "# new\n".into()), "# new\n");
    }
}
