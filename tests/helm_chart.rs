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
//! parser and then the agent's on them; the last ones execute them, in a
//! network namespace, against the binaries laid out as in the image.
//!
//! Local token verification: the chart mounts no ServiceAccount token
//! (`automountServiceAccountToken: false`), so with its values unchanged the
//! agent's `--jwks-source auto` verifies nothing locally, as upstream's agent.
//! `daemonset/examples/chart-values-verify.yaml` adds the token (and a JWKS
//! cache) to the server container through `daemonsets.<name>.volumes` and
//! `volumeMounts`; `tests/packaging/check.py` checks what the chart renders
//! from it (VERIFY_SERVER_ARGS, the mounts), and the last test runs that
//! container against an API server serving the cluster's keys.

mod common;

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::netns::{Netns, check, wait_for};
use common::{bin, is_root, skip, testkit_bin};
use go_runner::flags::{self, Parsed};
use pod_identity_agent::cli::{Cli, Command};
use serde_json::json;
use testkit::apiserver::FakeApiServer;
use testkit::issuer::{Issuer, TokenSpec};

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
/// `clusterName=my-cluster` with `-f daemonset/examples/chart-values-verify.yaml`
/// (`agent.additionalArgs` gains `--jwks-cache-path`; the hybrid DaemonSets
/// add `--rotate-credentials true`). tests/packaging/check.py checks that the
/// values file renders exactly these (CHART_VERIFY_SERVER_ARGS).
const VERIFY_SERVER_ARGS: &[&str] = &[
    "--port",
    "80",
    "--cluster-name",
    "my-cluster",
    "--probe-port",
    "2703",
    "--jwks-cache-path",
    "/var/lib/eks-pod-identity-agent/jwks.json",
    "-v",
    "trace",
];
/// Where those values mount the ServiceAccount's projected token volume
/// (token, ca.crt, namespace) and the JWKS cache's emptyDir.
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const JWKS_CACHE_MOUNT: &str = "/var/lib/eks-pod-identity-agent";
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

/// The values file's server: the agent looks for the ServiceAccount where
/// the values mount it, and keeps the keys on the emptyDir.
#[test]
fn verify_values_render() {
    let (cli, s) = server(VERIFY_SERVER_ARGS);
    assert_eq!(cli.log.verbosity, "trace");
    assert_eq!(s.cluster_name, "my-cluster");
    assert_eq!(s.verify.jwks_source, "auto");
    assert_eq!(s.verify.service_account_dir, Path::new(SA_MOUNT));
    assert_eq!(
        s.verify.jwks_cache_path.as_deref(),
        Some(Path::new(JWKS_CACHE_MOUNT).join("jwks.json").as_path())
    );
    assert!(s.ignored.is_empty(), "{:?}", s.ignored);
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

// ---------------------------------------------------------------------------
// The chart's containers, executed.

/// `curl -s -o /dev/null -w %{http_code} url` from the node.
fn status(ns: &Netns, url: &str) -> String {
    let out = ns
        .cmd("curl")
        .args([
            "-s",
            "--max-time",
            "15",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image's file system: `/go-runner`, `/eks-pod-identity-agent`,
/// `/eks-pod-identity-init` at the root, as the Dockerfile copies them, plus
/// what the distroless base provides (glibc and libgcc from the host, which
/// like the base is Debian 12, and the CA bundle).
struct ImageRoot(PathBuf);

impl ImageRoot {
    fn new() -> Self {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "chart-image-{}-{}",
            std::process::id(),
            testkit::issuer::uuid()
        ));
        let image = Self(root);
        let built = Path::new(bin()).parent().unwrap().to_path_buf();
        for name in [
            "eks-pod-identity-agent",
            "eks-pod-identity-init",
            "go-runner",
        ] {
            let from = built.join(name);
            assert!(
                from.exists(),
                "{} is missing: run the tests with `cargo test --workspace`",
                from.display()
            );
            image.add(&from, Path::new("/").join(name).as_path());
            // The shared libraries the binaries load, where the loader
            // looks for them.
            let ldd = check(std::process::Command::new("ldd").arg(&from));
            for line in String::from_utf8_lossy(&ldd.stdout).lines() {
                let path = match line.split_once("=>") {
                    Some((_, rest)) => rest.split_whitespace().next(),
                    None => line.split_whitespace().next(),
                };
                if let Some(p) = path.filter(|p| p.starts_with('/')) {
                    image.add(Path::new(p), Path::new(p));
                }
            }
        }
        image.add(
            Path::new("/etc/ssl/certs/ca-certificates.crt"),
            Path::new("/etc/ssl/certs/ca-certificates.crt"),
        );
        for dir in ["dev", "tmp", "root"] {
            std::fs::create_dir_all(image.0.join(dir)).unwrap();
        }
        image
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.0.join(inside.trim_start_matches('/'))
    }

    fn add(&self, from: &Path, inside: &Path) {
        let to = self.path(inside.to_str().unwrap());
        if to.exists() {
            return;
        }
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // The file itself, not a symbolic link (the loader's path is one).
        let from = std::fs::canonicalize(from).unwrap();
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
    }

    /// A container of this image on the node `ns`: its command and args
    /// exactly as the chart renders them, run from the image's root, with
    /// only `env` (what the pod spec and the kubelet give it).
    fn container(
        &self,
        ns: &Netns,
        command: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> std::process::Command {
        // `ip netns exec` runs in a mount namespace of its own, so the /dev
        // bind mount (go-runner opens /dev/null for the child's stdin) does
        // not leak to the host. Every exec replaces the process: the PID the
        // test holds is go-runner's, as PID 1 of the container would be.
        let mut c = ns.cmd("sh");
        c.args([
            "-c",
            r#"root=$1; shift; mount --bind /dev "$root/dev" && exec chroot "$root" "$@""#,
            "sh",
        ])
        .arg(&self.0)
        .args(command)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .envs(env.iter().copied());
        c
    }
}

impl Drop for ImageRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    fn start(mut cmd: std::process::Command, logs: &Path, name: &str) -> Self {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let child = cmd
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn logs(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        )
    }

    /// SIGTERM, as the kubelet sends to PID 1, then the exit status.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut status = None;
        wait_for("the container to exit after SIGTERM", within, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pod's token from the emulator's issuer (`issuer`: its URL).
fn mint(key: &Path, issuer: &str) -> String {
    let out = check(
        std::process::Command::new(testkit_bin())
            .args(["mint-token", "--key-file"])
            .arg(key)
            .args(["--issuer", issuer])
            .args([
                "--namespace",
                "default",
                "--service-account",
                "app",
                "--pod",
                "chart-pod",
            ]),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn credentials(ns: &Netns, token: &str) -> serde_json::Value {
    let out = check(ns.cmd("curl").args([
        "-sS",
        "--max-time",
        "15",
        "-H",
        &format!("Authorization: {token}"),
        "http://169.254.170.23/v1/credentials",
    ]));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A server container comes up, serves, and drains on SIGTERM.
fn serve_and_drain(ns: &Netns, server: Running, token: &str) -> (String, String) {
    let mut server = server;
    wait_for("the liveness probe", Duration::from_secs(60), || {
        status(ns, "http://localhost:2703/healthz") == "200"
    });
    assert_eq!(status(ns, "http://localhost:2703/readyz"), "200");
    // The metrics server always runs (upstream too), on 0.0.0.0:2705.
    assert_eq!(status(ns, "http://127.0.0.1:2705/metrics"), "200");
    let creds = credentials(ns, token);
    assert!(
        creds["AccessKeyId"]
            .as_str()
            .is_some_and(|k| k.starts_with("ASIA")),
        "{creds}"
    );
    let status = server.terminate(Duration::from_secs(30));
    let (stdout, stderr) = server.logs();
    assert_eq!(
        status.code(),
        Some(0),
        "drained and exited 0:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// A node as the chart leaves it before its server starts: the init
/// container has run (link and addresses checked), and EKS Auth (the
/// emulator, outside the image) is reachable from the node.
struct ChartNode {
    // Dropped in this order: the processes before their root and namespace.
    _emulator: Running,
    /// The emulator's URL; also the issuer its key file's tokens name.
    endpoint: String,
    /// The emulator's signing key (PEM).
    key: PathBuf,
    image: ImageRoot,
    ns: Netns,
}

impl ChartNode {
    fn start(prefix: &str) -> Self {
        let ns = Netns::new(prefix, "node");
        let image = ImageRoot::new();
        let logs = image.path("/tmp");

        // Init container (privileged, host network): the chart's command and args.
        let init = check(&mut image.container(&ns, &INITIALIZE, DEFAULT_INIT_ARGS, &[]));
        let (out, err) = (
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr),
        );
        assert!(
            err.contains("Running command:"),
            "go-runner's lines on stderr: {err}"
        );
        assert!(
            out.contains("\"initialized\""),
            "the agent's log reaches the container's stdout (stderr redirected): {out}"
        );
        let addrs = check(
            ns.cmd("ip")
                .args(["-j", "addr", "show", "dev", "pod-id-link0"]),
        );
        let addrs = String::from_utf8_lossy(&addrs.stdout);
        assert!(addrs.contains("169.254.170.23"), "{addrs}");
        assert!(addrs.contains("fd00:ec2::23"), "{addrs}");

        // EKS Auth, standing in for the regional endpoint (outside the image).
        let key = image.path("/tmp/issuer.pem");
        let ready = image.path("/tmp/emulator.url");
        let emulator = Running::start(
            {
                let mut c = ns.cmd(testkit_bin());
                c.args(["emulator", "--listen", "127.0.0.1:0", "--key-file"])
                    .arg(&key)
                    .arg("--ready-file")
                    .arg(&ready)
                    .args([
                        "--association",
                        "default/app=arn:aws:iam::111122223333:role/chart",
                    ]);
                c
            },
            &logs,
            "emulator",
        );
        wait_for("the emulator", Duration::from_secs(30), || ready.exists());
        let endpoint = std::fs::read_to_string(&ready).unwrap().trim().to_owned();
        Self {
            _emulator: emulator,
            endpoint,
            key,
            image,
            ns,
        }
    }

    /// The cloud DaemonSet's server environment. The pod spec's env is
    /// AWS_REGION, and the kubelet adds `KUBERNETES_SERVICE_*` to every
    /// container (`api`: the API server's; the chart's pods cannot use it
    /// without a token). The node's IMDS credentials are played by the
    /// environment and the regional endpoint by AWS_ENDPOINT_URL_EKS_AUTH,
    /// so the args stay exactly the chart's.
    fn cloud_env(&self, api: &[(&'static str, String); 2]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AWS_REGION", "us-west-2".to_owned()),
            ("AWS_ENDPOINT_URL_EKS_AUTH", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "AKIDCHARTNODEFAKE001".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "chart".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ];
        env.extend(api.iter().cloned());
        env
    }

    /// EKS Auth calls so far.
    fn eks_auth_calls(&self) -> u64 {
        let out = check(self.ns.cmd("curl").args([
            "-sS",
            "--max-time",
            "15",
            &format!("{}/_emulator/stats", self.endpoint),
        ]));
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        stats["calls"].as_u64().unwrap_or_else(|| panic!("{stats}"))
    }
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A value of the agent's metrics (`series`: name and labels as exposed),
/// 0 when absent.
fn metric(ns: &Netns, series: &str) -> f64 {
    let out =
        check(
            ns.cmd("curl")
                .args(["-sS", "--max-time", "15", "http://127.0.0.1:2705/metrics"]),
        );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The cluster's API server as the node reaches it: on the node namespace's
/// loopback (a thread moved into it runs it), serving the issuer's discovery
/// document and keys to the ServiceAccount token it writes, with its CA and
/// namespace, into `sa_dir` (what the projected volume gives the container).
struct NodeApiServer {
    env: [(&'static str, String); 2],
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeApiServer {
    fn start(ns: &Netns, issuer: Arc<Issuer>, sa_dir: &Path) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let netns = format!("/run/netns/{}", ns.0);
        let sa_dir = sa_dir.to_owned();
        let thread = std::thread::spawn(move || {
            // setns(2) moves only this thread; the runtime below is its own.
            let file = std::fs::File::open(&netns).expect("netns file");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let api = FakeApiServer::start(issuer, "chart-serviceaccount-token").await;
                api.write_service_account(&sa_dir)
                    .expect("the ServiceAccount volume");
                ready_tx.send(api.service_env()).expect("the test waits");
                let _ = stop_rx.await;
                api.stop().await;
            });
        });
        let env = ready_rx.recv().expect("the API server started");
        Self {
            env,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for NodeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_charts_containers_run_the_image_unchanged() {
    if !is_root() {
        skip("needs root for network namespaces and chroot");
        return;
    }
    let node = ChartNode::start("pia-chart");
    let (ns, image, endpoint, key) = (&node.ns, &node.image, &node.endpoint, &node.key);
    let logs = image.path("/tmp");
    let token = mint(key, endpoint);

    // The cloud DaemonSet's server container, in a pod without a
    // ServiceAccount token (the chart's automountServiceAccountToken: false):
    // no local verification, as upstream's agent.
    let cloud_env = node.cloud_env(&[
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT", "443".to_owned()),
    ]);
    let server = Running::start(
        image.container(ns, &SERVER, DEFAULT_SERVER_ARGS, &env_refs(&cloud_env)),
        &logs,
        "cloud",
    );
    let (stdout, stderr) = serve_and_drain(ns, server, &token);
    assert!(
        stdout.contains(r#""jwks_source":"auto","keys":"none""#),
        "no token mounted: no local verification: {stdout}"
    );
    assert!(
        stderr.contains("Got signal: terminated. Sending down to process"),
        "{stderr}"
    );
    assert!(stdout.contains("SIGTERM received"), "{stdout}");
    assert!(stdout.contains("\"drained\""), "{stdout}");
    assert!(!stdout.contains(&token[..40]), "token not logged");

    // The hybrid DaemonSets' server container (both render the same args):
    // the node's credentials come from the host's /eks-hybrid/.aws (or
    // /var/eks-hybrid/.aws on Bottlerocket), mounted at /root/.aws.
    std::fs::create_dir_all(image.path("/root/.aws")).unwrap();
    std::fs::write(
        image.path("/root/.aws/credentials"),
        "[default]\naws_access_key_id = AKIDCHARTHYBRIDFAKE1\naws_secret_access_key = hybrid\n",
    )
    .unwrap();
    let hybrid_env = [
        ("AWS_REGION", "us-west-2"),
        ("AWS_ENDPOINT_URL_EKS_AUTH", endpoint.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let server = Running::start(
        image.container(ns, &SERVER, HYBRID_SERVER_ARGS, &hybrid_env),
        &logs,
        "hybrid",
    );
    let (stdout, _) = serve_and_drain(ns, server, &mint(key, endpoint));
    assert!(
        stdout.contains("AKIDCHARTHYBRIDFAKE1"),
        "EKS Auth was called with the file's credentials: {stdout}"
    );
}

/// `daemonset/examples/chart-values-verify.yaml`: the chart's server
/// container with the ServiceAccount volume the values add verifies pod
/// tokens locally with the keys the API server serves: a valid token is
/// verified, a forged one refused on the node without an EKS Auth call, and
/// the keys are kept in the cache on the emptyDir.
#[test]
fn chart_values_verify_turns_on_local_verification() {
    if !is_root() {
        skip("needs root for network namespaces and chroot");
        return;
    }
    let node = ChartNode::start("pia-chartv");
    let (ns, image) = (&node.ns, &node.image);
    let logs = image.path("/tmp");
    // The cluster's issuer: the key the emulator's tokens are signed with,
    // published by the API server under the issuer they name.
    let pem = std::fs::read_to_string(&node.key).unwrap();
    let issuer = Arc::new(Issuer::from_pem(node.endpoint.clone(), &pem).unwrap());
    // The projected volume (token, ca.crt, namespace) at SA_MOUNT, and the
    // emptyDir at JWKS_CACHE_MOUNT.
    let api = NodeApiServer::start(ns, issuer.clone(), &image.path(SA_MOUNT));
    std::fs::create_dir_all(image.path(JWKS_CACHE_MOUNT)).unwrap();
    let env = node.cloud_env(&api.env);
    let server = Running::start(
        image.container(ns, &SERVER, VERIFY_SERVER_ARGS, &env_refs(&env)),
        &logs,
        "verify",
    );

    let cache = image.path(JWKS_CACHE_MOUNT).join("jwks.json");
    wait_for(
        "the API server's keys in the JWKS cache",
        Duration::from_secs(60),
        || cache.exists(),
    );
    let cached: serde_json::Value = serde_json::from_slice(&std::fs::read(&cache).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", cache.display()));
    assert_eq!(
        cached["keys"][0]["kid"].as_str(),
        issuer.current_kid().as_deref(),
        "{cached}"
    );
    wait_for("the liveness probe", Duration::from_secs(60), || {
        status(ns, "http://localhost:2703/healthz") == "200"
    });

    let token = mint(&node.key, &node.endpoint);
    let creds = credentials(ns, &token);
    assert!(creds["AccessKeyId"].as_str().is_some(), "{creds}");
    assert_eq!(
        metric(
            ns,
            r#"pod_identity_token_verifications_total{outcome="verified"}"#
        ),
        1.0,
        "verified locally"
    );
    let calls = node.eks_auth_calls();

    // Signed by another key under the cluster key's kid.
    let forged = Issuer::generate(node.endpoint.clone())
        .unwrap()
        .sign_with_header(
            &json!({"alg": "RS256", "kid": issuer.current_kid()}),
            &issuer.claims(&TokenSpec::pod("default", "app", "chart-pod")),
        )
        .unwrap();
    let out = check(ns.cmd("curl").args([
        "-sS",
        "--max-time",
        "15",
        "-w",
        "\n%{http_code}",
        "-H",
        &format!("Authorization: {forged}"),
        "http://169.254.170.23/v1/credentials",
    ]));
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.ends_with("\n400") && out.contains("token signature is invalid"),
        "{out}"
    );
    assert_eq!(node.eks_auth_calls(), calls, "refused on the node");
    assert_eq!(
        metric(
            ns,
            r#"pod_identity_token_verifications_total{outcome="signature"}"#
        ),
        1.0
    );

    let (stdout, _) = serve_and_drain(ns, server, &token);
    assert!(
        stdout.contains(r#""jwks_source":"auto","keys":"apiserver""#),
        "{stdout}"
    );
    assert!(!stdout.contains(&token[..40]), "token not logged");
    drop(api);
}
