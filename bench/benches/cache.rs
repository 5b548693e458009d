//! Criterion micro-benchmarks of the credential cache's hit path
//! (`cache::CredentialCache::get` on a warm key), the work a cache hit adds
//! after admission: clock read, moka lookup, servability check, token-hash
//! compare, a metrics counter, and a `Bytes` clone of the stored body.
//!
//! - `cache/hit_1_key`: the same key every time (hot in the CPU caches).
//! - `cache/hit_10000_keys`: rotating over 10,000 warm keys (closer to a
//!   busy node's access pattern).
//!
//! The cache is warmed through a real EKS Auth call path: an in-process
//! `emulator::RunningEmulator` and the agent's `eksauth::EksAuth` client.
//! A hit never waits, so each call is polled once (`now_or_never`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use pod_identity_agent::cache::{CacheKey, Outcome, TokenRef};
use pod_identity_agent::cli::CacheScope;
use pod_identity_agent::clock::{Clock, SystemClock};
use pod_identity_agent::eksauth::{EksAuth, EksAuthConfig};
use pod_identity_agent::metrics::Metrics;
use pod_identity_agent::token::TokenHash;
use testkit::emulator::{Association, Emulator, RunningEmulator};
use testkit::issuer::{Issuer, TokenSpec};

const KEYS: usize = 10_000;

struct Warm {
    key: CacheKey,
    hash: TokenHash,
}

fn hit(c: &mut Criterion) {
    let flow = pod_identity_agent::flow::Flows::new().source([127, 0, 0, 1].into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (cache, warm, _emu) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the emulator");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let issuer = Arc::new(Issuer::generate(url).expect("issuer key"));
        let emulator = Arc::new(Emulator::new(issuer.clone()).with_cluster("bench"));
        emulator.associate(Association::new(
            "bench",
            "app",
            "arn:aws:iam::111122223333:role/bench",
        ));
        let emu = RunningEmulator::start(emulator, listener);
        let metrics = Arc::new(Metrics::new());
        let eksauth = EksAuth::new(
            EksAuthConfig {
                cluster_name: "bench".into(),
                endpoint: Some(emu.url()),
                region: Some("us-west-2".into()),
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(5),
                max_attempts: 1,
                credentials: Some(SharedCredentialsProvider::new(Credentials::new(
                    "AKIDBENCHFAKE0000001",
                    "bench-fake-secret",
                    None,
                    None,
                    "bench",
                ))),
            },
            metrics.clone(),
        )
        .await;
        let cache = testkit::agent::cache_over(
            Arc::new(eksauth),
            pod_identity_agent::clock::system(),
            metrics,
        );
        let mut warm = Vec::with_capacity(KEYS);
        for i in 0..KEYS {
            let token = issuer
                .mint(&TokenSpec::pod("bench", "app", &format!("pod-{i}")))
                .expect("minting a token");
            let hash = TokenHash::of(&token);
            let key = CacheKey::for_request(hash, None, CacheScope::Pod);
            let raw: Arc<str> = Arc::from(token.as_str());
            let (_, outcome) = cache
                .get(
                    &key,
                    hash,
                    || TokenRef {
                        raw,
                        hash,
                        expires: None,
                        subject: Default::default(),
                    },
                    flow,
                    SystemClock::default().now_ms(),
                )
                .await
                .expect("warm-up fetch");
            assert_eq!(outcome, Outcome::Miss);
            warm.push(Warm { key, hash });
        }
        (cache, warm, emu)
    });
    let no_token = || -> TokenRef { unreachable!("a hit never needs the token") };

    let mut group = c.benchmark_group("cache");
    group.bench_function("hit_1_key", |b| {
        let w = &warm[0];
        b.iter(|| {
            let (body, outcome) = cache
                .get(
                    black_box(&w.key),
                    w.hash,
                    no_token,
                    flow,
                    SystemClock::default().now_ms(),
                )
                .now_or_never()
                .expect("a hit does not wait")
                .expect("hit");
            debug_assert_eq!(outcome, Outcome::Hit);
            body
        })
    });
    let mut i = 0usize;
    group.bench_function("hit_10000_keys", |b| {
        b.iter(|| {
            i = (i + 1) % warm.len();
            let w = &warm[i];
            cache
                .get(
                    black_box(&w.key),
                    w.hash,
                    no_token,
                    flow,
                    SystemClock::default().now_ms(),
                )
                .now_or_never()
                .expect("a hit does not wait")
                .expect("hit")
        })
    });
    group.finish();
}

criterion_group!(benches, hit);
criterion_main!(benches);
