//! The agent's host addresses (169.254.170.23/32, fd00:ec2::23/128) on the
//! link.

use std::net::IpAddr;

use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};

use crate::error::{InitError, errno_of};
use crate::link::Link;
use crate::outcome::Change;

/// Prefix length that covers exactly one address of `ip`'s family.
pub(crate) fn host_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Whether `net/prefix_len` contains `ip`. Different families never contain
/// each other; a prefix longer than the family's width contains nothing.
pub(crate) fn contains(net: IpAddr, prefix_len: u8, ip: IpAddr) -> bool {
    fn masked_eq(a: u128, b: u128, bits: u32, prefix_len: u8) -> bool {
        let prefix_len = u32::from(prefix_len);
        if prefix_len > bits {
            return false;
        }
        let shift = bits - prefix_len;
        // A /0 shifts by the full width, which `checked_shr` reports as None.
        (a ^ b).checked_shr(shift).unwrap_or(0) == 0
    }
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            masked_eq(u32::from(n).into(), u32::from(i).into(), 32, prefix_len)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => masked_eq(n.into(), i.into(), 128, prefix_len),
        _ => false,
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

/// Whether any of `addresses` already covers `ip`.
pub(crate) fn covered_by(addresses: &[AddressMessage], ip: IpAddr) -> bool {
    addresses
        .iter()
        .any(|msg| local_address(msg).is_some_and(|net| contains(net, msg.header.prefix_len, ip)))
}

/// Adds `ip` as a host address on `link` unless an address there already
/// contains it. IPv6 addresses get `IFA_F_NODAD`: the link has no neighbours
/// to detect a duplicate, and a tentative address cannot be bound.
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
    if covered_by(&existing, ip) {
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
    fn host_prefixes_contain_only_themselves() {
        assert!(contains(ip("169.254.170.23"), 32, ip("169.254.170.23")));
        assert!(!contains(ip("169.254.170.22"), 32, ip("169.254.170.23")));
        assert!(contains(ip("fd00:ec2::23"), 128, ip("fd00:ec2::23")));
        assert!(!contains(ip("fd00:ec2::22"), 128, ip("fd00:ec2::23")));
    }

    #[test]
    fn wider_prefixes_contain_their_members() {
        assert!(contains(ip("169.254.170.0"), 24, ip("169.254.170.23")));
        assert!(contains(ip("169.254.170.1"), 24, ip("169.254.170.23")));
        assert!(contains(ip("169.254.0.0"), 16, ip("169.254.170.23")));
        assert!(!contains(ip("169.254.171.0"), 24, ip("169.254.170.23")));
        assert!(contains(ip("fd00:ec2::"), 64, ip("fd00:ec2::23")));
        assert!(!contains(ip("fd00:ec3::"), 64, ip("fd00:ec2::23")));
        assert!(contains(ip("fd00::"), 8, ip("fd00:ec2::23")));
    }

    #[test]
    fn zero_prefix_contains_the_whole_family() {
        assert!(contains(ip("0.0.0.0"), 0, ip("169.254.170.23")));
        assert!(contains(ip("10.1.2.3"), 0, ip("169.254.170.23")));
        assert!(contains(ip("::"), 0, ip("fd00:ec2::23")));
    }

    #[test]
    fn families_and_bad_prefixes_never_match() {
        assert!(!contains(ip("::"), 0, ip("169.254.170.23")));
        assert!(!contains(ip("0.0.0.0"), 0, ip("fd00:ec2::23")));
        assert!(!contains(
            ip("::ffff:169.254.170.23"),
            128,
            ip("169.254.170.23")
        ));
        assert!(!contains(ip("169.254.170.23"), 33, ip("169.254.170.23")));
        assert!(!contains(ip("fd00:ec2::23"), 129, ip("fd00:ec2::23")));
    }

    #[test]
    fn covered_by_existing_addresses() {
        let existing = vec![msg("10.0.0.1", 8), msg("169.254.170.1", 24)];
        assert!(covered_by(&existing, ip("169.254.170.23")));
        assert!(!covered_by(&existing, ip("fd00:ec2::23")));
        assert!(!covered_by(&[msg("fe80::1", 64)], ip("fd00:ec2::23")));
        assert!(!covered_by(&[], ip("169.254.170.23")));
    }

    #[test]
    fn local_wins_over_peer_address() {
        // `ip addr add 10.9.9.9 peer 169.254.170.23/32`: the peer is not ours.
        let mut m = msg("10.9.9.9", 32);
        m.attributes
            .insert(0, AddressAttribute::Address(ip("169.254.170.23")));
        assert!(!covered_by(&[m], ip("169.254.170.23")));
    }
}
