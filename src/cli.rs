//! Command line: the upstream agent's subcommands and flags (same names and
//! defaults), plus the options this agent adds. Parsing only; `main.rs`
//! dispatches, and tests build configurations with `Cli::try_parse_from`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::flagcheck;

/// Exit code for command line errors (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "eks-pod-identity-agent",
    version,
    about = "Node-local credential agent for EKS Pod Identity"
)]
pub struct Cli {
    /// Global, as upstream's persistent `-v`: before or after the subcommand.
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve pod credentials on the link-local agent addresses.
    Server(ServerArgs),
    /// Create the pod-id-link0 link, its addresses and routes; set tcp_migrate_req (privileged).
    #[cfg(feature = "node-init")]
    Initialize(InitializeArgs),
    /// Print the version (upstream's `version` subcommand).
    Version,
    /// Ask this pod's agent over its --probe-socket (kubelet exec probes).
    Probe(ProbeArgs),
}

#[cfg(feature = "node-init")]
#[derive(Debug, Clone, Args)]
pub struct InitializeArgs {
    #[command(flatten)]
    pub init: pod_identity_init::InitArgs,
    /// Upstream (cobra) accepts and ignores positional arguments.
    #[arg(hide = true)]
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log level: trace, debug, info, warn or error.
    #[arg(short = 'v', long = "verbosity", default_value = "info", global = true)]
    pub verbosity: String,
    /// Log format. JSON lines like upstream by default.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheScope {
    /// One credential per pod (per token when tokens are not verified).
    Pod,
    /// One credential shared by all pods of a ServiceAccount (verified tokens
    /// only). WARNING: EKS session tags kubernetes-pod-name and
    /// kubernetes-pod-uid then describe the first pod, not the caller.
    ServiceAccount,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Name of the EKS cluster (sent to EKS Auth).
    #[arg(short = 'c', long)]
    pub cluster_name: String,
    /// Port the credential endpoint listens on, on every bind host.
    #[arg(short = 'p', long, default_value_t = 80)]
    pub port: u16,
    /// Port of the /healthz and /readyz probe server on localhost.
    #[arg(long, default_value_t = 2703)]
    pub probe_port: u16,
    /// Unix socket answering /healthz and /readyz for this agent process
    /// only (`probe --socket`); the probe port is shared with the other
    /// agent during a surge rollout. Must be private to the pod (emptyDir).
    #[arg(long)]
    pub probe_socket: Option<PathBuf>,
    /// Address the metrics server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub metrics_address: IpAddr,
    /// Port of the Prometheus /metrics server (also answers /healthz, /readyz).
    #[arg(long, default_value_t = 2705)]
    pub metrics_port: u16,
    /// Longest time a cached credential is served before it is renewed; 0 disables the cache.
    #[arg(long, default_value = "3h", value_parser = flagcheck::duration_or_off("1s", "8760h"))]
    pub max_credential_retention_before_renewal: Duration,
    /// Maximum number of cached credentials; 0 disables the cache.
    #[arg(long, default_value_t = 2000, value_parser = flagcheck::count::<u64>(0, 10_000_000))]
    pub max_cache_size: u64,
    /// Background refreshes per second sent to EKS Auth.
    #[arg(long, default_value_t = 3.0, value_parser = flagcheck::rate_or_off("0.001", "1000000"))]
    pub max_service_qps: f64,
    /// Hosts to listen on (IPv6 in brackets). Repeatable or comma-separated.
    #[arg(short = 'b', long, value_delimiter = ',', default_values_t = [String::from("169.254.170.23"), String::from("[fd00:ec2::23]")])]
    pub bind_hosts: Vec<String>,
    /// Hybrid nodes: take the agent's own AWS credentials from the shared
    /// credentials file ([default] profile), re-read every minute.
    /// `--rotate-credentials`, `--rotate-credentials true` (as upstream's
    /// chart passes it) and `=true` enable it; `false` disables it (upstream
    /// would enable it and ignore the word).
    #[arg(
        long,
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        value_name = "BOOL",
        value_parser = parse_go_bool,
        action = clap::ArgAction::Set
    )]
    pub rotate_credentials: bool,
    /// With --rotate-credentials: how often the shared credentials file is re-read.
    #[arg(long, default_value = "1m", value_parser = flagcheck::duration("1s", "24h"))]
    pub credentials_reload_interval: Duration,
    /// EKS Auth endpoint URL override (AWS_ENDPOINT_URL_EKS_AUTH also works).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// AWS region for EKS Auth (default: the SDK chain, env then IMDS).
    #[arg(long)]
    pub region: Option<String>,
    /// PEM bundle trusted for EKS Auth (and other AWS calls) besides the
    /// system roots: ISO partitions, TLS-intercepting proxies. Default: the
    /// file named by AWS_CA_BUNDLE, as the other AWS SDKs read it.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,

    /// Host header values accepted on the credential endpoint (port and [] stripped).
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("169.254.170.23"), String::from("fd00:ec2::23")])]
    pub allowed_hosts: Vec<String>,
    /// Audience the pod token must carry.
    #[arg(long, default_value = "pods.eks.amazonaws.com")]
    pub audience: String,

    /// Connect timeout for EKS Auth calls.
    #[arg(long, default_value = "500ms", value_parser = flagcheck::duration("10ms", "1m"))]
    pub eks_auth_connect_timeout: Duration,
    /// Timeout of one EKS Auth HTTP attempt.
    #[arg(long, default_value = "1s", value_parser = flagcheck::duration("10ms", "5m"))]
    pub eks_auth_request_timeout: Duration,
    /// Attempts per EKS Auth call (SDK standard retry); 1 disables retries.
    #[arg(long, default_value_t = 3, value_parser = flagcheck::count::<u32>(1, 10))]
    pub eks_auth_max_attempts: u32,
    /// Node-wide cap on EKS Auth calls per second (misses and refreshes
    /// together), lowered while EKS Auth throttles; 0 disables.
    #[arg(long, default_value_t = 20.0, value_parser = flagcheck::rate_or_off("0.001", "1000000"))]
    pub eks_auth_rate_limit: f64,
    /// Calls allowed at once above --eks-auth-rate-limit: a node start
    /// (110 pods) is served in about half a second.
    #[arg(long, default_value_t = 100, value_parser = flagcheck::count::<u32>(1, 1_000_000))]
    pub eks_auth_rate_burst: u32,
    /// EKS Auth calls that may wait for the cap; beyond it requests get 503.
    #[arg(long, default_value_t = 1000, value_parser = flagcheck::count::<usize>(0, 1_000_000))]
    pub eks_auth_queue_size: usize,

    #[command(flatten)]
    pub verify: VerifyArgs,

    /// Who shares a cached credential. See the README before choosing service-account.
    #[arg(long, value_enum, default_value_t = CacheScope::Pod)]
    pub cache_scope: CacheScope,
    /// How long an irrecoverable EKS Auth answer (no association, access
    /// denied, bad token) is replayed for the same token; 0 disables.
    #[arg(long, default_value = "5s", value_parser = flagcheck::duration("0s", "1h"))]
    pub negative_cache_ttl: Duration,

    /// Requests per second accepted on the credential endpoint, all clients together; 0 disables.
    #[arg(long, default_value_t = 1000.0, value_parser = flagcheck::rate_or_off("0.001", "1000000"))]
    pub rate_limit: f64,
    /// Burst above --rate-limit.
    #[arg(long, default_value_t = 500, value_parser = flagcheck::count::<u32>(1, 1_000_000))]
    pub rate_limit_burst: u32,
    /// Requests per second guaranteed to one flow (a verified workload, else
    /// a source address); beyond it a flow borrows from --rate-limit while
    /// nobody else needs it; 0 disables.
    #[arg(long, default_value_t = 100.0, value_parser = flagcheck::rate_or_off("0.001", "1000000"))]
    pub per_client_rate_limit: f64,
    /// Burst above --per-client-rate-limit.
    #[arg(long, default_value_t = 100, value_parser = flagcheck::count::<u32>(1, 1_000_000))]
    pub per_client_rate_limit_burst: u32,

    /// Open connections accepted at once on the credential endpoint; at the
    /// cap, a source holding fewer than the source holding the most still
    /// gets in (one of the heaviest's is closed), others are closed at once.
    #[arg(long, default_value_t = 8192, value_parser = flagcheck::count::<usize>(1, 1_000_000))]
    pub max_connections: usize,
    /// Open connections accepted from one source address (a pod; host-network
    /// callers share the node's); more are closed at once. Bounds what one
    /// pod can make the agent buffer (each connection up to
    /// --max-header-bytes).
    #[arg(long, default_value_t = 1024, value_parser = flagcheck::count::<usize>(1, 1_000_000))]
    pub max_connections_per_source: usize,
    /// Time a client has to send complete request headers; also how long an
    /// idle keep-alive connection is kept.
    #[arg(long, default_value = "5s", value_parser = flagcheck::duration("100ms", "10m"))]
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 beyond).
    #[arg(long, default_value_t = 16 * 1024, value_parser = flagcheck::count::<usize>(4096, 1_048_576))]
    pub max_header_bytes: usize,
    /// Longest wait for in-flight requests after SIGTERM/SIGINT (keep it
    /// below the pod's terminationGracePeriodSeconds).
    #[arg(long, default_value = "20s", value_parser = flagcheck::duration("0s", "1h"))]
    pub drain_timeout: Duration,
    /// How long an IPv6 bind host that is not (yet) assigned is retried
    /// (duplicate address detection) before it is skipped.
    #[arg(long, default_value = "10s", value_parser = flagcheck::duration("0s", "10m"))]
    pub ipv6_bind_wait: Duration,

    /// Upstream (cobra) accepts and ignores positional arguments; main logs
    /// a warning naming them.
    #[arg(hide = true)]
    pub ignored: Vec<String>,
}

/// Go's `strconv.ParseBool`, the values pflag accepts for a bool flag.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true or false)")),
    }
}

/// Local token verification (JWKS). Default `auto`: the API server's keys
/// when the agent runs in a pod with a ServiceAccount token, else none
/// (upstream's behaviour: only byte-equal tokens share a cached credential).
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Where signing keys come from: `auto` (`apiserver` in a pod with a
    /// ServiceAccount token, else `none`), `none`, `apiserver` (in-cluster
    /// /openid/v1/jwks), an issuer URL (OIDC discovery), or `file:<path>`.
    #[arg(long, default_value = "auto")]
    pub jwks_source: String,
    /// Expected `iss` claim (default: the API server's discovery document,
    /// or the issuer URL; required with `file:`).
    #[arg(long)]
    pub token_issuer: Option<String>,
    /// Extra CA bundle (PEM) trusted for key sources, besides --ca-bundle
    /// (issuer URL) or the ServiceAccount's ca.crt (API server).
    #[arg(long)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Last-known-good JWKS is written here and loaded at start if the source is unreachable.
    #[arg(long)]
    pub jwks_cache_path: Option<PathBuf>,
    /// Minimum time between two JWKS refetches caused by unknown key ids.
    #[arg(long, default_value = "10s", value_parser = flagcheck::duration("0s", "24h"))]
    pub jwks_refetch_interval: Duration,
    /// Periodic JWKS refresh (key rotation without unknown kids).
    #[arg(long, default_value = "5m", value_parser = flagcheck::duration("1s", "24h"))]
    pub jwks_refresh_interval: Duration,
    /// Clock skew tolerated on exp/nbf (upstream tolerates none).
    #[arg(long, default_value = "0s", value_parser = flagcheck::duration("0s", "10m"))]
    pub token_leeway: Duration,
    /// Refuse (400) tokens local verification cannot decide (no keys loaded,
    /// unknown kid after a refetch, no kid, another issuer) instead of
    /// forwarding them to EKS Auth.
    #[arg(long)]
    pub strict_verification: bool,
    /// This node's name (the manifests pass spec.nodeName): tokens whose
    /// kubernetes.io node claim names another node are refused.
    #[arg(long)]
    pub node_name: Option<String>,
    /// With --node-name: also refuse tokens without a node claim (clusters
    /// before Kubernetes 1.30 issue none).
    #[arg(long, requires = "node_name")]
    pub require_node_claim: bool,
    /// Kubernetes API URL for `--jwks-source apiserver`/`auto` (default:
    /// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT).
    #[arg(long)]
    pub kube_api_url: Option<String>,
    /// Mounted ServiceAccount (token, ca.crt) used for `--jwks-source apiserver`/`auto`.
    #[arg(long, default_value = "/var/run/secrets/kubernetes.io/serviceaccount")]
    pub service_account_dir: PathBuf,
    /// Confirmed tokens (verified, or answered with credentials by EKS Auth)
    /// remembered so they are not checked again; also bounds their bytes
    /// (2 KiB a token).
    #[arg(long, default_value_t = 20_000, value_parser = flagcheck::count::<u64>(0, 10_000_000))]
    pub verified_token_cache_size: u64,
}

/// `probe`: exit 0 when the agent answers 200, 1 otherwise (the answer is printed).
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The agent's --probe-socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// Longest wait for the answer.
    #[arg(long, default_value = "10s", value_parser = flagcheck::duration("10ms", "10m"))]
    pub timeout: Duration,
    #[arg(value_enum)]
    pub check: ProbeCheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeCheck {
    Healthz,
    Readyz,
}

impl ProbeCheck {
    pub fn path(self) -> &'static str {
        match self {
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
        }
    }
}
