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

/// What a per-request log line is about: each topic has its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// One credential request (debug).
    Request,
    /// A token naming another node was refused.
    OtherNode,
    /// Credentials fetched from EKS Auth.
    Fetched,
    /// EKS Auth refused a pod's token or association.
    Refused,
    /// An EKS Auth call failed with nothing cached to serve.
    CallFailed,
    /// A cached credential served because EKS Auth failed.
    Stale,
    /// The EKS Auth call queue was full.
    QueueFull,
    /// A connection refused or evicted by the connection shares (debug).
    Connection,
    /// `accept` failed (file descriptors exhausted, ...).
    Accept,
    /// Fetching signing keys failed.
    Keys,
}

impl Topic {
    const ALL: [Topic; 10] = [
        Topic::Request,
        Topic::OtherNode,
        Topic::Fetched,
        Topic::Refused,
        Topic::CallFailed,
        Topic::Stale,
        Topic::QueueFull,
        Topic::Connection,
        Topic::Accept,
        Topic::Keys,
    ];

    /// The `topic` label of `pod_identity_log_lines_suppressed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Request => "request",
            Topic::OtherNode => "other_node",
            Topic::Fetched => "fetched",
            Topic::Refused => "refused",
            Topic::CallFailed => "call_failed",
            Topic::Stale => "stale",
            Topic::QueueFull => "queue_full",
            Topic::Connection => "connection",
            Topic::Accept => "accept",
            Topic::Keys => "keys",
        }
    }
}

/// Lines a topic may write at once, then one a second.
const LOG_BURST: f64 = 10.0;
const LOG_PER_SECOND: f64 = 1.0;

#[derive(Debug)]
struct Budget {
    tokens: f64,
    at: std::time::Instant,
    /// Lines suppressed since the last one written or summarised.
    suppressed: u64,
}

/// Per-topic log budgets: a flood of any kind (a pod looping, a hostile
/// pod's forged tokens, EKS Auth down under load) writes at most
/// [`LOG_BURST`] lines of a topic at once and one a second after that.
/// The next line written says how many were suppressed before it; lines
/// suppressed with no later line are summarised by [`LogLimiter::flush`]
/// (the maintenance task calls it). Metrics count every event regardless.
#[derive(Debug)]
pub struct LogLimiter {
    budgets: [std::sync::Mutex<Budget>; Topic::ALL.len()],
    suppressed: Option<prometheus::IntCounterVec>,
}

impl LogLimiter {
    /// `suppressed`: counts suppressed lines by topic, if given.
    pub fn new(suppressed: Option<prometheus::IntCounterVec>) -> Self {
        let now = std::time::Instant::now();
        Self {
            budgets: std::array::from_fn(|_| {
                std::sync::Mutex::new(Budget {
                    tokens: LOG_BURST,
                    at: now,
                    suppressed: 0,
                })
            }),
            suppressed,
        }
    }

    /// Whether a line of `topic` may be written now; if so, how many lines
    /// of it were suppressed since the last one, if any (write it as the
    /// field `suppressed`: tracing leaves a `None` out).
    pub fn allow(&self, topic: Topic) -> Option<Option<u64>> {
        self.allow_at(topic, std::time::Instant::now())
    }

    fn allow_at(&self, topic: Topic, now: std::time::Instant) -> Option<Option<u64>> {
        let mut b = self.budgets[topic as usize]
            .lock()
            .expect("log budget lock poisoned");
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * LOG_PER_SECOND).min(LOG_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(Some(std::mem::take(&mut b.suppressed)).filter(|n| *n > 0))
        } else {
            b.suppressed += 1;
            if let Some(c) = &self.suppressed {
                c.with_label_values(&[topic.as_str()]).inc();
            }
            None
        }
    }

    /// One summary line per topic with suppressed lines not yet reported.
    pub fn flush(&self) {
        for topic in Topic::ALL {
            let pending = std::mem::take(
                &mut self.budgets[topic as usize]
                    .lock()
                    .expect("log budget lock poisoned")
                    .suppressed,
            );
            if pending > 0 {
                tracing::info!(
                    topic = topic.as_str(),
                    suppressed = pending,
                    "similar log lines suppressed (rate-limited per topic)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_flood_writes_the_burst_then_one_line_a_second_with_the_count() {
        let l = LogLimiter::new(None);
        let t0 = Instant::now();
        let written: Vec<Option<u64>> = (0..1000)
            .filter_map(|_| l.allow_at(Topic::OtherNode, t0))
            .collect();
        assert_eq!(written, vec![None; 10], "the burst, nothing suppressed yet");
        assert_eq!(
            l.allow_at(Topic::Refused, t0),
            Some(None),
            "topics have their own budgets"
        );
        assert_eq!(
            l.allow_at(Topic::OtherNode, t0 + Duration::from_millis(999)),
            None
        );
        assert_eq!(
            l.allow_at(Topic::OtherNode, t0 + Duration::from_secs(1)),
            Some(Some(991)),
            "the next line says how many were suppressed"
        );
        assert_eq!(
            l.allow_at(Topic::OtherNode, t0 + Duration::from_secs(1)),
            None
        );
    }
}
