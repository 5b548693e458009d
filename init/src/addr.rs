//! The agent's host addresses (169.254.170.23/32, fd00:ec2::23/128) on the
//! link.

use std::net::IpAddr;

use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};

use crate::change::Change;
use crate::error::{InitError, errno_of};
use crate::link::Link;

/// Prefix length that covers exactly one address of `ip`'s family.
pub(crate) fn host_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The address an `ifaddrmsg` assigns to its interface. `IFA_LOCAL` wins
/// because on point-to-point IPv4 links `IFA_ADDRESS` is the peer.
fn local_address(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

/// Whether one of `addresses` assigns `ip` itself (with any prefix
/// length). One that only covers it (`169.254.170.1/24` for
/// 169.254.170.23) does not count: the kernel binds only to assigned
/// addresses, so the agent could not listen (EADDRNOTAVAIL). Upstream
/// accepts a covering address; we deliberately do not.
pub(crate) fn assigned(addresses: &[AddressMessage], ip: IpAddr) -> bool {
    addresses.iter().any(|msg| local_address(msg) == Some(ip))
}

/// Adds `ip` as a host address on `link` unless it is already assigned
/// there. IPv6 addresses get `IFA_F_NODAD`: the link has no neighbours to
/// detect a duplicate, and a tentative address cannot be bound.
pub(crate) async fn ensure(handle: &Handle, link: &Link, ip: IpAddr) -> Result<Change, InitError> {
    let prefix = host_prefix(ip);
    let target = || format!("{ip}/{prefix} on {}", link.name);
    let existing: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(link.index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| InitError::from_netlink("list addresses", target(), e))?;
    if assigned(&existing, ip) {
        return Ok(Change::Present);
    }
    let mut request = handle.address().add(link.index, ip, prefix);
    if ip.is_ipv6() {
        let msg = request.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match request.execute().await {
        Ok(()) => Ok(Change::Made),
        Err(e) if errno_of(&e) == Some(Errno::EEXIST) => Ok(Change::Present),
        Err(e) => Err(InitError::from_netlink("add address", target(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::AddressFamily;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn msg(local: &str, prefix_len: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = if ip(local).is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.prefix_len = prefix_len;
        m.attributes.push(AddressAttribute::Local(ip(local)));
        m
    }

    #[test]
    fn only_the_address_itself_counts() {
        let ours = ip("169.254.170.23");
        assert!(assigned(&[msg("169.254.170.23", 32)], ours));
        assert!(assigned(&[msg("169.254.170.23", 24)], ours));
        // Covering is not assigning: nothing could bind 169.254.170.23.
        assert!(!assigned(&[msg("169.254.170.1", 24)], ours));
        assert!(!assigned(
            &[msg("0.0.0.0", 0), msg("169.254.0.0", 16)],
            ours
        ));
        assert!(!assigned(&[msg("fd00:ec2::1", 64)], ip("fd00:ec2::23")));
        assert!(assigned(&[msg("fd00:ec2::23", 64)], ip("fd00:ec2::23")));
        assert!(!assigned(&[msg("::ffff:169.254.170.23", 128)], ours));
        assert!(!assigned(&[], ours));
    }

    #[test]
    fn local_wins_over_peer_address() {
        // `ip addr add 10.9.9.9 peer 169.254.170.23/32`: the peer is not ours.
        let mut m = msg("10.9.9.9", 32);
        m.attributes
            .insert(0, AddressAttribute::Address(ip("169.254.170.23")));
        assert!(!assigned(&[m], ip("169.254.170.23")));
    }
}
