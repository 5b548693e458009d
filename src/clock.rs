//! Wall-clock time as an injected dependency. Credential expirations are wall
//! clock (EKS Auth returns epoch seconds), so cache and token decisions take a
//! [`Clock`]; tests use [`ManualClock`] to move time without sleeping.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Milliseconds since the Unix epoch at the monotonic instant `at`
    /// (just taken by the caller): lets the request path read the time once.
    fn now_ms_at(&self, _at: Instant) -> u64 {
        self.now_ms()
    }

    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock. [`Clock::now_ms_at`] derives wall time from a
/// monotonic instant and an offset re-read at most once a second, so a
/// request that already took `Instant::now()` makes no second clock read;
/// a wall-clock step (NTP) is picked up within a second.
#[derive(Debug, Default)]
pub struct SystemClock {
    /// Wall ms minus monotonic ms (since [`anchor`]), and when (monotonic
    /// ms) it was last read; 0 = never.
    offset_ms: AtomicI64,
    read_at_ms: AtomicU64,
}

/// The process's monotonic origin.
fn anchor() -> Instant {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    *ANCHOR.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place the real wall clock is read"
    )]
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn now_ms_at(&self, at: Instant) -> u64 {
        // +1 so that 0 always means "never read".
        let mono = at.saturating_duration_since(anchor()).as_millis() as u64 + 1;
        // Acquire/Release on read_at: a thread that sees a read_at also sees
        // the offset stored before it. With Relaxed, a weakly ordered CPU
        // (aarch64) may pair a fresh read_at with the initial offset 0 and
        // date a request in 1970; x86 (and qemu on x86) never shows it.
        let read_at = self.read_at_ms.load(Ordering::Acquire);
        if read_at == 0 || mono.saturating_sub(read_at) >= 1000 {
            let offset = self.now_ms() as i64 - mono as i64;
            self.offset_ms.store(offset, Ordering::Relaxed);
            self.read_at_ms.store(mono, Ordering::Release);
            return (mono as i64 + offset).max(0) as u64;
        }
        (mono as i64 + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock::default())
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Starts at `ms` since the epoch.
    pub fn at_ms(ms: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(ms)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_wall_time_follows_the_real_one() {
        let clock = SystemClock::default();
        let first = clock.now_ms_at(Instant::now());
        let direct = clock.now_ms();
        assert!(direct.abs_diff(first) < 1000, "{first} vs {direct}");
        let later = clock.now_ms_at(Instant::now() + Duration::from_millis(500));
        assert!(later >= first + 499, "{first} then {later}");
    }
}
