//! The `testkit` command line: `demo`, `emulator`, `mint-token`. Not part of
//! the agent's image.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pod_identity_agent::cli::{LogArgs, LogFormat};
use pod_identity_agent::duration::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "testkit",
    about = "Fakes for the EKS Pod Identity agent: the no-AWS demo, the EKS Auth emulator, token minting"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run issuer, EKS Auth emulator and agent on 127.0.0.1, no AWS account needed.
    Demo(DemoArgs),
    /// Run the EKS Auth emulator and token issuer alone (tests, benchmarks).
    Emulator(EmulatorArgs),
    /// Mint a projected-ServiceAccount-like token from an emulator's signing key.
    MintToken(MintTokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Port for the agent (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Keep running until Ctrl-C (default). With --once, print and exit after a self-check.
    #[arg(long)]
    pub once: bool,
    /// Directory for the demo token file (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Log level of the agent and the emulator: trace, debug, info, warn, error.
    #[arg(short = 'v', long = "verbosity", default_value = "info")]
    pub verbosity: String,
    /// Log format: text for people reading a terminal (the agent's own
    /// default is json, as upstream's).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl DemoArgs {
    pub fn log(&self) -> LogArgs {
        LogArgs {
            verbosity: self.verbosity.clone(),
            log_format: self.log_format,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct MintTokenArgs {
    /// PEM (PKCS#8) RSA private key of the issuer (as written by `emulator --key-file`).
    #[arg(long)]
    pub key_file: PathBuf,
    #[arg(long, default_value = "https://oidc.eks.local.example/id/DEMO")]
    pub issuer: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[arg(long, default_value = "demo-sa")]
    pub service_account: String,
    #[arg(long, default_value = "demo-pod")]
    pub pod: String,
    /// Pod UID (random when omitted).
    #[arg(long)]
    pub pod_uid: Option<String>,
    #[arg(long, default_value = "pods.eks.amazonaws.com")]
    pub audience: String,
    /// Token lifetime.
    #[arg(long, default_value = "22h", value_parser = parse_duration)]
    pub lifetime: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Issuer signing key (PKCS#8 PEM); generated and written here if missing.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Issuer URL put in tokens (default: the emulator's own http URL).
    #[arg(long)]
    pub issuer: Option<String>,
    /// Association `namespace/serviceaccount=roleArn`; repeatable.
    #[arg(long = "association")]
    pub associations: Vec<String>,
    /// Lifetime of issued credentials.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub credential_lifetime: Duration,
    /// Added latency on every AssumeRoleForPodIdentity call.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub latency: Duration,
    /// Write `listen=<url>` and the token of a sample pod here once ready.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
}
