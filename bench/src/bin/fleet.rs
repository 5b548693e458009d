//! Fleet simulation of the agent's EKS Auth protection against a model of
//! upstream's policy (see `pod_identity_bench::fleet`). Prints Markdown;
//! `--markdown FILE` writes it too (`bench/run` adds it to the report).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use pod_identity_bench::fleet::eksauth::ServiceConfig;
use pod_identity_bench::fleet::{self, Config, SdkConfig, report};

#[derive(Parser, Debug)]
#[command(about = "Deterministic fleet simulation: this agent's cache vs upstream's policy")]
struct Args {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 30)]
    pods_per_node: usize,
    /// Simulated hours measured.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Simulated hours before the measurement (the fleet fills up).
    #[arg(long, default_value_t = 6.0)]
    warmup_hours: f64,
    /// EKS Auth quota, calls per second (token bucket).
    #[arg(long, default_value_t = 100.0)]
    quota: f64,
    /// Token-bucket burst (default: one second of quota).
    #[arg(long)]
    burst: Option<f64>,
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Outage start, in measured hours; negative: no outage.
    #[arg(long, default_value_t = 12.0, allow_negative_numbers = true)]
    outage_at_hours: f64,
    #[arg(long, default_value_t = 10.0)]
    outage_minutes: f64,
    /// Share of pods that are short jobs (2–30 min).
    #[arg(long, default_value_t = 0.2)]
    short_share: f64,
    /// Mean lifetime of the other pods, in hours.
    #[arg(long, default_value_t = 12.0)]
    service_hours: f64,
    #[arg(long, default_value_t = 3)]
    max_clients_per_pod: u32,
    /// Seconds an application waits before asking its SDK again after it gave up.
    #[arg(long, default_value_t = 2.0)]
    app_pause: f64,
    /// Attempts per EKS Auth call by each node's SDK (both policies; the
    /// agent's `--eks-auth-max-attempts`).
    #[arg(long, default_value_t = 3)]
    agent_attempts: u32,
    /// Our nodes' maintenance period (s) while nothing is served stale (the
    /// agent's is 5; see `fleet::ours`).
    #[arg(long, default_value_t = 600.0)]
    maintenance: f64,
    /// Write the Markdown here too.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn hours(h: f64) -> Duration {
    Duration::from_secs_f64(h * 3600.0)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let config = Config {
        seed: a.seed,
        nodes: a.nodes,
        pods_per_node: a.pods_per_node,
        duration: hours(a.hours),
        warmup: hours(a.warmup_hours),
        service: ServiceConfig {
            quota: a.quota,
            burst: a.burst.unwrap_or(a.quota),
            latency: Duration::from_millis(a.latency_ms),
            credential_lifetime: hours(6.0),
            outage: None,
        },
        outage: (a.outage_at_hours >= 0.0).then(|| {
            (
                hours(a.outage_at_hours),
                Duration::from_secs_f64(a.outage_minutes * 60.0),
            )
        }),
        retention: hours(3.0),
        credential_lifetime: hours(6.0),
        token_lifetime: hours(24.0),
        short_share: a.short_share,
        service_mean: hours(a.service_hours),
        max_clients_per_pod: a.max_clients_per_pod.max(1),
        sdk: SdkConfig {
            attempts: 3,
            pause: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            app_pause: Duration::from_secs_f64(a.app_pause),
            refresh_margin: (Duration::from_secs(5 * 60), Duration::from_secs(15 * 60)),
            reask: Duration::from_secs(30),
        },
        agent_attempts: a.agent_attempts,
        maintenance: Duration::from_secs_f64(a.maintenance),
    };
    eprintln!(
        "fleet: seed {}, {} nodes × {} pods, {} h (+{} h warm-up), quota {}/s",
        a.seed, a.nodes, a.pods_per_node, a.hours, a.warmup_hours, a.quota
    );
    let started = Instant::now();
    let (ours, upstream) = fleet::run_both(&config);
    let wall = started.elapsed();
    let mut text = report::markdown(&config, &[&ours, &upstream], wall);
    text.push_str("| target | goal | measured | status |\n|---|---|---|---|\n");
    for (t, goal, m, status) in report::targets(&config, &ours, wall) {
        text.push_str(&format!("| {t} | {goal} | {m} | {status} |\n"));
    }
    println!("{text}");
    if let Some(path) = &a.markdown
        && let Err(e) = std::fs::write(path, &text)
    {
        eprintln!("fleet: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
