//! Hand-over benchmark (`bench/run --handover`): request failures and
//! latency while a new agent takes over a node from the old one under load,
//! as in a surge rollout.
//!
//! Open-loop load: `--rate` requests/s, each on a new connection to the
//! agents' shared 127.0.0.1 port, every fourth one a new identity (an EKS
//! Auth call to the emulator), the others a few cached ones. Per repetition:
//! A alone → B started with the same flags (its own probe socket) → B ready
//! (asked over that socket) → A and B → SIGTERM (or SIGKILL) to A → A exits
//! → B alone; B is the next repetition's A. Latency is connect to the end of
//! the response; a failure is anything but a 200 with credentials.
//!
//! As root, the run first moves into a fresh network namespace (unshare), so
//! it can measure with `net.ipv4.tcp_migrate_req` on and off without
//! touching the host; otherwise it runs on the host's loopback with the
//! host's setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pod_identity_bench::procs::Child;
use pod_identity_bench::report::{HANDOVER_BEGIN as BEGIN, HANDOVER_END as END};
use pod_identity_bench::stats::{fmt_dur, percentile, thousands};
use pod_identity_bench::tokens;
use testkit::issuer::Issuer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type R<T> = Result<T, Box<dyn std::error::Error>>;

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
const CACHED_IDENTITIES: usize = 16;

#[derive(Debug, Parser)]
#[command(about = "Request failures and latency during an agent hand-over under load")]
struct Args {
    #[arg(long)]
    agent_bin: PathBuf,
    /// The `testkit` binary (EKS Auth emulator).
    #[arg(long)]
    testkit_bin: PathBuf,
    #[arg(long)]
    workdir: PathBuf,
    /// Requests per second, each on a new connection.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Every Nth request carries a new identity (an EKS Auth call). The
    /// default, 10/s at 1,000 req/s, stays inside the agent's default EKS
    /// Auth cap (20 calls/s): the benchmark measures the hand-over, not the
    /// cap.
    #[arg(long, default_value_t = 100)]
    new_identity_every: u64,
    /// Seconds of load in each phase not bounded by an event.
    #[arg(long, default_value_t = 3)]
    phase_secs: u64,
    /// Hand-overs per configuration.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Replace (or add) the hand-over section of this Markdown file.
    #[arg(long)]
    results: Option<PathBuf>,
    #[arg(long, default_value = "unknown")]
    commit: String,
    #[arg(long, default_value = "unknown")]
    date: String,
}

/// One configuration: how A is stopped, and the sysctl.
#[derive(Debug, Clone, Copy)]
struct Config {
    signal: Signal,
    /// `None`: leave the namespace's setting as it is (not root).
    migrate_req: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    AAlone,
    BStarting,
    Both,
    AStopping,
    BAlone,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Self::AAlone => "A alone",
            Self::BStarting => "B starting (spawn → ready)",
            Self::Both => "A and B",
            Self::AStopping => "A stopping (signal → exit)",
            Self::BAlone => "B alone",
        }
    }
}

struct Sample {
    start: Instant,
    took: Duration,
    failure: Option<String>,
}

/// Event times of one repetition.
struct Marks {
    b_spawned: Instant,
    b_ready: Instant,
    signalled: Instant,
    a_exited: Instant,
}

impl Marks {
    fn phase(&self, t: Instant) -> Phase {
        if t < self.b_spawned {
            Phase::AAlone
        } else if t < self.b_ready {
            Phase::BStarting
        } else if t < self.signalled {
            Phase::Both
        } else if t < self.a_exited {
            Phase::AStopping
        } else {
            Phase::BAlone
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread exists: unshare(CLONE_NEWNET) moves only the
    // calling thread, and everything started later inherits its namespace.
    let private_netns = nix::unistd::geteuid().is_root() && enter_private_netns().is_ok();
    match run(args, private_netns) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handover: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn enter_private_netns() -> R<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    let ok = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?
        .success();
    if !ok {
        return Err("ip link set lo up failed".into());
    }
    Ok(())
}

fn log(msg: impl AsRef<str>) {
    eprintln!("handover: {}", msg.as_ref());
}

fn free_port() -> R<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run(args: Args, private_netns: bool) -> R<()> {
    raise_nofile();
    std::fs::create_dir_all(&args.workdir)?;
    let configs: Vec<Config> = if private_netns {
        vec![
            Config {
                signal: Signal::SIGTERM,
                migrate_req: Some(true),
            },
            Config {
                signal: Signal::SIGKILL,
                migrate_req: Some(true),
            },
            Config {
                signal: Signal::SIGTERM,
                migrate_req: Some(false),
            },
            Config {
                signal: Signal::SIGKILL,
                migrate_req: Some(false),
            },
        ]
    } else {
        log("not root: on the host's loopback, with its tcp_migrate_req");
        [Signal::SIGTERM, Signal::SIGKILL]
            .into_iter()
            .map(|signal| Config {
                signal,
                migrate_req: None,
            })
            .collect()
    };

    let (emulator, url) = start_emulator(&args)?;
    let pem = std::fs::read_to_string(args.workdir.join("issuer.pem"))?;
    let issuer = Issuer::from_pem(&url, &pem)?;
    // New identities for one configuration (its agents start with empty
    // caches, so the next configuration reuses the pool): four phases'
    // worth per hand-over, more than they take.
    let per_config = args.rate * args.phase_secs * 4 * args.repetitions as u64;
    let fresh_needed = (per_config / args.new_identity_every.max(1)) as usize + 1000;
    log(format!("minting {} tokens", thousands(fresh_needed as u64)));
    let specs: Vec<_> = (0..CACHED_IDENTITIES + fresh_needed)
        .map(tokens::pod_spec)
        .collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut all = tokens::mint_parallel(&issuer, &specs, threads)?;
    let fresh = all.split_off(CACHED_IDENTITIES);
    let tokens = Arc::new(Tokens {
        cached: all,
        fresh,
        next: AtomicUsize::new(0),
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for config in configs {
        if let Some(on) = config.migrate_req {
            std::fs::write(MIGRATE_REQ, if on { "1" } else { "0" })?;
        }
        tokens.next.store(0, Ordering::Relaxed);
        let migrate = read_migrate_req();
        log(format!(
            "{:?}, tcp_migrate_req={migrate}: {} hand-overs at {} req/s",
            config.signal, args.repetitions, args.rate
        ));
        let reps = runtime.block_on(hand_overs(&args, &url, &tokens, config))?;
        results.push((config, migrate, reps));
    }
    drop(emulator);

    let text = render(&args, private_netns, &results);
    println!("{text}");
    if let Some(path) = &args.results {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let block = format!("{BEGIN}\n{text}\n{END}\n");
        let new = match (old.find(BEGIN), old.find(END)) {
            (Some(b), Some(e)) if b < e => {
                let rest = &old[e + END.len()..];
                format!(
                    "{}{block}{}",
                    &old[..b],
                    rest.strip_prefix('\n').unwrap_or(rest)
                )
            }
            _ if old.is_empty() => block,
            _ => format!("{}\n\n{block}", old.trim_end()),
        };
        std::fs::write(path, new)?;
        log(format!("wrote {}", path.display()));
    }
    Ok(())
}

fn read_migrate_req() -> String {
    std::fs::read_to_string(MIGRATE_REQ)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "absent".into())
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn start_emulator(args: &Args) -> R<(Child, String)> {
    let ready = args.workdir.join("emulator.ready");
    let _ = std::fs::remove_file(&ready);
    let mut cmd = Command::new(&args.testkit_bin);
    cmd.args(["emulator", "--listen", "127.0.0.1:0", "--key-file"])
        .arg(args.workdir.join("issuer.pem"))
        .arg("--ready-file")
        .arg(&ready)
        .args([
            "--association",
            &format!(
                "{}/{}={}",
                tokens::NAMESPACE,
                tokens::SERVICE_ACCOUNT,
                tokens::ROLE_ARN
            ),
            "-v",
            "warn",
        ]);
    let mut emulator = Child::spawn(cmd, "emulator", &args.workdir)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(&ready)
            && let Some(line) = s.lines().next()
        {
            return Ok((emulator, line.trim().to_owned()));
        }
        if emulator.exited().is_some() || Instant::now() > deadline {
            return Err(format!("emulator did not start:\n{}", emulator.log_tail()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agents of one configuration: same flags, own probe sockets.
struct Agents<'a> {
    args: &'a Args,
    url: &'a str,
    port: u16,
    probe_port: u16,
    metrics_port: u16,
    n: usize,
}

impl Agents<'_> {
    fn spawn(&mut self) -> R<(Child, PathBuf)> {
        self.n += 1;
        let name = format!("agent-{}-{}", self.port, self.n);
        let socket = self.args.workdir.join(format!("{name}.sock"));
        let mut cmd = Command::new(&self.args.agent_bin);
        cmd.args([
            "server",
            "--cluster-name",
            "bench",
            "--bind-hosts",
            "127.0.0.1",
            "--allowed-hosts",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--probe-port",
            &self.probe_port.to_string(),
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            &self.metrics_port.to_string(),
            "--endpoint",
            self.url,
            "--region",
            "us-west-2",
            "--rate-limit",
            "0",
            "--per-client-rate-limit",
            "0",
            "-v",
            "warn",
            "--probe-socket",
        ])
        .arg(&socket)
        .env("AWS_ACCESS_KEY_ID", "AKIDBENCHFAKE0000001")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true");
        Ok((Child::spawn(cmd, &name, &self.args.workdir)?, socket))
    }
}

async fn wait_ready(child: &mut Child, socket: &Path) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let path = socket.to_owned();
        let answer = tokio::task::spawn_blocking(move || {
            pod_identity_agent::probe_socket::query(&path, "/readyz", Duration::from_secs(10))
        })
        .await?;
        if matches!(answer, Ok((200, _))) {
            return Ok(());
        }
        if child.exited().is_some() || Instant::now() > deadline {
            return Err(format!("{} never became ready:\n{}", child.name, child.log_tail()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_exit(child: &mut Child) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.exited().is_none() {
        if Instant::now() > deadline {
            return Err(format!("{} did not exit", child.name).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn hand_overs(
    args: &Args,
    url: &str,
    tokens: &Arc<Tokens>,
    config: Config,
) -> R<Vec<(Marks, Vec<Sample>)>> {
    let mut agents = Agents {
        args,
        url,
        port: free_port()?,
        probe_port: free_port()?,
        metrics_port: free_port()?,
        n: 0,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], agents.port).into();
    let (mut a, a_sock) = agents.spawn()?;
    wait_ready(&mut a, &a_sock).await?;
    let phase = Duration::from_secs(args.phase_secs);
    let mut reps = Vec::new();
    for _ in 0..args.repetitions {
        let load = Load::start(
            addr,
            tokens.clone(),
            args.rate,
            args.new_identity_every.max(1),
        );
        tokio::time::sleep(phase).await;
        let b_spawned = Instant::now();
        let (mut b, b_sock) = agents.spawn()?;
        wait_ready(&mut b, &b_sock).await?;
        let b_ready = Instant::now();
        tokio::time::sleep(phase).await;
        let signalled = Instant::now();
        kill(Pid::from_raw(a.pid() as i32), config.signal)?;
        wait_exit(&mut a).await?;
        let a_exited = Instant::now();
        tokio::time::sleep(phase).await;
        let samples = load.finish().await;
        reps.push((
            Marks {
                b_spawned,
                b_ready,
                signalled,
                a_exited,
            },
            samples,
        ));
        a = b;
    }
    drop(a);
    Ok(reps)
}

struct Tokens {
    cached: Vec<String>,
    fresh: Vec<String>,
    next: AtomicUsize,
}

impl Tokens {
    fn fresh(&self) -> String {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        // Wraps (and then hits) only past the pool sized for a configuration.
        self.fresh[i % self.fresh.len()].clone()
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Load {
    fn start(addr: SocketAddr, tokens: Arc<Tokens>, rate: u64, new_every: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            // Open loop: requests leave on schedule whatever the answers do.
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut tasks = Vec::new();
            let mut n: u64 = 0;
            while !s.load(Ordering::Acquire) {
                tick.tick().await;
                let token = if n % new_every == new_every - 1 {
                    tokens.fresh()
                } else {
                    tokens.cached[n as usize % tokens.cached.len()].clone()
                };
                n += 1;
                tasks.push(tokio::spawn(async move {
                    let start = Instant::now();
                    let failure =
                        match tokio::time::timeout(Duration::from_secs(5), request(addr, &token))
                            .await
                        {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e),
                            Err(_) => Some("timeout (5 s)".into()),
                        };
                    Sample {
                        start,
                        took: start.elapsed(),
                        failure,
                    }
                }));
            }
            let mut samples = Vec::with_capacity(tasks.len());
            for t in tasks {
                if let Ok(s) = t.await {
                    samples.push(s);
                }
            }
            samples
        });
        Self { stop, task }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap_or_default()
    }
}

/// One request on a new connection; the failure's kind, if any.
async fn request(addr: SocketAddr, token: &str) -> Result<(), String> {
    let kind = |what: &str, e: std::io::Error| format!("{what}: {:?}", e.kind());
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| kind("connect", e))?;
    let head = format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| kind("write", e))?;
    let mut buf = Vec::with_capacity(2048);
    s.read_to_end(&mut buf).await.map_err(|e| kind("read", e))?;
    if buf.is_empty() {
        return Err("closed without an answer".into());
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).unwrap_or("?");
    if status != "200" || !text.contains("\"AccessKeyId\"") {
        return Err(format!("status {status}"));
    }
    Ok(())
}

type Results = Vec<(Config, String, Vec<(Marks, Vec<Sample>)>)>;

fn render(args: &Args, private_netns: bool, results: &Results) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("## Hand-over under load (rolling update)".into());
    line(String::new());
    line(format!(
        "`bench/run --handover` ({} UTC, commit `{}`): {} requests/s, each on a new connection to 127.0.0.1 (every {}th a new identity, an EKS Auth call, inside the agent's default cap of 20 calls/s; the others {CACHED_IDENTITIES} cached ones), open loop; hand-overs per row: {}; each: A alone {} s → B started with the same flags → B ready (its probe socket) → {} s of A and B → signal to A → A exits → {} s of B alone. {}; release builds, no CPU pinning (2 agents, the emulator and the client share the machine). Latency: connect to end of response.",
        args.date.trim_end_matches(" UTC"),
        args.commit,
        args.rate,
        args.new_identity_every,
        args.repetitions,
        args.phase_secs,
        args.phase_secs,
        args.phase_secs,
        if private_netns {
            "In a private network namespace (root), `net.ipv4.tcp_migrate_req` set per row"
        } else {
            "On the host's loopback (not root), with its `net.ipv4.tcp_migrate_req`"
        },
    ));
    line(String::new());
    line(
        "| signal to A | tcp_migrate_req | phase | requests | failed | p50 | p99 | p99.9 | max |"
            .into(),
    );
    line("|---|---:|---|---:|---:|---:|---:|---:|---:|".into());
    let mut notes = Vec::new();
    for (config, migrate, reps) in results {
        let mut by_phase: BTreeMap<Phase, (Vec<Duration>, usize)> = BTreeMap::new();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_rep = Vec::new();
        for (marks, samples) in reps {
            let mut failed = 0;
            for s in samples {
                let e = by_phase.entry(marks.phase(s.start)).or_default();
                e.0.push(s.took);
                if let Some(f) = &s.failure {
                    e.1 += 1;
                    failed += 1;
                    *kinds.entry(f.clone()).or_default() += 1;
                }
            }
            per_rep.push(failed.to_string());
        }
        for (phase, (mut took, failed)) in by_phase {
            took.sort();
            line(format!(
                "| {:?} | {migrate} | {} | {} | {} | {} | {} | {} | {} |",
                config.signal,
                phase.label(),
                thousands(took.len() as u64),
                failed,
                fmt_dur(percentile(&took, 50.0)),
                fmt_dur(percentile(&took, 99.0)),
                fmt_dur(percentile(&took, 99.9)),
                fmt_dur(took.last().copied().unwrap_or_default()),
            ));
        }
        let kinds = if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds
                .iter()
                .map(|(k, n)| format!("{n} × {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        notes.push(format!(
            "- {:?}, tcp_migrate_req={migrate}: failures per hand-over {}; kinds: {kinds}.",
            config.signal,
            per_rep.join(", ")
        ));
    }
    line(String::new());
    for n in notes {
        line(n);
    }
    out
}
