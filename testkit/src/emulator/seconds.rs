//! AssumeRoleForPodIdentity calls per second (by the emulator's clock), for
//! benchmarks that print a call curve: `GET /_emulator/calls-per-second`
//! answers the last [`KEPT`] seconds that saw a call, oldest first, as
//! `[{"second":<epoch s>,"calls":..,"successes":..,"throttled":..,"errors":..}]`.
//! A call counts in the second it started, whatever its answer's latency.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Seconds kept (an hour): longer than any benchmark scenario.
pub const KEPT: usize = 3600;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondCount {
    /// Epoch second.
    pub second: u64,
    pub calls: u64,
    pub successes: u64,
    /// Answered ThrottlingException by `throttle_above_per_s`.
    pub throttled: u64,
    /// Any other error answer (forced, random, or a refused token).
    pub errors: u64,
}

/// What one call ended as.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended {
    Success,
    Throttled,
    Error,
}

#[derive(Default)]
pub(crate) struct PerSecond(Mutex<VecDeque<SecondCount>>);

impl PerSecond {
    fn with(&self, second: u64, f: impl FnOnce(&mut SecondCount)) {
        let mut q = self.0.lock().expect("emulator lock");
        // Calls arrive in nearly increasing order; a late one (a second
        // boundary crossed between the clock read and the lock) is found
        // by a short scan from the back.
        let slot = match q.iter().rposition(|c| c.second <= second) {
            Some(i) if q[i].second == second => i,
            // Older than everything kept: dropped.
            None if q.len() >= KEPT => return,
            found => {
                let mut at = found.map_or(0, |i| i + 1);
                q.insert(
                    at,
                    SecondCount {
                        second,
                        ..SecondCount::default()
                    },
                );
                if q.len() > KEPT {
                    q.pop_front();
                    at -= 1;
                }
                at
            }
        };
        f(&mut q[slot]);
    }

    pub(crate) fn started(&self, second: u64) {
        self.with(second, |c| c.calls += 1);
    }

    pub(crate) fn ended(&self, second: u64, how: Ended) {
        self.with(second, |c| match how {
            Ended::Success => c.successes += 1,
            Ended::Throttled => c.throttled += 1,
            Ended::Error => c.errors += 1,
        });
    }

    pub(crate) fn snapshot(&self) -> Vec<SecondCount> {
        self.0
            .lock()
            .expect("emulator lock")
            .iter()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_second_in_order() {
        let p = PerSecond::default();
        p.started(10);
        p.started(12);
        p.started(11);
        p.ended(11, Ended::Throttled);
        p.ended(12, Ended::Success);
        let s = p.snapshot();
        assert_eq!(
            s.iter().map(|c| (c.second, c.calls)).collect::<Vec<_>>(),
            [(10, 1), (11, 1), (12, 1)]
        );
        assert_eq!((s[1].throttled, s[2].successes), (1, 1));
    }
}
