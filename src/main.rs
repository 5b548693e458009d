//! `eks-pod-identity-agent`: parses the command line and dispatches.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use pod_identity_agent::cli::{Cli, Command, EXIT_USAGE};
use pod_identity_agent::{demo, emulator, issuer, logging, server};
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
    let log = match &cli.command {
        Command::Server(a) => a.log.clone(),
        Command::Initialize(a) => a.log.clone(),
        Command::Demo(a) => a.log.clone(),
        Command::Emulator(a) => a.log.clone(),
        Command::MintToken(_) => pod_identity_agent::cli::LogArgs {
            verbosity: "warn".into(),
            log_format: pod_identity_agent::cli::LogFormat::Text,
        },
    };
    if let Err(e) = logging::init(&log) {
        eprintln!("{e}");
        return ExitCode::from(EXIT_USAGE as u8);
    }
    pod_identity_agent::server::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Server(args) => {
            let opts = server::Options::new(args.clone());
            let built = match server::build(opts).await {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            let listeners = match server::bind(&args).await {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
            server::run(built, listeners, server::shutdown_signal()).await;
            ExitCode::SUCCESS
        }
        Command::Initialize(args) => match pod_identity_init::run(&args.init).await {
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
        },
        Command::Demo(args) => match demo::run(args, server::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::MintToken(args) => {
            let pem = match std::fs::read_to_string(&args.key_file) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("reading {}: {e}", args.key_file.display());
                    return ExitCode::FAILURE;
                }
            };
            let issuer = match issuer::Issuer::from_pem(&args.issuer, &pem) {
                Ok(i) => i,
                Err(e) => return fail(e),
            };
            let mut spec =
                issuer::TokenSpec::pod(&args.namespace, &args.service_account, &args.pod);
            if let Some(uid) = args.pod_uid {
                spec.pod_uid = uid;
            }
            spec.audience = vec![args.audience];
            spec.lifetime = args.lifetime;
            match issuer.mint(&spec) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Emulator(args) => {
            match emulator::run_standalone(args, server::shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    error!(error = %e, "fatal");
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
