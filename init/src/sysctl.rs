//! Kernel settings of the node's network namespace that the agent relies on.
//!
//! `net.ipv4.tcp_migrate_req` (Linux ≥ 5.14): during a surge rollout two
//! agents share every port with `SO_REUSEPORT`. When the old one closes its
//! listeners, the kernel resets the connections queued on them and not yet
//! accepted, unless this is 1: then it moves them (and half-open ones) to
//! the new agent's listeners. `/proc/sys/net` shows the network namespace of
//! the process that opens it: the host's, for the hostNetwork init container.

use std::path::Path;

use crate::change::Change;
use crate::error::InitError;

/// A sysctl by its dotted name and its `/proc/sys` file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sysctl {
    pub key: &'static str,
    pub path: &'static str,
}

pub(crate) const TCP_MIGRATE_REQ: Sysctl = Sysctl {
    key: "net.ipv4.tcp_migrate_req",
    path: "/proc/sys/net/ipv4/tcp_migrate_req",
};

/// Sets `sysctl` to `value` unless it already has it: a second init (the
/// next agent's, while the old one serves) writes nothing.
pub(crate) fn ensure(sysctl: Sysctl, value: &str) -> Result<Change, InitError> {
    ensure_at(sysctl.key, Path::new(sysctl.path), value)
}

fn ensure_at(key: &'static str, path: &Path, value: &str) -> Result<Change, InitError> {
    let err = |source| InitError::Sysctl { key, source };
    if std::fs::read_to_string(path).map_err(err)?.trim() == value {
        return Ok(Change::Present);
    }
    std::fs::write(path, value).map_err(err)?;
    Ok(Change::Made)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    #[test]
    fn writes_only_when_different() {
        let path = std::env::temp_dir().join(format!("pia-sysctl-{}", std::process::id()));
        std::fs::write(&path, "0\n").unwrap();
        assert_eq!(ensure_at("t", &path, "1").unwrap(), Change::Made);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1");
        // The kernel prints a newline after the value.
        std::fs::write(&path, "1\n").unwrap();
        assert_eq!(ensure_at("t", &path, "1").unwrap(), Change::Present);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_absent_setting_keeps_its_errno() {
        let err = ensure_at(
            "net.ipv4.no_such_setting",
            Path::new("/proc/sys/net/ipv4/no_such_setting"),
            "1",
        )
        .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENOENT));
        assert!(
            err.to_string()
                .starts_with("sysctl net.ipv4.no_such_setting: "),
            "{err}"
        );
    }
}
