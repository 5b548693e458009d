//! Which agent process this is, and where it is in its life.
//!
//! During a surge rollout two agents share every port of the node (see
//! [`crate::reuseport`]), so a connection, a scrape or an HTTP probe reaches
//! either one. The instance identity (a random id, the start time, the pod
//! name when the manifests pass `POD_NAME`) goes into the start and drain
//! log lines and into `pod_identity_instance_info`, so an SRE can tell which
//! agent answered; the phase is what the per-instance readiness reports
//! (see [`crate::probe_socket`]).

use std::sync::atomic::{AtomicU8, Ordering};

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Assembling, binding: not accepting yet.
    Starting,
    /// Every credential listener is accepting.
    Serving,
    /// SIGTERM received: listeners closed, in-flight requests finishing.
    Draining,
}

#[derive(Debug)]
pub struct Instance {
    /// 8 hex digits, new for every process (a restarted container is a new instance).
    pub id: String,
    /// The pod, from `POD_NAME` (downward API); empty when unset.
    pub pod: String,
    /// RFC 3339, UTC, whole seconds.
    pub start_time: String,
    phase: AtomicU8,
}

impl Instance {
    /// `started_secs`: the injected clock's now, in seconds since the epoch.
    pub fn new(pod: Option<String>, started_secs: u64) -> Self {
        let start_time = DateTime::from_secs(started_secs as i64)
            .fmt(Format::DateTime)
            .expect("a u64 of seconds since the epoch is within RFC 3339's range");
        Self {
            id: format!("{:08x}", rand::random::<u32>()),
            pod: pod.unwrap_or_default(),
            start_time,
            phase: AtomicU8::new(Phase::Starting as u8),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// Called once the credential accept loops run.
    pub fn set_serving(&self) {
        // Never back from Draining: a late call must not make a draining
        // agent look ready again.
        let _ = self.phase.compare_exchange(
            Phase::Starting as u8,
            Phase::Serving as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub fn set_draining(&self) {
        self.phase.store(Phase::Draining as u8, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let i = Instance::new(Some("agent-x".into()), 1_776_018_901);
        assert_eq!(i.phase(), Phase::Starting);
        i.set_serving();
        assert_eq!(i.phase(), Phase::Serving);
        i.set_draining();
        i.set_serving();
        assert_eq!(i.phase(), Phase::Draining);
        assert_eq!(i.id.len(), 8);
        assert_eq!(i.start_time, "2026-04-12T18:35:01Z");
        assert_eq!(i.pod, "agent-x");
    }
}
