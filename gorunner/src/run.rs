//! Runs the command the way go-runner does: stdin `/dev/null`, environment
//! and working directory inherited, stdout (and, by default, stderr) to
//! go-runner's stdout or appended to the log file, termination signals
//! passed on to the child.
//!
//! Where this differs from upstream (on purpose, see the README):
//! - every SIGHUP, SIGINT, SIGTERM and SIGQUIT is forwarded, not only the
//!   first; upstream swallows the later ones;
//! - the handlers are installed before the child starts, so a signal
//!   arriving right after the start is forwarded too (upstream dies of it
//!   and leaves the child running);
//! - a signal that arrives after the child exited is not forwarded (no
//!   signal can reach a recycled PID), where upstream exits 1;
//! - the exit status is the child's own (128 + signal number for a signal
//!   death), where upstream returns 1 for every failure; see [`Outcome`].

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::SignalKind;

use crate::flags::Options;
use crate::log;

/// The signals go-runner passes on: the ones that terminate a process on
/// Linux, darwin and Windows alike (upstream's `terminationSignals`).
pub const FORWARDED: [Signal; 4] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGQUIT,
];

/// Why the command could not be run. The messages are upstream's.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("not enough arguments to run")]
    NoCommand,
    #[error("failed to create log file {path}: open {path}: {source}")]
    LogFile {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("starting command: exec: {name:?}: executable file not found in $PATH")]
    NotInPath { name: String },
    #[error("starting command: fork/exec {path}: {source}")]
    Start {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting the command's output: {0}")]
    Output(#[source] io::Error),
    #[error("waiting for the command: {0}")]
    Wait(#[source] io::Error),
    #[error("starting the event loop: {0}")]
    Runtime(#[source] io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] io::Error),
}

/// Starts the command, forwards signals until it exits, and returns its
/// status once its output has been copied.
pub fn run(opts: &Options) -> Result<ExitStatus, RunError> {
    let Some((exe, args)) = opts.command.split_first() else {
        return Err(RunError::NoCommand);
    };
    let output = Output::open(opts)?;
    let path = resolve(exe, std::env::var_os("PATH"))?;
    log::print(&format!("Running command:\n{}", cmd_info(opts, &path)));

    // A current-thread runtime only to wait for the child and the signals
    // together. Signal handlers (not a blocked mask, which the child would
    // inherit) so the child starts with upstream's signal state.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(async {
        let mut signals = Signals::install().map_err(RunError::Signals)?;
        let mut cmd = Command::new(&path);
        cmd.arg0(exe).args(args).stdin(Stdio::null());
        let copier = output.connect(&mut cmd, opts.redirect_stderr)?;
        let spawned = tokio::process::Command::from(cmd).spawn();
        // The Command held copies of the pipe's write end (now dropped with
        // it): the copier sees EOF once the child's copies close.
        let mut child = spawned.map_err(|source| RunError::Start {
            path: path.display().to_string(),
            source,
        })?;
        log::print("Now listening for interrupts");
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(RunError::Wait)?,
                signal = signals.next() => forward(&child, signal),
            }
        };
        if let Some(copier) = copier {
            let _ = tokio::task::spawn_blocking(move || copier.join()).await;
        }
        Ok(status)
    })
}

/// Sends `signal` to the child. Called only while `child.wait()` has not
/// returned, so the child is not reaped yet and its PID is still its own.
fn forward(child: &tokio::process::Child, signal: Signal) {
    let Some(pid) = child.id() else { return };
    log::print(&format!(
        "Got signal: {}. Sending down to process (PID: {pid})",
        signal_name(signal as i32)
    ));
    match kill(Pid::from_raw(pid as i32), signal) {
        Ok(()) => log::print(&format!("Signalled process {pid} successfully.")),
        Err(e) => log::print(&format!("Failed to signal process: {e}")),
    }
}

/// Signals Go's runtime catches and ignores in a program that does not ask
/// for them: go-runner must not die of them and orphan the child.
const IGNORED: [Signal; 8] = [
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGIO,
    Signal::SIGPWR,
];

/// Streams of the [`FORWARDED`] signals, and handlers that keep the
/// [`IGNORED`] ones from terminating go-runner. The child starts with the
/// default action for all of them (exec resets handled signals).
struct Signals {
    forwarded: [(Signal, tokio::signal::unix::Signal); 4],
    _ignored: Vec<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> io::Result<Self> {
        let stream = |s: Signal| {
            tokio::signal::unix::signal(SignalKind::from_raw(s as i32)).map(|st| (s, st))
        };
        Ok(Self {
            forwarded: [
                stream(FORWARDED[0])?,
                stream(FORWARDED[1])?,
                stream(FORWARDED[2])?,
                stream(FORWARDED[3])?,
            ],
            _ignored: IGNORED
                .iter()
                .map(|s| tokio::signal::unix::signal(SignalKind::from_raw(*s as i32)))
                .collect::<io::Result<_>>()?,
        })
    }

    /// The next signal received, in no particular order among simultaneous ones.
    async fn next(&mut self) -> Signal {
        let [a, b, c, d] = &mut self.forwarded;
        tokio::select! {
            Some(()) = a.1.recv() => a.0,
            Some(()) = b.1.recv() => b.0,
            Some(()) = c.1.recv() => c.0,
            Some(()) = d.1.recv() => d.0,
        }
    }
}

/// Where the child's stdout goes.
enum Output {
    /// go-runner's own stdout.
    Stdout,
    /// Appended to the log file.
    File(File),
    /// Both, through a pipe and a copying thread (`--also-stdout`).
    Tee(File),
}

impl Output {
    fn open(opts: &Options) -> Result<Self, RunError> {
        if opts.log_file.is_empty() {
            return Ok(Self::Stdout);
        }
        // Upstream: os.OpenFile(path, O_APPEND|O_CREATE|O_WRONLY, 0o644);
        // the directory must exist.
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&opts.log_file)
            .map_err(|source| RunError::LogFile {
                path: Path::new(&opts.log_file).display().to_string(),
                source,
            })?;
        Ok(if opts.also_stdout {
            Self::Tee(file)
        } else {
            Self::File(file)
        })
    }

    /// Sets the child's stdout and stderr; returns the copying thread, if any.
    /// With redirect-stderr the child's stderr is a duplicate of its stdout
    /// descriptor, as Go's exec.Cmd hands one file to both when Stdout and
    /// Stderr are the same writer.
    fn connect(
        self,
        cmd: &mut Command,
        redirect_stderr: bool,
    ) -> Result<Option<JoinHandle<()>>, RunError> {
        let (stdout, copier): (OwnedFd, _) = match self {
            Self::Stdout => (
                io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(RunError::Output)?,
                None,
            ),
            Self::File(file) => (file.into(), None),
            Self::Tee(file) => {
                let (reader, writer) = io::pipe().map_err(RunError::Output)?;
                let copier = std::thread::spawn(move || tee(reader, file));
                (writer.into(), Some(copier))
            }
        };
        if redirect_stderr {
            cmd.stderr(stdout.try_clone().map_err(RunError::Output)?);
        }
        cmd.stdout(stdout);
        Ok(copier)
    }
}

/// Copies the child's output to stdout and the log file (`io.MultiWriter`).
fn tee(mut reader: io::PipeReader, mut file: File) {
    let mut buf = [0u8; 16 * 1024];
    let stdout = io::stdout();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        // Keep draining when one side fails, so the child never blocks on a
        // full pipe.
        let _ = stdout.lock().write_all(&buf[..n]);
        let _ = file.write_all(&buf[..n]);
    }
}

/// `exec.Command`'s lookup: a name with a slash is used as it is, anything
/// else is searched in `$PATH` (an empty entry is the current directory).
pub fn resolve(exe: &OsStr, path: Option<OsString>) -> Result<PathBuf, RunError> {
    if exe.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(exe));
    }
    let not_found = || RunError::NotInPath {
        name: exe.to_string_lossy().into_owned(),
    };
    if exe.is_empty() {
        return Err(not_found());
    }
    for dir in std::env::split_paths(&path.unwrap_or_default()) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(exe);
        if std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return Ok(candidate);
        }
    }
    Err(not_found())
}

/// Upstream's `cmdInfo`.
fn cmd_info(opts: &Options, path: &Path) -> String {
    let args: Vec<_> = opts
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!(
        "Command env: (log-file={}, also-stdout={}, redirect-stderr={})\n\
         Run from directory: \n\
         Executable path: {}\n\
         Args (comma-delimited): {}",
        opts.log_file.to_string_lossy(),
        opts.also_stdout,
        opts.redirect_stderr,
        path.display(),
        args.join(",")
    )
}

/// go-runner's exit status for a finished child, and the line it logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The child's exit code; 128 + the signal number when a signal killed it
    /// (the shell's convention, which Kubernetes shows as the container's
    /// exit code). Upstream returns 1 for both.
    pub code: u8,
    /// Upstream's `running command: ...` line, for anything but success.
    pub message: Option<String>,
}

impl Outcome {
    pub fn of(status: ExitStatus) -> Self {
        if let Some(code) = status.code() {
            return Self {
                code: code as u8,
                message: (code != 0).then(|| format!("running command: exit status {code}")),
            };
        }
        let signal = status.signal().unwrap_or(0);
        let core = if status.core_dumped() {
            " (core dumped)"
        } else {
            ""
        };
        Self {
            code: 128u8.saturating_add(signal as u8),
            message: Some(format!(
                "running command: signal: {}{core}",
                signal_name(signal)
            )),
        }
    }
}

/// Go's names for signals (`syscall.Signal.String()` on Linux).
pub fn signal_name(signal: i32) -> String {
    let name = match Signal::try_from(signal) {
        Ok(Signal::SIGHUP) => "hangup",
        Ok(Signal::SIGINT) => "interrupt",
        Ok(Signal::SIGQUIT) => "quit",
        Ok(Signal::SIGILL) => "illegal instruction",
        Ok(Signal::SIGTRAP) => "trace/breakpoint trap",
        Ok(Signal::SIGABRT) => "aborted",
        Ok(Signal::SIGBUS) => "bus error",
        Ok(Signal::SIGFPE) => "floating point exception",
        Ok(Signal::SIGKILL) => "killed",
        Ok(Signal::SIGUSR1) => "user defined signal 1",
        Ok(Signal::SIGSEGV) => "segmentation fault",
        Ok(Signal::SIGUSR2) => "user defined signal 2",
        Ok(Signal::SIGPIPE) => "broken pipe",
        Ok(Signal::SIGALRM) => "alarm clock",
        Ok(Signal::SIGTERM) => "terminated",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}
