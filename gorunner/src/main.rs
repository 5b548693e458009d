//! `go-runner [-log-file F] [-also-stdout] [-redirect-stderr=false] CMD ARGS...`
//!
//! Exit status: the command's (128 + N when signal N killed it), 1 when it
//! could not be started, 2 for a bad go-runner flag, 0 for `-h`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use go_runner::flags::{self, Parsed};
use go_runner::log;
use go_runner::run::{self, Outcome};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "go-runner".to_owned());
    let opts = match flags::parse(args) {
        Ok(Parsed::Run(opts)) => opts,
        Ok(Parsed::Help) => {
            eprint!("{}", flags::usage(&argv0));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("{e}\n{}", flags::usage(&argv0));
            return ExitCode::from(2);
        }
    };
    match run::run(&opts) {
        Ok(status) => {
            let outcome = Outcome::of(status);
            if let Some(message) = &outcome.message {
                log::print(message);
            }
            ExitCode::from(outcome.code)
        }
        Err(e) => {
            log::print(&e.to_string());
            ExitCode::FAILURE
        }
    }
}
