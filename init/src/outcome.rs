//! What a run did, for callers that log or assert on it.

use std::net::IpAddr;

use crate::change::Change;
use crate::error::InitError;
use crate::link::Link;

// One value per run, returned once: boxing the big variant would buy nothing
// and cost callers their patterns.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    /// Link, addresses and routes are in place (IPv6 possibly skipped).
    Initialized(Setup),
    /// `--remove` deleted this link, and with it its addresses and routes.
    Removed(Link),
    /// `--remove` found no link with that name.
    AlreadyAbsent { link: String },
}

#[derive(Debug)]
pub struct Setup {
    /// The link as found or created, now up.
    pub link: Link,
    pub link_created: Change,
    pub link_up: Change,
    pub ipv4: FamilySetup,
    pub ipv6: Ipv6Setup,
    /// `net.ipv4.tcp_migrate_req=1`, for rollouts without resets.
    pub migrate_req: SysctlSetup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilySetup {
    pub address: IpAddr,
    pub address_change: Change,
    pub route_change: Change,
}

/// IPv6 is best effort: nodes and namespaces with IPv6 disabled still get the
/// IPv4 endpoint.
#[derive(Debug)]
pub enum Ipv6Setup {
    Configured(FamilySetup),
    /// The error that stopped IPv6 setup; it was logged as a warning.
    Skipped(InitError),
}

/// A sysctl is best effort too: without it the agent works, and only a
/// rollout may reset the connections queued on the old agent.
#[derive(Debug)]
pub enum SysctlSetup {
    Set(Change),
    /// The error that stopped it; it was logged as a warning.
    Skipped(InitError),
}

impl Outcome {
    /// The error that made init skip IPv6, if it did.
    pub fn ipv6_skipped(&self) -> Option<&InitError> {
        match self {
            Self::Initialized(Setup {
                ipv6: Ipv6Setup::Skipped(e),
                ..
            }) => Some(e),
            _ => None,
        }
    }

    /// Whether this run changed anything in the kernel.
    pub fn changed(&self) -> bool {
        match self {
            Self::Initialized(s) => {
                let v6 = match &s.ipv6 {
                    Ipv6Setup::Configured(f) => [f.address_change, f.route_change],
                    Ipv6Setup::Skipped(_) => [Change::Present; 2],
                };
                let sysctl = match &s.migrate_req {
                    SysctlSetup::Set(c) => *c,
                    SysctlSetup::Skipped(_) => Change::Present,
                };
                [
                    s.link_created,
                    s.link_up,
                    s.ipv4.address_change,
                    s.ipv4.route_change,
                ]
                .into_iter()
                .chain(v6)
                .chain([sysctl])
                .any(|c| c == Change::Made)
            }
            Self::Removed(_) => true,
            Self::AlreadyAbsent { .. } => false,
        }
    }
}
