//! The `server` subcommand as an application: assembles the endpoint and
//! everything behind it from the flags ([`build`]), binds the listeners
//! ([`bind`]), serves until a shutdown future resolves and drains ([`run`]).
//! Every TCP listener is shared with `SO_REUSEPORT` ([`crate::reuseport`]),
//! so the next agent can start on the node before this one stops.
//!
//! Shutdown is an argument, so tests start and stop real servers on
//! 127.0.0.1:0; the binary passes [`shutdown_signal`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_credential_types::provider::SharedCredentialsProvider;
use tracing::{info, warn};

use crate::cache::{CacheConfig, CredentialCache};
use crate::cli::ServerArgs;
use crate::clock::SharedClock;
use crate::connections::Exemptions;
use crate::eksauth::{CallGateConfig, EksAuth, EksAuthConfig};
use crate::endpoint::CredentialEndpoint;
use crate::env::Env;
use crate::flow::Flows;
use crate::https::{CaBundle, HttpsClient, Trust, proxy_from};
use crate::instance::Instance;
use crate::jwks::{JwksError, KeySource, KeyStore, KeyStoreConfig, resolve_source};
use crate::metrics::Metrics;
use crate::probe::{Admin, InstanceProbes, Probes};
use crate::ratelimit::{Rate, RateLimiter};
use crate::reuseport;
use crate::serve::{ConnLimits, Server};
use crate::verify::{GateConfig, TokenGate};

pub use crate::listeners::{BindError, Listeners, bind};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Jwks(#[from] JwksError),
    #[error("invalid --allowed-hosts: empty")]
    NoAllowedHosts,
    #[error(transparent)]
    CaBundle(#[from] crate::https::CaBundleError),
}

/// Everything `server` needs besides its flags; tests inject a clock and
/// credentials here instead of touching the process environment.
pub struct Options {
    pub args: ServerArgs,
    pub clock: SharedClock,
    /// The agent's own AWS credentials; `None` = the SDK default chain
    /// (or the shared credentials file with `--rotate-credentials`).
    pub credentials: Option<SharedCredentialsProvider>,
    /// Environment lookup (KUBERNETES_SERVICE_HOST/PORT, shared credentials
    /// file, AWS_CA_BUNDLE, POD_NAME).
    pub env: Env,
}

impl Options {
    pub fn new(args: ServerArgs) -> Self {
        Self {
            args,
            clock: crate::clock::system(),
            credentials: None,
            env: Env::process(),
        }
    }
}

/// The assembled agent, not yet listening.
pub struct App {
    pub endpoint: Arc<CredentialEndpoint>,
    pub keys: Option<Arc<KeyStore>>,
    pub cache: CredentialCache,
    pub metrics: Arc<Metrics>,
    pub instance: Arc<Instance>,
    args: ServerArgs,
}

pub async fn build(opts: Options) -> Result<App, ServerError> {
    let Options {
        args,
        clock,
        credentials,
        env,
    } = opts;
    // Flag errors before any network work (key loading can take seconds).
    if args.allowed_hosts.is_empty() {
        return Err(ServerError::NoAllowedHosts);
    }
    let metrics = Arc::new(Metrics::new());
    let instance = Arc::new(Instance::new(env.var("POD_NAME"), clock.now_secs()));
    metrics.register_instance(&instance);
    let credentials = match credentials {
        Some(c) => Some(c),
        None if args.rotate_credentials => Some(SharedCredentialsProvider::new(
            crate::rotating::SharedFileCredentials::from_env(
                &env,
                args.credentials_reload_interval,
            ),
        )),
        None => None,
    };
    let bundle = match CaBundle::path_from(args.ca_bundle.as_deref(), &env) {
        Some(path) => Some(CaBundle::load(&path)?),
        None => None,
    };
    let proxy = proxy_from(&env);
    let aws_client = HttpsClient::new(&Trust::system().and(bundle.as_ref()), proxy.clone());
    let eksauth = EksAuth::with_http_client(
        EksAuthConfig {
            cluster_name: args.cluster_name.clone(),
            endpoint: args.endpoint.clone(),
            region: args.region.clone(),
            connect_timeout: args.eks_auth_connect_timeout,
            request_timeout: args.eks_auth_request_timeout,
            max_attempts: args.eks_auth_max_attempts,
            credentials,
        },
        Some(aws_client.shared()),
        metrics.clone(),
    )
    .await;
    let v = &args.verify;
    let source = resolve_source(
        &v.jwks_source,
        v.kube_api_url.as_deref(),
        &v.service_account_dir,
        |name| env.var(name),
    )?;
    let issuer = match (&v.token_issuer, &source) {
        (Some(issuer), _) => Some(issuer.clone()),
        (None, Some(KeySource::File(_))) => return Err(JwksError::NoIssuer.into()),
        // The API server's discovery document or the issuer URL says,
        // with the keys.
        (None, _) => None,
    };
    info!(
        jwks_source = %v.jwks_source,
        keys = source.as_ref().map_or("none", KeySource::label),
        token_issuer = issuer.as_deref().unwrap_or("from the key source"),
        "token verification"
    );
    let keys = match source {
        None => None,
        Some(source) => {
            // Extra roots for key sources; the API server is trusted through
            // its own CA (the mounted ServiceAccount's), as in-cluster
            // clients do.
            let jwks_ca = match &v.jwks_ca_file {
                Some(path) => Some(CaBundle::load(path)?),
                None => None,
            };
            let trust = match &source {
                KeySource::ApiServer { sa_dir, .. } if sa_dir.join("ca.crt").is_file() => {
                    let cluster_ca = CaBundle::load(&sa_dir.join("ca.crt"))?;
                    Trust::private().and(Some(&cluster_ca))
                }
                _ => Trust::system().and(bundle.as_ref()),
            };
            let client = HttpsClient::new(&trust.and(jwks_ca.as_ref()), proxy);
            let store = Arc::new(KeyStore::new(
                KeyStoreConfig {
                    source,
                    client,
                    cache_path: v.jwks_cache_path.clone(),
                    refetch_interval: v.jwks_refetch_interval,
                },
                metrics.clone(),
            ));
            if let Err(err) = store.initial_load().await {
                warn!(error = %err, "signing keys unavailable at start; tokens are forwarded to EKS Auth unverified until they load");
            }
            store.spawn_refresh(v.jwks_refresh_interval);
            Some(store)
        }
    };
    let flows = Flows::new();
    let gate = TokenGate::new(
        GateConfig {
            audience: args.audience.clone(),
            leeway_secs: v.token_leeway.as_secs() as i64,
            issuer,
            scope: args.cache_scope,
            memo_size: v.verified_token_cache_size,
            memo_bytes: memo_bytes(v.verified_token_cache_size),
            strict: v.strict_verification,
            node_name: v.node_name.clone().filter(|n| !n.is_empty()),
            require_node_claim: v.require_node_claim,
        },
        keys.clone(),
        flows.clone(),
        metrics.clone(),
    );
    let cache = CredentialCache::new(
        CacheConfig {
            retention: args.max_credential_retention_before_renewal,
            max_size: args.max_cache_size,
            max_service_qps: args.max_service_qps,
            negative_ttl: args.negative_cache_ttl,
            gate: CallGateConfig {
                rate: args.eks_auth_rate_limit,
                burst: args.eks_auth_rate_burst,
                queue_size: args.eks_auth_queue_size,
            },
        },
        Arc::new(eksauth),
        clock.clone(),
        metrics.clone(),
    );
    let endpoint = Arc::new(CredentialEndpoint::new(
        &args.allowed_hosts,
        gate,
        cache.clone(),
        RateLimiter::new(
            Rate {
                per_second: args.rate_limit,
                burst: args.rate_limit_burst,
            },
            Rate {
                per_second: args.per_client_rate_limit,
                burst: args.per_client_rate_limit_burst,
            },
        ),
        flows,
        clock,
        metrics.clone(),
    ));
    Ok(App {
        endpoint,
        keys,
        cache,
        metrics,
        instance,
        args,
    })
}

/// The memo's byte budget: 2 KiB a token (a projected token is about
/// 1.1 KB), so `--verified-token-cache-size` bounds its memory too.
pub fn memo_bytes(entries: u64) -> usize {
    (entries as usize).saturating_mul(2048)
}

/// Serves until `shutdown` resolves, then drains (bounded by
/// `--drain-timeout`). Returns whether the drain finished in time.
pub async fn run(
    app: App,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> bool {
    let App {
        endpoint,
        keys,
        cache,
        metrics,
        instance,
        args,
    } = app;
    // The probe's own connections to the credential listeners are exempt
    // from the connection shares: a pod hoarding connections must not make
    // the agent look dead.
    let exemptions = Exemptions::default();
    let limits = ConnLimits {
        max_connections: args.max_connections,
        max_connections_per_source: args.max_connections_per_source,
        header_read_timeout: args.header_read_timeout,
        max_header_bytes: args.max_header_bytes,
        exemptions: exemptions.clone(),
    };
    let maintenance = cache.spawn_maintenance(Duration::from_secs(5));
    let log_summaries = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.logs.flush();
            }
        })
    };
    // Readiness waits for keys only when tokens cannot be served without them.
    let wait_for_keys = keys.clone().filter(|_| args.verify.strict_verification);
    let probes = Arc::new(Probes::new(
        listeners.credential_addrs(),
        wait_for_keys,
        exemptions,
    ));
    let server = Server::new(endpoint, limits.clone(), Some(metrics.clone()));
    for l in listeners.credentials {
        server.add_listener(l);
    }
    let retry_v6 = (!listeners.pending_v6.is_empty()).then(|| {
        let adder = server.adder();
        let probes = probes.clone();
        let pending = listeners.pending_v6;
        tokio::spawn(async move {
            let mut pending = pending;
            while !pending.is_empty() {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let mut still = Vec::new();
                for addr in pending {
                    match reuseport::bind(addr) {
                        Ok(l) => {
                            info!(%addr, "IPv6 bind address appeared; listening");
                            if !adder.add(l) {
                                return;
                            }
                            probes.add_target(addr);
                        }
                        Err(_) => still.push(addr),
                    }
                }
                pending = still;
            }
        })
    });
    let admin_limits = ConnLimits {
        max_connections: 64,
        max_connections_per_source: 16,
        exemptions: Exemptions::default(),
        ..limits
    };
    let probe_server = Server::new(
        Arc::new(Admin::new(probes.clone(), None)),
        admin_limits.clone(),
        None,
    );
    for l in listeners.probe {
        probe_server.add_listener(l);
    }
    let metrics_server = Server::new(
        Arc::new(Admin::new(probes.clone(), Some(metrics.clone()))),
        admin_limits,
        None,
    );
    metrics_server.add_listener(listeners.metrics);
    let migrate_req = reuseport::migrate_req();
    info!(
        instance_id = %instance.id,
        pod = %instance.pod,
        start_time = %instance.start_time,
        reuseport = true,
        tcp_migrate_req = ?migrate_req,
        "serving"
    );
    if migrate_req != Some(true) {
        warn!(
            tcp_migrate_req = ?migrate_req,
            "net.ipv4.tcp_migrate_req is not 1 (initialize sets it; Linux >= 5.14): connections queued on this agent when it stops will be reset instead of handed to the next agent"
        );
    }
    // Every credential listener is accepting from here on (and has been in
    // the kernel's reuseport group since `bind`). Logged first, so the line
    // is there by the time the probe socket says ready.
    instance.set_serving();
    let probe_socket = listeners.probe_socket.map(|(path, l)| {
        let probes = Arc::new(InstanceProbes::new(instance.clone(), probes.clone()));
        (path, crate::probe_socket::spawn(l, probes))
    });

    shutdown.await;
    instance.set_draining();
    info!(
        instance_id = %instance.id,
        grace_ms = args.drain_timeout.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    if let Some(t) = retry_v6 {
        t.abort();
    }
    let started = Instant::now();
    let (ok, _, _) = tokio::join!(
        server.drain(args.drain_timeout),
        probe_server.drain(args.drain_timeout),
        metrics_server.drain(args.drain_timeout),
    );
    maintenance.abort();
    log_summaries.abort();
    metrics.logs.flush();
    if let Some((path, task)) = probe_socket {
        task.abort();
        crate::probe_socket::remove(&path);
    }
    info!(
        instance_id = %instance.id,
        took_ms = started.elapsed().as_millis() as u64,
        clean = ok,
        "drained"
    );
    ok
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
