//! The built `go-runner` against real children (`sh`): exit statuses,
//! signal forwarding, where output goes, and upstream's error behaviour.
//! The child says when it is ready on its stdout; the test reads that line
//! instead of sleeping.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_go-runner");

fn go_runner(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("go-runner starts")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("go-runner-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A go-runner whose child traps signals and reports them on stdout.
struct Trapping {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Trapping {
    /// `script` runs after `echo ready`; the loop keeps the shell alive.
    fn start(traps: &str) -> Self {
        let script = format!("{traps}; echo ready; while :; do sleep 0.05; done");
        let mut child = Command::new(BIN)
            .args(["sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        Self { child, lines }
    }

    fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), s).unwrap();
    }

    fn next_line(&mut self) -> String {
        self.lines.next().unwrap().unwrap()
    }

    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

#[test]
fn the_exit_status_is_the_childs() {
    for code in [0, 1, 3, 42, 255] {
        let out = go_runner(&["sh", "-c", &format!("exit {code}")]);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    }
    let out = go_runner(&["sh", "-c", "exit 3"]);
    assert!(text(&out.stderr).contains("running command: exit status 3"));
}

#[test]
fn a_signal_death_is_128_plus_the_signal() {
    let out = go_runner(&["sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));
    assert!(
        text(&out.stderr).contains("running command: signal: killed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_termination_signal_is_forwarded_not_only_the_first() {
    let mut t = Trapping::start(
        "trap 'echo HUP' HUP; trap 'echo INT' INT; trap 'echo QUIT' QUIT; trap 'echo TERM; exit 7' TERM",
    );
    for (s, name) in [
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGINT, "INT"),
        (Signal::SIGINT, "INT"),
        (Signal::SIGQUIT, "QUIT"),
    ] {
        t.signal(s);
        assert_eq!(t.next_line(), name);
    }
    t.signal(Signal::SIGTERM);
    assert_eq!(t.next_line(), "TERM");
    let (status, err) = t.finish();
    assert_eq!(status.code(), Some(7), "{err}");
    assert!(
        err.contains("Got signal: terminated. Sending down to process (PID: "),
        "{err}"
    );
    assert!(err.contains("Got signal: hangup."), "{err}");
    assert!(err.contains("Signalled process "), "{err}");
}

#[test]
fn sigterm_to_a_child_that_does_not_trap_it() {
    let t = Trapping::start("true");
    t.signal(Signal::SIGTERM);
    let (status, err) = t.finish();
    assert_eq!(status.code(), Some(128 + 15), "{err}");
    assert!(err.contains("running command: signal: terminated"), "{err}");
}

#[test]
fn other_signals_are_neither_forwarded_nor_fatal() {
    // Go's runtime catches and ignores signals like SIGUSR1 in a program that
    // does not ask for them; go-runner must survive them too, or the child
    // is orphaned.
    let mut t = Trapping::start("trap 'echo USR1' USR1; trap 'echo TERM; exit 0' TERM");
    t.signal(Signal::SIGUSR1);
    t.signal(Signal::SIGUSR2);
    t.signal(Signal::SIGTERM);
    assert_eq!(
        t.next_line(),
        "TERM",
        "USR1 was not forwarded, go-runner lived on"
    );
    let (status, err) = t.finish();
    assert!(status.success(), "{err}");
}

#[test]
fn stderr_goes_to_stdout_by_default_and_go_runners_own_lines_to_stderr() {
    let out = go_runner(&["sh", "-c", "echo out; echo err >&2"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "out\nerr\n");
    let err = text(&out.stderr);
    assert!(err.contains(" Running command:\nCommand env: (log-file=, also-stdout=false, redirect-stderr=true)\nRun from directory: \nExecutable path: "), "{err}");
    assert!(
        err.contains("Args (comma-delimited): sh,-c,echo out; echo err >&2\n"),
        "{err}"
    );
    assert!(err.contains("Now listening for interrupts"), "{err}");
    // Go's log prefix: "YYYY/MM/DD HH:MM:SS ".
    let first = err.lines().next().unwrap();
    assert_eq!(&first[4..5], "/", "{first}");
    assert_eq!(&first[10..11], " ", "{first}");
}

#[test]
fn redirect_stderr_false_keeps_the_streams_apart() {
    let out = go_runner(&[
        "--redirect-stderr=false",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err\n"));
}

#[test]
fn the_log_file_is_appended_with_mode_0644() {
    let dir = TempDir::new("log");
    let log = dir.0.join("agent.log");
    let log_s = log.to_str().unwrap();
    for word in ["one", "two"] {
        let out = go_runner(&[
            "--log-file",
            log_s,
            "sh",
            "-c",
            &format!("echo {word}; echo {word}-err >&2"),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            "",
            "nothing on stdout without --also-stdout"
        );
        let err = text(&out.stderr);
        assert!(!err.lines().any(|l| l == format!("{word}-err")), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "one\none-err\ntwo\ntwo-err\n"
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o022, 0o644 & !0o022, "mode {mode:o}");

    // --also-stdout: both.
    let out = go_runner(&[
        &format!("-log-file={log_s}"),
        "-also-stdout",
        "sh",
        "-c",
        "echo three; echo three-err >&2",
    ]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "three\nthree-err\n");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .ends_with("two-err\nthree\nthree-err\n")
    );

    // A missing directory is fatal before the command starts.
    let out = go_runner(&["--log-file", "/nonexistent-dir/x.log", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "failed to create log file /nonexistent-dir/x.log: open /nonexistent-dir/x.log: "
        ),
        "{err}"
    );
    assert!(!err.contains("Running command"), "{err}");
}

#[test]
fn stdin_is_dev_null() {
    let out = Command::new(BIN)
        .args(["sh", "-c", "cat; echo end"])
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "end\n");
}

#[test]
fn upstream_errors_and_statuses() {
    let out = go_runner(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not enough arguments to run"));

    let out = go_runner(&["-bogus", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("flag provided but not defined: -bogus\nUsage of "),
        "{err}"
    );

    let out = go_runner(&["-h"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr)
            .contains("  -redirect-stderr\n    \ttreat stderr same as stdout (default true)\n")
    );

    let out = go_runner(&["/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("starting command: fork/exec /nonexistent/cmd: "),
        "{}",
        text(&out.stderr)
    );

    let out = go_runner(&["nonexistent-in-path-xyz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(
        "starting command: exec: \"nonexistent-in-path-xyz\": executable file not found in $PATH"
    ));

    // Flags after the command are the command's.
    let out = go_runner(&["sh", "-c", "echo \"$0 $1\"", "--log-file=x", "y"]);
    assert_eq!(text(&out.stdout), "--log-file=x y\n");
    assert!(out.status.signal().is_none());
}
