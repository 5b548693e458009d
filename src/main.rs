//! `eks-pod-identity-agent`: parses the command line and dispatches.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use pod_identity_agent::app;
use pod_identity_agent::cli::{
    Cli, Command, EXIT_USAGE, InitializeArgs, LogArgs, ProbeArgs, ServerArgs,
};
use pod_identity_agent::{logging, probe_socket};
use tracing::error;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_USAGE as u8),
            };
        }
    };
    match cli.command {
        Command::Version => {
            // Upstream's wording, for scripts that read it.
            println!(
                "EKS Pod Identity Agent version {}",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        // Run by the kubelet every period: no logging, no runtime.
        Command::Probe(args) => probe(&args),
        Command::Server(args) => with_runtime(&cli.log, server(args)),
        Command::Initialize(args) => with_runtime(&cli.log, initialize(args)),
    }
}

/// Logging, the open-files limit and a runtime for `job`.
fn with_runtime(log: &LogArgs, job: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    if let Err(e) = logging::init(log) {
        eprintln!("{e}");
        return ExitCode::from(EXIT_USAGE as u8);
    }
    raise_fd_limit();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(job),
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            ExitCode::FAILURE
        }
    }
}

async fn server(args: ServerArgs) -> ExitCode {
    warn_ignored(&args.ignored);
    let opts = app::Options::new(args.clone());
    let assembled = match app::build(opts).await {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let listeners = match app::bind(&args).await {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    app::run(assembled, listeners, app::shutdown_signal()).await;
    ExitCode::SUCCESS
}

async fn initialize(args: InitializeArgs) -> ExitCode {
    warn_ignored(&args.ignored);
    match pod_identity_init::run(&args.init).await {
        Ok(outcome) => {
            tracing::info!(
                changed = outcome.changed(),
                ipv6_skipped = outcome.ipv6_skipped().is_some(),
                "initialized"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, errno = e.errno().map(|n| n as i32), "init failed");
            ExitCode::FAILURE
        }
    }
}

/// The answer goes to stdout: the kubelet puts it in the probe's event.
fn probe(args: &ProbeArgs) -> ExitCode {
    match probe_socket::query(&args.socket, args.check.path(), args.timeout) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            println!("{status} {}", body.trim_end());
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Upstream (cobra) ignores positional arguments silently. Say so, but go
/// on like upstream.
fn warn_ignored(ignored: &[String]) {
    if !ignored.is_empty() {
        tracing::warn!(arguments = ?ignored, "ignoring positional arguments, as upstream does");
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    error!(error = %e, "fatal");
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// Raises the soft open-files limit to the hard limit (as the Go runtime
/// does), so `--max-connections` is not capped by a low default of 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
