//! Who holds the credential endpoint's connections, and how many.
//!
//! Contract (the accept loop asks [`Connections::admit`] for every
//! accepted connection):
//! - at most `--max-connections-per-source` from one source address: a pod
//!   holding thousands of connections holds that many, the rest are closed
//!   at once (`reason="source_share"`);
//! - at most `--max-connections` in all; at the cap, a source holding
//!   fewer than the source holding the most still gets in: one of the
//!   heaviest source's connections is closed for it (an idle one if it has
//!   one; one in a request is closed after answering it), so hoarding
//!   cannot keep a neighbour out (`pod_identity_connections_evicted_total`);
//!   otherwise the newcomer is closed (`reason="cap"`);
//! - connections accepted while three quarters of the cap are open get a
//!   short idle deadline ([`NEAR_CAP_IDLE`]);
//! - the agent's own probe connections are exempt: the probe announces its
//!   local address before connecting ([`Exemptions`]), so "alive" does not
//!   depend on a free slot a pod could be hoarding.
//!
//! The table is one mutex taken once per accepted and per closed
//! connection; requests on an open connection never touch it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// Idle deadline of connections accepted near the cap.
pub const NEAR_CAP_IDLE: Duration = Duration::from_secs(1);

/// One open connection, as the table and its task share it.
#[derive(Debug, Default)]
pub struct Conn {
    /// A request is being answered on it.
    busy: AtomicBool,
    /// Chosen to make room; its task closes it gracefully.
    evicted: AtomicBool,
    evict: Notify,
}

impl Conn {
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// Resolves once the connection is chosen to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

#[derive(Default)]
struct Source {
    conns: HashMap<u64, Arc<Conn>>,
    /// Of `conns`, those already chosen to make room.
    evicting: usize,
}

impl Source {
    fn held(&self) -> usize {
        self.conns.len() - self.evicting
    }
}

#[derive(Default)]
struct Table {
    open: usize,
    evicting: usize,
    next_id: u64,
    sources: HashMap<IpAddr, Source>,
}

/// Local addresses the agent's own probe will connect from.
#[derive(Debug, Clone, Default)]
pub struct Exemptions(Arc<Mutex<HashSet<SocketAddr>>>);

impl Exemptions {
    /// Until the guard drops, a connection from `local` is exempt (once).
    pub fn announce(&self, local: SocketAddr) -> Announced {
        self.0.lock().expect("exemptions lock").insert(local);
        Announced {
            exemptions: self.clone(),
            local,
        }
    }

    fn take(&self, peer: SocketAddr) -> bool {
        let mut set = self.0.lock().expect("exemptions lock");
        !set.is_empty() && set.remove(&peer)
    }
}

pub struct Announced {
    exemptions: Exemptions,
    local: SocketAddr,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.exemptions
            .0
            .lock()
            .expect("exemptions lock")
            .remove(&self.local);
    }
}

pub enum Admission {
    Admitted(Held),
    /// The agent's own probe: not counted.
    Exempt,
    /// Closed at once; the `reason` label.
    Refused(&'static str),
}

pub struct Connections {
    cap: usize,
    per_source: usize,
    table: Mutex<Table>,
    exemptions: Exemptions,
    metrics: Option<Arc<Metrics>>,
}

impl Connections {
    pub fn new(
        cap: usize,
        per_source: usize,
        exemptions: Exemptions,
        metrics: Option<Arc<Metrics>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            per_source: per_source.max(1),
            table: Mutex::new(Table::default()),
            exemptions,
            metrics,
        })
    }

    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Admission {
        if self.exemptions.take(peer) {
            return Admission::Exempt;
        }
        let ip = peer.ip().to_canonical();
        let mut t = self.table.lock().expect("connection table lock");
        let mine = t.sources.get(&ip).map_or(0, Source::held);
        if mine >= self.per_source {
            return self.refuse("source_share");
        }
        if t.open - t.evicting >= self.cap && !self.make_room(&mut t, mine) {
            return self.refuse("cap");
        }
        let id = t.next_id;
        t.next_id += 1;
        let conn = Arc::new(Conn::default());
        t.sources
            .entry(ip)
            .or_default()
            .conns
            .insert(id, conn.clone());
        t.open += 1;
        let near_cap = t.open * 4 >= self.cap * 3;
        if let Some(m) = &self.metrics {
            m.open_connections.set(t.open as i64);
            m.connection_sources.set(t.sources.len() as i64);
        }
        Admission::Admitted(Held {
            connections: self.clone(),
            ip,
            id,
            conn,
            near_cap,
        })
    }

    /// At the cap: chooses a connection of the source holding the most, if
    /// it holds at least two more than the newcomer's source (`mine`).
    fn make_room(&self, t: &mut Table, mine: usize) -> bool {
        let Some(heaviest) = t
            .sources
            .values_mut()
            .max_by_key(|s| s.held())
            .filter(|s| s.held() > mine + 1)
        else {
            return false;
        };
        let candidates = || {
            heaviest
                .conns
                .values()
                .filter(|c| !c.evicted.load(Ordering::Relaxed))
        };
        let victim = candidates()
            .find(|c| !c.busy.load(Ordering::Relaxed))
            .or_else(|| candidates().next())
            .cloned()
            .expect("a source holding more than one connection has one not yet evicted");
        victim.evicted.store(true, Ordering::Relaxed);
        victim.evict.notify_one();
        heaviest.evicting += 1;
        t.evicting += 1;
        if let Some(m) = &self.metrics {
            m.evicted_connections.inc();
        }
        true
    }

    fn refuse(&self, reason: &'static str) -> Admission {
        if let Some(m) = &self.metrics {
            m.rejected_connections.with_label_values(&[reason]).inc();
        }
        Admission::Refused(reason)
    }

    fn release(&self, ip: IpAddr, id: u64) {
        let mut t = self.table.lock().expect("connection table lock");
        let Some(source) = t.sources.get_mut(&ip) else {
            return;
        };
        let Some(conn) = source.conns.remove(&id) else {
            return;
        };
        let was_evicting = conn.evicted.load(Ordering::Relaxed);
        source.evicting -= usize::from(was_evicting);
        if source.conns.is_empty() {
            t.sources.remove(&ip);
        }
        t.evicting -= usize::from(was_evicting);
        t.open -= 1;
        if let Some(m) = &self.metrics {
            m.open_connections.set(t.open as i64);
            m.connection_sources.set(t.sources.len() as i64);
        }
    }

    pub fn open(&self) -> usize {
        self.table.lock().expect("connection table lock").open
    }
}

/// An admitted connection's place in the table, given back on drop.
pub struct Held {
    connections: Arc<Connections>,
    ip: IpAddr,
    id: u64,
    pub conn: Arc<Conn>,
    /// Accepted with three quarters of the cap open.
    pub near_cap: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.connections.release(self.ip, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], port))
    }

    fn held(a: Admission) -> Held {
        match a {
            Admission::Admitted(h) => h,
            _ => panic!("expected the connection to be admitted"),
        }
    }

    fn refused(a: Admission) -> &'static str {
        match a {
            Admission::Refused(reason) => reason,
            _ => panic!("expected the connection to be refused"),
        }
    }

    #[test]
    fn one_source_holds_its_share_and_no_more() {
        let c = Connections::new(100, 3, Exemptions::default(), None);
        let mine: Vec<Held> = (0..3).map(|p| held(c.admit(peer(1, p)))).collect();
        assert_eq!(refused(c.admit(peer(1, 9))), "source_share");
        held(c.admit(peer(2, 1)));
        drop(mine);
        held(c.admit(peer(1, 10)));
    }

    /// At the cap, a lighter source gets in and the heaviest gives up an
    /// idle connection; the heaviest cannot push anyone out.
    #[test]
    fn at_the_cap_the_heaviest_source_makes_room() {
        let c = Connections::new(4, 10, Exemptions::default(), None);
        let hog: Vec<Held> = (0..4).map(|p| held(c.admit(peer(1, p)))).collect();
        hog[0].conn.set_busy(true);
        assert_eq!(refused(c.admit(peer(1, 9))), "cap", "the hog cannot grow");
        let victim = held(c.admit(peer(2, 1)));
        let evicted: Vec<bool> = hog
            .iter()
            .map(|h| h.conn.evicted.load(Ordering::Relaxed))
            .collect();
        assert_eq!(evicted.iter().filter(|e| **e).count(), 1);
        assert!(
            !evicted[0],
            "an idle connection is chosen, not the busy one"
        );
        // Three each would be uneven the other way: 3 vs 1 makes room again,
        // 2 vs 2 does not.
        let _second = held(c.admit(peer(2, 2)));
        assert_eq!(refused(c.admit(peer(2, 3))), "cap");
        drop(hog);
        assert_eq!(c.open(), 2);
        drop(victim);
    }

    #[test]
    fn announced_probe_connections_are_exempt_once() {
        let exemptions = Exemptions::default();
        let c = Connections::new(1, 1, exemptions.clone(), None);
        let _full = held(c.admit(peer(1, 1)));
        let probe = peer(9, 40000);
        let guard = exemptions.announce(probe);
        assert!(matches!(c.admit(probe), Admission::Exempt));
        assert_eq!(refused(c.admit(probe)), "cap", "once");
        drop(guard);
        assert!(exemptions.0.lock().unwrap().is_empty());
    }
}
