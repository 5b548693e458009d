//! A whole HTTP request, as bytes on a connection, to the credential
//! endpoint served the way the agent serves it (`serve::Server`: hyper with
//! the agent's limits, Go's missing-`Host` answer), through admission (with
//! and without local verification), the rate limits and the cache, to an
//! EKS Auth stand-in whose answer the input picks.
//!
//! Input: byte 0 picks the agent (bit 0: keys from `fuzz/keys/jwks.json`)
//! and the EKS Auth answer (bits 1-3); the rest is written to the
//! connection, which is then half-closed. Checked: whatever comes back is
//! an HTTP/1.1 response, and a 200 carries a credential document. A panic
//! in any task aborts the process (libFuzzer's panic hook), so it is found.
#![no_main]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pod_identity_agent::cache::{CacheConfig, CredentialCache};
use pod_identity_agent::cli::CacheScope;
use pod_identity_agent::clock::{ManualClock, SharedClock};
use pod_identity_agent::credentials::{Credentials, Secret};
use pod_identity_agent::eksauth::answer::from_answer;
use pod_identity_agent::eksauth::{BoxFuture, EksAuthError, Issued, Upstream};
use pod_identity_agent::policy::{GateConfig, Policy, PolicyConfig};
use pod_identity_agent::endpoint::CredentialEndpoint;
use pod_identity_agent::flow::Flows;
use pod_identity_agent::https::{HttpsClient, ProxyConfig, Trust};
use pod_identity_agent::jwks::{KeySource, KeyStore, KeyStoreConfig};
use pod_identity_agent::metrics::Metrics;
use pod_identity_agent::ratelimit::{Rate, RateLimiter};
use pod_identity_agent::serve::{ConnLimits, Server};
use pod_identity_agent::admission::{Admission, AdmissionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One hour after the seed tokens were minted (they live ten years), so
/// verification passes whatever the wall clock says.
const NOW_MS: u64 = 1_796_407_756_000;

/// The EKS Auth answer for the current input (bits 1-3 of byte 0).
static ANSWER: AtomicU8 = AtomicU8::new(0);

struct StandIn {
    clock: SharedClock,
}

impl Upstream for StandIn {
    fn assume<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Issued, EksAuthError>> {
        Box::pin(async move {
            let now_s = (self.clock.now_ms() / 1000) as i64;
            let expires = match ANSWER.load(Ordering::Relaxed) {
                0 | 1 => now_s + 6 * 3600,
                2 => now_s + 10,
                3 => 253_402_300_800,
                4 => -1,
                5 => {
                    return Err(from_answer(
                        400,
                        "req-1".into(),
                        "",
                        br#"{"__type":"AccessDeniedException","message":"no"}"#,
                    ));
                }
                6 => {
                    return Err(from_answer(503, "req-1".into(), "", b"<html>busy</html>"));
                }
                _ => return Err(EksAuthError::Incomplete("credentials")),
            };
            Ok(Issued {
                credentials: Credentials {
                    access_key_id: "ASIAFUZZ".into(),
                    secret_access_key: Secret::new("secret"),
                    session_token: Secret::new("session"),
                    account_id: "123456789012".into(),
                    expiration: aws_smithy_types::DateTime::from_secs(expires),
                },
                association_id: Some("a-1".into()),
                assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/r/s".into(),
                request_id: Some("req-1".into()),
            })
        })
    }

    fn cluster_name(&self) -> &str {
        "fuzz"
    }
}

struct Agents {
    runtime: tokio::runtime::Runtime,
    /// Without and with local verification.
    addrs: [SocketAddr; 2],
}

fn agents() -> &'static Agents {
    static AGENTS: OnceLock<Agents> = OnceLock::new();
    AGENTS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let addrs = runtime.block_on(async {
            let keys_path = concat!(env!("CARGO_MANIFEST_DIR"), "/keys/jwks.json");
            let mut addrs = Vec::new();
            for verified in [false, true] {
                addrs.push(agent(verified.then_some(keys_path)).await);
            }
            [addrs[0], addrs[1]]
        });
        Agents { runtime, addrs }
    })
}

async fn agent(keys_path: Option<&str>) -> SocketAddr {
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = ManualClock::at_ms(NOW_MS);
    let keys = match keys_path {
        None => None,
        Some(path) => {
            let store = KeyStore::new(
                KeyStoreConfig {
                    source: KeySource::File(path.into()),
                    // File sources fetch nothing over HTTPS.
                    client: HttpsClient::new(&Trust::private(), ProxyConfig::disabled()),
                    cache_path: None,
                    refetch_interval: Duration::from_secs(3600),
                },
                metrics.clone(),
            );
            store
                .initial_load()
                .await
                .expect("fuzz/keys/jwks.json loads");
            Some(Arc::new(store))
        }
    };
    let flows = Flows::new();
    let admission = Admission::new(
        AdmissionConfig {
            audience: "pods.eks.amazonaws.com".into(),
            leeway_secs: 0,
            issuer: Some("https://oidc.eks.local.example/id/DEMO".into()),
            scope: CacheScope::Pod,
            memo_size: 1000,
            memo_bytes: 1000 * 2048,
            strict: false,
            node_name: Some("ip-10-0-0-1.ec2.internal".into()),
            require_node_claim: false,
        },
        keys,
        flows.clone(),
        metrics.clone(),
    );
    let policy = Policy::new(
        PolicyConfig {
            gate: GateConfig {
                rate: 0.0,
                burst: 1,
                queue_size: 0,
            },
            negative_ttl: Duration::from_secs(5),
            capacity: 100,
        },
        Arc::new(StandIn {
            clock: clock.clone(),
        }),
        clock.clone(),
        metrics.clone(),
    );
    let cache = CredentialCache::new(
        CacheConfig {
            retention: Duration::from_secs(3 * 3600),
            max_size: 100,
            max_service_qps: 3.0,
        },
        policy,
        clock.clone(),
        metrics.clone(),
    );
    let endpoint = Arc::new(CredentialEndpoint::new(
        &["169.254.170.23".into(), "fd00:ec2::23".into()],
        admission,
        cache,
        // Off: a limit would turn most inputs into the same 429.
        RateLimiter::new(
            Rate {
                per_second: 0.0,
                burst: 1,
            },
            Rate {
                per_second: 0.0,
                burst: 1,
            },
        ),
        flows,
        clock,
        metrics.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Server::new(endpoint, ConnLimits::default(), Some(metrics));
    server.add_listener(listener);
    // Served for the life of the process.
    std::mem::forget(server);
    addr
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, request)) = data.split_first() else {
        return;
    };
    let agents = agents();
    ANSWER.store((mode >> 1) & 7, Ordering::Relaxed);
    let addr = agents.addrs[usize::from(mode & 1)];
    let answer = agents.runtime.block_on(async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The server may answer and close before reading everything.
        let _ = conn.write_all(request).await;
        let _ = conn.shutdown().await;
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer).await;
        answer
    });
    if answer.is_empty() {
        return;
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
        "not an HTTP response: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    // A 200 always carries a credential (later answers on the connection
    // are not parsed: their bytes may echo the request's).
    if answer.starts_with(b"HTTP/1.1 200 ") {
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.contains("\"AccessKeyId\":\"ASIAFUZZ\"") && text.contains("\"Expiration\":\""),
            "a 200 without a credential: {text:?}"
        );
    }
});
