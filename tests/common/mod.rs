//! Shared test support: a real issuer + EKS Auth emulator + agent on
//! 127.0.0.1:0, and a raw HTTP/1.1 client that sends exactly the headers a
//! test asks for (no implicit Host).
#![allow(dead_code, unused_imports)]

pub mod netns;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use pod_identity_agent::app;
use pod_identity_agent::cli::ServerArgs;
use pod_identity_agent::clock::SharedClock;
use testkit::agent::loopback_server;
use testkit::emulator::{Association, Emulator, RunningEmulator};
use testkit::issuer::{Issuer, TokenSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const CLUSTER: &str = "test-cluster";
pub const NODE_AKID: &str = "AKIDTESTNODEFAKE0001";
pub const NODE_SECRET: &str = "test-node-secret";
pub const ROLE: &str = "arn:aws:iam::111122223333:role/test-role";

/// True when tests must not skip (CI).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Skips (returns true) outside CI; fails under CI. The line goes to the
/// process's stderr past the harness's capture, so `cargo test` shows
/// `test <name> ... SKIPPED: <why>` without `--nocapture`.
pub fn skip(why: &str) -> bool {
    assert!(!in_ci(), "cannot skip under CI=true: {why}");
    use std::io::Write;
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    let _ = writeln!(std::io::stderr().lock(), "test {name} ... SKIPPED: {why}");
    true
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub struct World {
    pub issuer: Arc<Issuer>,
    pub emulator: Arc<Emulator>,
    pub emu: RunningEmulator,
    /// The world's time: the emulator's, the agents' (unless a test gives
    /// one its own), and minted tokens' `iat`/`nbf`.
    pub clock: SharedClock,
}

impl World {
    /// Issuer + emulator with associations default/app and ns2/app2.
    pub async fn start() -> Self {
        Self::start_with_clock(pod_identity_agent::clock::system()).await
    }

    /// A world whose time only moves when the test says so, starting on a
    /// whole second of now: tokens, agents and the emulator agree on it.
    pub async fn with_manual_clock() -> (Self, Arc<pod_identity_agent::clock::ManualClock>) {
        let clock = pod_identity_agent::clock::ManualClock::at_ms(
            testkit::issuer::now_secs() as u64 * 1000,
        );
        (Self::start_with_clock(clock.clone()).await, clock)
    }

    /// The emulator's time (token expiry, credential expiration) follows
    /// `clock`; give the agent the same clock.
    pub async fn start_with_clock(clock: SharedClock) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = Arc::new(Issuer::generate(url).unwrap());
        let emulator = Arc::new(
            Emulator::new(issuer.clone())
                .with_cluster(CLUSTER)
                .with_clock(clock.clone()),
        );
        emulator.associate(Association::new("default", "app", ROLE));
        emulator.associate(Association::new("ns2", "app2", ROLE));
        emulator.add_node_credentials(NODE_AKID, NODE_SECRET);
        let emu = RunningEmulator::start(emulator.clone(), listener);
        Self {
            issuer,
            emulator,
            emu,
            clock,
        }
    }

    /// A pod token issued now (by the world's clock).
    pub fn token(&self, ns: &str, sa: &str, pod: &str) -> String {
        self.spec_token(&TokenSpec::pod(ns, sa, pod))
    }

    /// `spec`, issued now by the world's clock unless it says when.
    pub fn spec_token(&self, spec: &TokenSpec) -> String {
        let mut spec = spec.clone();
        spec.issued_at = spec
            .issued_at
            .or_else(|| Some(self.clock.now_secs() as i64));
        self.issuer.mint(&spec).unwrap()
    }

    pub fn url(&self) -> String {
        self.emu.url()
    }

    /// The `server` flags a test agent starts with, before `extra`.
    pub fn agent_args(&self, extra: &[&str]) -> ServerArgs {
        loopback_server(
            CLUSTER,
            &self.url(),
            0,
            "127.0.0.1,169.254.170.23,fd00:ec2::23",
            extra,
        )
        .unwrap()
    }

    pub async fn agent(&self, extra: &[&str]) -> Agent {
        self.agent_with(self.agent_args(extra), None).await
    }

    /// An agent with `args`; its clock is `clock`, else the world's.
    pub async fn agent_with(&self, args: ServerArgs, clock: Option<SharedClock>) -> Agent {
        self.start_agent(args, clock, pod_identity_agent::env::Env::empty())
            .await
    }

    /// An agent with `args` that sees the environment `env` (a pod's
    /// `KUBERNETES_SERVICE_*`, a proxy), on the world's clock.
    pub async fn agent_with_env(
        &self,
        args: ServerArgs,
        env: pod_identity_agent::env::Env,
    ) -> Agent {
        self.start_agent(args, None, env).await
    }

    async fn start_agent(
        &self,
        args: ServerArgs,
        clock: Option<SharedClock>,
        env: pod_identity_agent::env::Env,
    ) -> Agent {
        let mut opts = app::Options::new(args.clone());
        opts.clock = clock.unwrap_or_else(|| self.clock.clone());
        opts.credentials = Some(SharedCredentialsProvider::new(Credentials::new(
            NODE_AKID,
            NODE_SECRET,
            None,
            None,
            "test",
        )));
        opts.env = env;
        Agent::start(opts).await
    }
}

pub struct Agent {
    pub addr: SocketAddr,
    pub probe: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub cache: pod_identity_agent::cache::CredentialCache,
    pub metrics: Arc<pod_identity_agent::metrics::Metrics>,
    /// The key store, when the agent verifies tokens.
    pub keys: Option<Arc<pod_identity_agent::jwks::KeyStore>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<bool>>,
}

impl Agent {
    pub async fn start(opts: app::Options) -> Self {
        let args = opts.args.clone();
        let built = app::build(opts).await.unwrap();
        let cache = built.cache.clone();
        let metrics = built.metrics.clone();
        let keys = built.keys.clone();
        let listeners = app::bind(&args).await.unwrap();
        let addr = listeners.credential_addrs()[0];
        let probe = listeners.probe_addr();
        let metrics_addr = listeners.metrics_addr();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(app::run(built, listeners, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            probe,
            metrics_addr,
            cache,
            metrics,
            keys,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// One periodic key refresh, now (instead of waiting for the timer).
    pub async fn refresh_keys(&self) {
        self.keys
            .as_ref()
            .expect("the agent verifies tokens")
            .refresh()
            .await;
    }

    /// Starts the drain; returns whether it finished within the grace period.
    pub async fn stop(mut self) -> bool {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    pub async fn creds(&self, token: &str) -> Resp {
        get(
            self.addr,
            "/v1/credentials",
            Some("169.254.170.23"),
            Some(token),
        )
        .await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET path` with exactly the given Host and Authorization headers.
pub async fn get(addr: SocketAddr, path: &str, host: Option<&str>, token: Option<&str>) -> Resp {
    request(addr, "GET", path, host, token).await
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
    token: Option<&str>,
) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if let Some(h) = host {
        head.push_str(&format!("Host: {h}\r\n"));
    }
    if let Some(t) = token {
        head.push_str(&format!("Authorization: {t}\r\n"));
    }
    head.push_str("Accept: application/json\r\nConnection: close\r\n\r\n");
    raw(addr, head.as_bytes()).await
}

pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("response within 30 s")
        .unwrap();
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Polls `f` until it holds or `within` passes. For conditions with no
/// event to await; `within` only bounds a failure, it is never a timing
/// assertion.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// [`eventually`] for a condition that needs to await (a request per poll).
pub async fn eventually_async<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f().await
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_eks-pod-identity-agent")
}

/// The `testkit` binary (emulator, mint-token): built beside the agent's by
/// `cargo test --workspace`, because the testkit package's own tests need it.
pub fn testkit_bin() -> std::path::PathBuf {
    let path = std::path::Path::new(bin()).with_file_name("testkit");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..400 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} never listened");
}

/// The built binary running `server` on 127.0.0.1, with only the
/// environment given (plus `AWS_EC2_METADATA_DISABLED`). It binds port 0
/// (ports picked in advance could be taken meanwhile, and a listener that
/// shares its port with `SO_REUSEPORT` would not notice) and the address is
/// read from its log, which goes to a file ([`BinaryAgent::log`]).
pub struct BinaryAgent {
    pub addr: SocketAddr,
    pub child: tokio::process::Child,
    log: std::path::PathBuf,
    _dir: netns::TempDir,
}

impl BinaryAgent {
    pub async fn spawn(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = netns::TempDir::new("pia-binary");
        let log = dir.0.join("agent.log");
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args([
            "server",
            "-c",
            CLUSTER,
            "-b",
            "127.0.0.1",
            "-p",
            "0",
            "--probe-port",
            "0",
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            "0",
            "--allowed-hosts",
            "169.254.170.23",
        ])
        .args(extra)
        .env_clear()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
        let child = cmd.spawn().unwrap();
        let mut addr = None;
        for _ in 0..600 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            addr = text
                .lines()
                .filter(|l| l.contains("listening for credential requests"))
                .find_map(|l| {
                    let at = l.find("127.0.0.1:")?;
                    let port: String = l[at + 10..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    format!("127.0.0.1:{port}").parse::<SocketAddr>().ok()
                });
            if addr.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let addr = addr.unwrap_or_else(|| {
            panic!(
                "the agent never said where it listens:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        wait_listening(addr).await;
        Self {
            addr,
            child,
            log,
            _dir: dir,
        }
    }

    /// What the agent wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn creds(&self, token: &str) -> Resp {
        get(
            self.addr,
            "/v1/credentials",
            Some("169.254.170.23"),
            Some(token),
        )
        .await
    }
}

pub use testkit::net::Blackhole;

/// Raises the open-files soft limit to the hard limit (the binary does this
/// at start; in-process agents under a storm need it too).
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
