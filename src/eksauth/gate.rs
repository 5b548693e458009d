//! The node-wide cap on EKS Auth calls: a token bucket at
//! `--eks-auth-rate-limit` calls/s (burst `--eks-auth-rate-burst`) that
//! every call passes, misses and refreshes alike, with
//! - misses served before refreshes (a refresh renews a credential still
//!   valid; a miss blocks a pod);
//! - misses fair-queued by [flow](crate::flow): one FIFO queue per flow,
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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::flow::Flow;
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
    /// A pod is waiting for this call; the flow it is charged to.
    Miss(Flow),
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

/// A queued call: when it was queued, and its caller's wake-up (`Err`:
/// pushed out).
type Waiter = (Instant, oneshot::Sender<Result<(), Saturated>>);

struct State {
    tokens: f64,
    last_refill: Instant,
    /// Rate right after the last decrease, and when that was.
    floor: f64,
    decreased_at: Option<Instant>,
    /// Queued misses per flow; a flow is here only while it has some.
    misses: HashMap<Flow, VecDeque<Waiter>>,
    /// Flows with queued misses, in round-robin order.
    turns: VecDeque<Flow>,
    refreshes: VecDeque<Waiter>,
    /// Everything queued (misses and refreshes).
    queued: usize,
}

impl State {
    /// The longest queue (the refreshes count as one flow), and its length.
    fn longest(&self) -> Option<(Option<Flow>, usize)> {
        let misses = self
            .misses
            .iter()
            .map(|(flow, q)| (Some(*flow), q.len()))
            .max_by_key(|(_, n)| *n);
        let refreshes = (!self.refreshes.is_empty()).then_some((None, self.refreshes.len()));
        misses.into_iter().chain(refreshes).max_by_key(|(_, n)| *n)
    }

    fn queue_len(&self, class: Class) -> usize {
        match class {
            Class::Miss(flow) => self.misses.get(&flow).map_or(0, VecDeque::len),
            Class::Refresh => self.refreshes.len(),
        }
    }

    /// Drops the newest call of `flow`'s queue (`None`: the refreshes),
    /// returning its waiter.
    fn pop_newest(&mut self, flow: Option<Flow>) -> Option<Waiter> {
        let waiter = match flow {
            None => self.refreshes.pop_back(),
            Some(flow) => {
                let q = self.misses.get_mut(&flow)?;
                let w = q.pop_back();
                if q.is_empty() {
                    self.misses.remove(&flow);
                    self.turns.retain(|f| *f != flow);
                }
                w
            }
        };
        self.queued -= usize::from(waiter.is_some());
        waiter
    }

    /// Queues `waiter` under the total bound `limit` (see the module doc):
    /// `Ok(Some(w))` when `w`, the newest call of the flow holding the
    /// most, was pushed out to make room; `Err` when this one is refused.
    fn enqueue(
        &mut self,
        class: Class,
        waiter: Waiter,
        limit: usize,
    ) -> Result<Option<Waiter>, Saturated> {
        let queued = self.queued;
        let mut pushed = None;
        if queued >= limit.max(1) {
            let mine = self.queue_len(class);
            match self.longest() {
                Some((flow, longest)) if longest > mine + 1 => pushed = self.pop_newest(flow),
                _ => return Err(Saturated { queued }),
            }
        }
        self.push(class, waiter);
        Ok(pushed)
    }

    fn push(&mut self, class: Class, waiter: Waiter) {
        match class {
            Class::Miss(flow) => {
                let q = self.misses.entry(flow).or_default();
                if q.is_empty() {
                    self.turns.push_back(flow);
                }
                q.push_back(waiter);
            }
            Class::Refresh => self.refreshes.push_back(waiter),
        }
        self.queued += 1;
    }

    /// The next call to release: the flow whose turn it is, else a refresh.
    fn pop_next(&mut self) -> Option<Waiter> {
        let waiter = match self.turns.pop_front() {
            Some(flow) => {
                let q = self
                    .misses
                    .get_mut(&flow)
                    .expect("a flow takes turns only while it has queued calls");
                let w = q.pop_front();
                if q.is_empty() {
                    self.misses.remove(&flow);
                } else {
                    self.turns.push_back(flow);
                }
                w
            }
            None => self.refreshes.pop_front(),
        };
        self.queued -= usize::from(waiter.is_some());
        waiter
    }
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
                misses: HashMap::new(),
                turns: VecDeque::new(),
                refreshes: VecDeque::new(),
                queued: 0,
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
            let queued = state.queued;
            if queued == 0 && state.tokens >= 1.0 {
                state.tokens -= 1.0;
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            match state.enqueue(class, (now, tx), self.config.queue_size) {
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
        self.metrics.eksauth_queue_depth.set(state.queued as i64);
        self.metrics
            .eksauth_queue_flows
            .set(state.misses.len() as i64);
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
                if state.queued == 0 {
                    break None;
                }
                if state.tokens < 1.0 {
                    let rate = g.rate(&state, now).max(MIN_RATE);
                    break Some(Duration::from_secs_f64((1.0 - state.tokens) / rate));
                }
                let (queued_at, tx) = state.pop_next().expect("checked non-empty above");
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

    fn state() -> State {
        State {
            tokens: 0.0,
            last_refill: Instant::now(),
            floor: 1.0,
            decreased_at: None,
            misses: HashMap::new(),
            turns: VecDeque::new(),
            refreshes: VecDeque::new(),
            queued: 0,
        }
    }

    type Wake = Option<oneshot::Receiver<Result<(), Saturated>>>;

    /// Queues `classes` in order under `limit`; returns each one's receiver
    /// (`None`: refused on arrival) and how many calls were pushed out.
    fn fill(s: &mut State, classes: &[Class], limit: usize) -> (Vec<Wake>, usize) {
        let mut rxs = Vec::new();
        let mut pushed = 0;
        for class in classes {
            let (tx, rx) = oneshot::channel();
            match s.enqueue(*class, (Instant::now(), tx), limit) {
                Ok(p) => {
                    pushed += usize::from(p.is_some());
                    rxs.push(Some(rx));
                }
                Err(_) => rxs.push(None),
            }
        }
        (rxs, pushed)
    }

    /// Which queued calls (by index) are released, in order.
    fn release_order(s: &mut State, rxs: &mut [Wake]) -> Vec<usize> {
        let mut order = Vec::new();
        while let Some((_, tx)) = s.pop_next() {
            let _ = tx.send(Ok(()));
            let released = rxs
                .iter_mut()
                .position(|rx| rx.as_mut().is_some_and(|rx| rx.try_recv() == Ok(Ok(()))))
                .expect("a released call has a receiver");
            rxs[released] = None;
            order.push(released);
        }
        order
    }

    /// Round-robin across flows: a flow with ten calls waiting delays
    /// another flow's first call by one turn; refreshes come last.
    #[test]
    fn flows_take_turns() {
        let mut s = state();
        let mut classes = vec![Class::Miss(flow(1)); 10];
        classes.extend([Class::Refresh, Class::Miss(flow(2)), Class::Miss(flow(2))]);
        let (mut rxs, pushed) = fill(&mut s, &classes, 100);
        assert_eq!(pushed, 0);
        assert_eq!(
            release_order(&mut s, &mut rxs),
            [0, 11, 1, 12, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        );
        assert_eq!((s.queued, s.misses.len(), s.turns.len()), (0, 0, 0));
    }

    /// A flow alone may fill the queue; when another flow's call arrives at
    /// a full queue, the flow holding the most gives up its newest, until
    /// the two hold equal shares.
    #[test]
    fn a_full_queue_pushes_out_the_flow_holding_the_most() {
        let mut s = state();
        let (a, b) = (Class::Miss(flow(1)), Class::Miss(flow(2)));
        let (mut rxs, pushed) = fill(&mut s, &[a, a, a, a, b, b, b], 4);
        assert_eq!(pushed, 2, "3 and 2 made room for 4 and 5");
        assert!(rxs[6].is_none(), "6 found two and two: refused");
        for i in [2, 3] {
            assert_eq!(
                rxs[i].as_mut().unwrap().try_recv().err(),
                Some(oneshot::error::TryRecvError::Closed),
                "{i} pushed out"
            );
            rxs[i] = None;
        }
        assert_eq!(release_order(&mut s, &mut rxs), [0, 4, 1, 5]);
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
