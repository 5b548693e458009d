//! `testkit`: the no-AWS demo, the EKS Auth emulator and token minting.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use pod_identity_agent::app::shutdown_signal;
use pod_identity_agent::cli::{LogArgs, LogFormat};
use pod_identity_agent::logging;
use testkit::cli::{Cli, Command};
use testkit::issuer::{Issuer, TokenSpec};
use testkit::{demo, emulator};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = match &cli.command {
        Command::Demo(a) => a.log(),
        Command::Emulator(a) => a.log.clone(),
        Command::MintToken(_) => LogArgs {
            verbosity: "warn".into(),
            log_format: LogFormat::Text,
        },
    };
    if let Err(e) = logging::init(&log) {
        eprintln!("{e}");
        return ExitCode::from(64);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts on a normal host");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args, shutdown_signal())
                .await
                .map_err(|e| e.to_string()),
            Command::Emulator(args) => emulator::run_standalone(args, shutdown_signal())
                .await
                .map_err(|e| e.to_string()),
            Command::MintToken(args) => mint(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mint(args: testkit::cli::MintTokenArgs) -> Result<(), String> {
    let pem = std::fs::read_to_string(&args.key_file)
        .map_err(|e| format!("reading {}: {e}", args.key_file.display()))?;
    let issuer = Issuer::from_pem(&args.issuer, &pem).map_err(|e| e.to_string())?;
    let mut spec = TokenSpec::pod(&args.namespace, &args.service_account, &args.pod);
    if let Some(uid) = args.pod_uid {
        spec.pod_uid = uid;
    }
    spec.audience = vec![args.audience];
    spec.lifetime = args.lifetime;
    println!("{}", issuer.mint(&spec).map_err(|e| e.to_string())?);
    Ok(())
}
