//! Orchestrator of the load benchmark (run it through `bench/run`).
//!
//! Starts the release `eks-pod-identity-agent emulator` (EKS Auth emulator +
//! token issuer) and, per scenario, fresh `eks-pod-identity-agent server`
//! processes on free 127.0.0.1 ports, mints pod tokens with the emulator's
//! key, drives load with `wrk` or its own tokio client, and prints (and
//! writes) a Markdown report. It measures:
//!
//! 1. **Cache hit**: wrk req/s and p50/p99/p99.9 of the agent warmed with K
//!    identities (K distinct tokens, rotated by `wrk/rotate.lua`) at several
//!    connection counts, next to the same wrk runs against `baseline` (a bare
//!    hyper server answering the same bytes), as ratios.
//! 2. **Miss storm**: N concurrent first requests over M identities on a
//!    fresh agent while EKS Auth takes 100 ms: EKS Auth calls made (coalescing
//!    means M) and the latency distribution relative to the 100 ms.
//! 3. **Token rotation**: verified mode; K pods warmed, then every request
//!    presents a token of one of them that the agent has not verified before
//!    (verified-token memo of size 1), versus the same tokens answered from
//!    the memo (default size, primed): EKS Auth calls, req/s, latency, and
//!    the wall time per request that signature verification costs.
//! 4. **Memory**: VmRSS of the agent idle, and with 1,000 and 10,000
//!    cached identities (unverified and verified mode).
//! 5. **Upstream outage**: EKS Auth answers ServiceUnavailableException for a
//!    window while credentials pass their retention: share of requests that
//!    still got 200 with valid (unexpired) credentials, per window.
//!
//! Plus the medians of the criterion micro-benchmarks when `--criterion-dir`
//! is given. Timings are reported, never asserted: the exit status only
//! says whether the benchmark could run.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use pod_identity_bench::client::{self, Conn, credential_request};
use pod_identity_bench::procs::{Child, Placement};
use pod_identity_bench::stats::{fmt_dur, fmt_ns, fmt_us, mib, percentile, ratio, thousands};
use pod_identity_bench::tokens::{self, pod_spec};
use serde::Deserialize;
use testkit::issuer::Issuer;

type Error = Box<dyn std::error::Error + Send + Sync>;
type R<T> = Result<T, Error>;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load benchmark of the agent's credential cache (use bench/run)")]
struct Args {
    /// Release `eks-pod-identity-agent` binary.
    #[arg(long)]
    agent_bin: PathBuf,
    /// Release `baseline` binary.
    #[arg(long)]
    baseline_bin: PathBuf,
    /// The wrk script (`bench/wrk/rotate.lua`).
    #[arg(long)]
    lua: PathBuf,
    /// Scratch directory (tokens, logs, pid list).
    #[arg(long)]
    workdir: PathBuf,
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Shorter pass (only labels the report; durations come from the flags).
    #[arg(long)]
    quick: bool,
    /// Scenarios to run: hit, storm, rotation, memory, outage.
    #[arg(long, value_delimiter = ',', default_values_t = ["hit".to_string(), "storm".into(), "rotation".into(), "memory".into(), "outage".into()])]
    scenarios: Vec<String>,
    /// Identities the agent is warmed with in the cache-hit scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 1000, 10000])]
    identities: Vec<usize>,
    /// wrk connection counts in the cache-hit scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64, 256])]
    connections: Vec<usize>,
    /// wrk threads (at most the connection count).
    #[arg(long, default_value_t = 1)]
    wrk_threads: usize,
    /// Do not pin the server under test and the load generators to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// CPUs of the server under test (agent or baseline) when pinning.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs of wrk, this orchestrator and the emulator when pinning
    /// (default: all the others).
    #[arg(long)]
    load_cpus: Option<String>,
    #[arg(long, default_value_t = 1000)]
    storm_requests: usize,
    #[arg(long, default_value_t = 50)]
    storm_identities: usize,
    #[arg(long, default_value_t = 100)]
    storm_latency_ms: u64,
    #[arg(long, default_value_t = 1000)]
    rotation_pods: usize,
    /// Fresh tokens in the rotation scenario. Default: 19,000, so that with
    /// the 1,000 warm-up tokens they fill the default verified-token memo
    /// (20,000) exactly and the primed run is all memo hits.
    #[arg(long, default_value_t = 19_000)]
    rotation_tokens: usize,
    #[arg(long, default_value_t = 64)]
    rotation_connections: usize,
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10000])]
    memory_points: Vec<usize>,
    #[arg(long, default_value_t = 100)]
    outage_identities: usize,
    #[arg(long, default_value_t = 16)]
    outage_connections: usize,
    /// Seconds of load in the outage scenario.
    #[arg(long, default_value_t = 30)]
    outage_duration: u64,
    /// Second of the load at which EKS Auth starts failing.
    #[arg(long, default_value_t = 5)]
    outage_start: u64,
    /// Second of the load at which EKS Auth recovers.
    #[arg(long, default_value_t = 25)]
    outage_end: u64,
    /// `target/criterion`: include the micro-benchmark medians.
    #[arg(long)]
    criterion_dir: Option<PathBuf>,
    /// Write the report here too.
    #[arg(long)]
    results: Option<PathBuf>,
    #[arg(long, default_value = "unknown")]
    commit: String,
    #[arg(long, default_value = "unknown")]
    date: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1)
}

fn run(args: Args) -> R<()> {
    raise_nofile();
    std::fs::create_dir_all(&args.workdir)?;
    let cpus = online_cpus();
    let placement = if args.no_pin || cpus < 2 {
        Placement::none()
    } else {
        Placement {
            server_cpus: Some(args.server_cpus.clone()),
            load_cpus: Some(args.load_cpus.clone().unwrap_or_else(|| {
                if cpus == 2 {
                    "1".into()
                } else {
                    format!("1-{}", cpus - 1)
                }
            })),
        }
    };

    // The emulator lives for the whole run; scenarios read deltas of its stats.
    let key_file = args.workdir.join("issuer.pem");
    let ready = args.workdir.join("emulator.ready");
    let _ = std::fs::remove_file(&ready);
    let mut cmd = Placement::command(placement.load_cpus.as_deref(), &args.agent_bin);
    cmd.args(["emulator", "--listen", "127.0.0.1:0", "--key-file"])
        .arg(&key_file)
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
    let url = loop {
        if let Ok(s) = std::fs::read_to_string(&ready)
            && let Some(line) = s.lines().next()
        {
            break line.trim().to_owned();
        }
        if emulator.exited().is_some() || Instant::now() > deadline {
            return Err(format!("emulator did not start:\n{}", emulator.log_tail()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let emu_addr: SocketAddr = url
        .strip_prefix("http://")
        .ok_or("emulator URL is not http")?
        .parse()?;
    log(format!("emulator at {url}"));

    // Tokens, minted on all CPUs before this process pins itself.
    let pem = std::fs::read_to_string(&key_file)?;
    let issuer = Issuer::from_pem(url.clone(), &pem)?;
    let pod_count = args
        .identities
        .iter()
        .chain(&args.memory_points)
        .chain([
            &args.storm_identities,
            &args.rotation_pods,
            &args.outage_identities,
        ])
        .copied()
        .max()
        .unwrap_or(1);
    let started = Instant::now();
    let specs: Vec<_> = (0..pod_count).map(pod_spec).collect();
    let pods = tokens::mint_parallel(&issuer, &specs, cpus)?;
    let rotation = if args.scenarios.iter().any(|s| s == "rotation") {
        let specs: Vec<_> = (0..args.rotation_tokens)
            .map(|j| pod_spec(j % args.rotation_pods.max(1)))
            .collect();
        tokens::mint_parallel(&issuer, &specs, cpus)?
    } else {
        Vec::new()
    };
    log(format!(
        "minted {} tokens in {:.1} s",
        pods.len() + rotation.len(),
        started.elapsed().as_secs_f64()
    ));
    let mut files = HashMap::new();
    for &k in &args.identities {
        let path = args.workdir.join(format!("tokens-{k}.txt"));
        tokens::write_lines(&path, &pods[..k])?;
        files.insert(k, path);
    }
    let rotation_file = args.workdir.join("tokens-rotation.txt");
    tokens::write_lines(&rotation_file, &rotation)?;

    if let Some(load) = &placement.load_cpus {
        pin_self(load)?;
    }
    let ctx = Ctx {
        args: args.clone(),
        placement,
        emu_url: url,
        emu_addr,
        pods: Arc::new(pods),
        rotation: Arc::new(rotation),
        files,
        rotation_file,
        agents: AtomicUsize::new(0),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(scenarios(&ctx))?;
    drop(emulator);

    let text = render(&ctx, &report);
    println!("{text}");
    if let Some(path) = &args.results {
        std::fs::write(path, &text)?;
        log(format!("wrote {}", path.display()));
    }
    Ok(())
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Pins this thread (and so the runtime threads created after it) to `cpus`
/// (`1`, `1-3`, `1,3`).
fn pin_self(cpus: &str) -> R<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    for part in cpus.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        for cpu in a.trim().parse::<usize>()?..=b.trim().parse::<usize>()? {
            set.set(cpu)?;
        }
    }
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

struct Ctx {
    args: Args,
    placement: Placement,
    emu_url: String,
    emu_addr: SocketAddr,
    pods: Arc<Vec<String>>,
    rotation: Arc<Vec<String>>,
    files: HashMap<usize, PathBuf>,
    rotation_file: PathBuf,
    agents: AtomicUsize,
}

struct Agent {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

/// For `bench/run`'s trap (see `procs`).
fn record_pid(workdir: &Path, pid: u32) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(workdir.join("pids"))
    {
        let _ = writeln!(f, "{pid}");
    }
}

fn free_ports(n: usize) -> R<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

impl Ctx {
    /// A fresh agent with the benchmark's flags plus `extra`, once ready.
    async fn agent(&self, name: &str, extra: &[&str]) -> R<Agent> {
        let n = self.agents.fetch_add(1, Ordering::Relaxed);
        let ports = free_ports(3)?;
        let mut cmd =
            Placement::command(self.placement.server_cpus.as_deref(), &self.args.agent_bin);
        let (port, probe, metrics) = (
            ports[0].to_string(),
            ports[1].to_string(),
            ports[2].to_string(),
        );
        cmd.args([
            "server",
            "--cluster-name",
            "bench",
            "--bind-hosts",
            "127.0.0.1",
            "--port",
            &port,
            "--probe-port",
            &probe,
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            &metrics,
            "--allowed-hosts",
            "127.0.0.1",
            "--endpoint",
            &self.emu_url,
            "--region",
            "us-west-2",
            "--rate-limit",
            "0",
            "--per-client-rate-limit",
            "0",
            "--max-cache-size",
            "50000",
            "-v",
            "warn",
        ])
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", "AKIDBENCHFAKE0000001")
        .env("AWS_SECRET_ACCESS_KEY", "bench-fake-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL_EKS_AUTH");
        let mut child = Child::spawn(cmd, &format!("{n:02}-{name}"), &self.args.workdir)?;
        let probe_addr: SocketAddr = format!("127.0.0.1:{probe}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.exited().is_some() {
                return Err(format!("agent {name} exited:\n{}", child.log_tail()).into());
            }
            if let Ok(r) = client::once(probe_addr, "GET", "/readyz", b"").await
                && r.status == 200
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("agent {name} not ready:\n{}", child.log_tail()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Agent {
            child,
            addr: format!("127.0.0.1:{port}").parse()?,
            metrics: format!("127.0.0.1:{metrics}").parse()?,
        })
    }

    async fn emu_stats(&self) -> R<EmuStats> {
        let r = client::once(self.emu_addr, "GET", "/_emulator/stats", b"").await?;
        Ok(serde_json::from_slice(&r.body)?)
    }

    async fn emu_faults(&self, json: &str) -> R<()> {
        let r = client::once(self.emu_addr, "POST", "/_emulator/faults", json.as_bytes()).await?;
        if r.status != 200 {
            return Err(format!("setting faults: {} {}", r.status, r.text()).into());
        }
        Ok(())
    }

    /// Runs wrk against `addr` with the tokens of `file`; returns its summary.
    async fn wrk(
        &self,
        label: &str,
        addr: SocketAddr,
        file: &Path,
        conns: usize,
        secs: u64,
    ) -> R<Wrk> {
        let threads = self.args.wrk_threads.clamp(1, conns);
        let cmd = Placement::command(self.placement.load_cpus.as_deref(), Path::new("wrk"));
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.args([
            format!("-t{threads}"),
            format!("-c{conns}"),
            format!("-d{secs}s"),
            "--latency".into(),
            "--timeout".into(),
            "10s".into(),
            "-s".into(),
        ])
        .arg(&self.args.lua)
        .arg(format!("http://{addr}/v1/credentials"))
        .env("BENCH_TOKENS", file)
        .kill_on_drop(true);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().map_err(|e| format!("running wrk: {e}"))?;
        if let Some(pid) = child.id() {
            record_pid(&self.args.workdir, pid);
        }
        let out = child.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = std::fs::write(
            self.args.workdir.join(format!("wrk-{label}.txt")),
            format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)),
        );
        if !out.status.success() {
            return Err(format!(
                "wrk failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Wrk::parse(&stdout)
            .ok_or_else(|| format!("no BENCH_RESULT line in wrk output:\n{stdout}").into())
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct EmuStats {
    calls: u64,
}

#[derive(Debug, Clone, Default)]
struct Wrk {
    requests: u64,
    duration_us: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    non2xx: u64,
    errors: u64,
}

impl Wrk {
    fn parse(out: &str) -> Option<Self> {
        let line = out.lines().find(|l| l.starts_with("BENCH_RESULT"))?;
        let kv: HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok());
        Some(Self {
            requests: num("requests")? as u64,
            duration_us: num("duration_us")? as u64,
            p50: num("p50_us")?,
            p99: num("p99_us")?,
            p999: num("p999_us")?,
            non2xx: num("non2xx")? as u64,
            errors: (num("connect_errors")?
                + num("read_errors")?
                + num("write_errors")?
                + num("timeouts")?) as u64,
        })
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }
}

/// Requests every token once over `conns` keep-alive connections; every
/// answer must be 200. Returns one body.
async fn warm(
    addr: SocketAddr,
    tokens: Arc<Vec<String>>,
    range: std::ops::Range<usize>,
    conns: usize,
) -> R<Vec<u8>> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let mut tasks = Vec::new();
    for _ in 0..conns.max(1) {
        let tokens = tokens.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut body = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return Ok::<_, Error>(body);
                }
                if conn.closed() {
                    conn = Conn::connect(addr).await?;
                }
                let r = conn.credentials(&tokens[i]).await?;
                if r.status != 200 {
                    return Err(format!("warm-up request {i}: {} {}", r.status, r.text()).into());
                }
                body = r.body;
            }
        }));
    }
    let mut body = Vec::new();
    for t in tasks {
        let b = t.await??;
        if !b.is_empty() {
            body = b;
        }
    }
    Ok(body)
}

async fn scrape(addr: SocketAddr) -> R<String> {
    let r = client::once(addr, "GET", "/metrics", b"").await?;
    Ok(r.text())
}

/// Value of a Prometheus sample `name{labels}` (0 when absent).
fn metric(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[derive(Default)]
struct Report {
    hit: Vec<HitRow>,
    storm: Vec<Storm>,
    rotation: Vec<RotationRow>,
    memory: Vec<MemoryRow>,
    outage: Option<Outage>,
}

struct HitRow {
    identities: usize,
    conns: usize,
    agent: Wrk,
    base: Wrk,
    /// The baseline with the agent's hyper settings (64 connections only).
    hardened: Option<Wrk>,
    calls: u64,
}

struct Storm {
    label: &'static str,
    requests: usize,
    identities: usize,
    latency_ms: u64,
    calls: u64,
    ok: usize,
    distinct_bodies: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    wall: Duration,
    /// Mean AssumeRoleForPodIdentity duration seen by the agent.
    eks_mean: Option<Duration>,
}

struct RotationRow {
    label: &'static str,
    wrk: Wrk,
    calls: u64,
    verified: u64,
    memo_hits: u64,
}

struct MemoryRow {
    mode: &'static str,
    idle_kib: u64,
    points: Vec<(usize, u64)>,
    hwm_kib: u64,
}

struct Outage {
    start: Duration,
    end: Duration,
    total: Duration,
    windows: Vec<OutageWindow>,
}

struct OutageWindow {
    label: &'static str,
    requests: u64,
    valid: u64,
    statuses: Vec<(u16, u64)>,
    calls: u64,
}

async fn scenarios(ctx: &Ctx) -> R<Report> {
    let mut report = Report::default();
    let want = |s: &str| ctx.args.scenarios.iter().any(|x| x == s);
    if want("hit") {
        cache_hit(ctx, &mut report).await?;
    }
    if want("storm") {
        report.storm = miss_storm(ctx).await?;
    }
    if want("rotation") {
        report.rotation = rotation(ctx).await?;
    }
    if want("memory") {
        report.memory = memory(ctx).await?;
    }
    if want("outage") {
        report.outage = Some(outage(ctx).await?);
    }
    Ok(report)
}

async fn cache_hit(ctx: &Ctx, report: &mut Report) -> R<()> {
    let secs = ctx.args.duration;
    let mut baseline: Option<((Child, SocketAddr), (Child, SocketAddr))> = None;
    for &k in &ctx.args.identities {
        log(format!("cache hit: {k} identities"));
        let agent = ctx.agent(&format!("hit-{k}"), &[]).await?;
        let body = warm(agent.addr, ctx.pods.clone(), 0..k, 16).await?;
        if baseline.is_none() {
            let body_file = ctx.args.workdir.join("body.json");
            std::fs::write(&body_file, &body)?;
            let plain = start_baseline(ctx, &body_file, false).await?;
            let hardened = start_baseline(ctx, &body_file, true).await?;
            baseline = Some((plain, hardened));
        }
        let (base_addr, hard_addr) = baseline
            .as_ref()
            .map(|(p, h)| (p.1, h.1))
            .ok_or("no baseline")?;
        let file = &ctx.files[&k];
        // Unreported warm-up of both servers (connections, allocator, page faults).
        ctx.wrk(&format!("warmup-agent-{k}"), agent.addr, file, 64, 1)
            .await?;
        ctx.wrk(&format!("warmup-base-{k}"), base_addr, file, 64, 1)
            .await?;
        for &c in &ctx.args.connections {
            let before = ctx.emu_stats().await?;
            let a = ctx
                .wrk(&format!("hit-agent-{k}-{c}"), agent.addr, file, c, secs)
                .await?;
            let after = ctx.emu_stats().await?;
            let b = ctx
                .wrk(&format!("hit-base-{k}-{c}"), base_addr, file, c, secs)
                .await?;
            let hardened = if c == 64 {
                Some(
                    ctx.wrk(&format!("hit-hardened-{k}-{c}"), hard_addr, file, c, secs)
                        .await?,
                )
            } else {
                None
            };
            log(format!(
                "  {c} conns: agent {:.0} req/s p99 {}, baseline {:.0} req/s p99 {}",
                a.rps(),
                fmt_us(a.p99),
                b.rps(),
                fmt_us(b.p99)
            ));
            report.hit.push(HitRow {
                identities: k,
                conns: c,
                agent: a,
                base: b,
                hardened,
                calls: after.calls - before.calls,
            });
        }
        agent.child.stop();
    }
    Ok(())
}

/// Starts `baseline` (optionally `--hardened`) on the server CPUs.
async fn start_baseline(ctx: &Ctx, body_file: &Path, hardened: bool) -> R<(Child, SocketAddr)> {
    let port = free_ports(1)?[0];
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = Placement::command(ctx.placement.server_cpus.as_deref(), &ctx.args.baseline_bin);
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--body-file")
        .arg(body_file);
    if hardened {
        cmd.arg("--hardened");
    }
    let name = if hardened {
        "baseline-hardened"
    } else {
        "baseline"
    };
    let mut child = Child::spawn(cmd, name, &ctx.args.workdir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Conn::connect(addr).await.is_err() {
        if child.exited().is_some() || Instant::now() > deadline {
            return Err(format!("{name} did not start:\n{}", child.log_tail()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, addr))
}

/// One burst of `n` first requests over `m` identities starting at token
/// `first`, all sent at once on pre-opened connections.
async fn storm_round(ctx: &Ctx, agent: &Agent, label: &'static str, first: usize) -> R<Storm> {
    let n = ctx.args.storm_requests;
    let m = ctx.args.storm_identities.max(1);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::connect(agent.addr).await?);
    }
    let before = ctx.emu_stats().await?;
    let m0 = scrape(agent.metrics).await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let barrier = barrier.clone();
        let req = credential_request(&ctx.pods[first + i % m]);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let t0 = Instant::now();
            let r = conn.roundtrip(&req).await;
            (i % m, r, t0.elapsed())
        }));
    }
    barrier.wait().await;
    let released = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    let mut ok = 0;
    let mut bodies: HashMap<usize, std::collections::HashSet<Vec<u8>>> = HashMap::new();
    for t in tasks {
        let (id, r, took) = t.await?;
        latencies.push(took);
        if let Ok(r) = r
            && r.status == 200
        {
            ok += 1;
            bodies.entry(id).or_default().insert(r.body);
        }
    }
    let wall = released.elapsed();
    let after = ctx.emu_stats().await?;
    let m1 = scrape(agent.metrics).await?;
    let sum = "pod_identity_eksauth_duration_seconds_sum{result=\"ok\"}";
    let count = "pod_identity_eksauth_duration_seconds_count{result=\"ok\"}";
    let calls_seen = metric(&m1, count) - metric(&m0, count);
    let eks_mean = (calls_seen > 0.0)
        .then(|| Duration::from_secs_f64((metric(&m1, sum) - metric(&m0, sum)) / calls_seen));
    latencies.sort();
    let storm = Storm {
        label,
        requests: n,
        identities: m,
        latency_ms: ctx.args.storm_latency_ms,
        calls: after.calls - before.calls,
        ok,
        distinct_bodies: bodies.values().map(|s| s.len()).sum(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: percentile(&latencies, 100.0),
        wall,
        eks_mean,
    };
    log(format!(
        "  {label}: {} EKS Auth calls, p50 {}, p99 {}, agent-observed EKS Auth call {}",
        storm.calls,
        fmt_dur(storm.p50),
        fmt_dur(storm.p99),
        storm.eks_mean.map(fmt_dur).unwrap_or_default()
    ));
    Ok(storm)
}

/// Round 1 on a fresh agent (the scenario); round 2 on the same agent with
/// other identities, so the EKS Auth client is warm (diagnostic).
async fn miss_storm(ctx: &Ctx) -> R<Vec<Storm>> {
    let m = ctx.args.storm_identities.max(1);
    log(format!(
        "miss storm: {} requests over {m} identities",
        ctx.args.storm_requests
    ));
    let agent = ctx.agent("storm", &[]).await?;
    ctx.emu_faults(&format!("{{\"latency_ms\":{}}}", ctx.args.storm_latency_ms))
        .await?;
    let mut rounds = Vec::new();
    let outcome: R<()> = async {
        rounds.push(storm_round(ctx, &agent, "fresh agent", 0).await?);
        if ctx.pods.len() >= 2 * m {
            // Round 1's connections are closed by then; round 2 opens new ones.
            rounds.push(storm_round(ctx, &agent, "same agent, next identities", m).await?);
        }
        Ok(())
    }
    .await;
    let reset = ctx.emu_faults("{}").await;
    agent.child.stop();
    outcome?;
    reset?;
    Ok(rounds)
}

async fn rotation(ctx: &Ctx) -> R<Vec<RotationRow>> {
    let mut rows = Vec::new();
    let pods = ctx.args.rotation_pods;
    let variants: [(&'static str, &[&str]); 2] = [
        (
            "without memo (`--verified-token-cache-size 1`)",
            &["--verified-token-cache-size", "1"],
        ),
        ("with memo (default 20,000, primed)", &[]),
    ];
    for (label, extra) in variants {
        log(format!("token rotation: {label}"));
        let mut flags = vec!["--jwks-source", ctx.emu_url.as_str()];
        flags.extend_from_slice(extra);
        let agent = ctx.agent("rotation", &flags).await?;
        warm(agent.addr, ctx.pods.clone(), 0..pods, 16).await?;
        if extra.is_empty() {
            warm(agent.addr, ctx.rotation.clone(), 0..ctx.rotation.len(), 16).await?;
        }
        let m0 = scrape(agent.metrics).await?;
        let s0 = ctx.emu_stats().await?;
        let w = ctx
            .wrk(
                "rotation",
                agent.addr,
                &ctx.rotation_file,
                ctx.args.rotation_connections,
                ctx.args.duration,
            )
            .await?;
        let s1 = ctx.emu_stats().await?;
        let m1 = scrape(agent.metrics).await?;
        let key_v = "pod_identity_token_verifications_total{outcome=\"verified\"}";
        let key_c = "pod_identity_token_verifications_total{outcome=\"cached\"}";
        let row = RotationRow {
            label,
            calls: s1.calls - s0.calls,
            verified: (metric(&m1, key_v) - metric(&m0, key_v)) as u64,
            memo_hits: (metric(&m1, key_c) - metric(&m0, key_c)) as u64,
            wrk: w,
        };
        log(format!(
            "  {:.0} req/s, p99 {}, {} verifications, {} EKS Auth calls",
            row.wrk.rps(),
            fmt_us(row.wrk.p99),
            row.verified,
            row.calls
        ));
        rows.push(row);
        agent.child.stop();
    }
    Ok(rows)
}

async fn memory(ctx: &Ctx) -> R<Vec<MemoryRow>> {
    let mut rows = Vec::new();
    let emu = ctx.emu_url.clone();
    let modes: [(&'static str, Vec<&str>); 2] = [
        ("unverified tokens (default)", vec![]),
        (
            "verified tokens (`--jwks-source`)",
            vec!["--jwks-source", emu.as_str()],
        ),
    ];
    for (mode, flags) in modes {
        log(format!("memory: {mode}"));
        let agent = ctx.agent("memory", &flags).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (idle, _) = agent.child.rss_kib().ok_or("cannot read the agent's RSS")?;
        let mut points = Vec::new();
        let mut done = 0;
        for &p in &ctx.args.memory_points {
            warm(agent.addr, ctx.pods.clone(), done..p, 16).await?;
            done = p;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (rss, _) = agent.child.rss_kib().ok_or("cannot read the agent's RSS")?;
            points.push((p, rss));
        }
        let (_, hwm) = agent.child.rss_kib().ok_or("cannot read the agent's RSS")?;
        log(format!(
            "  idle {}, {}",
            mib(idle),
            points
                .iter()
                .map(|(p, r)| format!("{p}: {}", mib(*r)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        rows.push(MemoryRow {
            mode,
            idle_kib: idle,
            points,
            hwm_kib: hwm,
        });
        agent.child.stop();
    }
    Ok(rows)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireCreds {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
}

/// Expiration (epoch s) of a well-formed credential body.
fn credential_expiry(body: &[u8]) -> Option<i64> {
    let c: WireCreds = serde_json::from_slice(body).ok()?;
    if !c.access_key_id.starts_with("ASIA") || c.secret_access_key.is_empty() || c.token.is_empty()
    {
        return None;
    }
    aws_smithy_types::DateTime::from_str(
        &c.expiration,
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()
    .map(|d| d.secs())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn outage(ctx: &Ctx) -> R<Outage> {
    let a = &ctx.args;
    let n = a.outage_identities;
    log(format!(
        "upstream outage: {n} identities, {} s load, EKS Auth failing from {} s to {} s",
        a.outage_duration, a.outage_start, a.outage_end
    ));
    let agent = ctx
        .agent(
            "outage",
            &[
                "--max-credential-retention-before-renewal",
                "10s",
                "--eks-auth-max-attempts",
                "1",
            ],
        )
        .await?;
    warm(agent.addr, ctx.pods.clone(), 0..n, 16).await?;
    let tokens: Arc<Vec<String>> = Arc::new(ctx.pods[..n].to_vec());
    let start = Instant::now();
    let end = start + Duration::from_secs(a.outage_duration);
    let s0 = ctx.emu_stats().await?;
    let mut tasks = Vec::new();
    for j in 0..a.outage_connections {
        let tokens = tokens.clone();
        let addr = agent.addr;
        let conns = a.outage_connections;
        tasks.push(tokio::spawn(async move {
            let mut samples: Vec<(Duration, u16, bool)> = Vec::new();
            let mut expiries: HashMap<Vec<u8>, Option<i64>> = HashMap::new();
            let mut conn: Option<Conn> = None;
            let mut i = j;
            while Instant::now() < end {
                let sent = start.elapsed();
                if conn.as_ref().is_none_or(|c| c.closed()) {
                    conn = Conn::connect(addr).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    samples.push((sent, 0, false));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                match c.credentials(&tokens[i % tokens.len()]).await {
                    Ok(r) => {
                        let valid = r.status == 200 && {
                            let exp = *expiries
                                .entry(r.body.clone())
                                .or_insert_with(|| credential_expiry(&r.body));
                            exp.is_some_and(|e| e > now_secs())
                        };
                        samples.push((sent, r.status, valid));
                    }
                    Err(_) => {
                        samples.push((sent, 0, false));
                        conn = None;
                    }
                }
                i += conns;
            }
            samples
        }));
    }
    // The fault timeline.
    tokio::time::sleep_until((start + Duration::from_secs(a.outage_start)).into()).await;
    let s_on = ctx.emu_stats().await?;
    ctx.emu_faults("{\"force_error\":\"ServiceUnavailableException\"}")
        .await?;
    let t_on = start.elapsed();
    tokio::time::sleep_until((start + Duration::from_secs(a.outage_end)).into()).await;
    let s_off = ctx.emu_stats().await?;
    let reset = ctx.emu_faults("{}").await;
    let t_off = start.elapsed();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    reset?;
    let total = start.elapsed();
    let s_end = ctx.emu_stats().await?;
    agent.child.stop();

    let windows_spec: [(&'static str, Duration, Duration, u64); 3] = [
        ("before", Duration::ZERO, t_on, s_on.calls - s0.calls),
        ("during outage", t_on, t_off, s_off.calls - s_on.calls),
        ("after", t_off, total, s_end.calls - s_off.calls),
    ];
    let windows = windows_spec
        .into_iter()
        .map(|(label, from, to, calls)| {
            let mut statuses: HashMap<u16, u64> = HashMap::new();
            let (mut requests, mut valid) = (0, 0);
            for (t, status, ok) in samples.iter().filter(|(t, _, _)| *t >= from && *t < to) {
                let _ = t;
                requests += 1;
                valid += u64::from(*ok);
                *statuses.entry(*status).or_default() += 1;
            }
            let mut statuses: Vec<_> = statuses.into_iter().collect();
            statuses.sort();
            OutageWindow {
                label,
                requests,
                valid,
                statuses,
                calls,
            }
        })
        .collect::<Vec<_>>();
    for w in &windows {
        log(format!(
            "  {}: {} requests, {:.2} % valid, {} EKS Auth calls",
            w.label,
            w.requests,
            100.0 * w.valid as f64 / w.requests.max(1) as f64,
            w.calls
        ));
    }
    Ok(Outage {
        start: t_on,
        end: t_off,
        total,
        windows,
    })
}

// ---------------------------------------------------------------- report

const CRITERION: &[(&str, &str)] = &[
    (
        "admission/verified_cold",
        "Token admission, RS256 signature verified (verified-token memo miss)",
    ),
    (
        "admission/verified_cached",
        "Token admission, verified-token memo hit (same token again)",
    ),
    (
        "admission/unverified_cold",
        "Token admission without keys: SHA-256, JWT parse, claim checks (memo miss)",
    ),
    (
        "token_hash/sha256",
        "`TokenHash::of` on a real token (once per distinct token, at admission)",
    ),
    (
        "cache/hit_1_key",
        "`CredentialCache::get` hit, one warm key",
    ),
    (
        "cache/hit_10000_keys",
        "`CredentialCache::get` hit, rotating over 10,000 warm keys",
    ),
];

fn criterion_median_ns(dir: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(id).join("new").join("estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| format!(", {:.0} GiB RAM", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} cores (`nproc`), {model}{mem}, Linux {}",
        online_cpus(),
        kernel.trim()
    )
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn render(ctx: &Ctx, r: &Report) -> String {
    let a = &ctx.args;
    let mut o = String::new();
    let mut line = |s: &str| {
        o.push_str(s);
        o.push('\n');
    };
    line("# Benchmark results");
    line("");
    line(
        "Latest run of `bench/run`; see `bench/README.md` for what each scenario measures and how.",
    );
    line("Numbers are measurements, not assertions; targets are goals reported as ratios.");
    line("");
    line(&format!("- Date: {}", a.date));
    line(&format!("- Commit: `{}`", a.commit));
    line(&format!("- Machine: {}", machine()));
    let placement = match (&ctx.placement.server_cpus, &ctx.placement.load_cpus) {
        (Some(s), Some(l)) => format!(
            "server under test (agent or baseline) pinned to CPU {s}; wrk, the Rust load client and the emulator pinned to CPU {l}"
        ),
        _ => "no CPU pinning (server and load generator share all cores)".into(),
    };
    line(&format!(
        "- Mode: {} ({} s per wrk run, `wrk -t{}`); {placement}; release builds; loopback",
        if a.quick { "quick" } else { "full" },
        a.duration,
        a.wrk_threads
    ));
    line("");

    let mut targets: Vec<(String, String, String, &'static str)> = Vec::new();

    if !r.hit.is_empty() {
        line("## 1. Cache hit: throughput and latency (wrk, unverified tokens)");
        line("");
        line(
            "Agent warmed with K identities (K distinct tokens), wrk rotating the `Authorization` header over them; baseline = bare hyper server answering the same body. Latencies are wrk's (µs precision), ratios are agent/baseline.",
        );
        line("");
        line(
            "| K | conns | agent req/s | baseline req/s | req/s ratio | agent p50 | agent p99 | agent p99.9 | baseline p50 | baseline p99 | baseline p99.9 | p99 ratio | non-2xx / errors | EKS Auth calls |",
        );
        line("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for h in &r.hit {
            line(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                thousands(h.identities as u64),
                h.conns,
                thousands(h.agent.rps() as u64),
                thousands(h.base.rps() as u64),
                ratio(h.agent.rps() / h.base.rps()),
                fmt_us(h.agent.p50),
                fmt_us(h.agent.p99),
                fmt_us(h.agent.p999),
                fmt_us(h.base.p50),
                fmt_us(h.base.p99),
                fmt_us(h.base.p999),
                ratio(h.agent.p99 / h.base.p99),
                h.agent.non2xx + h.base.non2xx,
                h.agent.errors + h.base.errors,
                h.calls
            ));
        }
        line("");
        let bad: u64 = r.hit.iter().map(|h| h.agent.non2xx + h.agent.errors).sum();
        line(&format!(
            "Non-2xx responses and socket errors from the agent over all runs: {} ({}).",
            bad,
            if bad == 0 { "PASS" } else { "FAIL" }
        ));
        line("");
        let hardened: Vec<String> = r
            .hit
            .iter()
            .filter_map(|h| {
                h.hardened.as_ref().map(|w| {
                    format!(
                        "K = {}: {} req/s, p99 {} ({} / {} of the plain baseline)",
                        thousands(h.identities as u64),
                        thousands(w.rps() as u64),
                        fmt_us(w.p99),
                        ratio(w.rps() / h.base.rps()),
                        ratio(w.p99 / h.base.p99)
                    )
                })
            })
            .collect();
        if !hardened.is_empty() {
            line(&format!(
                "Baseline with the agent's hyper settings (`baseline --hardened`: timer, 5 s header-read timeout, 16 KiB header limits), 64 connections: {}. When this is close to the plain baseline, the gap to the agent is the agent's own per-request work.",
                hardened.join("; ")
            ));
            line("");
        }
        if let Some(h) = r.hit.iter().find(|h| h.identities == 1000 && h.conns == 64) {
            let tr = h.agent.rps() / h.base.rps();
            let lr = h.agent.p99 / h.base.p99;
            targets.push((
                "Cache-hit throughput, 64 conns, 1,000 identities".into(),
                "≥ 0.90× baseline".into(),
                format!(
                    "{} ({} vs {} req/s)",
                    ratio(tr),
                    thousands(h.agent.rps() as u64),
                    thousands(h.base.rps() as u64)
                ),
                met(tr >= 0.9),
            ));
            targets.push((
                "Cache-hit p99, 64 conns, 1,000 identities".into(),
                "≤ 1.5× baseline".into(),
                format!(
                    "{} ({} vs {})",
                    ratio(lr),
                    fmt_us(h.agent.p99),
                    fmt_us(h.base.p99)
                ),
                met(lr <= 1.5),
            ));
        }
    }

    if let Some(first) = r.storm.first() {
        line("## 2. Miss storm (coalescing)");
        line("");
        line(&format!(
            "EKS Auth emulator latency {} ms; {} connections opened first, then one request each at once, spread over {} identities (tokens). Latency is per request, from write to complete response. Round 1 is the scenario (fresh agent); round 2 repeats it on the same agent with {} other identities (EKS Auth client warm), to separate first-call costs.",
            first.latency_ms,
            thousands(first.requests as u64),
            first.identities,
            first.identities
        ));
        line("");
        line(
            "| round | requests | identities | EKS Auth calls | 200 | distinct credentials | p50 | p99 | max | all answered in | p50 / upstream | p99 / upstream | agent-observed EKS Auth call (mean) | calls check |",
        );
        line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for s in &r.storm {
            let up = s.latency_ms as f64 / 1000.0;
            let pass = s.calls == s.identities as u64;
            line(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.label,
                thousands(s.requests as u64),
                s.identities,
                s.calls,
                thousands(s.ok as u64),
                s.distinct_bodies,
                fmt_dur(s.p50),
                fmt_dur(s.p99),
                fmt_dur(s.max),
                fmt_dur(s.wall),
                ratio(s.p50.as_secs_f64() / up),
                ratio(s.p99.as_secs_f64() / up),
                s.eks_mean.map(fmt_dur).unwrap_or_else(|| "n/a".into()),
                if pass {
                    format!("PASS ({} = {})", s.calls, s.identities)
                } else {
                    format!("FAIL ({} ≠ {})", s.calls, s.identities)
                }
            ));
        }
        line("");
        line(
            "\"distinct credentials\" sums, over identities, the number of different bodies received: equal to the identity count when every waiter got its identity's one coalesced result.",
        );
        line("");
        let s = first;
        let up = s.latency_ms as f64 / 1000.0;
        targets.push((
            format!(
                "Miss-storm p99 ({} requests, {} identities, fresh agent)",
                thousands(s.requests as u64),
                s.identities
            ),
            "≤ 1.5× upstream latency".into(),
            format!(
                "{} ({} vs {} ms)",
                ratio(s.p99.as_secs_f64() / up),
                fmt_dur(s.p99),
                s.latency_ms
            ),
            met(s.p99.as_secs_f64() <= 1.5 * up),
        ));
        let calls: u64 = r.storm.iter().map(|s| s.calls).sum();
        let want: u64 = r.storm.iter().map(|s| s.identities as u64).sum();
        targets.push((
            "Miss-storm EKS Auth calls (all rounds)".into(),
            format!("= {want} (one per identity)"),
            calls.to_string(),
            met(calls == want),
        ));
    }

    if !r.rotation.is_empty() {
        line("## 3. Token rotation (verified mode)");
        line("");
        line(&format!(
            "`--jwks-source <emulator>`; {} pods warmed with one token each; then wrk ({} conns) over {} other tokens of those pods, each minted fresh (new `jti`), {} per pod. Without the memo every request verifies an RS256 signature; with it (primed with the same tokens) every request is a memo hit.",
            thousands(a.rotation_pods as u64),
            a.rotation_connections,
            thousands(ctx.rotation.len() as u64),
            ctx.rotation.len() / a.rotation_pods.max(1)
        ));
        line("");
        line(
            "| verified-token memo | req/s | p50 | p99 | p99.9 | signature verifications | memo hits | EKS Auth calls | non-2xx / errors |",
        );
        line("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in &r.rotation {
            line(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                row.label,
                thousands(row.wrk.rps() as u64),
                fmt_us(row.wrk.p50),
                fmt_us(row.wrk.p99),
                fmt_us(row.wrk.p999),
                thousands(row.verified),
                thousands(row.memo_hits),
                row.calls,
                row.wrk.non2xx,
                row.wrk.errors
            ));
        }
        line("");
        if let [without, with] = &r.rotation[..] {
            let cost_us = (1.0 / without.wrk.rps() - 1.0 / with.wrk.rps()) * 1e6;
            line(&format!(
                "Verification cost: 1/rps_without − 1/rps_with = **{cost_us:.1} µs** per request. With the agent pinned to one core and saturated, this is the server CPU time one signature verification (parse, RS256 verify, claim checks, memo insert) adds to a request; it is not added latency at low load, and it is paid once per token when the memo is on (the kubelet rotates a projected token about hourly)."
            ));
            line("");
            let calls = without.calls + with.calls;
            targets.push((
                "Token rotation: EKS Auth calls during load".into(),
                "= 0".into(),
                calls.to_string(),
                met(calls == 0),
            ));
        }
    }

    if !r.memory.is_empty() {
        line("## 4. Memory (VmRSS)");
        line("");
        let points = &a.memory_points;
        let mut head = "| mode | idle |".to_string();
        let mut sep = "|---|---:|".to_string();
        for p in points {
            head.push_str(&format!(" {} identities |", thousands(*p as u64)));
            sep.push_str("---:|");
        }
        head.push_str(" per identity (marginal) | peak (VmHWM) |");
        sep.push_str("---:|---:|");
        line(&head);
        line(&sep);
        for m in &r.memory {
            let mut row = format!("| {} | {} |", m.mode, mib(m.idle_kib));
            for (_, rss) in &m.points {
                row.push_str(&format!(" {} |", mib(*rss)));
            }
            let per = match (m.points.first(), m.points.last()) {
                (Some((p0, r0)), Some((p1, r1))) if p1 > p0 => {
                    format!("{:.2} KiB", (*r1 as f64 - *r0 as f64) / (*p1 - *p0) as f64)
                }
                _ => "n/a".into(),
            };
            row.push_str(&format!(" {per} | {} |", mib(m.hwm_kib)));
            line(&row);
        }
        line("");
        line(
            "Each identity was requested once (16 keep-alive connections); RSS read from `/proc/<pid>/status` 0.5 s after the last request.",
        );
        line("");
        for m in &r.memory {
            if let Some((p, rss)) = m.points.last() {
                targets.push((
                    format!("RSS with {} identities, {}", thousands(*p as u64), m.mode),
                    "≤ 64 MiB".into(),
                    mib(*rss),
                    met(*rss <= 64 * 1024),
                ));
            }
        }
    }

    if let Some(out) = &r.outage {
        line("## 5. Upstream outage");
        line("");
        line(&format!(
            "Agent with `--max-credential-retention-before-renewal 10s --eks-auth-max-attempts 1`, warmed with {} identities; {} keep-alive connections for {:.1} s (Rust client, every request timestamped); EKS Auth answers `ServiceUnavailableException` from {:.1} s to {:.1} s. Valid = 200 with a well-formed, unexpired credential.",
            a.outage_identities,
            a.outage_connections,
            out.total.as_secs_f64(),
            out.start.as_secs_f64(),
            out.end.as_secs_f64()
        ));
        line("");
        line("| window | requests | valid 200 | share valid | statuses | EKS Auth calls |");
        line("|---|---:|---:|---:|---|---:|");
        for w in &out.windows {
            line(&format!(
                "| {} | {} | {} | {:.3} % | {} | {} |",
                w.label,
                thousands(w.requests),
                thousands(w.valid),
                100.0 * w.valid as f64 / w.requests.max(1) as f64,
                w.statuses
                    .iter()
                    .map(|(s, n)| format!(
                        "{}: {}",
                        if *s == 0 {
                            "conn error".to_string()
                        } else {
                            s.to_string()
                        },
                        thousands(*n)
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                w.calls
            ));
        }
        line("");
        if let Some(w) = out.windows.iter().find(|w| w.label == "during outage") {
            targets.push((
                "Valid credentials served during the outage".into(),
                "(no target; higher is better)".into(),
                format!("{:.3} %", 100.0 * w.valid as f64 / w.requests.max(1) as f64),
                "info",
            ));
        }
    }

    line("## Micro-benchmarks (criterion, median)");
    line("");
    match &a.criterion_dir {
        None => {
            line("Skipped (`--quick`).");
            line("");
        }
        Some(dir) => {
            line("| benchmark | what | median |");
            line("|---|---|---:|");
            for (id, what) in CRITERION {
                let v = criterion_median_ns(dir, id)
                    .map(fmt_ns)
                    .unwrap_or_else(|| "not run".into());
                line(&format!("| `{id}` | {what} | {v} |"));
            }
            line("");
        }
    }

    if !targets.is_empty() {
        line("## Targets");
        line("");
        line("| target | goal | measured | status |");
        line("|---|---|---|---|");
        for (t, goal, m, status) in &targets {
            line(&format!("| {t} | {goal} | {m} | {status} |"));
        }
        line("");
    }
    o
}
