//! Fakes for the pod identity agent's tests, benchmarks and demo. Nothing
//! here ships in the agent's image, and nothing here parses or verifies a
//! token with the agent's code: a fake that shared it would hide its bugs.
//!
//! - [`issuer`]: mints projected-ServiceAccount-shaped tokens and publishes
//!   its keys like kube-apiserver.
//! - [`emulator`]: EKS Auth `AssumeRoleForPodIdentity` on the real wire
//!   protocol, with fault knobs and call events.
//! - [`apiserver`]: a fake kube-apiserver over TLS (issuer discovery, keys).
//! - [`tls`]: a private CA and server certificates it signs.
//! - [`net`]: network fixtures (a blackholed address).
//! - [`demo`]: issuer + emulator + agent on loopback, no AWS account.
//! - [`cli`]: the `testkit` command line (`demo`, `emulator`, `mint-token`).
#![allow(
    clippy::disallowed_methods,
    reason = "fakes and benchmarks stand in for the outside world and read its wall clock"
)]
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod cli;
pub mod demo;
pub mod emulator;
pub mod issuer;
pub mod net;
pub mod tls;

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
