//! The link that carries the agent's addresses: lookup, creation, bring-up,
//! deletion.

use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkIfb, LinkUnspec};

use tracing::warn;

use crate::change::Change;
use crate::error::{InitError, errno_of};

/// Link types init can create. All three are software devices that need no
/// peer; `dummy` is upstream's choice, the others exist for kernels built
/// without `CONFIG_DUMMY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LinkKind {
    /// `dummy`, or `bridge` (with a warning) when the kernel has no dummy
    /// driver: upstream's Helm chart runs `initialize` with no way to pick
    /// a kind, and a portless bridge carries the addresses just as well.
    #[default]
    Auto,
    Dummy,
    Bridge,
    Ifb,
}

impl LinkKind {
    /// The kernel's `IFLA_INFO_KIND` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Dummy => "dummy",
            Self::Bridge => "bridge",
            Self::Ifb => "ifb",
        }
    }

    fn message(self, name: &str) -> LinkMessage {
        match self {
            Self::Auto | Self::Dummy => LinkDummy::new(name).build(),
            Self::Bridge => LinkBridge::new(name).build(),
            Self::Ifb => LinkIfb::new(name).build(),
        }
    }
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the kernel reports about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// `IFLA_INFO_KIND`; `None` for devices without one (physical NICs, `lo`).
    pub kind: Option<String>,
    pub up: bool,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut name = String::new();
        let mut kind = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name.clone_from(n),
                LinkAttribute::LinkInfo(infos) => {
                    kind = infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.to_string()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        Self {
            name,
            index: msg.header.index,
            kind,
            up: msg.header.flags.contains(LinkFlags::Up),
        }
    }
}

/// `Ok(None)` when no link has that name.
pub(crate) async fn get(handle: &Handle, name: &str) -> Result<Option<Link>, InitError> {
    let reply = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await;
    match reply {
        Ok(msg) => Ok(msg.map(|m| Link::from_message(&m))),
        Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
        Err(e) => Err(InitError::from_netlink("get link", name, e)),
    }
}

/// Best-effort name for error messages about links we do not own.
pub(crate) async fn name_of(handle: &Handle, index: u32) -> String {
    let reply = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await;
    match reply {
        Ok(Some(msg)) => Link::from_message(&msg).name,
        _ => "unknown".to_owned(),
    }
}

/// Returns the link named `name`, creating it with `kind` if absent. An
/// existing link is used whatever its kind.
pub(crate) async fn ensure(
    handle: &Handle,
    name: &str,
    kind: LinkKind,
) -> Result<(Link, Change), InitError> {
    if let Some(link) = get(handle, name).await? {
        return Ok((link, Change::Present));
    }
    let change = match create(handle, name, kind).await {
        Err(InitError::NoDummyDriver { source, .. }) if kind == LinkKind::Auto => {
            warn!(
                link = name,
                error = %source,
                "the kernel has no dummy link driver; creating a bridge instead"
            );
            create(handle, name, LinkKind::Bridge).await?
        }
        other => other?,
    };
    let link = get(handle, name)
        .await?
        .ok_or_else(|| InitError::LinkVanished {
            link: name.to_owned(),
        })?;
    Ok((link, change))
}

async fn create(handle: &Handle, name: &str, kind: LinkKind) -> Result<Change, InitError> {
    match handle.link().add(kind.message(name)).execute().await {
        Ok(()) => Ok(Change::Made),
        // Another init created it between our lookup and our request.
        Err(e) if errno_of(&e) == Some(Errno::EEXIST) => Ok(Change::Present),
        // rtnl_newlink's answer when no rtnl_link_ops is registered for the
        // kind even after trying to load the module ("Unknown device type").
        Err(e)
            if matches!(kind, LinkKind::Dummy | LinkKind::Auto)
                && errno_of(&e) == Some(Errno::EOPNOTSUPP) =>
        {
            Err(InitError::NoDummyDriver {
                link: name.to_owned(),
                source: e,
            })
        }
        Err(e) => Err(InitError::from_netlink("create link", name, e)),
    }
}

pub(crate) async fn set_up(handle: &Handle, link: &Link) -> Result<Change, InitError> {
    if link.up {
        return Ok(Change::Present);
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .map_err(|e| InitError::from_netlink("set link up", link.name.as_str(), e))?;
    Ok(Change::Made)
}

/// Deletes the link named `name`; the kernel drops its addresses and routes
/// with it. `Ok(None)` when there was nothing to delete.
pub(crate) async fn delete(handle: &Handle, name: &str) -> Result<Option<Link>, InitError> {
    let Some(link) = get(handle, name).await? else {
        return Ok(None);
    };
    match handle.link().del(link.index).execute().await {
        Ok(()) => Ok(Some(link)),
        Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
        Err(e) => Err(InitError::from_netlink("delete link", name, e)),
    }
}
