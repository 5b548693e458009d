//! Optional CPU profiles of the agent during a scenario's measured phase.
//!
//! With `BENCH_PERF=<dir>` set, [`start`] attaches `perf record -e cpu-clock
//! --call-graph dwarf` to a running agent and returns once perf acknowledged
//! that its events are enabled (perf's control FIFOs: the phase is recorded
//! from its first request), and [`Profile::finish`] stops it
//! and writes `<dir>/<name>.folded` (stacks folded by inferno, one line per
//! distinct stack with its sample count) and `<dir>/<name>.svg` (the flame
//! graph). Without the variable nothing runs. Profiling costs the agent CPU:
//! the hit scenario profiles an extra run after its measured ones, but a
//! storm round is one-shot and is profiled while measured, so judged numbers
//! come from a pass without `BENCH_PERF`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::R;
use crate::ctx::log;

pub struct Profile {
    perf: std::process::Child,
    data: PathBuf,
    dir: PathBuf,
    name: String,
}

/// The output directory, when profiling was asked for.
pub fn dir() -> Option<PathBuf> {
    std::env::var_os("BENCH_PERF")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Starts recording `pid` when `BENCH_PERF` is set; `None` otherwise or when
/// `perf` cannot start (logged: a profile is a diagnostic, never a reason to
/// fail the benchmark).
pub fn start(pid: u32, name: &str) -> Option<Profile> {
    let dir = dir()?;
    if let Err(e) = std::fs::create_dir_all(&dir) {
        log(format!(
            "profile {name}: cannot create {}: {e}",
            dir.display()
        ));
        return None;
    }
    let data = dir.join(format!("{name}.perf.data"));
    let ctl = dir.join(format!("{name}.ctl"));
    let ack = dir.join(format!("{name}.ack"));
    for fifo in [&ctl, &ack] {
        let _ = std::fs::remove_file(fifo);
        if let Err(e) = nix::unistd::mkfifo(fifo.as_path(), nix::sys::stat::Mode::S_IRWXU) {
            log(format!("profile {name}: mkfifo {}: {e}", fifo.display()));
            return None;
        }
    }
    let control = format!("fifo:{},{}", ctl.display(), ack.display());
    // Samples per second (BENCH_PERF_FREQ): the default suits multi-second
    // phases; a 150 ms miss storm needs ~20000 for a readable graph.
    let freq = std::env::var("BENCH_PERF_FREQ").unwrap_or_else(|_| "999".to_owned());
    let spawned = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", &freq, "--delay=-1"])
        .args(["--call-graph", "dwarf,16384", "-p", &pid.to_string()])
        .args(["--control", &control, "-o"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut perf = match spawned {
        Ok(perf) => perf,
        Err(e) => {
            log(format!("profile {name}: cannot run perf: {e}"));
            return None;
        }
    };
    let enabled = enable(&ctl, &ack);
    for fifo in [&ctl, &ack] {
        let _ = std::fs::remove_file(fifo);
    }
    if let Err(e) = enabled {
        log(format!("profile {name}: perf did not start recording: {e}"));
        let _ = perf.kill();
        let _ = perf.wait();
        return None;
    }
    Some(Profile {
        perf,
        data,
        dir,
        name: name.to_owned(),
    })
}

/// Sends `enable` on perf's control FIFO and waits for its `ack`. Opening a
/// FIFO blocks until perf opens the other end, so this runs on a thread with
/// a deadline (a perf that failed to start never opens them).
fn enable(ctl: &Path, ack: &Path) -> std::io::Result<()> {
    let (ctl, ack) = (ctl.to_owned(), ack.to_owned());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = (|| {
            let mut ctl = std::fs::OpenOptions::new().write(true).open(&ctl)?;
            let mut ack = BufReader::new(std::fs::File::open(&ack)?);
            ctl.write_all(b"enable\n")?;
            let mut line = String::new();
            ack.read_line(&mut line)?;
            if line.trim() == "ack" {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("perf answered {line:?}")))
            }
        })();
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(20))
        .map_err(|_| std::io::Error::other("no acknowledgement within 20 s"))?
}

impl Profile {
    /// Stops recording, folds the stacks and writes the flame graph.
    pub fn finish(mut self) -> R<PathBuf> {
        let _ = kill(Pid::from_raw(self.perf.id() as i32), Signal::SIGINT);
        self.perf.wait()?;
        let script = Command::new("perf")
            .args(["script", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()?;
        if !script.status.success() {
            return Err(format!("perf script failed for {}", self.data.display()).into());
        }
        let mut folded = Vec::new();
        {
            use inferno::collapse::Collapse;
            let mut folder = inferno::collapse::perf::Folder::default();
            folder.collapse(&script.stdout[..], &mut folded)?;
        }
        let folded_path = self.dir.join(format!("{}.folded", self.name));
        std::fs::write(&folded_path, &folded)?;
        let svg = self.dir.join(format!("{}.svg", self.name));
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = format!("eks-pod-identity-agent: {}", self.name);
        let text = String::from_utf8_lossy(&folded);
        inferno::flamegraph::from_lines(&mut opts, text.lines(), std::fs::File::create(&svg)?)?;
        let _ = std::fs::remove_file(&self.data);
        log(format!("profile {}: {}", self.name, svg.display()));
        Ok(svg)
    }
}
