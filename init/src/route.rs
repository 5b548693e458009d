//! Main-table host routes to the agent's addresses via the link.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::addr::host_prefix;
use crate::change::Change;
use crate::error::{InitError, errno_of};
use crate::link::{self, Link};

/// How the main table already routes a host prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    None,
    ViaLink,
    /// Interface index of the first foreign next hop.
    ViaOther(u32),
}

fn table(msg: &RouteMessage) -> u32 {
    // Tables above 255 only fit in RTA_TABLE; the header then says RT_TABLE_COMPAT.
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or_else(|| msg.header.table.into())
}

fn destination(msg: &RouteMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

/// Output interfaces of a route: its `RTA_OIF`, or every multipath next hop.
fn output_interfaces(msg: &RouteMessage) -> Vec<u32> {
    msg.attributes
        .iter()
        .flat_map(|a| match a {
            RouteAttribute::Oif(i) => vec![*i],
            RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// Classifies the main-table routes whose destination is exactly `ip`'s host
/// prefix. Any next hop through another interface is a conflict, even when a
/// route via `link_index` exists as well: the kernel could pick either.
pub(crate) fn classify(routes: &[RouteMessage], ip: IpAddr, link_index: u32) -> Existing {
    let mut found = Existing::None;
    let matching = routes.iter().filter(|r| {
        table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
            && r.header.destination_prefix_length == host_prefix(ip)
            && destination(r) == Some(ip)
    });
    for route in matching {
        for oif in output_interfaces(route) {
            if oif != link_index {
                return Existing::ViaOther(oif);
            }
            found = Existing::ViaLink;
        }
    }
    found
}

/// Adds `ip/32` or `ip/128` via `link` to the main table unless present.
/// Fails with [`InitError::RouteConflict`] when the prefix routes elsewhere.
pub(crate) async fn ensure(handle: &Handle, link: &Link, ip: IpAddr) -> Result<Change, InitError> {
    let prefix = host_prefix(ip);
    let dst = format!("{ip}/{prefix}");
    let dump = match ip {
        IpAddr::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        IpAddr::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    let mut add = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, prefix)
        .expect("a host prefix is valid for its own family")
        .output_interface(link.index);
    if ip.is_ipv4() {
        // What `ip route add <dst> dev <link>` picks for a gatewayless route.
        add = add.scope(RouteScope::Link);
    }
    let add = add.build();
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(dump)
        .execute()
        .try_collect()
        .await
        .map_err(|e| InitError::from_netlink("list routes", dst.as_str(), e))?;
    match classify(&routes, ip, link.index) {
        Existing::ViaLink => return Ok(Change::Present),
        Existing::ViaOther(found_index) => {
            return Err(InitError::RouteConflict {
                dst,
                want_index: link.index,
                want_name: link.name.clone(),
                found_index,
                found_name: link::name_of(handle, found_index).await,
            });
        }
        Existing::None => {}
    }
    match handle.route().add(add).execute().await {
        Ok(()) => Ok(Change::Made),
        Err(e) if errno_of(&e) == Some(Errno::EEXIST) => Ok(Change::Present),
        Err(e) => Err(InitError::from_netlink(
            "add route",
            format!("{dst} via {}", link.name),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteNextHop;

    const OURS: u32 = 5;
    const OTHER: u32 = 7;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(dst: &str, prefix: u8, oif: u32) -> RouteMessage {
        RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip(dst), prefix)
            .unwrap()
            .output_interface(oif)
            .build()
    }

    #[test]
    fn empty_table_has_no_route() {
        assert_eq!(classify(&[], ip("169.254.170.23"), OURS), Existing::None);
    }

    #[test]
    fn own_route_is_present() {
        let routes = [route("169.254.170.23", 32, OURS)];
        assert_eq!(
            classify(&routes, ip("169.254.170.23"), OURS),
            Existing::ViaLink
        );
        let routes = [route("fd00:ec2::23", 128, OURS)];
        assert_eq!(
            classify(&routes, ip("fd00:ec2::23"), OURS),
            Existing::ViaLink
        );
    }

    #[test]
    fn foreign_route_conflicts() {
        let routes = [
            route("169.254.170.23", 32, OURS),
            route("169.254.170.23", 32, OTHER),
        ];
        assert_eq!(
            classify(&routes, ip("169.254.170.23"), OURS),
            Existing::ViaOther(OTHER)
        );
    }

    #[test]
    fn covering_prefixes_and_other_hosts_do_not_count() {
        let routes = [
            route("169.254.0.0", 16, OTHER),
            route("169.254.170.22", 32, OTHER),
            route("fd00:ec2::", 64, OTHER),
        ];
        assert_eq!(
            classify(&routes, ip("169.254.170.23"), OURS),
            Existing::None
        );
        assert_eq!(classify(&routes, ip("fd00:ec2::23"), OURS), Existing::None);
    }

    #[test]
    fn other_tables_do_not_count() {
        let mut local = route("169.254.170.23", 32, OTHER);
        local.header.table = 255; // RT_TABLE_LOCAL
        let mut big = route("169.254.170.23", 32, OTHER);
        big.header.table = 252;
        big.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(
            classify(&[local, big], ip("169.254.170.23"), OURS),
            Existing::None
        );
    }

    #[test]
    fn multipath_with_a_foreign_hop_conflicts() {
        let mut r = route("169.254.170.23", 32, OURS);
        r.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        let hop = |i| {
            let mut h = RouteNextHop::default();
            h.interface_index = i;
            h
        };
        r.attributes
            .push(RouteAttribute::MultiPath(vec![hop(OURS), hop(OTHER)]));
        assert_eq!(
            classify(&[r], ip("169.254.170.23"), OURS),
            Existing::ViaOther(OTHER)
        );
    }
}
