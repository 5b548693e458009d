//! Root-only test support: network namespaces (removed on drop), child
//! processes killed on drop, scratch directories, commands that must
//! succeed, and polling with a failure-only deadline.

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Runs `cmd` and panics with its output unless it succeeds.
pub fn check(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` until it holds. `within` only detects a failure: nothing
/// waits for it to pass.
pub fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace with `lo` up, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// `prefix` names the test file, `role` the namespace's part in it.
    pub fn new(prefix: &str, role: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{role}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        check(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) -> Output {
        check(Command::new("ip").arg("-n").arg(&self.0).args(args))
    }

    /// `ip -j ARGS` parsed (`[]` when ip prints nothing).
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ip(&[&["-j"], args].concat());
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return json!([]);
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {text}"))
    }

    /// A command run inside the namespace (`ip netns exec` execs it: the
    /// child's pid is the program's).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    pub fn sysctl(&self, kv: &str) {
        check(self.cmd("sysctl").args(["-qw", kv]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            testkit::issuer::uuid()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
