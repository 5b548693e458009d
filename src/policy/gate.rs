//! The gate: the node's budget of EKS Auth calls: a token bucket at
//! `--eks-auth-rate-limit` calls/s (burst `--eks-auth-rate-burst`) that
//! every call passes, misses and refreshes alike, with
//! - misses served before refreshes (a refresh renews a credential still
//!   valid; a miss blocks a pod);
//! - misses fair-queued by [flow](crate::flow) ([`super::queue`]): one FIFO queue per flow,
//!   served round-robin (each call costs one token, so this is deficit
//!   round-robin with equal quanta), so a flow with a thousand calls
//!   waiting delays another flow's first call by one turn, not a thousand;
//! - one bound on everything waiting, `--eks-auth-queue-size`, shared
//!   work-conservingly: a flow alone may fill it; when it is full, a call
//!   of a flow holding fewer slots than the flow holding the most pushes
//!   that flow's newest call out (its caller gets the "queue full" answer,
//!   503), otherwise the newcomer gets it. No flow keeps more than its
//!   share of the slots while others wait (longest-queue drop, the buffer
//!   policy that with round-robin gives max-min fair shares);
//! - one slot per identity, by construction: the cache makes one call per
//!   key at a time, so a key waits in the queue at most once;
//! - an adaptive rate: a throttling answer halves the allowed rate (at most
//!   once per second, so one burst of throttled answers counts once), which
//!   then grows back linearly to the cap over ten seconds. This is the
//!   agent-wide "slow down": it covers every identity and the refreshes.
//!
//! Compared with kube-apiserver's API Priority and Fairness, which the
//! design follows (flows, fair queuing): APF shuffle-shards flows onto a
//! fixed set of bounded queues because it cannot keep state per flow; here
//! the flows with calls waiting are at most the queue size, so each gets
//! its own queue, no two flows ever share one, and the bound is on the
//! total instead of per queue (a lone flow may use all of it).
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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::queue::Queue;
pub use super::queue::{Class, Saturated};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateConfig {
    /// Calls per second at most; 0 disables the cap.
    pub rate: f64,
    pub burst: u32,
    /// Calls that may wait; more are refused.
    pub queue_size: usize,
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
    queue: Queue,
}

pub struct Gate {
    config: GateConfig,
    state: Mutex<State>,
    /// Shared with the dispatcher, which holds no strong reference to the
    /// gate: dropping the gate wakes it to exit.
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

impl Gate {
    /// Starts the dispatcher task; it ends when the gate is dropped.
    pub fn new(config: GateConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let now = Instant::now();
        let gate = Arc::new(Self {
            config,
            state: Mutex::new(State {
                tokens: f64::from(config.burst.max(1)),
                last_refill: now,
                floor: config.rate,
                decreased_at: None,
                queue: Queue::default(),
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
    /// is queued; otherwise queued (see the module doc), and `Err` when the
    /// queue is full or this call is pushed out of it.
    pub async fn acquire(&self, class: Class) -> Result<(), Saturated> {
        if !self.enabled() {
            return Ok(());
        }
        let rx = {
            let mut state = self.state.lock().expect("gate lock poisoned");
            let now = Instant::now();
            self.refill(&mut state, now);
            let queued = state.queue.len();
            if queued == 0 && state.tokens >= 1.0 {
                state.tokens -= 1.0;
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            match state
                .queue
                .enqueue(class, (now, tx), self.config.queue_size)
            {
                Ok(None) => {}
                Ok(Some((_, pushed))) => {
                    let _ = pushed.send(Err(Saturated { queued }));
                    self.metrics
                        .eksauth_queue_rejected
                        .with_label_values(&["pushed_out"])
                        .inc();
                }
                Err(full) => {
                    self.metrics
                        .eksauth_queue_rejected
                        .with_label_values(&["full"])
                        .inc();
                    return Err(full);
                }
            }
            self.publish(&state);
            rx
        };
        self.wake.notify_one();
        // A closed channel means the gate itself is gone: the call may go ahead.
        rx.await.unwrap_or(Ok(()))
    }

    fn publish(&self, state: &State) {
        self.metrics
            .eksauth_queue_depth
            .set(state.queue.len() as i64);
        self.metrics
            .eksauth_queue_flows
            .set(state.queue.flows() as i64);
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
async fn dispatch(gate: std::sync::Weak<Gate>, wake: Arc<Notify>) {
    loop {
        let Some(g) = gate.upgrade() else { return };
        let wait = {
            let mut state = g.state.lock().expect("gate lock poisoned");
            let now = Instant::now();
            g.refill(&mut state, now);
            loop {
                if state.queue.len() == 0 {
                    break None;
                }
                if state.tokens < 1.0 {
                    let rate = g.rate(&state, now).max(MIN_RATE);
                    break Some(Duration::from_secs_f64((1.0 - state.tokens) / rate));
                }
                let (queued_at, tx) = state.queue.pop_next().expect("checked non-empty above");
                // A caller that went away spends no token.
                if tx.send(Ok(())).is_ok() {
                    state.tokens -= 1.0;
                    g.metrics
                        .eksauth_queue_wait
                        .observe(now.saturating_duration_since(queued_at).as_secs_f64());
                }
                g.publish(&state);
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
    use crate::flow::Flow;

    fn gate(rate: f64, burst: u32, queue_size: usize) -> Arc<Gate> {
        Gate::new(
            GateConfig {
                rate,
                burst,
                queue_size,
            },
            Arc::new(Metrics::new()),
        )
    }

    /// Acquires `n` slots of `class`, each in its own task; returns the
    /// order in which they were granted (by index) and when.
    async fn grants(g: &Arc<Gate>, classes: &[Class]) -> Vec<(usize, Duration)> {
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

    /// The flow of pod `n` (one set of flows for every test).
    fn flow(n: u8) -> Flow {
        static FLOWS: std::sync::OnceLock<crate::flow::Flows> = std::sync::OnceLock::new();
        FLOWS
            .get_or_init(crate::flow::Flows::new)
            .source(std::net::IpAddr::from([10, 0, 0, n]))
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_then_the_rate() {
        let g = gate(10.0, 5, 100);
        let got = grants(&g, &[Class::Miss(flow(1)); 25]).await;
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
        g.acquire(Class::Miss(flow(1))).await.unwrap();
        let got = grants(
            &g,
            &[
                Class::Refresh,
                Class::Refresh,
                Class::Miss(flow(1)),
                Class::Miss(flow(2)),
            ],
        )
        .await;
        let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [2, 3, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once() {
        let g = gate(1.0, 1, 2);
        let a = Class::Miss(flow(1));
        g.acquire(a).await.unwrap();
        let (g1, g2) = (g.clone(), g.clone());
        tokio::spawn(async move { g1.acquire(a).await });
        tokio::spawn(async move { g2.acquire(a).await });
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(g.acquire(a).await, Err(Saturated { queued: 2 }));
        let rejected = |reason: &str| {
            g.metrics
                .eksauth_queue_rejected
                .with_label_values(&[reason])
                .get()
        };
        assert_eq!((rejected("full"), rejected("pushed_out")), (1, 0));
    }

    /// Through the gate: the caller of a pushed-out call gets the queue-full
    /// answer, and the reasons are counted apart. Real time, at a rate
    /// that releases nothing while the test runs (paused time would jump
    /// to the first release whenever the test yields).
    #[tokio::test]
    async fn pushed_out_callers_hear_so() {
        let g = gate(0.001, 1, 2);
        let (a, b) = (Class::Miss(flow(1)), Class::Miss(flow(2)));
        g.acquire(a).await.unwrap();
        let queue = |class: Class| {
            let g2 = g.clone();
            tokio::spawn(async move { g2.acquire(class).await })
        };
        let queued = |depth: i64| {
            let g3 = g.clone();
            async move {
                while g3.metrics.eksauth_queue_depth.get() < depth {
                    tokio::task::yield_now().await;
                }
            }
        };
        let _older = queue(a);
        queued(1).await;
        let newer = queue(a);
        queued(2).await;
        let _b = queue(b);
        assert_eq!(newer.await.unwrap(), Err(Saturated { queued: 2 }));
        let rejected = |reason: &str| {
            g.metrics
                .eksauth_queue_rejected
                .with_label_values(&[reason])
                .get()
        };
        assert_eq!((rejected("pushed_out"), rejected("full")), (1, 0));
        assert_eq!(g.metrics.eksauth_queue_flows.get(), 2);
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
        g.acquire(Class::Miss(flow(1))).await.unwrap();
        assert_eq!(g.metrics.eksauth_allowed_rate.get(), 20.0, "recovered");
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_admits_everything() {
        let g = gate(0.0, 0, 0);
        for _ in 0..10_000 {
            g.acquire(Class::Miss(flow(1))).await.unwrap();
        }
    }
}
