//! Logging: tracing to stderr, JSON lines by default (upstream logs JSON),
//! text optional. `-v` sets the level of this agent's own code; dependencies
//! are held at `warn` whatever `-v` says, because some of them log request
//! bodies (the pod's token) or signing inputs at debug/trace.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::cli::{LogArgs, LogFormat};

#[derive(Debug, thiserror::Error)]
#[error("invalid verbosity {0:?}: expected trace, debug, info, warn, error, fatal or panic")]
pub struct BadLevel(String);

pub fn level(verbosity: &str) -> Result<LevelFilter, BadLevel> {
    match verbosity.to_ascii_lowercase().as_str() {
        "trace" => Ok(LevelFilter::TRACE),
        "debug" => Ok(LevelFilter::DEBUG),
        "info" => Ok(LevelFilter::INFO),
        "warn" | "warning" => Ok(LevelFilter::WARN),
        // logrus's two levels above error, which upstream's -v accepts.
        "error" | "fatal" | "panic" => Ok(LevelFilter::ERROR),
        other => Err(BadLevel(other.to_owned())),
    }
}

pub fn filter(verbosity: &str) -> Result<EnvFilter, BadLevel> {
    let own = level(verbosity)?;
    let deps = own.min(LevelFilter::WARN);
    Ok(EnvFilter::new(format!(
        "{deps},pod_identity_agent={own},pod_identity_init={own},eks_pod_identity_agent={own}"
    )))
}

/// Installs the global subscriber; call once from `main`.
pub fn init(args: &LogArgs) -> Result<(), BadLevel> {
    let filter = filter(&args.verbosity)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}
