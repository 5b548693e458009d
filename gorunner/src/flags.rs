//! go-runner's command line, parsed by the rules of Go's `flag` package
//! (kubernetes/release `images/build/go-runner/go-runner.go` uses the
//! standard `flag.Parse()`):
//!
//! - three flags: `-log-file string`, `-also-stdout` (bool, default false),
//!   `-redirect-stderr` (bool, default true); `-h`/`-help` print the usage;
//! - one or two dashes are equivalent; `-flag=value` and, for the string
//!   flag only, `-flag value` (the next word is taken whatever it is);
//!   a bool flag is switched off only with `-flag=false`, so
//!   `--also-stdout false cmd` runs the command `false`;
//! - parsing stops at the first word that is not a flag (`-` is not a flag)
//!   or after `--`; everything from there on is the command and its
//!   arguments, passed through untouched.
//!
//! Errors and the usage text are upstream's, byte for byte.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// What to run and where its output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Child stdout (and stderr, with `redirect_stderr`) is appended here
    /// when not empty.
    pub log_file: OsString,
    /// With `log_file`: write to go-runner's stdout as well.
    pub also_stdout: bool,
    /// The child's stderr goes where its stdout goes.
    pub redirect_stderr: bool,
    /// The executable and its arguments.
    pub command: Vec<OsString>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            log_file: OsString::new(),
            also_stdout: false,
            redirect_stderr: true,
            command: Vec::new(),
        }
    }
}

/// The outcome of parsing.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Options),
    /// `-h`, `-help` (or with two dashes): print [`usage`], exit 0.
    Help,
}

/// A command line Go's `flag` package would refuse (exit status 2).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("bad flag syntax: {0}")]
    BadSyntax(String),
    #[error("flag provided but not defined: -{0}")]
    Undefined(String),
    #[error("flag needs an argument: -{0}")]
    NeedsArgument(String),
    #[error("invalid boolean value {value:?} for -{name}: parse error")]
    InvalidBool { value: String, name: String },
}

/// The usage text `flag.PrintDefaults` prints for go-runner's flags.
pub fn usage(argv0: &str) -> String {
    format!(
        "Usage of {argv0}:\n  \
         -also-stdout\n    \tuseful with log-file, log to standard output as well as the log file\n  \
         -log-file string\n    \tIf non-empty, save stdout to this file\n  \
         -redirect-stderr\n    \ttreat stderr same as stdout (default true)\n"
    )
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses the arguments after argv[0].
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, FlagError> {
    let mut opts = Options::default();
    let mut args = args.into_iter().peekable();
    while let Some(word) = args.peek() {
        let s = word.as_bytes();
        if s.len() < 2 || s[0] != b'-' {
            break;
        }
        let dashes = if s[1] == b'-' { 2 } else { 1 };
        if s.len() == 2 && dashes == 2 {
            args.next();
            break;
        }
        let body = &s[dashes..];
        if body.is_empty() || body[0] == b'-' || body[0] == b'=' {
            return Err(FlagError::BadSyntax(lossy(s)));
        }
        // `=` cannot be the first character of the name (checked above).
        let (name, value) = match body.iter().position(|&c| c == b'=') {
            Some(i) => (&body[..i], Some(body[i + 1..].to_vec())),
            None => (body, None),
        };
        let name = lossy(name);
        args.next();
        match name.as_str() {
            "also-stdout" | "redirect-stderr" => {
                let on = match value {
                    None => true,
                    Some(v) => {
                        let v = lossy(&v);
                        parse_bool(&v).ok_or(FlagError::InvalidBool {
                            value: v,
                            name: name.clone(),
                        })?
                    }
                };
                if name == "also-stdout" {
                    opts.also_stdout = on;
                } else {
                    opts.redirect_stderr = on;
                }
            }
            "log-file" => {
                opts.log_file = match value {
                    Some(v) => OsString::from_vec(v),
                    None => args.next().ok_or(FlagError::NeedsArgument(name))?,
                };
            }
            "h" | "help" => return Ok(Parsed::Help),
            _ => return Err(FlagError::Undefined(name)),
        }
    }
    opts.command = args.collect();
    Ok(Parsed::Run(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, FlagError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(args: &[&str]) -> Options {
        match p(args) {
            Ok(Parsed::Run(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn cmd(o: &Options) -> Vec<&str> {
        o.command.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn the_charts_invocation_parses_no_flags() {
        let o = run(&[
            "/eks-pod-identity-agent",
            "server",
            "--port",
            "80",
            "-v",
            "trace",
        ]);
        assert_eq!(o.log_file, "");
        assert!(!o.also_stdout);
        assert!(o.redirect_stderr);
        assert_eq!(
            cmd(&o),
            [
                "/eks-pod-identity-agent",
                "server",
                "--port",
                "80",
                "-v",
                "trace"
            ]
        );
    }

    #[test]
    fn one_or_two_dashes_equals_or_next_word() {
        for args in [
            &["--log-file", "/l", "x"][..],
            &["-log-file", "/l", "x"],
            &["--log-file=/l", "x"],
            &["-log-file=/l", "x"],
        ] {
            let o = run(args);
            assert_eq!(o.log_file, "/l", "{args:?}");
            assert_eq!(cmd(&o), ["x"], "{args:?}");
        }
        // The string flag takes the next word even when it looks like a flag.
        assert_eq!(run(&["-log-file", "-x", "c"]).log_file, "-x");
        // Last one wins.
        assert_eq!(run(&["-log-file=a", "-log-file=b", "c"]).log_file, "b");
    }

    #[test]
    fn bool_flags_only_take_values_after_equals() {
        let o = run(&["--also-stdout", "--redirect-stderr=false", "c"]);
        assert!(o.also_stdout);
        assert!(!o.redirect_stderr);
        // Upstream's trap: `false` is the command, not the flag's value.
        let o = run(&["--also-stdout", "false", "c"]);
        assert!(o.also_stdout);
        assert_eq!(cmd(&o), ["false", "c"]);
        for v in ["1", "t", "T", "true", "TRUE", "True"] {
            assert!(run(&[&format!("-redirect-stderr={v}"), "c"]).redirect_stderr);
        }
        for v in ["0", "f", "F", "false", "FALSE", "False"] {
            assert!(!run(&[&format!("-redirect-stderr={v}"), "c"]).redirect_stderr);
        }
        assert_eq!(
            p(&["-also-stdout=yes", "c"]).unwrap_err().to_string(),
            "invalid boolean value \"yes\" for -also-stdout: parse error"
        );
    }

    #[test]
    fn parsing_stops_at_the_first_non_flag_or_after_double_dash() {
        assert_eq!(
            cmd(&run(&["c", "--log-file=x"])),
            ["c", "--log-file=x"],
            "flags after the command are the command's"
        );
        assert_eq!(cmd(&run(&["--", "--log-file=x"])), ["--log-file=x"]);
        assert_eq!(cmd(&run(&["-", "a"])), ["-", "a"], "`-` is not a flag");
        assert!(run(&[]).command.is_empty());
        assert!(run(&["--also-stdout"]).command.is_empty());
    }

    #[test]
    fn upstream_errors() {
        let e = |a: &[&str]| p(a).unwrap_err().to_string();
        assert_eq!(e(&["-bogus", "c"]), "flag provided but not defined: -bogus");
        assert_eq!(e(&["--bogus=1"]), "flag provided but not defined: -bogus");
        assert_eq!(e(&["-log-file"]), "flag needs an argument: -log-file");
        assert_eq!(e(&["---x"]), "bad flag syntax: ---x");
        assert_eq!(e(&["-=x"]), "bad flag syntax: -=x");
        assert_eq!(p(&["-h"]), Ok(Parsed::Help));
        assert_eq!(p(&["--help", "c"]), Ok(Parsed::Help));
    }

    #[test]
    fn usage_is_upstreams() {
        assert_eq!(
            usage("/go-runner"),
            "Usage of /go-runner:\n  -also-stdout\n    \tuseful with log-file, log to standard output as well as the log file\n  -log-file string\n    \tIf non-empty, save stdout to this file\n  -redirect-stderr\n    \ttreat stderr same as stdout (default true)\n"
        );
    }
}
