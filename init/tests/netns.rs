//! Runs init for real inside throwaway network namespaces and checks the
//! kernel's state with `ip -j`. Needs root; skips otherwise, unless CI=true.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use pod_identity_init::{
    Change, InitArgs, InitError, Ipv6Setup, LinkKind, Outcome, Setup, SysctlSetup,
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_eks-pod-identity-init");
const LINK: &str = "pod-id-link0";
const V4: &str = "169.254.170.23";
const V6: &str = "fd00:ec2::23";

/// `true` when the test may touch network namespaces.
fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = "needs root to create network namespaces";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why} (CI=true makes a skip a failure)");
    }
    // Past the harness's output capture: shown next to the test's name.
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "test {test} ... SKIPPED: {why}");
    false
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn check(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace that exists for the guard's lifetime.
struct Netns {
    name: String,
}

impl Netns {
    fn new(test: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pia-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        check(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`, which must succeed.
    fn ip(&self, args: &[&str]) -> Output {
        check(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    fn try_ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ip(&[&["-j"], args].concat());
        let text = String::from_utf8_lossy(&out.stdout);
        // `ip -j` prints nothing at all for an empty route table.
        if text.trim().is_empty() {
            return json!([]);
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {text}"))
    }

    fn exec(&self, program: &str, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    fn init(&self, args: &[&str]) -> Output {
        self.exec(BIN, args)
    }

    fn sysctl(&self, setting: &str) {
        let out = self.exec("sysctl", &["-w", setting]);
        assert!(out.status.success(), "sysctl {setting}: {out:?}");
    }

    fn sysctl_value(&self, key: &str) -> String {
        let out = self.exec("sysctl", &["-n", key]);
        assert!(out.status.success(), "sysctl {key}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn link(&self) -> Option<Value> {
        let out = self.try_ip(&["-j", "-d", "link", "show", "dev", LINK]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j link is JSON");
        v.as_array().and_then(|a| a.first()).cloned()
    }

    fn addresses(&self) -> Vec<Value> {
        let v = self.json(&["addr", "show", "dev", LINK]);
        v[0]["addr_info"].as_array().cloned().unwrap_or_default()
    }

    fn routes(&self, family: &str) -> Vec<Value> {
        self.json(&[family, "route", "show"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The state init owns, as the kernel reports it.
    fn snapshot(&self) -> Value {
        let link = self.link().expect("link exists");
        json!({
            "ifindex": link["ifindex"],
            "flags": link["flags"],
            "kind": link["linkinfo"]["info_kind"],
            "addresses": self.addresses(),
            "routes4": self.routes("-4"),
            "routes6": self.routes("-6"),
        })
    }

    /// Runs `f` on a thread that has entered this namespace, so the library
    /// (not just the binary) can be exercised.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        std::thread::scope(|s| {
            s.spawn(|| {
                // setns(2) moves only this thread; it ends with the scope.
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns");
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(out));
}

/// The JSON log lines of a run.
fn logs(out: &Output) -> Vec<Value> {
    stderr(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has_address(addrs: &[Value], local: &str, prefix: u64) -> bool {
    addrs
        .iter()
        .any(|a| a["local"] == local && a["prefixlen"] == prefix)
}

/// Main-table routes to exactly `dst` (host prefix), by device.
fn route_devs(routes: &[Value], dst: &str) -> Vec<String> {
    routes
        .iter()
        .filter(|r| r["dst"] == dst)
        .map(|r| r["dev"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn flags(link: &Value) -> BTreeSet<String> {
    link["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

/// Both addresses (IPv6 without DAD), both routes via the link, link up.
fn assert_fully_set_up(ns: &Netns, kind: &str) {
    let link = ns.link().expect("link exists");
    assert_eq!(link["linkinfo"]["info_kind"], kind);
    assert!(flags(&link).contains("UP"), "{link}");
    let addrs = ns.addresses();
    assert!(has_address(&addrs, V4, 32), "{addrs:?}");
    let v6 = addrs
        .iter()
        .find(|a| a["local"] == V6)
        .unwrap_or_else(|| panic!("no {V6}: {addrs:?}"));
    assert_eq!(v6["prefixlen"], 128);
    assert_eq!(v6["nodad"], true, "{v6}");
    assert!(v6.get("tentative").is_none(), "{v6}");
    assert_eq!(route_devs(&ns.routes("-4"), V4), [LINK]);
    assert_eq!(route_devs(&ns.routes("-6"), V6), [LINK]);
}

fn dummy_supported() -> bool {
    let ns = Netns::new("probe");
    ns.try_ip(&["link", "add", "probe0", "type", "dummy"])
        .status
        .success()
}

#[test]
fn init_twice_is_idempotent() {
    if !privileged("init_twice_is_idempotent") {
        return;
    }
    for kind in ["bridge", "ifb"] {
        let ns = Netns::new(&format!("twice-{kind}"));
        assert_exit(&ns.init(&["--link-kind", kind]), 0);
        assert_fully_set_up(&ns, kind);
        let before = ns.snapshot();
        let second = ns.init(&["--link-kind", kind]);
        assert_exit(&second, 0);
        assert_eq!(before, ns.snapshot(), "second run changed state ({kind})");
        let done = logs(&second)
            .into_iter()
            .find(|l| l["fields"]["message"] == "done")
            .expect("done line");
        assert_eq!(done["fields"]["changed"], false, "{done}");
    }
}

#[test]
fn default_kind_is_dummy_or_a_bridge_without_the_driver() {
    if !privileged("default_kind_is_dummy_or_a_bridge_without_the_driver") {
        return;
    }
    // What upstream's Helm chart runs: `initialize` with no --link-kind.
    let ns = Netns::new("auto");
    let out = ns.init(&[]);
    assert_exit(&out, 0);
    if dummy_supported() {
        assert_fully_set_up(&ns, "dummy");
    } else {
        assert_fully_set_up(&ns, "bridge");
        let warned = logs(&out).into_iter().any(|l| {
            l["level"] == "WARN"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("creating a bridge instead"))
        });
        assert!(warned, "the fallback is a warning: {}", stderr(&out));
    }
    assert_exit(&ns.init(&[]), 0);
}

#[test]
fn explicit_dummy_works_or_names_the_alternative() {
    if !privileged("explicit_dummy_works_or_names_the_alternative") {
        return;
    }
    let ns = Netns::new("dummy");
    let out = ns.init(&["--link-kind", "dummy"]);
    if dummy_supported() {
        assert_exit(&out, 0);
        assert_fully_set_up(&ns, "dummy");
    } else {
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("`dummy`"), "{err}");
        assert!(err.contains("--link-kind bridge"), "{err}");
        assert!(err.contains("--link-kind ifb"), "{err}");
        let line = logs(&out)
            .into_iter()
            .find(|l| l["level"] == "ERROR")
            .expect("an ERROR log line");
        assert_eq!(line["fields"]["errno"], 95, "EOPNOTSUPP: {line}");
        assert!(ns.link().is_none(), "nothing may be left behind");
    }
}

#[test]
fn conflicting_route_names_both_links() {
    if !privileged("conflicting_route_names_both_links") {
        return;
    }
    let ns = Netns::new("conflict");
    ns.ip(&["link", "add", "other0", "type", "ifb"]);
    ns.ip(&["link", "set", "other0", "up"]);
    ns.ip(&["route", "add", &format!("{V4}/32"), "dev", "other0"]);
    let out = ns.init(&["--link-kind", "ifb"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("expected route 169.254.170.23/32"), "{err}");
    assert!(err.contains("(pod-id-link0)"), "{err}");
    assert!(err.contains("(other0)"), "{err}");
    assert!(err.contains("please remove route and try again"), "{err}");
    assert_eq!(route_devs(&ns.routes("-4"), V4), ["other0"], "left alone");
}

#[test]
fn ipv6_disabled_is_a_warning() {
    if !privileged("ipv6_disabled_is_a_warning") {
        return;
    }
    let ns = Netns::new("nov6");
    ns.sysctl("net.ipv6.conf.all.disable_ipv6=1");
    ns.sysctl("net.ipv6.conf.default.disable_ipv6=1");
    let out = ns.init(&["--link-kind", "ifb"]);
    assert_exit(&out, 0);
    let addrs = ns.addresses();
    assert!(has_address(&addrs, V4, 32), "{addrs:?}");
    assert!(!addrs.iter().any(|a| a["family"] == "inet6"), "{addrs:?}");
    assert_eq!(route_devs(&ns.routes("-4"), V4), [LINK]);
    let warn = logs(&out)
        .into_iter()
        .find(|l| l["level"] == "WARN")
        .unwrap_or_else(|| panic!("no WARN line: {}", stderr(&out)));
    assert_eq!(warn["fields"]["errno"], 13, "EACCES: {warn}");
    // Still idempotent with IPv6 off.
    let before = ns.snapshot();
    assert_exit(&ns.init(&["--link-kind", "ifb"]), 0);
    assert_eq!(before, ns.snapshot());
}

#[test]
fn remove_deletes_the_link_and_is_idempotent() {
    if !privileged("remove_deletes_the_link_and_is_idempotent") {
        return;
    }
    let ns = Netns::new("remove");
    assert_exit(&ns.init(&["--link-kind", "ifb"]), 0);
    assert!(ns.link().is_some());
    assert_exit(&ns.init(&["--remove"]), 0);
    assert!(ns.link().is_none());
    assert!(route_devs(&ns.routes("-4"), V4).is_empty());
    assert!(route_devs(&ns.routes("-6"), V6).is_empty());
    assert_exit(&ns.init(&["--remove"]), 0);
}

/// An address that only covers the agent's (`169.254.170.1/24`) does not
/// make it bindable: init adds the /32 and /128 beside it, and the server
/// can bind both (it used to report success and leave the agent unable to
/// bind: EADDRNOTAVAIL; issue #25). Upstream reuses a covering address; we
/// deliberately do not.
#[test]
fn covering_addresses_do_not_stand_for_the_agents() {
    if !privileged("covering_addresses_do_not_stand_for_the_agents") {
        return;
    }
    let ns = Netns::new("cover");
    // An ifb already present: the default kind (dummy) must not matter.
    ns.ip(&["link", "add", LINK, "type", "ifb"]);
    ns.ip(&["addr", "add", "169.254.170.1/24", "dev", LINK]);
    ns.ip(&["addr", "add", "fd00:ec2::1/64", "dev", LINK, "nodad"]);
    let out = ns.init(&[]);
    assert_exit(&out, 0);
    let addrs = ns.addresses();
    assert!(has_address(&addrs, V4, 32), "{addrs:?}");
    assert!(has_address(&addrs, V6, 128), "{addrs:?}");
    assert!(has_address(&addrs, "169.254.170.1", 24), "left alone");
    assert!(has_address(&addrs, "fd00:ec2::1", 64), "left alone");
    assert_eq!(route_devs(&ns.routes("-4"), V4), [LINK]);
    assert_eq!(route_devs(&ns.routes("-6"), V6), [LINK]);
    let link = ns.link().unwrap();
    assert_eq!(link["linkinfo"]["info_kind"], "ifb");
    assert!(flags(&link).contains("UP"));
    assert_binds(&ns);
    // A second run finds the agent's own addresses and changes nothing.
    let before = ns.snapshot();
    assert_exit(&ns.init(&[]), 0);
    assert_eq!(ns.snapshot(), before);
}

/// The agent's own address with a wider prefix is the agent's address:
/// reused, no /32 beside it.
#[test]
fn the_agents_address_with_a_wider_prefix_is_reused() {
    if !privileged("the_agents_address_with_a_wider_prefix_is_reused") {
        return;
    }
    let ns = Netns::new("wide");
    ns.ip(&["link", "add", LINK, "type", "ifb"]);
    ns.ip(&["addr", "add", &format!("{V4}/24"), "dev", LINK]);
    ns.ip(&["addr", "add", &format!("{V6}/64"), "dev", LINK, "nodad"]);
    assert_exit(&ns.init(&[]), 0);
    let addrs = ns.addresses();
    assert!(!has_address(&addrs, V4, 32), "duplicate IPv4: {addrs:?}");
    assert!(!has_address(&addrs, V6, 128), "duplicate IPv6: {addrs:?}");
    assert!(has_address(&addrs, V4, 24));
    assert!(has_address(&addrs, V6, 64));
    assert_binds(&ns);
}

/// What the server needs from init: a TCP listener on each agent address.
fn assert_binds(ns: &Netns) {
    ns.enter(|| {
        for addr in [format!("{V4}:0"), format!("[{V6}]:0")] {
            if let Err(e) = std::net::TcpListener::bind(&addr) {
                panic!("cannot bind {addr} after init: {e}");
            }
        }
    });
}

fn args(kind: LinkKind) -> InitArgs {
    InitArgs {
        link_name: LINK.to_owned(),
        link_kind: kind,
        remove: false,
        ipv4_address: V4.parse().unwrap(),
        ipv6_address: V6.parse().unwrap(),
    }
}

fn run_in(ns: &Netns, args: &InitArgs) -> Result<Outcome, InitError> {
    ns.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(pod_identity_init::run(args))
    })
}

#[test]
fn library_outcome_describes_the_run() {
    if !privileged("library_outcome_describes_the_run") {
        return;
    }
    let ns = Netns::new("lib");
    let first = run_in(&ns, &args(LinkKind::Ifb)).expect("first run");
    let Outcome::Initialized(setup) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(setup.link_created, Change::Made);
    assert_eq!(setup.link_up, Change::Made);
    assert_eq!(setup.ipv4.address_change, Change::Made);
    assert_eq!(setup.ipv4.route_change, Change::Made);
    assert!(matches!(setup.ipv6, Ipv6Setup::Configured(_)), "{first:?}");
    // A fresh namespace starts with tcp_migrate_req=0.
    assert!(
        matches!(setup.migrate_req, SysctlSetup::Set(Change::Made)),
        "{first:?}"
    );
    assert_eq!(ns.sysctl_value("net.ipv4.tcp_migrate_req"), "1");
    assert!(first.changed());

    let second = run_in(&ns, &args(LinkKind::Bridge)).expect("second run");
    assert!(!second.changed(), "{second:?}");
    assert!(second.ipv6_skipped().is_none());
    assert!(
        matches!(
            second,
            Outcome::Initialized(Setup {
                migrate_req: SysctlSetup::Set(Change::Present),
                ..
            })
        ),
        "{second:?}"
    );

    let mut remove = args(LinkKind::Ifb);
    remove.remove = true;
    assert!(matches!(run_in(&ns, &remove), Ok(Outcome::Removed(_))));
    assert!(matches!(
        run_in(&ns, &remove),
        Ok(Outcome::AlreadyAbsent { .. })
    ));
}

#[test]
fn library_reports_skipped_ipv6_with_errno() {
    if !privileged("library_reports_skipped_ipv6_with_errno") {
        return;
    }
    let ns = Netns::new("libnov6");
    ns.sysctl("net.ipv6.conf.all.disable_ipv6=1");
    ns.sysctl("net.ipv6.conf.default.disable_ipv6=1");
    let outcome = run_in(&ns, &args(LinkKind::Ifb)).expect("IPv4 succeeds");
    let err = outcome.ipv6_skipped().expect("IPv6 skipped");
    assert_eq!(err.errno(), Some(nix::errno::Errno::EACCES), "{err}");
    assert!(
        matches!(
            err,
            InitError::Netlink {
                op: "add address",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn command_line_errors_exit_64() {
    let out = run(Command::new(BIN).arg("--no-such-flag"));
    assert_exit(&out, 64);
    let out = run(Command::new(BIN).args(["--link-kind", "veth"]));
    assert_exit(&out, 64);
    let out = run(Command::new(BIN).args(["-v", "loud"]));
    assert_exit(&out, 64);
    let out = run(Command::new(BIN).arg("--help"));
    assert_exit(&out, 0);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--link-kind"), "{help}");
    assert!(help.contains("--verbosity"), "{help}");
}
