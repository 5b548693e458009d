//! The performance goals (issue "Hit path at the physical limit"), judged
//! over repeated runs: each goal's value in every run, the median (judged)
//! and the spread, so one lucky or unlucky run decides nothing.
//!
//! - P1: cache-hit req/s ≥ 0.90× the baseline's (64 connections, 1,000
//!   identities rotating);
//! - P2: cache-hit p99 ≤ 1.5× the baseline's, same runs;
//! - P3: miss storm on a fresh agent: exactly one EKS Auth call per
//!   identity, p99 ≤ 1.25× the EKS Auth latency;
//! - P4: RSS ≤ 40 MiB with 10,000 identities (unverified and verified),
//!   idle ≤ 14 MiB;
//! - P6: admitting a new verified token ≤ 1.3× a bare RSA-2048 signature
//!   check with the same library (criterion medians, one run: criterion
//!   does its own repetitions).

use std::path::Path;

use super::{Report, criterion_median_ns};
use crate::stats::{fmt_ns, ratio};

/// One goal's values over the runs that measured it.
pub struct Goal {
    pub id: &'static str,
    pub what: String,
    pub target: &'static str,
    pub values: Vec<f64>,
    fmt: fn(f64) -> String,
    ok: fn(f64) -> bool,
}

impl Goal {
    fn new(
        id: &'static str,
        what: impl Into<String>,
        target: &'static str,
        fmt: fn(f64) -> String,
        ok: fn(f64) -> bool,
    ) -> Self {
        Self {
            id,
            what: what.into(),
            target,
            values: Vec::new(),
            fmt,
            ok,
        }
    }

    /// The median (mean of the middle two for an even count).
    pub fn median(&self) -> Option<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    pub fn met(&self) -> Option<bool> {
        self.median().map(self.ok)
    }
}

fn fmt_ratio(v: f64) -> String {
    ratio(v)
}

fn fmt_mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn fmt_calls(extra: f64) -> String {
    format!("{extra:.0}")
}

/// The goals, with a value from every run in `runs` that measured them.
pub fn collect(runs: &[&Report], criterion_dir: Option<&Path>) -> Vec<Goal> {
    let mut p1 = Goal::new(
        "P1",
        "cache-hit req/s vs baseline (64 conns, 1,000 identities)",
        "≥ 0.90×",
        fmt_ratio,
        |v| v >= 0.90,
    );
    let mut p2 = Goal::new(
        "P2",
        "cache-hit p99 vs baseline (same runs)",
        "≤ 1.5×",
        fmt_ratio,
        |v| v <= 1.5,
    );
    let mut p3 = Goal::new(
        "P3",
        "miss-storm p99 vs EKS Auth latency (fresh agent)",
        "≤ 1.25×",
        fmt_ratio,
        |v| v <= 1.25,
    );
    let mut p3_calls = Goal::new(
        "P3",
        "miss-storm EKS Auth calls beyond one per identity (all rounds)",
        "= 0",
        fmt_calls,
        |v| v == 0.0,
    );
    let mut p4_idle = Goal::new("P4", "RSS idle", "≤ 14 MiB", fmt_mib, |v| {
        v <= 14.0 * 1024.0
    });
    let mut p4: Vec<Goal> = Vec::new();
    for run in runs {
        if let Some(h) = run
            .hit
            .iter()
            .find(|h| h.identities == 1000 && h.conns == 64)
        {
            p1.values.push(h.agent.rps() / h.base.rps());
            p2.values.push(h.agent.p99 / h.base.p99);
        }
        if let Some(s) = run.storm.first() {
            p3.values
                .push(s.p99.as_secs_f64() / (s.latency_ms as f64 / 1000.0));
            let extra: i64 = run
                .storm
                .iter()
                .map(|s| s.calls as i64 - s.identities as i64)
                .sum();
            p3_calls.values.push(extra as f64);
        }
        if let Some(m) = &run.memory {
            for row in &m.rows {
                if let Some((p, rss)) = row.points.last() {
                    let what = format!("RSS with {} identities, {}", thousands(*p), row.mode);
                    let goal = match p4.iter_mut().find(|g| g.what == what) {
                        Some(g) => g,
                        None => {
                            p4.push(Goal::new("P4", what, "≤ 40 MiB", fmt_mib, |v| {
                                v <= 40.0 * 1024.0
                            }));
                            p4.last_mut().expect("just pushed")
                        }
                    };
                    goal.values.push(*rss as f64);
                }
            }
            if let Some(row) = m.rows.first() {
                p4_idle.values.push(row.idle_kib as f64);
            }
        }
    }
    let mut goals = vec![p1, p2, p3, p3_calls, p4_idle];
    goals.extend(p4);
    if let Some(dir) = criterion_dir {
        let mut p6 = Goal::new(
            "P6",
            format!(
                "verified admission of a new token vs bare RSA-2048 verify (criterion medians: {} vs {})",
                criterion_median_ns(dir, "admission/verified_cold")
                    .map(fmt_ns)
                    .unwrap_or_else(|| "n/a".into()),
                criterion_median_ns(dir, "admission/rsa2048_verify_bare")
                    .map(fmt_ns)
                    .unwrap_or_else(|| "n/a".into()),
            ),
            "≤ 1.3×",
            fmt_ratio,
            |v| v <= 1.3,
        );
        if let (Some(a), Some(b)) = (
            criterion_median_ns(dir, "admission/verified_cold"),
            criterion_median_ns(dir, "admission/rsa2048_verify_bare"),
        ) {
            p6.values.push(a / b);
        }
        goals.push(p6);
    }
    goals.retain(|g| !g.values.is_empty());
    goals
}

fn thousands(n: usize) -> String {
    crate::stats::thousands(n as u64)
}

/// The table: one column per run, the median, the spread (max − min) and
/// the status of the median.
pub fn render(line: &mut impl FnMut(&str), goals: &[Goal], runs: usize) {
    if goals.is_empty() {
        return;
    }
    line(&format!(
        "## Goals over {runs} run{}",
        if runs == 1 { "" } else { "s" }
    ));
    line("");
    line(
        "Each goal's value in every run (runs 2 and later repeat only the judged configurations: cache hit at 1,000 identities and 64 connections, the miss storm, memory), the median, which is judged, and the spread (max − min). P6 comes from criterion, which repeats on its own.",
    );
    line("");
    let mut head = "| goal | measure | target |".to_string();
    let mut sep = "|---|---|---|".to_string();
    for i in 1..=runs {
        head.push_str(&format!(" run {i} |"));
        sep.push_str("---:|");
    }
    head.push_str(" median | spread | status |");
    sep.push_str("---:|---:|---|");
    line(&head);
    line(&sep);
    for g in goals {
        let mut row = format!("| {} | {} | {} |", g.id, g.what, g.target);
        for i in 0..runs {
            row.push_str(&format!(
                " {} |",
                g.values.get(i).map(|v| (g.fmt)(*v)).unwrap_or_default()
            ));
        }
        let spread = match (
            g.values.iter().copied().reduce(f64::min),
            g.values.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) if g.values.len() > 1 => (g.fmt)(hi - lo),
            _ => "–".into(),
        };
        row.push_str(&format!(
            " {} | {} | {} |",
            g.median().map(g.fmt).unwrap_or_default(),
            spread,
            match g.met() {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "n/a",
            }
        ));
        line(&row);
    }
    line("");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let mut g = Goal::new("X", "x", "", fmt_ratio, |v| v >= 1.0);
        assert_eq!(g.median(), None);
        g.values = vec![3.0, 1.0, 2.0];
        assert_eq!(g.median(), Some(2.0));
        assert_eq!(g.met(), Some(true));
        g.values = vec![0.5, 0.9, 1.0, 0.2];
        assert_eq!(g.median(), Some(0.7));
        assert_eq!(g.met(), Some(false));
    }
}
