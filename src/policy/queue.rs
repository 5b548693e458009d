//! The queue of EKS Auth calls waiting for the gate: one FIFO queue per
//! [flow](crate::flow), served round-robin, misses before refreshes, under
//! one bound shared work-conservingly (longest-queue drop: at the bound,
//! the flow holding the most slots gives up its newest call to a flow
//! holding fewer). See [`super::gate`] for when calls are released.

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::flow::Flow;

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

/// A queued call: when it was queued, and its caller's wake-up (`Err`:
/// pushed out).
pub(super) type Waiter = (Instant, oneshot::Sender<Result<(), Saturated>>);

#[derive(Default)]
pub(super) struct Queue {
    /// Queued misses per flow; a flow is here only while it has some.
    misses: HashMap<Flow, VecDeque<Waiter>>,
    /// Flows with queued misses, in round-robin order.
    turns: VecDeque<Flow>,
    refreshes: VecDeque<Waiter>,
    /// Everything queued (misses and refreshes).
    queued: usize,
}

impl Queue {
    /// Calls waiting (misses and refreshes).
    pub(super) fn len(&self) -> usize {
        self.queued
    }

    /// Flows with misses waiting.
    pub(super) fn flows(&self) -> usize {
        self.misses.len()
    }

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
    pub(super) fn enqueue(
        &mut self,
        class: Class,
        waiter: Waiter,
        limit: usize,
    ) -> Result<Option<Waiter>, Saturated> {
        let queued = self.queued;
        let mut pushed = None;
        // Full; with a limit of 0, nothing ever waits.
        if queued >= limit {
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
    pub(super) fn pop_next(&mut self) -> Option<Waiter> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The flow of pod `n` (one set of flows for every test).
    fn flow(n: u8) -> Flow {
        static FLOWS: std::sync::OnceLock<crate::flow::Flows> = std::sync::OnceLock::new();
        FLOWS
            .get_or_init(crate::flow::Flows::new)
            .source(std::net::IpAddr::from([10, 0, 0, n]))
    }

    fn state() -> Queue {
        Queue::default()
    }

    type Wake = Option<oneshot::Receiver<Result<(), Saturated>>>;

    /// Queues `classes` in order under `limit`; returns each one's receiver
    /// (`None`: refused on arrival) and how many calls were pushed out.
    fn fill(s: &mut Queue, classes: &[Class], limit: usize) -> (Vec<Wake>, usize) {
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
    fn release_order(s: &mut Queue, rxs: &mut [Wake]) -> Vec<usize> {
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
}
