//! What the EKS Auth protection scenarios read besides the clients: the
//! emulator's per-second call counts over the scenario (its
//! `/_emulator/calls-per-second`), and the agent's own counters.

use testkit::emulator::SecondCount;

use crate::R;
use crate::client;
use crate::ctx::{Ctx, metric};

/// Emulator calls per second, second 0 being the one the scenario started
/// in; every second up to the end is present (zeros included).
#[derive(Debug, Clone, Default)]
pub struct Curve {
    pub seconds: Vec<SecondCount>,
}

impl Curve {
    pub async fn fetch(ctx: &Ctx, start_ms: u64, end_ms: u64) -> R<Self> {
        let r = client::once(ctx.emu_addr, "GET", "/_emulator/calls-per-second", b"").await?;
        let all: Vec<SecondCount> = serde_json::from_slice(&r.body)?;
        Ok(Self::window(&all, start_ms / 1000, end_ms / 1000))
    }

    fn window(all: &[SecondCount], first: u64, last: u64) -> Self {
        let seconds = (first..=last)
            .map(|s| {
                all.iter()
                    .find(|c| c.second == s)
                    .copied()
                    .unwrap_or(SecondCount {
                        second: s,
                        ..SecondCount::default()
                    })
            })
            .collect();
        Self { seconds }
    }

    /// Calls in seconds `[from, to)` of the scenario.
    pub fn calls(&self, from: usize, to: usize) -> u64 {
        self.range(from, to).map(|c| c.calls).sum()
    }

    /// The busiest second in `[from, to)`: (second, calls).
    pub fn peak(&self, from: usize, to: usize) -> (usize, u64) {
        self.range(from, to)
            .enumerate()
            .map(|(i, c)| (from + i, c.calls))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
            .unwrap_or((from, 0))
    }

    fn range(&self, from: usize, to: usize) -> impl Iterator<Item = &SecondCount> {
        let to = to.min(self.seconds.len());
        self.seconds[from.min(to)..to].iter()
    }

    /// `calls` per second as rows of ten: `  40 s: 12 20 …`, each value
    /// `calls` or `calls/errors` when some failed.
    pub fn rows(&self, from: usize, to: usize) -> Vec<String> {
        let to = to.min(self.seconds.len());
        (from..to)
            .step_by(10)
            .map(|row| {
                let cells: Vec<String> = (row..(row + 10).min(to))
                    .map(|s| {
                        let c = &self.seconds[s];
                        let failed = c.throttled + c.errors;
                        if failed > 0 {
                            format!("{}/{failed}", c.calls)
                        } else {
                            c.calls.to_string()
                        }
                    })
                    .collect();
                format!("{row:>4} s: {}", cells.join(" "))
            })
            .collect()
    }
}

/// The agent's view between two scrapes of its metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentCounts {
    /// EKS Auth calls the cache made (each may be several SDK attempts).
    pub calls: u64,
    /// Requests answered from a backoff window without calling.
    pub avoided: u64,
    /// Times the node-wide gate halved its rate.
    pub rate_decreases: u64,
    /// Requests refused because the gate's queue was full.
    pub queue_rejected: u64,
}

/// Sum of every sample of `name` (all label sets).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl AgentCounts {
    pub fn between(before: &str, after: &str) -> Self {
        let d = |f: &dyn Fn(&str) -> f64| (f(after) - f(before)).max(0.0) as u64;
        Self {
            calls: d(&|t| sum(t, "pod_identity_eksauth_calls_total")),
            avoided: d(&|t| sum(t, "pod_identity_eksauth_calls_avoided_total")),
            rate_decreases: d(&|t| metric(t, "pod_identity_eksauth_rate_decreases_total")),
            queue_rejected: d(&|t| {
                metric(
                    t,
                    "pod_identity_eksauth_queue_rejected_total{reason=\"full\"}",
                ) + metric(
                    t,
                    "pod_identity_eksauth_queue_rejected_total{reason=\"pushed_out\"}",
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_label_set() {
        let text = "pod_identity_eksauth_calls_total{code=\"OK\"} 3\n\
                    pod_identity_eksauth_calls_total{code=\"ThrottlingException\"} 4\n\
                    pod_identity_eksauth_calls_totally 100\n";
        assert_eq!(sum(text, "pod_identity_eksauth_calls_total"), 7.0);
    }

    #[test]
    fn a_window_has_every_second() {
        let all = [SecondCount {
            second: 11,
            calls: 5,
            ..SecondCount::default()
        }];
        let c = Curve::window(&all, 10, 12);
        assert_eq!(
            c.seconds.iter().map(|s| s.calls).collect::<Vec<_>>(),
            [0, 5, 0]
        );
        assert_eq!(c.peak(0, 3), (1, 5));
        assert_eq!(c.rows(0, 3), ["   0 s: 0 5 0"]);
    }
}
