//! Starting the agent, or parts of it, for the demo, tests and benchmarks.

use pod_identity_agent::cli::{Cli, Command, ServerArgs};

use clap::Parser;

/// `server` flags for an agent on 127.0.0.1 (the demo, tests): any free
/// ports, the given Host values allowed, EKS Auth at `endpoint` in
/// us-west-2; `extra` flags follow.
pub fn loopback_server(
    cluster: &str,
    endpoint: &str,
    port: u16,
    allowed_hosts: &str,
    extra: &[&str],
) -> Result<ServerArgs, clap::Error> {
    let port = port.to_string();
    let mut argv = vec![
        "eks-pod-identity-agent",
        "server",
        "--cluster-name",
        cluster,
        "--bind-hosts",
        "127.0.0.1",
        "--port",
        &port,
        "--probe-port",
        "0",
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--allowed-hosts",
        allowed_hosts,
        "--endpoint",
        endpoint,
        "--region",
        "us-west-2",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv)?.command {
        Command::Server(args) => Ok(args),
        _ => unreachable!("the argument list starts with `server`"),
    }
}

/// A credential cache over `upstream` with the agent's defaults except the
/// gate (off: no call waits) and a large size: what tests and benchmarks of
/// the cache alone start from.
pub fn cache_over(
    upstream: std::sync::Arc<dyn pod_identity_agent::eksauth::Upstream>,
    clock: pod_identity_agent::clock::SharedClock,
    metrics: std::sync::Arc<pod_identity_agent::metrics::Metrics>,
) -> pod_identity_agent::cache::CredentialCache {
    use pod_identity_agent::cache::{CacheConfig, CredentialCache};
    use pod_identity_agent::policy::{GateConfig, Policy, PolicyConfig};
    use std::time::Duration;
    const SIZE: u64 = 100_000;
    let policy = Policy::new(
        PolicyConfig {
            gate: GateConfig {
                rate: 0.0,
                burst: 0,
                queue_size: 0,
            },
            negative_ttl: Duration::from_secs(5),
            capacity: SIZE,
        },
        upstream,
        clock.clone(),
        metrics.clone(),
    );
    CredentialCache::new(
        CacheConfig {
            retention: Duration::from_secs(3 * 3600),
            max_size: SIZE,
            max_service_qps: 3.0,
        },
        policy,
        clock,
        metrics,
    )
}
