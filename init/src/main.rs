//! `eks-pod-identity-init`: the privileged init container's entry point.
//! Exit codes: 0 done (IPv6 may have been skipped with a warning), 1 setup
//! failed, 64 bad command line (EX_USAGE).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use pod_identity_init::{Cli, run};
use tracing::{error, info};

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EX_USAGE),
            };
            let _ = e.print();
            return code;
        }
    };
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_max_level(cli.verbosity)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli.init)) {
        Ok(outcome) => {
            info!(
                changed = outcome.changed(),
                ipv6_skipped = outcome.ipv6_skipped().is_some(),
                "done"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, errno = e.errno().map(|n| n as i32), "init failed");
            ExitCode::FAILURE
        }
    }
}
