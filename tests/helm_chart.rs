//! Upstream's Helm chart runs this image unchanged.
//!
//! The chart is aws/eks-pod-identity-agent `charts/eks-pod-identity-agent`
//! at v0.1.37 (commit d4dc0f3; chart 1.2.0). aws/eks-charts has no such chart
//! (`stable/eks-pod-identity-agent` exists only in its unmerged PR #1123, a
//! copy of the agent repository's chart of June 2024), so its renders are
//! covered by the first set below.
//!
//! What `helm template` renders, from `templates/daemonset.yaml`:
//! - `command:` is `agent.command` / `init.command` pasted verbatim:
//!   `['/go-runner', '/eks-pod-identity-agent', 'server']` and
//!   `['/go-runner', '/eks-pod-identity-agent', 'initialize']`;
//! - server `args:` are `--port "80" --cluster-name <clusterName>
//!   --probe-port <agent.probePort>`, then `--metrics-port <metrics.port>` when
//!   `metrics.enabled`, then `agent.additionalArgs` and the DaemonSet's own
//!   `additionalArgs` as key/value pairs, each map sorted by key (Go
//!   templates range over maps in key order);
//! - init `args:` are `init.additionalArgs` the same way (none when empty);
//! - values.yaml: `agent.additionalArgs` and `init.additionalArgs` are
//!   `{"-v": "trace"}`, `clusterName: EKS_CLUSTER_NAME`, `probePort: 2703`,
//!   `metrics.port: 2705`; the `hybrid` and `hybrid-bottlerocket` DaemonSets
//!   add `{"--rotate-credentials": "true"}`.
//!
//! Each rendered container is written down below exactly (arguments as
//! strings, as Kubernetes passes them). The first tests run go-runner's
//! parser and then the agent's on them; the last one executes them, in a
//! network namespace, against the binaries laid out as in the image.

mod common;

use std::ffi::OsString;

use clap::Parser;
use go_runner::flags::{self, Parsed};
use pod_identity_agent::cli::{Cli, Command};

const SERVER: [&str; 3] = ["/go-runner", "/eks-pod-identity-agent", "server"];
const INITIALIZE: [&str; 3] = ["/go-runner", "/eks-pod-identity-agent", "initialize"];

/// Default values: the `cloud` DaemonSet's init container.
const DEFAULT_INIT_ARGS: &[&str] = &["-v", "trace"];
/// Default values: the `cloud` DaemonSet's server container.
const DEFAULT_SERVER_ARGS: &[&str] = &[
    "--port",
    "80",
    "--cluster-name",
    "EKS_CLUSTER_NAME",
    "--probe-port",
    "2703",
    "-v",
    "trace",
];
/// `clusterName=my-cluster metrics.enabled=true`.
const METRICS_SERVER_ARGS: &[&str] = &[
    "--port",
    "80",
    "--cluster-name",
    "my-cluster",
    "--probe-port",
    "2703",
    "--metrics-port",
    "2705",
    "-v",
    "trace",
];
/// `daemonsets.hybrid.create=true` and `daemonsets.hybrid-bottlerocket.create=true`
/// (both render these args; they differ in volumes and SELinux options).
const HYBRID_SERVER_ARGS: &[&str] = &[
    "--port",
    "80",
    "--cluster-name",
    "my-cluster",
    "--probe-port",
    "2703",
    "-v",
    "trace",
    "--rotate-credentials",
    "true",
];
/// `clusterName=prod` and `agent.additionalArgs` `{"--max-cache-size": "500",
/// "--bind-hosts": "169.254.170.23", "-v": "info"}` (sorted by key).
const CUSTOM_SERVER_ARGS: &[&str] = &[
    "--port",
    "80",
    "--cluster-name",
    "prod",
    "--probe-port",
    "2703",
    "--bind-hosts",
    "169.254.170.23",
    "--max-cache-size",
    "500",
    "-v",
    "info",
];
/// eks-charts PR #1123 and the agent chart before v0.1.17: no additionalArgs
/// (the init container has no `args:` at all).
const BARE_SERVER_ARGS: &[&str] = &[
    "--port",
    "80",
    "--cluster-name",
    "EKS_CLUSTER_NAME",
    "--probe-port",
    "2703",
];

/// What the container runs: go-runner's own parser on everything after
/// `/go-runner`, then the agent's parser on the command it would start.
fn agent_cli(command: &[&str], args: &[&str]) -> Cli {
    assert_eq!(command[0], "/go-runner");
    let after_runner = command[1..].iter().chain(args).map(OsString::from);
    let Parsed::Run(opts) =
        flags::parse(after_runner).expect("go-runner accepts the chart's command")
    else {
        panic!("go-runner would print its usage")
    };
    assert_eq!(opts.log_file, "", "the chart passes no go-runner flags");
    assert!(opts.redirect_stderr && !opts.also_stdout);
    assert_eq!(opts.command[0], "/eks-pod-identity-agent");
    Cli::try_parse_from(&opts.command).unwrap_or_else(|e| panic!("{command:?} {args:?}: {e}"))
}

fn server(args: &[&str]) -> (Cli, pod_identity_agent::cli::ServerArgs) {
    let cli = agent_cli(&SERVER, args);
    match &cli.command {
        Command::Server(s) => {
            let s = s.clone();
            (cli, s)
        }
        other => panic!("not server: {other:?}"),
    }
}

fn initialize(args: &[&str]) -> (Cli, pod_identity_agent::cli::InitializeArgs) {
    let cli = agent_cli(&INITIALIZE, args);
    match &cli.command {
        Command::Initialize(i) => {
            let i = i.clone();
            (cli, i)
        }
        other => panic!("not initialize: {other:?}"),
    }
}

#[test]
fn default_values_render() {
    let (cli, init) = initialize(DEFAULT_INIT_ARGS);
    assert_eq!(cli.log.verbosity, "trace");
    assert_eq!(init.init.link_name, "pod-id-link0");
    assert_eq!(init.init.link_kind, pod_identity_init::LinkKind::Auto);
    assert!(!init.init.remove);
    assert!(init.ignored.is_empty());

    let (cli, s) = server(DEFAULT_SERVER_ARGS);
    assert_eq!(cli.log.verbosity, "trace");
    assert_eq!(s.cluster_name, "EKS_CLUSTER_NAME");
    assert_eq!(s.port, 80);
    assert_eq!(s.probe_port, 2703);
    assert_eq!(
        s.metrics_port, 2705,
        "upstream's default: the metrics server always runs"
    );
    assert_eq!(s.metrics_address.to_string(), "0.0.0.0");
    assert_eq!(s.bind_hosts, ["169.254.170.23", "[fd00:ec2::23]"]);
    assert!(!s.rotate_credentials);
    assert!(s.ignored.is_empty());
}

#[test]
fn metrics_enabled_render() {
    let (_, s) = server(METRICS_SERVER_ARGS);
    assert_eq!(s.cluster_name, "my-cluster");
    assert_eq!(s.metrics_port, 2705);
}

#[test]
fn hybrid_renders_enable_rotation_and_leave_no_stray_argument() {
    let (cli, s) = server(HYBRID_SERVER_ARGS);
    assert!(s.rotate_credentials);
    assert!(
        s.ignored.is_empty(),
        "`true` is the flag's value: {:?}",
        s.ignored
    );
    assert_eq!(cli.log.verbosity, "trace");
}

#[test]
fn custom_values_render() {
    let (cli, s) = server(CUSTOM_SERVER_ARGS);
    assert_eq!(s.cluster_name, "prod");
    assert_eq!(s.bind_hosts, ["169.254.170.23"]);
    assert_eq!(s.max_cache_size, 500);
    assert_eq!(cli.log.verbosity, "info");
}

#[test]
fn renders_without_additional_args() {
    let (cli, init) = initialize(&[]);
    assert_eq!(cli.log.verbosity, "info");
    assert!(init.ignored.is_empty());
    let (cli, s) = server(BARE_SERVER_ARGS);
    assert_eq!(cli.log.verbosity, "info");
    assert_eq!(s.cluster_name, "EKS_CLUSTER_NAME");
}

fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("eks-pod-identity-agent").chain(argv.iter().copied()))
}

fn parse_server(argv: &[&str]) -> (Cli, pod_identity_agent::cli::ServerArgs) {
    let cli = parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Command::Server(s) = &cli.command else {
        panic!("{argv:?} is not server")
    };
    let s = s.clone();
    (cli, s)
}

/// What users put in `additionalArgs`, and the grammar upstream's cobra/pflag
/// accepts (checked against the real parser, see the research note).
#[test]
fn upstream_flag_grammar() {
    // The persistent -v goes before or after the subcommand.
    let (cli, _) = parse_server(&["-v", "debug", "server", "-c", "x"]);
    assert_eq!(cli.log.verbosity, "debug");
    let (cli, _) = parse_server(&["server", "-c", "x", "--verbosity=warn"]);
    assert_eq!(cli.log.verbosity, "warn");
    let (cli, _) = parse_server(&["server", "-c", "x", "-vdebug"]);
    assert_eq!(cli.log.verbosity, "debug");
    let (cli, _) = parse_server(&["server", "-c", "x", "-v=trace"]);
    assert_eq!(cli.log.verbosity, "trace");
    assert!(matches!(
        parse(&["-v", "trace", "initialize"]).unwrap().command,
        Command::Initialize(_)
    ));
    // logrus's levels, all of them.
    for level in [
        "panic", "fatal", "error", "warn", "warning", "info", "debug", "trace", "TRACE",
    ] {
        assert!(pod_identity_agent::logging::level(level).is_ok(), "{level}");
    }

    // --rotate-credentials: bare, with a separate word (the chart), with =.
    for (args, on) in [
        (&["--rotate-credentials"][..], true),
        (&["--rotate-credentials", "true"], true),
        (&["--rotate-credentials=true"], true),
        (&["--rotate-credentials", "false"], false),
        (&["--rotate-credentials=false"], false),
        (&["--rotate-credentials=1"], true),
        (&["--rotate-credentials", "-v", "info"], true),
    ] {
        let argv: Vec<&str> = ["server", "-c", "x"].iter().chain(args).copied().collect();
        let (_, s) = parse_server(&argv);
        assert_eq!(s.rotate_credentials, on, "{args:?}");
        assert!(s.ignored.is_empty(), "{args:?}");
    }

    // -b repeats; the first occurrence replaces the defaults.
    let (_, s) = parse_server(&["server", "-c", "x", "-b", "127.0.0.1", "-b", "[::1]"]);
    assert_eq!(s.bind_hosts, ["127.0.0.1", "[::1]"]);
    let (_, s) = parse_server(&["server", "-c", "x", "--bind-hosts=1.2.3.4", "-p80"]);
    assert_eq!(s.bind_hosts, ["1.2.3.4"]);
    assert_eq!(s.port, 80);

    // Every upstream server flag, in its long form with a separate value.
    let (_, s) = parse_server(&[
        "server",
        "--cluster-name",
        "c",
        "--port",
        "8080",
        "--probe-port",
        "1",
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        "2",
        "--max-credential-retention-before-renewal",
        "1h30m",
        "--max-cache-size",
        "0",
        "--max-service-qps",
        "5",
        "--endpoint",
        "https://eks-auth.example",
    ]);
    assert_eq!(
        (s.port, s.probe_port, s.metrics_port, s.max_cache_size),
        (8080, 1, 2, 0)
    );
    assert_eq!(
        s.max_credential_retention_before_renewal,
        std::time::Duration::from_secs(5400)
    );
    assert_eq!(s.max_service_qps, 5.0);
    assert_eq!(s.endpoint.as_deref(), Some("https://eks-auth.example"));

    // cobra ignores positional arguments (and everything after `--`).
    let (_, s) = parse_server(&["server", "-c", "x", "--", "--port", "81"]);
    assert_eq!(s.port, 80);
    assert_eq!(s.ignored, ["--port", "81"]);
    let Command::Initialize(i) = parse(&["initialize", "-v", "trace", "extra"])
        .unwrap()
        .command
    else {
        panic!("initialize")
    };
    assert_eq!(i.ignored, ["extra"]);
    assert!(matches!(
        parse(&["version"]).unwrap().command,
        Command::Version
    ));
    // An empty cluster name is accepted (presence is what cobra checks).
    let (_, s) = parse_server(&["server", "--cluster-name="]);
    assert_eq!(s.cluster_name, "");
}

/// Where upstream fails, so do we.
#[test]
fn upstream_errors_stay_errors() {
    for argv in [
        &["server"][..],
        &["server", "-c", "x", "--port", "70000"],
        &["server", "-c", "x", "--unknown", "1"],
        &["server", "-c", "x", "-p"],
        &[
            "server",
            "-c",
            "x",
            "--max-credential-retention-before-renewal",
            "30",
        ],
        &["bogus"],
    ] {
        assert!(parse(argv).is_err(), "{argv:?}");
    }
    assert!(pod_identity_agent::logging::level("bogus").is_err());
}
