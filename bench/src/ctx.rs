//! What the scenarios share: the run's context (binaries, CPU placement,
//! the emulator, the minted tokens), fresh agents on free ports, the
//! emulator's control API, warm-up, and the agent's Prometheus metrics.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::client::{self, Conn};
use crate::procs::{Child, Placement};
use crate::tokens;
use crate::{Error, R};

pub fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

pub fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1)
}

pub fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Pins this thread (and so the runtime threads created after it) to `cpus`
/// (`1`, `1-3`, `1,3`).
pub fn pin_self(cpus: &str) -> R<()> {
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

pub fn free_ports(n: usize) -> R<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

/// The `eks-pod-identity-agent emulator` process (EKS Auth emulator + token
/// issuer); stopped when this is dropped.
pub struct Emulator {
    _child: Child,
    pub url: String,
    pub addr: SocketAddr,
    /// Its signing key, for minting tokens in-process.
    pub key_file: PathBuf,
}

impl Emulator {
    /// Starts the emulator on the load CPUs and waits for its ready file.
    pub fn start(testkit_bin: &Path, workdir: &Path, placement: &Placement) -> R<Self> {
        let key_file = workdir.join("issuer.pem");
        let ready = workdir.join("emulator.ready");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Placement::command(placement.load_cpus.as_deref(), testkit_bin);
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
        let mut child = Child::spawn(cmd, "emulator", workdir)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            if let Ok(s) = std::fs::read_to_string(&ready)
                && let Some(line) = s.lines().next()
            {
                break line.trim().to_owned();
            }
            if child.exited().is_some() || Instant::now() > deadline {
                return Err(format!("emulator did not start:\n{}", child.log_tail()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let addr: SocketAddr = url
            .strip_prefix("http://")
            .ok_or("emulator URL is not http")?
            .parse()?;
        log(format!("emulator at {url}"));
        Ok(Self {
            _child: child,
            url,
            addr,
            key_file,
        })
    }
}

pub struct Ctx {
    pub agent_bin: PathBuf,
    pub baseline_bin: PathBuf,
    /// The wrk script (`bench/wrk/rotate.lua`).
    pub lua: PathBuf,
    pub workdir: PathBuf,
    pub wrk_threads: usize,
    pub placement: Placement,
    pub emu_url: String,
    pub emu_addr: SocketAddr,
    /// One token per pod: pod `i`'s at index `i`.
    pub pods: Arc<Vec<String>>,
    /// The rotation scenario's fresh tokens (empty when it does not run).
    pub rotation: Arc<Vec<String>>,
    /// Per cache-hit identity count K, the file of the first K pod tokens.
    pub files: HashMap<usize, PathBuf>,
    pub rotation_file: PathBuf,
    /// Agents started so far; numbers their log files.
    pub agents: AtomicUsize,
}

pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct EmuStats {
    pub calls: u64,
    pub successes: u64,
    pub throttled: u64,
}

impl Ctx {
    /// A fresh agent with the benchmark's flags plus `extra`, once ready.
    /// Its EKS Auth call cap is off: the cache is measured, not the cap
    /// (warming 10,000 identities at the default 20/s would take eight
    /// minutes).
    pub async fn agent(&self, name: &str, extra: &[&str]) -> R<Agent> {
        let mut flags = vec!["--eks-auth-rate-limit", "0"];
        flags.extend_from_slice(extra);
        self.agent_with_gate(name, &flags).await
    }

    /// A fresh agent with the benchmark's flags plus `extra`, keeping the
    /// agent's own default EKS Auth protection (call cap, queue) unless
    /// `extra` sets it: the protection scenarios measure it.
    pub async fn agent_with_gate(&self, name: &str, extra: &[&str]) -> R<Agent> {
        let n = self.agents.fetch_add(1, Ordering::Relaxed);
        let ports = free_ports(3)?;
        let mut cmd = Placement::command(self.placement.server_cpus.as_deref(), &self.agent_bin);
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
        // A node's agent has no CA bundle unless configured; a bundle in the
        // benchmark's own environment would load into every agent's memory.
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL_EKS_AUTH");
        let mut child = Child::spawn(cmd, &format!("{n:02}-{name}"), &self.workdir)?;
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

    pub async fn emu_stats(&self) -> R<EmuStats> {
        let r = client::once(self.emu_addr, "GET", "/_emulator/stats", b"").await?;
        Ok(serde_json::from_slice(&r.body)?)
    }

    pub async fn emu_faults(&self, json: &str) -> R<()> {
        let r = client::once(self.emu_addr, "POST", "/_emulator/faults", json.as_bytes()).await?;
        if r.status != 200 {
            return Err(format!("setting faults: {} {}", r.status, r.text()).into());
        }
        Ok(())
    }
}

/// Requests every token once over `conns` keep-alive connections; every
/// answer must be 200. Returns one body.
pub async fn warm(
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

pub async fn scrape(addr: SocketAddr) -> R<String> {
    let r = client::once(addr, "GET", "/metrics", b"").await?;
    Ok(r.text())
}

/// Value of a Prometheus sample `name{labels}` (0 when absent).
pub fn metric(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
