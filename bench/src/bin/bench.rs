//! Orchestrator of the load benchmark (run it through `bench/run`).
//!
//! Starts the release `testkit emulator` (EKS Auth emulator +
//! token issuer) and, per scenario, fresh `eks-pod-identity-agent server`
//! processes on free 127.0.0.1 ports, mints pod tokens with the emulator's
//! key, drives load with `wrk` or its own tokio client, and prints (and
//! writes) a Markdown report. The scenarios, in `pod_identity_bench::scenario`
//! (each module says what it measures):
//!
//! 1. `hit`: cache-hit throughput and latency, against a bare hyper baseline;
//! 2. `storm`: a miss storm on a fresh agent (coalescing);
//! 3. `rotation`: token rotation in verified mode, with and without the
//!    verified-token memo;
//! 4. `memory`: VmRSS idle and with many cached identities;
//! 5. `outage`: valid credentials served while EKS Auth fails;
//! 6. `throttle`: EKS Auth throttling while new identities arrive;
//! 7. `outage-new-pods`: an EKS Auth outage while new pods arrive.
//!
//! `--fleet-report` adds the fleet simulation's Markdown (the `fleet`
//! binary) to the report; `--results-region` merges only the EKS Auth
//! protection part (6, 7, fleet) into an existing results file.
//!
//! What they share is in `ctx` and `wrk`, the Markdown in `report`. Timings
//! are reported, never asserted: the exit status only says whether the
//! benchmark could run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use clap::Parser;
use pod_identity_bench::R;
use pod_identity_bench::ctx::{Ctx, Emulator, log, online_cpus, pin_self, raise_nofile};
use pod_identity_bench::procs::Placement;
use pod_identity_bench::report::{self, Report, RunInfo};
use pod_identity_bench::scenario::{
    hit, memory, outage, outage_new_pods, rotation, storm, throttle,
};
use pod_identity_bench::tokens::{self, pod_spec};
use testkit::issuer::Issuer;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load benchmark of the agent's credential cache (use bench/run)")]
struct Args {
    /// Release `eks-pod-identity-agent` binary.
    #[arg(long)]
    agent_bin: PathBuf,
    /// Release `testkit` binary (the EKS Auth emulator and token issuer).
    #[arg(long)]
    testkit_bin: PathBuf,
    /// Release `baseline` binary.
    #[arg(long)]
    baseline_bin: PathBuf,
    /// The wrk script (`bench/wrk/rotate.lua`).
    #[arg(long)]
    lua: PathBuf,
    /// Scratch directory (tokens, logs, pid list).
    #[arg(long)]
    workdir: PathBuf,
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Shorter pass (only labels the report; durations come from the flags).
    #[arg(long)]
    quick: bool,
    /// Scenarios to run: hit, storm, rotation, memory, outage, throttle,
    /// outage-new-pods.
    #[arg(long, value_delimiter = ',', default_values_t = ["hit".to_string(), "storm".into(), "rotation".into(), "memory".into(), "outage".into()])]
    scenarios: Vec<String>,
    /// Identities the agent is warmed with in the cache-hit scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 1000, 10000])]
    identities: Vec<usize>,
    /// wrk connection counts in the cache-hit scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64, 256])]
    connections: Vec<usize>,
    /// wrk threads (at most the connection count).
    #[arg(long, default_value_t = 1)]
    wrk_threads: usize,
    /// Do not pin the server under test and the load generators to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// CPUs of the server under test (agent or baseline) when pinning.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs of wrk, this orchestrator and the emulator when pinning
    /// (default: all the others).
    #[arg(long)]
    load_cpus: Option<String>,
    #[arg(long, default_value_t = 1000)]
    storm_requests: usize,
    #[arg(long, default_value_t = 50)]
    storm_identities: usize,
    #[arg(long, default_value_t = 100)]
    storm_latency_ms: u64,
    #[arg(long, default_value_t = 1000)]
    rotation_pods: usize,
    /// Fresh tokens in the rotation scenario. Default: 19,000, so that with
    /// the 1,000 warm-up tokens they fill the default verified-token memo
    /// (20,000) exactly and the primed run is all memo hits.
    #[arg(long, default_value_t = 19_000)]
    rotation_tokens: usize,
    #[arg(long, default_value_t = 64)]
    rotation_connections: usize,
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10000])]
    memory_points: Vec<usize>,
    #[arg(long, default_value_t = 100)]
    outage_identities: usize,
    #[arg(long, default_value_t = 16)]
    outage_connections: usize,
    /// Seconds of load in the outage scenario.
    #[arg(long, default_value_t = 30)]
    outage_duration: u64,
    /// Second of the load at which EKS Auth starts failing.
    #[arg(long, default_value_t = 5)]
    outage_start: u64,
    /// Second of the load at which EKS Auth recovers.
    #[arg(long, default_value_t = 25)]
    outage_end: u64,
    /// New identities in the throttle scenario.
    #[arg(long, default_value_t = 500)]
    throttle_identities: usize,
    /// Seconds over which they arrive.
    #[arg(long, default_value_t = 5.0)]
    throttle_arrival: f64,
    /// EKS Auth throttles above this many calls/s (R).
    #[arg(long, default_value_t = 10.0)]
    throttle_rate: f64,
    /// Seconds after the first arrival at which throttle clients stop.
    #[arg(long, default_value_t = 180)]
    throttle_deadline: u64,
    /// throttle runs once per value: the agent's `--eks-auth-max-attempts`;
    /// 0 = the agent's default (3). The first run is the one judged; others
    /// are what-ifs.
    #[arg(long, value_delimiter = ',', default_values_t = [0u32, 1])]
    throttle_max_attempts: Vec<u32>,
    /// Runs of the first (judged) throttle configuration; its calls per
    /// identity vary from run to run, and the median is judged.
    #[arg(long, default_value_t = 3)]
    throttle_repeats: usize,
    /// New pods per second during the outage of outage-new-pods.
    #[arg(long, default_value_t = 50.0)]
    new_pods_per_sec: f64,
    /// Seconds of 503 in outage-new-pods.
    #[arg(long, default_value_t = 60)]
    new_pods_outage: u64,
    /// Seconds after recovery at which outage-new-pods clients stop.
    #[arg(long, default_value_t = 240)]
    new_pods_after: u64,
    /// outage-new-pods runs once per value: the agent's
    /// `--eks-auth-rate-limit` (and burst); 0 = the agent's default. The
    /// first run is the one judged; others are what-ifs.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 300.0])]
    new_pods_rate_limits: Vec<f64>,
    /// Milliseconds an application waits before asking its SDK again after
    /// the SDK gave up (throttle, outage-new-pods).
    #[arg(long, default_value_t = 2000)]
    app_pause_ms: u64,
    /// The fleet simulation's Markdown (`fleet --markdown`), added to the report.
    #[arg(long)]
    fleet_report: Option<PathBuf>,
    /// Write only the EKS Auth protection part into `--results`, replacing
    /// that part of the existing file (or appending it).
    #[arg(long)]
    results_region: bool,
    /// Runs of the judged configurations (cache hit at 1,000 identities and
    /// 64 connections, the miss storm, memory): the goals table shows each
    /// run, the median and the spread. Run 1 is the whole pass.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// `target/criterion`: include the micro-benchmark medians.
    #[arg(long)]
    criterion_dir: Option<PathBuf>,
    /// Write the report here too.
    #[arg(long)]
    results: Option<PathBuf>,
    #[arg(long, default_value = "unknown")]
    commit: String,
    #[arg(long, default_value = "unknown")]
    date: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> R<()> {
    raise_nofile();
    std::fs::create_dir_all(&args.workdir)?;
    let cpus = online_cpus();
    let placement = if args.no_pin || cpus < 2 {
        Placement::none()
    } else {
        Placement {
            server_cpus: Some(args.server_cpus.clone()),
            load_cpus: Some(args.load_cpus.clone().unwrap_or_else(|| {
                if cpus == 2 {
                    "1".into()
                } else {
                    format!("1-{}", cpus - 1)
                }
            })),
        }
    };

    // The emulator lives for the whole run; scenarios read deltas of its stats.
    let emulator = Emulator::start(&args.testkit_bin, &args.workdir, &placement)?;

    // Tokens, minted on all CPUs before this process pins itself.
    let pem = std::fs::read_to_string(&emulator.key_file)?;
    let issuer = Issuer::from_pem(emulator.url.clone(), &pem)?;
    let pod_count = args
        .identities
        .iter()
        .chain(&args.memory_points)
        .chain([
            &args.storm_identities,
            &args.rotation_pods,
            &args.outage_identities,
        ])
        .copied()
        .chain(
            args.scenarios
                .iter()
                .any(|s| s == "throttle")
                .then_some(args.throttle_identities),
        )
        .chain(
            args.scenarios
                .iter()
                .any(|s| s == "outage-new-pods")
                .then_some((args.new_pods_per_sec * args.new_pods_outage as f64) as usize),
        )
        .max()
        .unwrap_or(1);
    let started = Instant::now();
    let specs: Vec<_> = (0..pod_count).map(pod_spec).collect();
    let pods = tokens::mint_parallel(&issuer, &specs, cpus)?;
    let rotation = if args.scenarios.iter().any(|s| s == "rotation") {
        let specs: Vec<_> = (0..args.rotation_tokens)
            .map(|j| pod_spec(j % args.rotation_pods.max(1)))
            .collect();
        tokens::mint_parallel(&issuer, &specs, cpus)?
    } else {
        Vec::new()
    };
    log(format!(
        "minted {} tokens in {:.1} s",
        pods.len() + rotation.len(),
        started.elapsed().as_secs_f64()
    ));
    let mut files = HashMap::new();
    for &k in &args.identities {
        let path = args.workdir.join(format!("tokens-{k}.txt"));
        tokens::write_lines(&path, &pods[..k])?;
        files.insert(k, path);
    }
    let rotation_file = args.workdir.join("tokens-rotation.txt");
    tokens::write_lines(&rotation_file, &rotation)?;

    if let Some(load) = &placement.load_cpus {
        pin_self(load)?;
    }
    let ctx = Ctx {
        agent_bin: args.agent_bin.clone(),
        baseline_bin: args.baseline_bin.clone(),
        lua: args.lua.clone(),
        workdir: args.workdir.clone(),
        wrk_threads: args.wrk_threads,
        placement,
        emu_url: emulator.url.clone(),
        emu_addr: emulator.addr,
        pods: Arc::new(pods),
        rotation: Arc::new(rotation),
        files,
        rotation_file,
        agents: AtomicUsize::new(0),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = runtime.block_on(scenarios(&ctx, &args))?;
    for run in 2..=args.runs.max(1) {
        log(format!(
            "repeat {run} of {}: the judged configurations",
            args.runs
        ));
        let repeat = runtime.block_on(repeat(&ctx, &args))?;
        report.repeats.push(repeat);
    }
    drop(emulator);
    if let Some(path) = &args.fleet_report {
        report.fleet = Some(std::fs::read_to_string(path)?);
    }

    let info = RunInfo {
        date: args.date.clone(),
        commit: args.commit.clone(),
        quick: args.quick,
        protect_only: args.results_region,
        duration: args.duration,
        criterion_dir: args.criterion_dir.clone(),
    };
    let text = report::render(&ctx, &info, &report);
    println!("{text}");
    if let Some(path) = &args.results {
        let text = if args.results_region {
            let existing = std::fs::read_to_string(path).unwrap_or_default();
            report::protect::merge(&existing, &report::render_protect(&ctx, &info, &report))
        } else {
            // The hand-over section comes from its own command
            // (`bench/run --handover`); a full pass keeps it.
            let existing = std::fs::read_to_string(path).unwrap_or_default();
            report::keep_handover(&existing, text)
        };
        std::fs::write(path, &text)?;
        log(format!("wrote {}", path.display()));
    }
    Ok(())
}

fn storm_params(args: &Args) -> storm::Params {
    storm::Params {
        requests: args.storm_requests,
        identities: args.storm_identities,
        latency_ms: args.storm_latency_ms,
    }
}

fn memory_params(args: &Args) -> memory::Params {
    memory::Params {
        points: args.memory_points.clone(),
    }
}

/// Runs 2 and later: only what the goals judge, so the spread is over the
/// same configurations.
async fn repeat(ctx: &Ctx, args: &Args) -> R<Report> {
    let want = |s: &str| args.scenarios.iter().any(|x| x == s);
    let mut report = Report::default();
    if want("hit") && args.identities.contains(&1000) {
        let params = hit::Params {
            identities: vec![1000],
            connections: vec![64],
            secs: args.duration,
        };
        report.hit = hit::run(ctx, params).await?;
    }
    if want("storm") {
        report.storm = storm::run(ctx, storm_params(args)).await?;
    }
    if want("memory") {
        report.memory = Some(memory::run(ctx, memory_params(args)).await?);
    }
    Ok(report)
}

async fn scenarios(ctx: &Ctx, args: &Args) -> R<Report> {
    let mut report = Report::default();
    let want = |s: &str| args.scenarios.iter().any(|x| x == s);
    if want("hit") {
        let params = hit::Params {
            identities: args.identities.clone(),
            connections: args.connections.clone(),
            secs: args.duration,
        };
        report.hit = hit::run(ctx, params).await?;
    }
    if want("storm") {
        report.storm = storm::run(ctx, storm_params(args)).await?;
    }
    if want("rotation") {
        let params = rotation::Params {
            pods: args.rotation_pods,
            connections: args.rotation_connections,
            secs: args.duration,
        };
        report.rotation = Some(rotation::run(ctx, params).await?);
    }
    if want("memory") {
        report.memory = Some(memory::run(ctx, memory_params(args)).await?);
    }
    if want("outage") {
        let params = outage::Params {
            identities: args.outage_identities,
            connections: args.outage_connections,
            duration: args.outage_duration,
            start: args.outage_start,
            end: args.outage_end,
        };
        report.outage = Some(outage::run(ctx, params).await?);
    }
    let app_pause = Duration::from_millis(args.app_pause_ms);
    if want("throttle") {
        let first = args.throttle_max_attempts.first().copied();
        let runs = first
            .into_iter()
            .cycle()
            .take(args.throttle_repeats.max(1))
            .chain(args.throttle_max_attempts.iter().skip(1).copied());
        for attempts in runs {
            let params = throttle::Params {
                identities: args.throttle_identities,
                arrival_secs: args.throttle_arrival,
                rate: args.throttle_rate,
                app_pause,
                deadline: Duration::from_secs(args.throttle_deadline),
                max_attempts: (attempts > 0).then_some(attempts),
            };
            report.throttle.push(throttle::run(ctx, params).await?);
        }
    }
    if want("outage-new-pods") {
        for &limit in &args.new_pods_rate_limits {
            let params = outage_new_pods::Params {
                pods_per_sec: args.new_pods_per_sec,
                outage_secs: args.new_pods_outage,
                after_secs: args.new_pods_after,
                app_pause,
                rate_limit: (limit > 0.0).then_some(limit),
            };
            report
                .outage_new_pods
                .push(outage_new_pods::run(ctx, params).await?);
        }
    }
    Ok(report)
}
