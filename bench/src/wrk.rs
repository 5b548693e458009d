//! Runs `wrk` with `wrk/rotate.lua` on the load CPUs and reads the
//! machine-readable `BENCH_RESULT` line the script prints, which, unlike
//! wrk's own summary, has p99.9 and the error counts in one place.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use crate::R;
use crate::ctx::Ctx;
use crate::procs::{Placement, record_pid};

/// Summary of one wrk run; latencies in µs.
#[derive(Debug, Clone, Default)]
pub struct Wrk {
    pub requests: u64,
    pub duration_us: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub non2xx: u64,
    pub errors: u64,
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

    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }
}

impl Ctx {
    /// Runs wrk against `addr` with the tokens of `file`; returns its summary.
    pub async fn wrk(
        &self,
        label: &str,
        addr: SocketAddr,
        file: &Path,
        conns: usize,
        secs: u64,
    ) -> R<Wrk> {
        let threads = self.wrk_threads.clamp(1, conns);
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
        .arg(&self.lua)
        .arg(format!("http://{addr}/v1/credentials"))
        .env("BENCH_TOKENS", file)
        .kill_on_drop(true);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().map_err(|e| format!("running wrk: {e}"))?;
        if let Some(pid) = child.id() {
            record_pid(&self.workdir, pid);
        }
        let out = child.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = std::fs::write(
            self.workdir.join(format!("wrk-{label}.txt")),
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
