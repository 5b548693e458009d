//! Child processes that cannot outlive the benchmark: each is stopped
//! (SIGTERM, then SIGKILL after 3 s) when its guard drops, which covers
//! errors and panics; its pid is also appended to `<workdir>/pids` so that
//! `bench/run`'s trap can kill it if the orchestrator itself is killed.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// CPU placement of the processes: the server under test on one core, load
/// generators and helpers on the other (when there are two and pinning is on).
#[derive(Debug, Clone)]
pub struct Placement {
    pub server_cpus: Option<String>,
    pub load_cpus: Option<String>,
}

impl Placement {
    pub fn none() -> Self {
        Self {
            server_cpus: None,
            load_cpus: None,
        }
    }

    /// `taskset -c <cpus>` prefix, or the bare program.
    pub fn command(cpus: Option<&str>, program: &Path) -> Command {
        match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// Appends `pid` to `<workdir>/pids`, for `bench/run`'s trap.
pub fn record_pid(workdir: &Path, pid: u32) {
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(workdir.join("pids"))
    {
        let _ = writeln!(f, "{pid}");
    }
}

pub struct Child {
    pub name: String,
    pub log: PathBuf,
    child: std::process::Child,
}

impl Child {
    /// Spawns `cmd` with stdout and stderr appended to `<workdir>/<name>.log`.
    pub fn spawn(mut cmd: Command, name: &str, workdir: &Path) -> std::io::Result<Self> {
        let log = workdir.join(format!("{name}.log"));
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd.spawn()?;
        record_pid(workdir, child.id());
        Ok(Self {
            name: name.to_owned(),
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` if it already exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// VmRSS and VmHWM of the process, in KiB.
    pub fn rss_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU time of all its threads so far (`/proc/<pid>/task/*/schedstat`,
    /// nanoseconds; exited threads are not counted, the agent's live for
    /// its whole life).
    pub fn cpu_time(&self) -> Option<Duration> {
        let mut total = 0u64;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid())).ok()? {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(Duration::from_nanos(total))
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.terminate();
    }
}
