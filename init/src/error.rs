//! The one error type of the crate. Kernel refusals keep their errno so callers
//! (and logs) can tell "IPv6 disabled" (EACCES) from "no driver" (EOPNOTSUPP).

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),

    /// The kernel answered the request with an error code.
    #[error("{op} {target}: {errno}")]
    Netlink {
        op: &'static str,
        target: String,
        errno: Errno,
        #[source]
        source: rtnetlink::Error,
    },

    /// The exchange failed without a kernel error code (socket closed,
    /// unexpected or unparseable reply).
    #[error("{op} {target}: {source}")]
    Protocol {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error(
        "cannot create link {link}: the kernel has no `dummy` link driver \
         (CONFIG_DUMMY not built or module not loadable); \
         use `--link-kind bridge` or `--link-kind ifb` instead (the default, \
         `--link-kind auto`, falls back to a bridge)"
    )]
    NoDummyDriver {
        link: String,
        #[source]
        source: rtnetlink::Error,
    },

    /// Wording follows upstream's `validateRouteLinkMatch`, plus link names.
    #[error(
        "expected route {dst} to be interface index {want_index} ({want_name}) \
         but is {found_index} ({found_name}), please remove route and try again"
    )]
    RouteConflict {
        dst: String,
        want_index: u32,
        want_name: String,
        found_index: u32,
        found_name: String,
    },

    #[error("link {link} disappeared while it was being configured")]
    LinkVanished { link: String },

    /// A `/proc/sys` setting could not be read or written: ENOENT when the
    /// kernel does not have it, EROFS or EACCES when `/proc/sys` is read-only.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl InitError {
    /// The kernel's errno, when the failure came from the kernel.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Netlink { errno, .. } => Some(*errno),
            Self::NoDummyDriver { source, .. } => errno_of(source),
            Self::Connect(e) | Self::Sysctl { source: e, .. } => {
                e.raw_os_error().map(Errno::from_raw)
            }
            _ => None,
        }
    }

    pub(crate) fn from_netlink(
        op: &'static str,
        target: impl Into<String>,
        source: rtnetlink::Error,
    ) -> Self {
        let target = target.into();
        match errno_of(&source) {
            Some(errno) => Self::Netlink {
                op,
                target,
                errno,
                source,
            },
            None => Self::Protocol { op, target, source },
        }
    }
}

/// Netlink NACKs carry a negative errno; ACKs (code 0) are not errors.
pub(crate) fn errno_of(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;
    use std::num::NonZeroI32;

    fn nack(code: i32) -> rtnetlink::Error {
        let mut msg = ErrorMessage::default();
        msg.code = NonZeroI32::new(code);
        rtnetlink::Error::NetlinkError(msg)
    }

    #[test]
    fn nack_keeps_errno() {
        let err = InitError::from_netlink("add address", "fd00:ec2::23/128", nack(-13));
        assert_eq!(err.errno(), Some(Errno::EACCES));
        assert!(matches!(
            err,
            InitError::Netlink {
                op: "add address",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "add address fd00:ec2::23/128: EACCES: Permission denied"
        );
    }

    #[test]
    fn non_kernel_failure_has_no_errno() {
        let err = InitError::from_netlink("get link", "x", rtnetlink::Error::RequestFailed);
        assert_eq!(err.errno(), None);
        assert!(matches!(err, InitError::Protocol { .. }));
    }

    #[test]
    fn route_conflict_names_both_links() {
        let err = InitError::RouteConflict {
            dst: "169.254.170.23/32".into(),
            want_index: 5,
            want_name: "pod-id-link0".into(),
            found_index: 7,
            found_name: "other0".into(),
        };
        assert_eq!(
            err.to_string(),
            "expected route 169.254.170.23/32 to be interface index 5 (pod-id-link0) \
             but is 7 (other0), please remove route and try again"
        );
    }

    #[test]
    fn no_dummy_names_alternatives() {
        let err = InitError::NoDummyDriver {
            link: "pod-id-link0".into(),
            source: nack(-95),
        };
        let text = err.to_string();
        assert!(text.contains("`dummy`"), "{text}");
        assert!(text.contains("--link-kind bridge"), "{text}");
        assert!(text.contains("--link-kind ifb"), "{text}");
        assert_eq!(err.errno(), Some(Errno::EOPNOTSUPP));
    }
}
