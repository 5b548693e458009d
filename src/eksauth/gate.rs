//! The node-wide cap on EKS Auth calls: a token bucket at
//! `--eks-auth-rate-limit` calls/s (burst `--eks-auth-rate-burst`) that
//! every call passes, misses and refreshes alike, with
//! - a FIFO queue per class, misses served before refreshes (a refresh
//!   renews a credential still valid; a miss blocks a pod), bounded by
//!   `--eks-auth-queue-size` (full: the caller gets an error at once);
//! - one slot per identity, by construction: the cache makes one call per
//!   key at a time, so a key waits in the queue at most once;
//! - an adaptive rate: a throttling answer halves the allowed rate (at most
//!   once per second, so one burst of throttled answers counts once), which
//!   then grows back linearly to the cap over ten seconds. This is the
//!   agent-wide "slow down": it covers every identity and the refreshes.
//!
//! Why not (only) the SDK's adaptive retry mode: its client-side rate
//! limiter governs *attempts* inside one call and keeps its state in a
//! process-wide retry partition; it cannot order or bound the calls waiting
//! for a slot, nor tell misses from refreshes, nor report its rate. The SDK's
//! standard mode keeps its retry quota (retries spend tokens from a bucket
//! refilled by successes), which caps retries under a sustained outage.
//!
//! Time here is tokio's monotonic clock: waiting is real waiting (tests use
//! tokio's paused time for this module).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallGateConfig {
    /// Calls per second at most; 0 disables the cap.
    pub rate: f64,
    pub burst: u32,
    /// Calls that may wait; more are refused.
    pub queue_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A pod is waiting for this call.
    Miss,
    /// Renewal of a credential still being served.
    Refresh,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saturated {
    pub queued: usize,
}

/// Smallest allowed rate after repeated throttling: never stop entirely.
const MIN_RATE: f64 = 0.5;
/// Time for the allowed rate to grow back from its floor to the cap.
const RECOVERY: Duration = Duration::from_secs(10);
/// Throttling answers closer together than this count as one.
const DECREASE_EVERY: Duration = Duration::from_secs(1);

struct State {
    tokens: f64,
    last_refill: Instant,
    /// Rate right after the last decrease, and when that was.
    floor: f64,
    decreased_at: Option<Instant>,
    misses: VecDeque<(Instant, oneshot::Sender<()>)>,
    refreshes: VecDeque<(Instant, oneshot::Sender<()>)>,
}

pub struct CallGate {
    config: CallGateConfig,
    state: Mutex<State>,
    /// Shared with the dispatcher, which holds no strong reference to the
    /// gate: dropping the gate wakes it to exit.
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Drop for CallGate {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

impl CallGate {
    /// Starts the dispatcher task; it ends when the gate is dropped.
    pub fn new(config: CallGateConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let now = Instant::now();
        let gate = Arc::new(Self {
            config,
            state: Mutex::new(State {
                tokens: f64::from(config.burst.max(1)),
                last_refill: now,
                floor: config.rate,
                decreased_at: None,
                misses: VecDeque::new(),
                refreshes: VecDeque::new(),
            }),
            wake: Arc::new(Notify::new()),
            metrics,
        });
        gate.metrics.eksauth_allowed_rate.set(config.rate);
        if config.rate > 0.0 {
            tokio::spawn(dispatch(Arc::downgrade(&gate), gate.wake.clone()));
        }
        gate
    }

    fn enabled(&self) -> bool {
        self.config.rate > 0.0
    }

    /// The allowed rate at `now`: the floor after the last decrease, grown
    /// back linearly toward the cap.
    fn rate(&self, state: &State, now: Instant) -> f64 {
        let Some(at) = state.decreased_at else {
            return self.config.rate;
        };
        let grown = now.saturating_duration_since(at).as_secs_f64() / RECOVERY.as_secs_f64()
            * (self.config.rate - state.floor);
        (state.floor + grown).min(self.config.rate)
    }

    fn refill(&self, state: &mut State, now: Instant) {
        let rate = self.rate(state, now);
        let elapsed = now
            .saturating_duration_since(state.last_refill)
            .as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(f64::from(self.config.burst.max(1)));
        state.last_refill = now;
        self.metrics.eksauth_allowed_rate.set(rate);
    }

    /// Waits for a slot. Immediate when the bucket has a token and nobody
    /// is queued; otherwise in FIFO order of its class.
    pub async fn acquire(&self, class: Class) -> Result<(), Saturated> {
        if !self.enabled() {
            return Ok(());
        }
        let rx = {
            let mut state = self.state.lock().expect("gate lock poisoned");
            let now = Instant::now();
            self.refill(&mut state, now);
            let queued = state.misses.len() + state.refreshes.len();
            if queued == 0 && state.tokens >= 1.0 {
                state.tokens -= 1.0;
                return Ok(());
            }
            if queued >= self.config.queue_size {
                self.metrics.eksauth_queue_rejected.inc();
                return Err(Saturated { queued });
            }
            let (tx, rx) = oneshot::channel();
            match class {
                Class::Miss => state.misses.push_back((now, tx)),
                Class::Refresh => state.refreshes.push_back((now, tx)),
            }
            self.metrics.eksauth_queue_depth.set((queued + 1) as i64);
            rx
        };
        self.wake.notify_one();
        // The dispatcher only drops a sender by sending; a closed channel
        // means the gate itself is gone, and the call may go ahead.
        let _ = rx.await;
        Ok(())
    }

    /// Feedback from one call: a throttling answer lowers the allowed rate.
    pub fn observe(&self, throttled: bool) {
        if !throttled || !self.enabled() {
            return;
        }
        let mut state = self.state.lock().expect("gate lock poisoned");
        let now = Instant::now();
        if state
            .decreased_at
            .is_some_and(|at| now.saturating_duration_since(at) < DECREASE_EVERY)
        {
            return;
        }
        self.refill(&mut state, now);
        let current = self.rate(&state, now);
        state.floor = (current / 2.0).max(MIN_RATE).min(self.config.rate);
        state.decreased_at = Some(now);
        // No saved-up burst right after being told to slow down.
        state.tokens = state.tokens.min(1.0);
        self.metrics.eksauth_allowed_rate.set(state.floor);
        self.metrics.eksauth_throttled.inc();
    }
}

/// Releases queued callers as tokens become available, misses first.
async fn dispatch(gate: std::sync::Weak<CallGate>, wake: Arc<Notify>) {
    loop {
        let Some(g) = gate.upgrade() else { return };
        let wait = {
            let mut state = g.state.lock().expect("gate lock poisoned");
            let now = Instant::now();
            g.refill(&mut state, now);
            loop {
                if state.misses.is_empty() && state.refreshes.is_empty() {
                    break None;
                }
                if state.tokens < 1.0 {
                    let rate = g.rate(&state, now).max(MIN_RATE);
                    break Some(Duration::from_secs_f64((1.0 - state.tokens) / rate));
                }
                let (queued_at, tx) = state
                    .misses
                    .pop_front()
                    .or_else(|| state.refreshes.pop_front())
                    .expect("checked non-empty above");
                if tx.send(()).is_ok() {
                    state.tokens -= 1.0;
                    g.metrics
                        .eksauth_queue_wait
                        .observe(now.saturating_duration_since(queued_at).as_secs_f64());
                }
                g.metrics
                    .eksauth_queue_depth
                    .set((state.misses.len() + state.refreshes.len()) as i64);
            }
        };
        match wait {
            Some(wait) => {
                drop(g);
                tokio::time::sleep(wait).await;
            }
            None => {
                drop(g);
                wake.notified().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(rate: f64, burst: u32, queue_size: usize) -> Arc<CallGate> {
        CallGate::new(
            CallGateConfig {
                rate,
                burst,
                queue_size,
            },
            Arc::new(Metrics::new()),
        )
    }

    /// Acquires `n` slots of `class`, each in its own task; returns the
    /// order in which they were granted (by index) and when.
    async fn grants(g: &Arc<CallGate>, classes: &[Class]) -> Vec<(usize, Duration)> {
        let start = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, class) in classes.iter().copied().enumerate() {
            let (g, tx) = (g.clone(), tx.clone());
            tokio::spawn(async move {
                g.acquire(class).await.unwrap();
                let _ = tx.send((i, start.elapsed()));
            });
            // Enqueue in index order.
            tokio::task::yield_now().await;
        }
        drop(tx);
        let mut out = Vec::new();
        while let Some(x) = rx.recv().await {
            out.push(x);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_then_the_rate() {
        let g = gate(10.0, 5, 100);
        let got = grants(&g, &[Class::Miss; 25]).await;
        let last = got.iter().map(|(_, t)| *t).max().unwrap();
        // 5 at once, 20 more at 10/s.
        assert!(
            last >= Duration::from_secs(2) && last < Duration::from_millis(2100),
            "{last:?}"
        );
        let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, (0..25).collect::<Vec<_>>(), "FIFO");
    }

    #[tokio::test(start_paused = true)]
    async fn misses_before_refreshes() {
        let g = gate(1.0, 1, 100);
        g.acquire(Class::Miss).await.unwrap();
        let got = grants(
            &g,
            &[Class::Refresh, Class::Refresh, Class::Miss, Class::Miss],
        )
        .await;
        let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [2, 3, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once() {
        let g = gate(1.0, 1, 2);
        g.acquire(Class::Miss).await.unwrap();
        let (a, b) = (g.clone(), g.clone());
        tokio::spawn(async move { a.acquire(Class::Miss).await });
        tokio::spawn(async move { b.acquire(Class::Miss).await });
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(g.acquire(Class::Miss).await, Err(Saturated { queued: 2 }));
        assert_eq!(g.metrics.eksauth_queue_rejected.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_then_it_recovers() {
        let g = gate(20.0, 1, 1000);
        g.observe(true);
        assert_eq!(g.metrics.eksauth_allowed_rate.get(), 10.0);
        g.observe(true);
        assert_eq!(
            g.metrics.eksauth_allowed_rate.get(),
            10.0,
            "throttles within a second count once"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        g.observe(true);
        let after_two = g.metrics.eksauth_allowed_rate.get();
        assert!((5.0..6.0).contains(&after_two), "{after_two}");
        tokio::time::advance(RECOVERY).await;
        g.acquire(Class::Miss).await.unwrap();
        assert_eq!(g.metrics.eksauth_allowed_rate.get(), 20.0, "recovered");
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_admits_everything() {
        let g = gate(0.0, 0, 0);
        for _ in 0..10_000 {
            g.acquire(Class::Miss).await.unwrap();
        }
    }
}
