//! Heap footprint and allocations of the agent's own data, measured with a
//! counting global allocator (no network, no hyper): admission
//! (`admission::Admission`) and the credential cache (`cache::CredentialCache`)
//! driven directly, EKS Auth replaced by a model answering instantly with
//! credentials of real sizes (a ~1 KB session token).
//!
//! Prints, for N identities (default 10,000; unverified and verified):
//! live heap bytes per identity after warming (memo + cache), and the
//! allocations (count and bytes) of one cache hit: a known token admitted
//! from the memo and its credential served from the cache.
//!
//! Run: `cargo run --release -p pod-identity-bench --bin footprint [-- N]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use aws_smithy_types::DateTime;
use pod_identity_agent::admission::{Admission, AdmissionConfig};

use pod_identity_agent::cli::CacheScope;
use pod_identity_agent::clock::{Clock, SystemClock};
use pod_identity_agent::credentials::{Credentials, Secret};
use pod_identity_agent::eksauth::{BoxFuture, EksAuthError, Issued, Upstream};
use pod_identity_agent::jwks::{KeySource, KeyStore, KeyStoreConfig};
use pod_identity_agent::metrics::Metrics;
use testkit::issuer::{Issuer, TokenSpec};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY (of the allocator, the one unsafe block of this benchmark): every
// call is forwarded to the system allocator unchanged; the counters are
// side effects only.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// EKS Auth, answering at once with credentials of real sizes.
struct Model;

impl Upstream for Model {
    fn assume<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Issued, EksAuthError>> {
        Box::pin(async {
            let now = SystemClock::default().now_secs();
            Ok(Issued {
                credentials: Credentials {
                    access_key_id: "ASIAEXAMPLEEXAMPLE12".into(),
                    secret_access_key: Secret::new("s".repeat(40)),
                    session_token: Secret::new(format!("IQoJb3JpZ2luX2VjE{}", "x".repeat(960))),
                    account_id: "111122223333".into(),
                    expiration: DateTime::from_secs(now as i64 + 6 * 3600),
                },
                association_id: Some("a-abcdefghijklmnopq".into()),
                assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/r/eks-c-pod-x".into(),
                request_id: Some("00000000-0000-0000-0000-000000000000".into()),
            })
        })
    }

    fn cluster_name(&self) -> &str {
        "footprint"
    }
}

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

async fn measure(label: &str, keys: Option<Arc<KeyStore>>, tokens: &[String]) {
    let metrics = Arc::new(Metrics::new());
    let clock = pod_identity_agent::clock::system();
    let before = live();
    let admission = Admission::new(
        AdmissionConfig {
            audience: "pods.eks.amazonaws.com".into(),
            leeway_secs: 0,
            issuer: None,
            scope: CacheScope::Pod,
            memo_size: 20_000,
            memo_bytes: pod_identity_agent::app::memo_bytes(20_000),
            strict: false,
            node_name: None,
            require_node_claim: false,
        },
        keys,
        pod_identity_agent::flow::Flows::new(),
        metrics.clone(),
    );
    let cache = testkit::agent::cache_over(Arc::new(Model), clock.clone(), metrics);
    let empty = live() - before;
    // Every request from one address; verified tokens are their workload's.
    let source = pod_identity_agent::flow::Flows::new().source([127, 0, 0, 1].into());
    let serve = |token: &str| {
        let (admission, cache, clock) = (&admission, &cache, &clock);
        let token = token.to_owned();
        async move {
            let now = clock.now_ms();
            let admitted = admission
                .lookup_or_admit(token.as_bytes(), (now / 1000) as i64)
                .await
                .expect("a valid token");
            let token_ref = || admitted.token_ref();
            let got = cache
                .get(
                    &admitted.key,
                    admitted.hash,
                    token_ref,
                    admitted.flow.unwrap_or(source),
                    now,
                )
                .await
                .expect("credentials");
            admission.confirm(&admitted, (now / 1000) as i64);
            got
        }
    };
    let warm_start = live();
    let now = clock.now_ms();
    for t in tokens {
        // Remembered as it would be once EKS Auth answered (unverified) or
        // at once (verified).
        let admitted = admission
            .lookup_or_admit(t.as_bytes(), (now / 1000) as i64)
            .await
            .expect("admitted");
        admission.confirm(&admitted, (now / 1000) as i64);
    }
    let memo = (live() - warm_start) as f64 / tokens.len() as f64;
    for t in tokens {
        serve(t).await;
    }
    // Let moka apply its pending inserts, then count.
    let _ = cache.len();
    let per = (live() - warm_start) as f64 / tokens.len() as f64;

    // One hit: count only what admission and the cache allocate.
    let probe = tokens[tokens.len() / 2].clone();
    serve(&probe).await;
    let (n0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    );
    const HITS: u64 = 1000;
    for _ in 0..HITS {
        let now = clock.now_ms();
        let admitted = admission
            .lookup_or_admit(probe.as_bytes(), (now / 1000) as i64)
            .await
            .unwrap();
        let token_ref = || admitted.token_ref();
        std::hint::black_box(
            cache
                .get(
                    &admitted.key,
                    admitted.hash,
                    token_ref,
                    admitted.flow.unwrap_or(source),
                    now,
                )
                .await
                .unwrap(),
        );
    }
    let allocs = (ALLOCS.load(Ordering::Relaxed) - n0) as f64 / HITS as f64;
    let bytes = (ALLOC_BYTES.load(Ordering::Relaxed) - b0) as f64 / HITS as f64;
    println!(
        "| {label} | {} | {per:.0} B | {memo:.0} B | {:.0} B | {allocs:.2} | {bytes:.0} B |",
        tokens.len(),
        per - memo,
    );
    let _ = empty;
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number of identities"))
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let issuer = Issuer::generate("https://oidc.footprint.example/id/X").expect("issuer");
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            issuer
                .mint(&TokenSpec::pod("default", "app", &format!("pod-{i}")))
                .expect("minting")
        })
        .collect();
    let avg_token = tokens.iter().map(String::len).sum::<usize>() / n;
    println!(
        "Heap of the agent's own data (counting allocator), tokens of {avg_token} B, credential bodies of ~1.2 KB:\n"
    );
    println!(
        "| mode | identities | live heap per identity | of which admission (token, memo) | of which cache (body, entry, moka) | allocations per hit | bytes allocated per hit |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    runtime.block_on(measure("unverified", None, &tokens));
    let dir = std::env::temp_dir().join(format!("footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, issuer.jwks().to_string()).expect("jwks");
    let store = runtime.block_on(async {
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
            Arc::new(Metrics::new()),
        ));
        store.initial_load().await.expect("keys");
        store
    });
    runtime.block_on(measure("verified", Some(store), &tokens));
    let _ = std::fs::remove_dir_all(&dir);
}
