//! Zero-gap rollouts: a new agent takes over a node without one failed
//! request.
//!
//! In network namespaces (root; skipped otherwise, unless CI=true): a node
//! namespace with `initialize --link-kind bridge`, the EKS Auth emulator and
//! agent A; a pod namespace whose client opens a new connection for every
//! request, ~100 requests/s, every eighth one a new identity (a cache miss,
//! an EKS Auth call), the others a few cached ones. Under that load:
//! `initialize` runs again (it must not touch the link, its addresses or
//! routes: `ip monitor` sees nothing), agent B starts with the same flags,
//! B's own probe socket says ready, A gets SIGTERM, drains and exits, B
//! serves alone. Three times in a row (B becomes the next A), then the same
//! with SIGKILL instead of SIGTERM, where the only failures allowed are
//! requests in flight when A died.
//!
//! Synchronisation is on observable state only (readiness, exits, request
//! counts), never on sleeps; no absolute timing is asserted.
//!
//! On loopback, in-process (no root): two agents share every port, the TCP
//! probe port cannot tell them apart but each probe socket can, and a
//! connection accepted just before a drain still gets its answer.

mod common;

use std::collections::BTreeSet;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::netns::{Netns, Proc, TempDir, check, wait_for};
use common::{World, bin, free_port, get, is_root, skip, testkit_bin};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use testkit::issuer::{Issuer, TokenSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AGENT_V4: &str = "169.254.170.23";
const AGENT_V6: &str = "fd00:ec2::23";
const LINK: &str = "pod-id-link0";
/// ~100 requests/s.
const TICK: Duration = Duration::from_millis(10);
/// Every eighth request carries a token never seen before: 12.5 EKS Auth
/// calls/s, inside the agent's default node-wide cap (20/s), so nothing
/// waits for the cap and the load is the same all along.
const NEW_IDENTITY_EVERY: u64 = 8;
const CACHED_IDENTITIES: usize = 8;
const REPETITIONS: usize = 3;
/// Requests to complete in each phase that is not bounded by an event.
const PHASE_REQUESTS: u64 = 50;
/// Deadlines only detect a failure; nothing waits for them to pass.
const DEADLINE: Duration = Duration::from_secs(60);

/// What init owns, as the kernel reports it: the link's index and
/// flags, its addresses, the main-table routes through it.
fn snapshot(ns: &Netns) -> Value {
    let link = &ns.json(&["-d", "link", "show", "dev", LINK])[0];
    let on_link = |routes: Value| -> Vec<Value> {
        routes
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["dev"] == LINK)
            .collect()
    };
    json!({
            "ifindex": link["ifindex"],
            "flags": link["flags"],
            "kind": link["linkinfo"]["info_kind"],
            "addresses": ns.json(&["addr", "show", "dev", LINK])[0]["addr_info"],
            "routes4": on_link(ns.json(&["-4", "route", "show"])),
            "routes6": on_link(ns.json(&["-6", "route", "show"])),
    })
}

/// Moves the calling thread into namespace `name` (setns(2) is per thread).
fn enter(name: &str) {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// `ip monitor` on the node namespace, with markers: an address added to
/// and removed from `lo` shows up in the stream, so everything between two
/// markers is exactly what happened in between.
struct Monitor {
    _child: Proc,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    fn start(ns: &Netns) -> Self {
        let mut child = Command::new("ip")
            .args(["-n", &ns.0, "monitor", "link", "address", "route"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            _child: Proc(child),
            lines,
        }
    }

    /// Adds and deletes `marker` on `lo` until the monitor shows the
    /// deletion (the first time, `ip monitor` may not have subscribed yet);
    /// returns the events seen before it (one string per event,
    /// continuation lines joined), the marker's own events left out.
    fn mark(&self, ns: &Netns, marker: &str) -> Vec<String> {
        let cidr = format!("{marker}/32");
        let deadline = Instant::now() + DEADLINE;
        let mut events: Vec<String> = Vec::new();
        'marking: loop {
            assert!(
                Instant::now() < deadline,
                "ip monitor never showed marker {marker}"
            );
            ns.ip(&["addr", "add", &cidr, "dev", "lo"]);
            ns.ip(&["addr", "del", &cidr, "dev", "lo"]);
            // Lines arrive as they happen; a quiet spell only means "mark
            // again", never "done".
            while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                if line.starts_with("Deleted") && line.contains(&cidr) {
                    break 'marking;
                }
                match events.last_mut() {
                    Some(last) if line.starts_with(char::is_whitespace) => {
                        last.push('\n');
                        last.push_str(&line);
                    }
                    _ => events.push(line),
                }
            }
        }
        events.retain(|e| !e.contains(marker));
        events
    }
}

/// One credential request of the load.
#[derive(Debug, Clone)]
struct Sample {
    start: Instant,
    end: Instant,
    new_identity: bool,
    outcome: Result<(), String>,
}

/// The pod's client: a new connection per request, ~100 requests/s, until
/// stopped. Runs on a thread that entered the pod namespace.
struct Load {
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<Sample>>>,
}

struct Tokens {
    cached: Vec<String>,
    fresh: Mutex<Vec<String>>,
    issuer: Issuer,
    minted: AtomicU64,
}

impl Tokens {
    fn new(issuer: Issuer, pool: usize) -> Arc<Self> {
        let mint = |i: usize, kind: &str| {
            issuer
                .mint(&TokenSpec::pod("default", "app", &format!("{kind}-{i}")))
                .unwrap()
        };
        let cached = (0..CACHED_IDENTITIES).map(|i| mint(i, "cached")).collect();
        let fresh = (0..pool).map(|i| mint(i, "fresh")).collect();
        Arc::new(Self {
            cached,
            fresh: Mutex::new(fresh),
            issuer,
            minted: AtomicU64::new(0),
        })
    }

    /// A token no request carried before.
    fn fresh(&self) -> String {
        if let Some(t) = self.fresh.lock().unwrap().pop() {
            return t;
        }
        let n = self.minted.fetch_add(1, Ordering::Relaxed);
        self.issuer
            .mint(&TokenSpec::pod("default", "app", &format!("late-{n}")))
            .unwrap()
    }
}

impl Load {
    fn start(pod: &Netns, tokens: Arc<Tokens>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicU64::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        let name = pod.0.clone();
        let (s, b, c) = (stop.clone(), started.clone(), completed.clone());
        let thread = std::thread::spawn(move || {
            enter(&name);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(load_loop(tokens, s, b, c))
        });
        Self {
            stop,
            started,
            completed,
            thread: Some(thread),
        }
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    fn wait_for_more(&self, n: u64, what: &str) {
        let target = self.completed() + n;
        wait_for(what, DEADLINE, || self.completed() >= target);
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().expect("load thread")
    }
}

async fn load_loop(
    tokens: Arc<Tokens>,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
) -> Vec<Sample> {
    let mut tick = tokio::time::interval(TICK);
    // Never faster than the tick, whatever a stall did.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::new();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        let new_identity = n % NEW_IDENTITY_EVERY == NEW_IDENTITY_EVERY - 1;
        let token = if new_identity {
            tokens.fresh()
        } else {
            tokens.cached[n as usize % CACHED_IDENTITIES].clone()
        };
        n += 1;
        let (started, completed) = (started.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            started.fetch_add(1, Ordering::AcqRel);
            let outcome = match tokio::time::timeout(Duration::from_secs(10), request(&token)).await
            {
                Ok(r) => r,
                Err(_) => Err("no answer within 10 s".into()),
            };
            let end = Instant::now();
            completed.fetch_add(1, Ordering::AcqRel);
            Sample {
                start,
                end,
                new_identity,
                outcome,
            }
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        samples.push(t.await.expect("request task"));
    }
    samples
}

/// `GET /v1/credentials` on a new connection, as an SDK does it. Any
/// connection error, reset, missing answer, non-200 or body without
/// credentials is a failure.
async fn request(token: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect((AGENT_V4, 80))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: {AGENT_V4}\r\nAuthorization: {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if buf.is_empty() {
        return Err("connection closed without an answer".into());
    }
    let resp = common::parse_response(&buf);
    if resp.status != 200 || !resp.body.contains("\"AccessKeyId\":\"ASIA") {
        return Err(format!("{} {}", resp.status, resp.body.trim()));
    }
    Ok(())
}

/// The node: namespaces, init done, emulator up.
struct Node {
    ns: Netns,
    pod: Netns,
    dir: TempDir,
    url: String,
    _emulator: Proc,
    agents: AtomicU32,
}

impl Node {
    fn new() -> Self {
        let ns = Netns::new("pia-ho", "node");
        let pod = Netns::new("pia-ho", "pod");
        let init = check(ns.cmd(bin()).args(["initialize", "--link-kind", "bridge"]));
        let log = String::from_utf8_lossy(&init.stderr);
        assert!(log.contains("tcp_migrate_req"), "{log}");
        // The kernel finishes duplicate address detection of the link's own
        // fe80:: address on its own time, which changes the link's state
        // (and shows in `ip monitor`): let it finish before comparing.
        wait_for("DAD on the link's link-local address", DEADLINE, || {
            !ns.json(&["addr", "show", "dev", LINK])
                .to_string()
                .contains("tentative")
        });
        ns.ip(&[
            "link", "add", "vn0", "type", "veth", "peer", "name", "vp0", "netns", &pod.0,
        ]);
        ns.ip(&["addr", "add", "10.232.0.1/24", "dev", "vn0"]);
        ns.ip(&["link", "set", "vn0", "up"]);
        pod.ip(&["addr", "add", "10.232.0.2/24", "dev", "vp0"]);
        pod.ip(&["link", "set", "vp0", "up"]);
        pod.ip(&["route", "add", "default", "via", "10.232.0.1"]);

        let dir = TempDir::new("pia-ho");
        let ready = dir.0.join("emulator.url");
        let emulator = Proc(
            ns.cmd(testkit_bin())
                .args(["emulator", "--listen", "127.0.0.1:0", "--key-file"])
                .arg(dir.0.join("issuer.pem"))
                .arg("--ready-file")
                .arg(&ready)
                .args([
                    "--association",
                    "default/app=arn:aws:iam::111122223333:role/handover",
                    "-v",
                    "warn",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("the emulator", DEADLINE, || ready.exists());
        let url = std::fs::read_to_string(&ready)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_owned();
        Self {
            ns,
            pod,
            dir,
            url,
            _emulator: emulator,
            agents: AtomicU32::new(0),
        }
    }

    fn tokens(&self, pool: usize) -> Arc<Tokens> {
        let pem = std::fs::read_to_string(self.dir.0.join("issuer.pem")).unwrap();
        Tokens::new(
            // The emulator accepts tokens of its own issuer (its URL).
            Issuer::from_pem(&self.url, &pem).unwrap(),
            pool,
        )
    }

    /// An agent with the manifests' flags (its probe socket is its own, as
    /// each pod's emptyDir is).
    fn start_agent(&self) -> Agent {
        let n = self.agents.fetch_add(1, Ordering::Relaxed);
        let name = format!("agent-{n}");
        let socket = self.dir.0.join(format!("{name}.sock"));
        let log = self.dir.0.join(format!("{name}.log"));
        let child = self
            .ns
            .cmd(bin())
            .args([
                "server",
                "--cluster-name",
                "handover",
                "--endpoint",
                &self.url,
                "--region",
                "us-west-2",
                "--drain-timeout",
                "20s",
                // One pod namespace sends everything: not the limit under test.
                "--per-client-rate-limit",
                "1000",
                "--probe-socket",
            ])
            .arg(&socket)
            .env("AWS_ACCESS_KEY_ID", "AKIDHANDOVERFAKE0001")
            .env("AWS_SECRET_ACCESS_KEY", "handover")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("POD_NAME", &name)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let agent = Agent {
            name,
            socket,
            log,
            child: Some(Proc(child)),
        };
        // `ip netns exec` execs the agent, so signals reach it (comm is
        // truncated to 15 bytes).
        wait_for("ip netns exec to exec the agent", DEADLINE, || {
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", agent.pid())).unwrap_or_default();
            comm.starts_with("eks-pod-identit")
        });
        agent
    }

    /// `initialize` again, under load, with the agent serving: the kernel
    /// must see no change at all (no flap of the link, its addresses or
    /// routes, so 169.254.170.23 is never absent).
    fn init_again_changes_nothing(&self) {
        let before = snapshot(&self.ns);
        let monitor = Monitor::start(&self.ns);
        monitor.mark(&self.ns, "10.254.254.254");
        let out = check(
            self.ns
                .cmd(bin())
                .args(["initialize", "--link-kind", "bridge"]),
        );
        let events = monitor.mark(&self.ns, "10.254.254.253");
        let ours: Vec<&String> = events
            .iter()
            .filter(|e| e.contains(LINK) || e.contains(AGENT_V4) || e.contains(AGENT_V6))
            .collect();
        assert!(
            ours.is_empty(),
            "a second initialize changed the node: {ours:#?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            before,
            snapshot(&self.ns),
            "link, addresses or routes changed"
        );
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains("\"changed\":false"), "{log}");
        drop(monitor);
    }
}

struct Agent {
    name: String,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Proc>,
}

impl Agent {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().0.id() as i32)
    }

    /// The kubelet's exec probe: `probe --socket <own socket> readyz`.
    fn probe(&self, check: &str) -> (bool, String) {
        probe(&self.socket, check)
    }

    fn wait_ready(&mut self) {
        let name = self.name.clone();
        wait_for(&format!("{name} to be ready"), DEADLINE, || {
            if let Some(status) = self.child.as_mut().unwrap().0.try_wait().unwrap() {
                panic!("{name} exited ({status:?}):\n{}", self.log_text());
            }
            self.probe("readyz").0
        });
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// SIGSTOP, and the instant by which every thread had stopped: from
    /// then on the agent accepts nothing, and the connections the kernel
    /// gives its listeners wait in their accept queues.
    fn freeze(&self) -> Instant {
        self.signal(Signal::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.pid());
        wait_for(&format!("{} to stop", self.name), DEADLINE, || {
            std::fs::read_dir(&tasks).unwrap().all(|t| {
                let stat =
                    std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                // The state follows the parenthesised command name.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        });
        Instant::now()
    }

    /// Waits for the exit; the status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut proc = self.child.take().unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = proc.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log line with this message.
    fn log_line(&self, message: &str) -> Value {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("{}: no {message:?} line:\n{}", self.name, self.log_text()))
    }
}

fn probe(socket: &Path, check: &str) -> (bool, String) {
    let out = Command::new(bin())
        .args(["probe", "--socket"])
        .arg(socket)
        .arg(check)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// What a repetition saw, for the report and the assertions.
struct Rep {
    samples: Vec<Sample>,
    /// From just before the signal to A until its exit was seen. A dies
    /// some time after kill(2) returns and may accept connections until
    /// then: a request it holds when it dies is in flight in this window.
    dying: (Instant, Instant),
}

impl Rep {
    fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.outcome.is_err()).collect()
    }

    /// Requests that were open at some point while A was dying.
    fn in_flight_while_dying(&self) -> Vec<&Sample> {
        let (signalled, exited) = self.dying;
        self.samples
            .iter()
            .filter(|s| s.start < exited && s.end >= signalled)
            .collect()
    }

    fn report(&self, label: &str) {
        let mut ok: Vec<Duration> = self
            .samples
            .iter()
            .filter(|s| s.outcome.is_ok())
            .map(|s| s.end - s.start)
            .collect();
        ok.sort();
        let pct = |p: f64| {
            ok.get(((ok.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        let new = self.samples.iter().filter(|s| s.new_identity).count();
        eprintln!(
            "{label}: {} requests ({new} new identities), {} failed, {} in flight while A died; latency p50 {:?} p99 {:?} max {:?}",
            self.samples.len(),
            self.failures().len(),
            self.in_flight_while_dying().len(),
            pct(0.5),
            pct(0.99),
            ok.last().copied().unwrap_or_default(),
        );
        for f in self.failures() {
            eprintln!("  failed: {:?}", f.outcome);
        }
    }
}

/// A serving, ready `a`; returns B (ready, serving alone) and what the
/// load saw over: init again → B started → B ready → signal A → A exits →
/// B alone.
fn hand_over(node: &Node, tokens: &Arc<Tokens>, a: &mut Agent, signal: Signal) -> (Agent, Rep) {
    let load = Load::start(&node.pod, tokens.clone());
    load.wait_for_more(PHASE_REQUESTS, "requests to agent A alone");

    node.init_again_changes_nothing();

    let mut b = node.start_agent();
    b.wait_ready();
    assert!(a.probe("readyz").0, "A stays ready while B starts");
    load.wait_for_more(PHASE_REQUESTS, "requests while A and B both serve");

    let signalled = Instant::now();
    a.signal(signal);
    let status = a.wait_exit();
    let exited = Instant::now();
    if signal == Signal::SIGTERM {
        assert!(status.success(), "A drains and exits 0: {status:?}");
        let drained = a.log_line("drained");
        assert_eq!(drained["clean"], true, "{drained}");
        let (ready, answer) = a.probe("readyz");
        assert!(!ready, "a stopped agent is not ready: {answer}");
    }
    assert!(b.probe("readyz").0, "B is ready alone");
    load.wait_for_more(PHASE_REQUESTS, "requests to agent B alone");
    let samples = load.finish();
    (
        b,
        Rep {
            samples,
            dying: (signalled, exited),
        },
    )
}

/// Freezes `a` (SIGSTOP) while `b` serves, lets the load queue requests on
/// `a`'s listeners, then `stop`s it. Returns what the load saw and when `a`
/// was frozen.
fn queue_on_frozen(
    node: &Node,
    tokens: &Arc<Tokens>,
    a: &mut Agent,
    stop: impl FnOnce(&Agent),
) -> (Vec<Sample>, Instant) {
    let load = Load::start(&node.pod, tokens.clone());
    load.wait_for_more(PHASE_REQUESTS, "requests to both agents");
    let frozen = a.freeze();
    // Half of them, by the kernel's hash, go to the frozen agent.
    let target = load.started() + 20;
    wait_for("requests sent after the freeze", DEADLINE, || {
        load.started() >= target
    });
    stop(a);
    let status = a.wait_exit();
    eprintln!("{} exited: {status:?}", a.name);
    load.wait_for_more(PHASE_REQUESTS, "requests to the remaining agent");
    (load.finish(), frozen)
}

fn privileged() -> bool {
    is_root() || !skip("needs root to create network namespaces")
}

/// The first agent of a node: it is alone, so it says nothing about sharing.
fn first_agent(node: &Node) -> Agent {
    let mut a = node.start_agent();
    a.wait_ready();
    let serving = a.log_line("serving");
    assert_eq!(serving["reuseport"], true, "{serving}");
    assert_eq!(serving["tcp_migrate_req"], "Some(true)", "{serving}");
    assert_eq!(serving["pod"], a.name, "{serving}");
    assert!(
        !a.log_text().contains("another process already listens"),
        "{}",
        a.log_text()
    );
    a
}

#[test]
fn sigterm_hand_over_loses_nothing() {
    if !privileged() {
        return;
    }
    let node = Node::new();
    let tokens = node.tokens(400);
    let mut a = first_agent(&node);
    let mut ids = BTreeSet::new();
    ids.insert(a.log_line("serving")["instance_id"].to_string());
    for rep in 1..=REPETITIONS {
        let (b, seen) = hand_over(&node, &tokens, &mut a, Signal::SIGTERM);
        seen.report(&format!("SIGTERM hand-over {rep}"));
        assert!(
            seen.failures().is_empty(),
            "hand-over {rep}: {} of {} requests failed",
            seen.failures().len(),
            seen.samples.len()
        );
        // The new agent saw the old one and said so; it is a new instance.
        assert!(
            b.log_text().contains("another process already listens"),
            "{}",
            b.log_text()
        );
        assert!(
            ids.insert(b.log_line("serving")["instance_id"].to_string()),
            "instance ids are unique"
        );
        a = b;
    }
}

#[test]
fn sigkill_hand_over_loses_only_requests_in_flight() {
    if !privileged() {
        return;
    }
    let node = Node::new();
    let tokens = node.tokens(400);
    let mut a = first_agent(&node);
    for rep in 1..=REPETITIONS {
        let (b, seen) = hand_over(&node, &tokens, &mut a, Signal::SIGKILL);
        seen.report(&format!("SIGKILL hand-over {rep}"));
        let in_flight = seen.in_flight_while_dying();
        for f in seen.failures() {
            assert!(
                in_flight.iter().any(|s| std::ptr::eq(*s, f)),
                "hand-over {rep}: a request failed that was not in flight while A died: {f:?}"
            );
        }
        a = b;
    }
}

// ---------------------------------------------------------------------------
// In-process, on loopback: no root needed.

/// Two agents on the same ports. B must verify tokens and cannot load
/// signing keys, so it is not ready; A is. The shared TCP probe port answers for whichever agent the
/// kernel picked; each probe socket answers for its own agent.
#[tokio::test]
async fn probe_sockets_tell_two_agents_apart_where_the_shared_port_cannot() {
    let w = World::start().await;
    let dir = TempDir::new("pia-ho");
    let mut args = w.agent_args(&[]);
    args.port = free_port();
    args.probe_port = free_port();
    args.metrics_port = free_port();
    let mut a_args = args.clone();
    a_args.probe_socket = Some(dir.0.join("a.sock"));
    let mut b_args = args;
    b_args.probe_socket = Some(dir.0.join("b.sock"));
    b_args.verify.jwks_source = format!("file:{}", dir.0.join("no-such-jwks.json").display());
    b_args.verify.token_issuer = Some(w.url());
    // Readiness waits for keys only when tokens must be verified.
    b_args.verify.strict_verification = true;
    let a = w.agent_with(a_args, None).await;
    let b = w.agent_with(b_args, None).await;
    assert_eq!(a.addr, b.addr, "one credential address, two agents");
    assert_eq!(a.probe, b.probe, "one probe port, two agents");

    let ask = |sock: &str| {
        let path = dir.0.join(sock);
        tokio::task::spawn_blocking(move || probe(&path, "readyz"))
    };
    assert!(ask("a.sock").await.unwrap().0, "A is ready");
    let (ready, answer) = ask("b.sock").await.unwrap();
    assert!(!ready, "B is not: {answer}");
    assert!(answer.contains("signing keys"), "{answer}");

    // Each new connection to the shared port lands on either agent.
    let mut statuses = BTreeSet::new();
    for _ in 0..200 {
        statuses.insert(
            get(a.probe, "/readyz", Some("localhost"), None)
                .await
                .status,
        );
        if statuses.len() == 2 {
            break;
        }
    }
    assert_eq!(
        statuses,
        BTreeSet::from([200, 503]),
        "the shared probe port answers for both agents"
    );

    // (B, without keys, would refuse every token: exactly why it must not be
    // reported ready.) Each instance is named in its metrics.
    let info = String::from_utf8(a.metrics.render()).unwrap();
    assert!(info.contains("pod_identity_instance_info{"), "{info}");
    assert!(a.stop().await);
    assert!(b.stop().await);
}

/// A connection the agent accepted just before SIGTERM, whose request had
/// not arrived yet, is answered, not reset (hyper alone would close it
/// unread); an idle keep-alive connection is closed cleanly.
#[tokio::test]
async fn a_drain_answers_connections_accepted_before_it() {
    let w = World::start().await;
    let agent = w.agent(&["--drain-timeout", "10s"]).await;
    let token = w.token("default", "app", "drain");
    let addr = agent.addr;
    // Warm, so the drained request is a hit.
    assert_eq!(agent.creds(&token).await.status, 200);

    let mut fresh = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(
        format!(
            "GET /v1/credentials HTTP/1.1\r\nHost: {AGENT_V4}\r\nAuthorization: {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut first = vec![0u8; 4096];
    let n = idle.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "keep-alive answer");
    // Both are accepted (not merely queued, which only a second agent could take over).
    let metrics = agent.metrics.clone();
    assert!(
        common::eventually(Duration::from_secs(20), || metrics.open_connections.get()
            == 2)
        .await
    );

    let stopping = tokio::spawn(agent.stop());
    // The drain has begun once the listener is gone.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    fresh
        .write_all(
            format!(
                "GET /v1/credentials HTTP/1.1\r\nHost: {AGENT_V4}\r\nAuthorization: {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Answered, then closed (read_to_end ends): the agent keeps no
    // connection open once it drains.
    let mut buf = Vec::new();
    fresh.read_to_end(&mut buf).await.expect("no reset");
    let resp = common::parse_response(&buf);
    assert_eq!(resp.status, 200, "{resp:?}");

    let mut rest = Vec::new();
    let n = idle
        .read_to_end(&mut rest)
        .await
        .expect("closed, not reset");
    assert_eq!(
        n, 0,
        "an idle keep-alive connection is closed without a word"
    );
    assert!(stopping.await.unwrap(), "drained in time");
}

/// The kernel hands the connections queued on a listener that closes to the
/// other agent's listener only with `net.ipv4.tcp_migrate_req=1`. A frozen
/// agent makes the queue deterministic: everything sent to it after the
/// freeze waits there. Without the sysctl those requests are reset when it
/// is killed; with it (set by `initialize`) they are served by the new agent,
/// whether the old one is killed or terminated.
#[test]
fn queued_requests_move_to_the_new_agent() {
    if !privileged() {
        return;
    }
    let node = Node::new();
    let tokens = node.tokens(400);
    let mut a = first_agent(&node);

    // Control: without the sysctl, killing the frozen agent resets what
    // queued on it.
    check(
        node.ns
            .cmd("sysctl")
            .args(["-qw", "net.ipv4.tcp_migrate_req=0"]),
    );
    let mut b = node.start_agent();
    b.wait_ready();
    let (samples, frozen) = queue_on_frozen(&node, &tokens, &mut a, |a| a.signal(Signal::SIGKILL));
    let lost: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.start > frozen && s.outcome.is_err())
        .collect();
    eprintln!(
        "tcp_migrate_req=0, SIGKILL: {} of {} requests sent after the freeze failed",
        lost.len(),
        samples.iter().filter(|s| s.start > frozen).count()
    );
    assert!(
        !lost.is_empty(),
        "the control must lose the queued requests"
    );

    // `initialize` puts the sysctl back (and changes nothing else).
    let out = check(
        node.ns
            .cmd(bin())
            .args(["initialize", "--link-kind", "bridge"]),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("\"message\":\"set sysctl\""), "{log}");

    // SIGKILL: what queued on the frozen agent is served by the new one.
    let mut c = node.start_agent();
    c.wait_ready();
    let (samples, frozen) = queue_on_frozen(&node, &tokens, &mut b, |b| b.signal(Signal::SIGKILL));
    let after: Vec<&Sample> = samples.iter().filter(|s| s.start > frozen).collect();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.outcome.is_err()).collect();
    eprintln!(
        "tcp_migrate_req=1, SIGKILL: {} requests sent after the freeze, {} failed in all",
        after.len(),
        failed.len()
    );
    for f in &failed {
        assert!(
            f.start < frozen,
            "only requests the killed agent had accepted may fail: {f:?}"
        );
    }

    // SIGTERM: the frozen agent resumes into its drain; nothing is lost.
    let mut d = node.start_agent();
    d.wait_ready();
    let (samples, frozen) = queue_on_frozen(&node, &tokens, &mut c, |c| {
        c.signal(Signal::SIGTERM);
        c.signal(Signal::SIGCONT);
    });
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.outcome.is_err()).collect();
    eprintln!(
        "tcp_migrate_req=1, SIGTERM: {} requests sent after the freeze, {} failed",
        samples.iter().filter(|s| s.start > frozen).count(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(d.probe("readyz").0);
}
