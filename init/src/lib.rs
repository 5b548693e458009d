//! Privileged node setup for the pod identity agent: the link that carries
//! 169.254.170.23 and fd00:ec2::23, spoken over rtnetlink only (no AWS SDK, no
//! HTTP), so the code that runs with `CAP_NET_ADMIN` stays small.
//!
//! - [`link`]: get-or-create, bring up and delete the link.
//! - `addr`: host addresses on the link (IPv6 with `IFA_F_NODAD`).
//! - `route`: main-table host routes via the link, conflict detection.
//! - `sysctl`: `net.ipv4.tcp_migrate_req=1`, so a rollout hands queued
//!   connections from the old agent to the new one instead of resetting them.
//! - [`error`]: [`InitError`], keeping the kernel's errno.
//! - [`change`]: [`Change`], what one step did.
//! - [`outcome`]: [`Outcome`], what a run did or skipped.
//!
//! [`run`] is the whole contract: idempotent, IPv4 failures are fatal, IPv6
//! and sysctl failures are warnings recorded in the outcome. A run against
//! the state it produced sends no change to the kernel (it only reads), so
//! the next agent's init can run while the old agent serves: the link, its
//! addresses and routes never flap.
#![forbid(unsafe_code)]

mod addr;
pub mod change;
pub mod error;
pub mod link;
pub mod outcome;
mod route;
mod sysctl;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracing::{info, warn};

pub use change::Change;
pub use error::InitError;
pub use link::{Link, LinkKind};
pub use outcome::{FamilySetup, Ipv6Setup, Outcome, Setup, SysctlSetup};

/// The `eks-pod-identity-init` command line (the packaging tests parse the
/// manifests' init containers with it).
#[derive(Debug, clap::Parser)]
#[command(name = "eks-pod-identity-init", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub init: InitArgs,
    /// Log level: trace, debug, info, warn, error or off.
    #[arg(short = 'v', long = "verbosity", default_value = "info")]
    pub verbosity: tracing::level_filters::LevelFilter,
}

/// Flags of `initialize` / `eks-pod-identity-init`. Logging flags belong to
/// the binary that flattens this.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Name of the link that carries the agent's addresses.
    #[arg(long, default_value = "pod-id-link0")]
    pub link_name: String,
    /// Kind of link to create when it does not exist (an existing link is used
    /// whatever its kind). auto: dummy, or bridge on kernels without the
    /// dummy driver.
    #[arg(long, value_enum, default_value_t = LinkKind::Auto)]
    pub link_kind: LinkKind,
    /// Delete the link (its addresses and routes go with it) instead of
    /// creating it. Succeeds when the link does not exist.
    #[arg(long)]
    pub remove: bool,
    /// IPv4 address of the agent.
    #[arg(long, default_value = "169.254.170.23", hide = true)]
    pub ipv4_address: Ipv4Addr,
    /// IPv6 address of the agent.
    #[arg(long, default_value = "fd00:ec2::23", hide = true)]
    pub ipv6_address: Ipv6Addr,
}

/// Sets up (or with `--remove`, deletes) the link, its addresses and routes.
/// Running it again against the state it produced changes nothing.
pub async fn run(args: &InitArgs) -> Result<Outcome, InitError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(InitError::Connect)?;
    let connection = tokio::spawn(connection);
    let result = if args.remove {
        remove(&handle, &args.link_name).await
    } else {
        setup(&handle, args).await
    };
    connection.abort();
    result
}

async fn remove(handle: &rtnetlink::Handle, name: &str) -> Result<Outcome, InitError> {
    match link::delete(handle, name).await? {
        Some(link) => {
            info!(link = %link.name, index = link.index, "deleted link");
            Ok(Outcome::Removed(link))
        }
        None => {
            info!(link = %name, "link absent, nothing to remove");
            Ok(Outcome::AlreadyAbsent {
                link: name.to_owned(),
            })
        }
    }
}

async fn setup(handle: &rtnetlink::Handle, args: &InitArgs) -> Result<Outcome, InitError> {
    let (mut link, link_created) = link::ensure(handle, &args.link_name, args.link_kind).await?;
    let found_kind = link.kind.as_deref().unwrap_or("none");
    match link_created {
        Change::Made => {
            info!(link = %link.name, index = link.index, kind = found_kind, "created link")
        }
        Change::Present
            if args.link_kind != LinkKind::Auto && found_kind != args.link_kind.as_str() =>
        {
            info!(
                link = %link.name,
                index = link.index,
                kind = found_kind,
                requested_kind = %args.link_kind,
                "link exists with another kind, using it"
            )
        }
        Change::Present => {
            info!(link = %link.name, index = link.index, kind = found_kind, "link exists")
        }
    }

    let v4 = IpAddr::V4(args.ipv4_address);
    let v6 = IpAddr::V6(args.ipv6_address);
    // With IFA_F_NODAD the IPv6 address never goes tentative, so adding it
    // before the link is up leaves it usable the moment the link comes up.
    let v4_address = address(handle, &link, v4).await?;
    let v6_address = address(handle, &link, v6).await;
    let link_up = link::set_up(handle, &link).await?;
    if link_up == Change::Made {
        info!(link = %link.name, "link set up");
        link.up = true;
    }
    // Routes need the link up: IPv4 refuses a next hop on a down device.
    let ipv4 = FamilySetup {
        address: v4,
        address_change: v4_address,
        route_change: host_route(handle, &link, v4).await?,
    };
    let ipv6 = match v6_address {
        Ok(address_change) => host_route(handle, &link, v6)
            .await
            .map(|route_change| FamilySetup {
                address: v6,
                address_change,
                route_change,
            }),
        Err(e) => Err(e),
    };
    let ipv6 = match ipv6 {
        Ok(family) => Ipv6Setup::Configured(family),
        Err(e) => {
            warn!(
                link = %link.name,
                address = %v6,
                error = %e,
                errno = e.errno().map(|n| n as i32),
                "IPv6 setup failed, continuing with IPv4 only"
            );
            Ipv6Setup::Skipped(e)
        }
    };
    let migrate_req = migrate_req();
    Ok(Outcome::Initialized(Setup {
        link,
        link_created,
        link_up,
        ipv4,
        ipv6,
        migrate_req,
    }))
}

fn migrate_req() -> SysctlSetup {
    let key = sysctl::TCP_MIGRATE_REQ.key;
    match sysctl::ensure(sysctl::TCP_MIGRATE_REQ, "1") {
        Ok(change) => {
            match change {
                Change::Made => info!(sysctl = key, value = 1, "set sysctl"),
                Change::Present => info!(sysctl = key, value = 1, "sysctl already set"),
            }
            SysctlSetup::Set(change)
        }
        Err(e) => {
            warn!(
                sysctl = key,
                error = %e,
                errno = e.errno().map(|n| n as i32),
                "cannot set {key}=1 (needs Linux >= 5.14 and a writable /proc/sys): \
                 a rolling update may reset the connections queued on the old agent"
            );
            SysctlSetup::Skipped(e)
        }
    }
}

async fn address(handle: &rtnetlink::Handle, link: &Link, ip: IpAddr) -> Result<Change, InitError> {
    let change = addr::ensure(handle, link, ip).await?;
    match change {
        Change::Made => info!(link = %link.name, address = %ip, "added address"),
        Change::Present => info!(link = %link.name, address = %ip, "address already present"),
    }
    Ok(change)
}

async fn host_route(
    handle: &rtnetlink::Handle,
    link: &Link,
    ip: IpAddr,
) -> Result<Change, InitError> {
    let change = route::ensure(handle, link, ip).await?;
    match change {
        Change::Made => info!(link = %link.name, destination = %ip, "added route"),
        Change::Present => info!(link = %link.name, destination = %ip, "route already present"),
    }
    Ok(change)
}
