//! Flows: whom a request's cost is charged to. One notion everywhere a
//! request first costs something shared: the connection shares, the request
//! limits and the EKS Auth call queue.
//!
//! A flow is the verified workload (namespace, ServiceAccount, pod uid)
//! when the token's signature was verified, otherwise the caller's source
//! address: pods have their own; host-network callers share the node's.
//! Never an unverified claim: a pod could otherwise name itself anyone's
//! flow, or a fresh flow per request.
//!
//! Flows are keyed hashes (random per process), so a pod cannot aim its
//! flow at another's bucket.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow(u64);

impl Flow {
    /// The hash itself: flows are already uniform, tables need not hash again.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Makes flows; one per agent.
#[derive(Debug, Clone)]
pub struct Flows {
    hasher: ahash::RandomState,
}

impl Flows {
    pub fn new() -> Self {
        Self {
            hasher: ahash::RandomState::new(),
        }
    }

    /// The flow of a verified workload.
    pub fn workload(&self, namespace: &str, service_account: &str, pod_uid: &str) -> Flow {
        Flow(
            self.hasher
                .hash_one((0u8, namespace, service_account, pod_uid)),
        )
    }

    /// The flow of a caller whose token was not verified: its address (an
    /// IPv4-mapped IPv6 address counts as the IPv4 one).
    pub fn source(&self, ip: IpAddr) -> Flow {
        Flow(self.hasher.hash_one((1u8, ip.to_canonical())))
    }
}

impl Default for Flows {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_and_sources_never_share_a_flow() {
        let f = Flows::new();
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(f.source(v4), f.source(mapped));
        assert_ne!(f.source(v4), f.source("10.0.0.8".parse().unwrap()));
        assert_eq!(f.workload("ns", "sa", "u"), f.workload("ns", "sa", "u"));
        assert_ne!(f.workload("ns", "sa", "u"), f.workload("ns", "sa", "v"));
        assert_ne!(f.workload("ns", "sa", "u"), f.workload("ns", "sau", ""));
    }
}
