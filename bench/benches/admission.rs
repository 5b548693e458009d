//! Criterion micro-benchmarks of token admission (`admission::Admission::admit`),
//! the per-request work before the credential cache:
//!
//! - `admission/verified_cold`: a token the verified-token memo does not
//!   hold (memo size 1, rotating over 256 distinct tokens): SHA-256, JWT
//!   parse, claim checks, key lookup, RS256 signature verification,
//!   Kubernetes claim rules, memo insert. What the agent pays once per new
//!   token in verified mode (`--jwks-source`).
//! - `admission/verified_cached`: the same token again: SHA-256 + memo hit
//!   + expiry check. What every later request with that token pays.
//! - `admission/unverified_cold`: no key source (the default): SHA-256,
//!   parse and claim checks of a token not in the memo.
//! - `token_hash/sha256`: `TokenHash::of` alone on a real (~1.1 KB) token.
//! - `admission/rsa2048_verify_bare`: the floor `verified_cold` is compared
//!   with: one RS256 (RSA-2048, PKCS#1 v1.5, SHA-256) check of the same
//!   tokens' signatures with the same library (aws-lc-rs), the key parsed
//!   once, the signature already decoded — no parsing, no claims, no memo.
//! - `admission/rsa2048_verify_components`: the same check with the key given
//!   as its components each time (what jsonwebtoken's `crypto::verify` does).
//!
//! Keys come from a `KeySource::File` JWKS written from `Issuer::jwks()`.
//! Admission never waits on I/O once the keys are loaded, so each call is
//! polled to completion once (`now_or_never`), without an executor.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use pod_identity_agent::admission::{Admission, AdmissionConfig};
use pod_identity_agent::cli::CacheScope;
use pod_identity_agent::jwks::{KeySource, KeyStore, KeyStoreConfig};
use pod_identity_agent::metrics::Metrics;
use pod_identity_agent::token::TokenHash;
use testkit::issuer::{Issuer, TokenSpec};

const ISSUER: &str = "https://oidc.bench.example/id/BENCH";

fn new_admission(keys: Option<Arc<KeyStore>>, memo_size: u64, metrics: Arc<Metrics>) -> Admission {
    Admission::new(
        AdmissionConfig {
            audience: "pods.eks.amazonaws.com".into(),
            leeway_secs: 30,
            issuer: Some(ISSUER.into()),
            scope: CacheScope::Pod,
            memo_size,
            memo_bytes: pod_identity_agent::app::memo_bytes(memo_size),
            strict: false,
            node_name: None,
            require_node_claim: false,
        },
        keys,
        pod_identity_agent::flow::Flows::new(),
        metrics,
    )
}

fn tokens(issuer: &Issuer, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            issuer
                .mint(&TokenSpec::pod("bench", "app", &format!("pod-{i}")))
                .expect("minting a token")
        })
        .collect()
}

fn admission(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let issuer = Issuer::generate(ISSUER).expect("issuer key");
    let dir = std::env::temp_dir().join(format!("pod-identity-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, issuer.jwks().to_string()).expect("writing the JWKS");
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(KeyStore::new(
        KeyStoreConfig {
            source: KeySource::File(jwks),
            client: pod_identity_agent::https::HttpsClient::new(
                &pod_identity_agent::https::Trust::system(),
                pod_identity_agent::https::ProxyConfig::disabled(),
            ),
            cache_path: None,
            refetch_interval: Duration::from_secs(3600),
        },
        metrics.clone(),
    ));
    rt.block_on(store.initial_load()).expect("loading the JWKS");
    let distinct = tokens(&issuer, 256);

    let mut group = c.benchmark_group("admission");
    {
        let admission = new_admission(Some(store.clone()), 1, metrics.clone());
        let mut i = 0usize;
        group.bench_function("verified_cold", |b| {
            b.iter(|| {
                i = (i + 1) % distinct.len();
                let admitted = admission
                    .lookup_or_admit(
                        black_box(distinct[i].as_bytes()),
                        testkit::issuer::now_secs(),
                    )
                    .now_or_never()
                    .expect("admission does not wait once keys are loaded")
                    .expect("token admitted");
                assert!(admitted.verified);
                admitted
            })
        });
    }
    {
        let admission = new_admission(Some(store.clone()), 20_000, metrics.clone());
        let token = &distinct[0];
        admission
            .lookup_or_admit(token.as_bytes(), testkit::issuer::now_secs())
            .now_or_never()
            .expect("ready")
            .expect("admitted");
        group.bench_function("verified_cached", |b| {
            b.iter(|| {
                admission
                    .lookup_or_admit(black_box(token.as_bytes()), testkit::issuer::now_secs())
                    .now_or_never()
                    .expect("ready")
                    .expect("admitted")
            })
        });
    }
    {
        let admission = new_admission(None, 1, metrics.clone());
        let mut i = 0usize;
        group.bench_function("unverified_cold", |b| {
            b.iter(|| {
                i = (i + 1) % distinct.len();
                admission
                    .lookup_or_admit(
                        black_box(distinct[i].as_bytes()),
                        testkit::issuer::now_secs(),
                    )
                    .now_or_never()
                    .expect("ready")
                    .expect("admitted")
            })
        });
    }
    {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwk = &issuer.jwks()["keys"][0];
        let component = |name: &str| {
            URL_SAFE_NO_PAD
                .decode(jwk[name].as_str().expect("an RSA JWK has n and e"))
                .expect("base64url")
        };
        let (n, e) = (component("n"), component("e"));
        let signed: Vec<(Vec<u8>, Vec<u8>)> = distinct
            .iter()
            .map(|t| {
                let (input, sig) = t.rsplit_once('.').expect("three segments");
                (
                    input.as_bytes().to_vec(),
                    URL_SAFE_NO_PAD.decode(sig).expect("base64url signature"),
                )
            })
            .collect();
        let der = {
            // PKCS#1 RSAPublicKey, as the agent's key set builds it.
            fn int(m: &[u8]) -> Vec<u8> {
                let mut v = vec![0x02];
                let pad = m[0] & 0x80 != 0;
                let len = m.len() + usize::from(pad);
                if len < 128 {
                    v.push(len as u8);
                } else {
                    v.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
                }
                if pad {
                    v.push(0);
                }
                v.extend_from_slice(m);
                v
            }
            let body = [int(&n), int(&e)].concat();
            [
                vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8],
                body,
            ]
            .concat()
        };
        let parsed = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            der,
        )
        .expect("an RSA-2048 key");
        let mut i = 0usize;
        group.bench_function("rsa2048_verify_bare", |b| {
            b.iter(|| {
                i = (i + 1) % signed.len();
                let (input, sig) = &signed[i];
                parsed
                    .verify_sig(black_box(input), black_box(sig))
                    .expect("a valid signature")
            })
        });
        group.bench_function("rsa2048_verify_components", |b| {
            b.iter(|| {
                i = (i + 1) % signed.len();
                let (input, sig) = &signed[i];
                aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e }
                    .verify(
                        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                        black_box(input),
                        black_box(sig),
                    )
                    .expect("a valid signature")
            })
        });
    }
    group.finish();

    c.benchmark_group("token_hash")
        .bench_function("sha256", |b| {
            b.iter(|| TokenHash::of(black_box(&distinct[0])))
        });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, admission);
criterion_main!(benches);
