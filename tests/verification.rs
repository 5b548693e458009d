//! Local token verification against the project's issuer and its JWKS
//! endpoint (plain HTTP, HTTPS with a test CA, the in-cluster API server
//! form, a file): the decision table (verified, definite refusal,
//! inconclusive), strict mode, rotation and in-place key replacement,
//! outages, coalesced refetches, node binding, and random mutations of
//! valid tokens.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};
use testkit::emulator::{Emulator, RunningEmulator};
use testkit::issuer::{Issuer, NODE, TokenSpec, now_secs};

const PREFIX: &str = "Service account token failed verification: ";

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pia-verify-{}-{}",
        std::process::id(),
        testkit::issuer::uuid()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

async fn verified_agent(w: &World, extra: &[&str]) -> Agent {
    let url = w.url();
    let mut a = vec![
        "--jwks-source",
        url.as_str(),
        "--rate-limit",
        "0",
        "--per-client-rate-limit",
        "0",
    ];
    a.extend_from_slice(extra);
    w.agent(&a).await
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims(w: &World) -> Value {
    w.issuer.claims(&TokenSpec::pod("default", "app", "p"))
}

fn kid(w: &World) -> String {
    w.issuer.current_kid().unwrap()
}

fn outcome(agent: &Agent, outcome: &str) -> u64 {
    agent
        .metrics
        .token_verifications
        .with_label_values(&[outcome])
        .get()
}

async fn readyz(agent: &Agent) -> u16 {
    get(agent.probe, "/readyz", Some("localhost"), None)
        .await
        .status
}

/// Tokens that are forged or contradict themselves: refused on the node
/// with a 400, EKS Auth never called.
#[tokio::test]
async fn definite_forgeries_die_on_the_node() {
    let w = World::start().await;
    let agent = verified_agent(&w, &[]).await;
    let c = claims(&w);
    let k = kid(&w);
    let other = Issuer::generate(w.url()).unwrap();
    let hs256 = {
        let input = format!("{}.{}", b64(&json!({"alg":"HS256","kid":k})), b64(&c));
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            w.issuer.jwks().to_string().as_bytes(),
        );
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = c.clone();
        f(&mut c);
        w.issuer.sign_claims(&c).unwrap()
    };
    let cases: Vec<(&str, String, String)> = vec![
        (
            "alg none",
            format!("{}.{}.", b64(&json!({"alg":"none","kid":k})), b64(&c)),
            format!("{PREFIX}token algorithm \"none\" is not allowed"),
        ),
        (
            "HS256 with the public key",
            hs256,
            format!("{PREFIX}token algorithm \"HS256\" is not allowed"),
        ),
        (
            "another key's signature under a real kid",
            other
                .sign_with_header(&json!({"alg":"RS256","kid":k}), &c)
                .unwrap(),
            format!("{PREFIX}token signature is invalid"),
        ),
        (
            "an embedded jwk",
            other
                .sign_with_header(
                    &json!({"alg":"RS256","kid":k,"jwk":other.jwks()["keys"][0]}),
                    &c,
                )
                .unwrap(),
            format!("{PREFIX}token header carries its own key"),
        ),
        (
            "a jku",
            w.issuer
                .sign_with_header(
                    &json!({"alg":"RS256","kid":k,"jku":"https://evil.example/jwks"}),
                    &c,
                )
                .unwrap(),
            format!("{PREFIX}token header carries its own key"),
        ),
        (
            "alg differs from the key's",
            w.issuer
                .sign_with_header(&json!({"alg":"RS512","kid":k}), &c)
                .unwrap(),
            format!("{PREFIX}token algorithm does not match its key"),
        ),
        (
            "EC alg on an RSA key",
            w.issuer
                .sign_with_header(&json!({"alg":"ES256","kid":k}), &c)
                .unwrap(),
            format!("{PREFIX}token algorithm does not match its key"),
        ),
        (
            "sub not a service account",
            with(&|c| c["sub"] = json!("system:node:ip-10-0-0-1")),
            format!("{PREFIX}token subject is not a service account"),
        ),
        (
            "sub missing the name",
            with(&|c| c["sub"] = json!("system:serviceaccount:default")),
            format!("{PREFIX}token subject is not a service account"),
        ),
        (
            "sub with extra parts",
            with(&|c| c["sub"] = json!("system:serviceaccount:default:app:x")),
            format!("{PREFIX}token subject is not a service account"),
        ),
        (
            "namespace claim disagrees",
            with(&|c| c["kubernetes.io"]["namespace"] = json!("kube-system")),
            format!("{PREFIX}token kubernetes.io claims disagree with its subject"),
        ),
        (
            "serviceaccount claim disagrees",
            with(&|c| c["kubernetes.io"]["serviceaccount"]["name"] = json!("admin")),
            format!("{PREFIX}token kubernetes.io claims disagree with its subject"),
        ),
        (
            "kubernetes.io of the wrong shape",
            with(&|c| c["kubernetes.io"]["pod"] = json!("p")),
            format!("{PREFIX}token kubernetes.io claims disagree with its subject"),
        ),
        (
            "audience",
            with(&|c| c["aud"] = json!(["sts.amazonaws.com"])),
            "Service account token failed basic claim validations: token has invalid audience"
                .into(),
        ),
        (
            "expired",
            with(&|c| c["exp"] = json!(now_secs() - 60)),
            "Service account token failed basic claim validations: token is expired".into(),
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now_secs() + 120)),
            "Service account token failed basic claim validations: token is not valid yet".into(),
        ),
        (
            "payload swapped after signing",
            {
                let t = w.issuer.sign_claims(&c).unwrap();
                let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
                let mut evil = c.clone();
                evil["sub"] = json!("system:serviceaccount:kube-system:admin");
                parts[1] = b64(&evil);
                parts.join(".")
            },
            format!("{PREFIX}token signature is invalid"),
        ),
    ];
    for (what, token, message) in &cases {
        let r = agent.creds(token).await;
        assert_eq!(
            (r.status, r.body.trim_end()),
            (400, message.as_str()),
            "{what}"
        );
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(
                !r.body.contains(part),
                "{what}: the message quotes the token"
            );
        }
    }
    assert_eq!(w.emulator.calls(), 0, "no refused token reached EKS Auth");
    for reason in [
        "algorithm",
        "embedded_key",
        "signature",
        "key_mismatch",
        "subject",
        "kubernetes_claims",
        "audience",
        "expired",
        "not_yet_valid",
    ] {
        assert!(outcome(&agent, reason) > 0, "{reason}");
    }
}

/// What local keys cannot decide goes to EKS Auth, keyed by the exact
/// token, and is counted; EKS Auth's answer is the pod's.
#[tokio::test]
async fn inconclusive_tokens_are_forwarded_to_eks_auth() {
    let w = World::start().await;
    let path = tmp("jwks.json");
    std::fs::write(&path, w.issuer.jwks().to_string()).unwrap();
    let source = format!("file:{}", path.display());
    let issuer = w.url();
    let agent = w
        .agent(&[
            "--jwks-source",
            &source,
            "--token-issuer",
            &issuer,
            "--jwks-refetch-interval",
            "0s",
        ])
        .await;
    let c = claims(&w);
    let k = kid(&w);
    let refused_by_eks_auth = [
        (
            "no kid",
            w.issuer
                .sign_with_header(&json!({"alg":"RS256"}), &c)
                .unwrap(),
            "inconclusive_missing_kid",
        ),
        (
            "empty kid",
            w.issuer
                .sign_with_header(&json!({"alg":"RS256","kid":""}), &c)
                .unwrap(),
            "inconclusive_missing_kid",
        ),
        (
            "a kid nobody knows",
            w.issuer
                .sign_with_header(&json!({"alg":"RS256","kid":"nope"}), &c)
                .unwrap(),
            "inconclusive_unknown_kid",
        ),
    ];
    for (i, (what, token, counted)) in refused_by_eks_auth.iter().enumerate() {
        let r = agent.creds(token).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert!(
            r.body.contains("(InvalidTokenException)"),
            "{what}: EKS Auth's answer: {}",
            r.body
        );
        assert_eq!(w.emulator.calls(), i as u64 + 1, "{what}: forwarded");
        assert!(outcome(&agent, counted) > 0, "{what}: {counted}");
    }
    // A correctly signed token naming another issuer is not this cluster's:
    // refused here, whatever its key.
    let calls = w.emulator.calls();
    for (what, header) in [
        ("known kid", json!({"alg":"RS256","kid":k})),
        ("unknown kid", json!({"alg":"RS256","kid":"nope"})),
    ] {
        let mut c = c.clone();
        c["iss"] = json!("https://evil.example");
        let token = w.issuer.sign_with_header(&header, &c).unwrap();
        let r = agent.creds(&token).await;
        assert_eq!(
            (r.status, r.body.trim_end()),
            (400, format!("{PREFIX}token issuer is not trusted").as_str()),
            "{what}"
        );
    }
    assert_eq!(w.emulator.calls(), calls, "never forwarded");
    assert_eq!(outcome(&agent, "issuer"), 2);
    // A key the cluster already signs with, not yet in the agent's source:
    // EKS Auth accepts, and the pod is served.
    w.issuer.rotate().unwrap();
    let fresh = w.token("default", "app", "fresh");
    let r = agent.creds(&fresh).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let _ = k;
}

/// `--strict-verification`: inconclusive is refused, and the agent is not
/// ready while it has no keys.
#[tokio::test]
async fn strict_verification_refuses_what_it_cannot_decide() {
    let w = World::start().await;
    let agent = verified_agent(&w, &["--strict-verification"]).await;
    let c = claims(&w);
    for (token, message) in [
        (
            w.issuer
                .sign_with_header(&json!({"alg":"RS256"}), &c)
                .unwrap(),
            format!("{PREFIX}token has no key id"),
        ),
        (
            w.issuer
                .sign_with_header(&json!({"alg":"RS256","kid":"nope"}), &c)
                .unwrap(),
            format!("{PREFIX}token key id is unknown"),
        ),
        (
            {
                let mut c = c.clone();
                c["iss"] = json!("https://evil.example");
                w.issuer.sign_claims(&c).unwrap()
            },
            format!("{PREFIX}token issuer is not trusted"),
        ),
    ] {
        let r = agent.creds(&token).await;
        assert_eq!((r.status, r.body.trim_end()), (400, message.as_str()));
    }
    assert_eq!(w.emulator.calls(), 0);

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let url = w.url();
    let keyless = w
        .agent(&[
            "--jwks-source",
            &dead,
            "--token-issuer",
            &url,
            "--strict-verification",
        ])
        .await;
    assert_eq!(readyz(&keyless).await, 503, "not ready without keys");
    let r = keyless.creds(&w.token("default", "app", "p")).await;
    assert_eq!(
        (r.status, r.body.trim_end()),
        (400, format!("{PREFIX}no signing keys are loaded").as_str())
    );
}

#[tokio::test]
async fn es256_keys_work_and_a_verified_token_is_verified_once() {
    let w = World::start().await;
    w.issuer.rotate_ec().unwrap();
    let agent = verified_agent(&w, &[]).await;
    let t = w.token("default", "app", "p");
    assert!(t.starts_with(&URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256""#)[..10]));
    for _ in 0..5 {
        assert_eq!(agent.creds(&t).await.status, 200);
    }
    assert_eq!(outcome(&agent, "verified"), 1);
    assert_eq!(outcome(&agent, "cached"), 4);
}

#[tokio::test]
async fn keys_rotate_without_restart() {
    let w = World::start().await;
    let agent = verified_agent(&w, &["--jwks-refetch-interval", "0s"]).await;
    let old_kid = kid(&w);
    let old = w.token("default", "app", "old");
    assert_eq!(agent.creds(&old).await.status, 200);
    let new_kid = w.issuer.rotate().unwrap();
    assert_ne!(new_kid, old_kid);
    let new = w.token("default", "app", "new");
    assert_eq!(agent.creds(&new).await.status, 200);
    assert_eq!(
        outcome(&agent, "verified"),
        2,
        "an unknown kid triggered a refetch and was verified locally"
    );
    // Retiring the old key: the next refresh drops it; the token verified
    // with it is no longer served by identity. EKS Auth, which retired the
    // key too, refuses it.
    w.issuer.retire(&old_kid);
    agent.refresh_keys().await;
    let calls = w.emulator.calls();
    let r = agent.creds(&old).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("(InvalidTokenException)"), "{}", r.body);
    assert_eq!(w.emulator.calls(), calls + 1);
}

/// Issue 13 defect 1: the key behind a kid replaced in place (same kid,
/// other material). Everything verified with the old key is checked again,
/// and the old key's tokens are refused on the node.
#[tokio::test]
async fn a_key_replaced_under_its_kid_invalidates_what_it_verified() {
    let w = World::start().await;
    let path = tmp("jwks.json");
    std::fs::write(&path, w.issuer.jwks().to_string()).unwrap();
    let source = format!("file:{}", path.display());
    let issuer = w.url();
    let agent = w
        .agent(&["--jwks-source", &source, "--token-issuer", &issuer])
        .await;
    let k = kid(&w);
    let stolen = w.token("default", "app", "victim");
    assert_eq!(agent.creds(&stolen).await.status, 200);
    assert_eq!(agent.creds(&stolen).await.status, 200);
    assert_eq!(w.emulator.calls(), 1, "served from the cache");

    // The operator replaces the compromised key; the kid stays.
    let replacement = Issuer::generate(w.url()).unwrap();
    let mut jwks = replacement.jwks();
    jwks["keys"][0]["kid"] = json!(k);
    std::fs::write(&path, jwks.to_string()).unwrap();
    bump_mtime(&path);
    agent.refresh_keys().await;

    let r = agent.creds(&stolen).await;
    assert_eq!(
        (r.status, r.body.trim_end()),
        (400, format!("{PREFIX}token signature is invalid").as_str()),
        "the remembered token is verified again"
    );
    assert_eq!(w.emulator.calls(), 1, "and refused on the node");
    let fresh = w
        .issuer
        .mint(&TokenSpec::pod("default", "app", "next"))
        .unwrap();
    assert_eq!(agent.creds(&fresh).await.status, 400);
}

/// Issue 13 defect 2: a token first seen with no keys loaded is admitted
/// unverified, and checked locally once keys load.
#[tokio::test]
async fn an_unverified_admission_is_checked_once_keys_load() {
    let w = World::start().await;
    let path = tmp("jwks.json");
    let source = format!("file:{}", path.display());
    let issuer = w.url();
    let agent = w
        .agent(&["--jwks-source", &source, "--token-issuer", &issuer])
        .await;
    let t = w.token("default", "app", "p");
    assert_eq!(agent.creds(&t).await.status, 200);
    assert_eq!(outcome(&agent, "inconclusive_no_keys"), 1);
    assert_eq!(w.emulator.calls(), 1);

    std::fs::write(&path, w.issuer.jwks().to_string()).unwrap();
    agent.refresh_keys().await;
    assert_eq!(agent.creds(&t).await.status, 200);
    assert_eq!(outcome(&agent, "verified"), 1, "checked locally now");
    // Verified, it is keyed by identity: the same pod's rotated token is a
    // cache hit.
    let rotated = w.spec_token(&TokenSpec {
        pod_uid: pod_uid(&t),
        ..TokenSpec::pod("default", "app", "p")
    });
    assert_eq!(agent.creds(&rotated).await.status, 200);
    assert_eq!(
        w.emulator.calls(),
        2,
        "one call for the identity key, none for the rotated token"
    );
}

fn pod_uid(token: &str) -> String {
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    claims["kubernetes.io"]["pod"]["uid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A rewrite within the file system's timestamp granularity must still
/// count as a change.
#[allow(clippy::disallowed_methods, reason = "file times are wall-clock times")]
fn bump_mtime(path: &std::path::Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_storm_makes_one_fetch() {
    let w = World::start().await;
    let agent = verified_agent(&w, &["--jwks-refetch-interval", "30s"]).await;
    let fetches_at_start = w.emulator.stats().key_requests;
    w.issuer.rotate().unwrap();
    let tokens: Vec<String> = (0..200)
        .map(|i| w.token("default", "app", &format!("p{i}")))
        .collect();
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let addr = agent.addr;
            tokio::spawn(async move {
                get(addr, "/v1/credentials", Some("169.254.170.23"), Some(&t))
                    .await
                    .status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Discovery + JWKS: one fetch is two documents.
    assert_eq!(w.emulator.stats().key_requests - fetches_at_start, 2);
    assert_eq!(outcome(&agent, "verified"), 200);

    let before = w.emulator.stats().key_requests;
    let c = claims(&w);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let t = w
                .issuer
                .sign_with_header(&json!({"alg":"RS256","kid":format!("bogus-{i}")}), &c)
                .unwrap();
            let addr = agent.addr;
            tokio::spawn(async move {
                get(addr, "/v1/credentials", Some("169.254.170.23"), Some(&t))
                    .await
                    .status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 400, "EKS Auth refuses an unknown kid");
    }
    assert!(
        w.emulator.stats().key_requests - before <= 2,
        "bogus kids refetch at most once per interval"
    );
}

/// The issuer's documents over HTTPS, served by a second emulator sharing
/// the issuer.
async fn https_keys(w: &World) -> (String, String, Arc<Emulator>, RunningEmulator) {
    let test_ca = testkit::tls::TestCa::new();
    let config = test_ca.server_config(&["127.0.0.1"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let emu = Arc::new(Emulator::new(w.issuer.clone()));
    emu.set_base_url(&url);
    let task = RunningEmulator::start_tls(emu.clone(), listener, config);
    let ca = tmp("ca.pem");
    test_ca.write_pem(&ca).unwrap();
    (url, ca.display().to_string(), emu, task)
}

#[tokio::test]
async fn https_issuer_with_a_test_ca() {
    let w = World::start().await;
    let (url, ca, emu, task) = https_keys(&w).await;
    let issuer = w.url();
    let agent = w
        .agent(&[
            "--jwks-source",
            &url,
            "--jwks-ca-file",
            &ca,
            "--token-issuer",
            &issuer,
        ])
        .await;
    assert_eq!(
        emu.stats().key_requests,
        2,
        "discovery and JWKS fetched over TLS"
    );
    assert_eq!(
        agent.creds(&w.token("default", "app", "p")).await.status,
        200
    );
    assert_eq!(outcome(&agent, "verified"), 1);
    let forged = Issuer::generate(w.url())
        .unwrap()
        .sign_with_header(&json!({"alg":"RS256","kid":kid(&w)}), &claims(&w))
        .unwrap();
    assert_eq!(agent.creds(&forged).await.status, 400);

    // Without the CA the TLS handshake fails and nothing verifies: strict,
    // the agent is not ready.
    let untrusting = w
        .agent(&[
            "--jwks-source",
            &url,
            "--token-issuer",
            &issuer,
            "--strict-verification",
        ])
        .await;
    assert_eq!(readyz(&untrusting).await, 503);
    assert_eq!(emu.stats().key_requests, 2);
    task.stop().await;
}

#[tokio::test]
async fn apiserver_source_uses_the_service_account() {
    let w = World::start().await;
    let (url, ca, emu, task) = https_keys(&w).await;
    let sa_dir = tmp("sa");
    std::fs::create_dir_all(&sa_dir).unwrap();
    std::fs::copy(&ca, sa_dir.join("ca.crt")).unwrap();
    std::fs::write(sa_dir.join("token"), "sa-token-1\n").unwrap();
    emu.require_bearer(Some("sa-token-1".into()));
    let issuer = w.url();
    let sa = sa_dir.display().to_string();
    let apiserver_agent = |extra: &'static [&'static str]| {
        let mut args = vec![
            "--jwks-source",
            "apiserver",
            "--kube-api-url",
            &url,
            "--service-account-dir",
            &sa,
            "--token-issuer",
            &issuer,
            "--strict-verification",
        ];
        args.extend_from_slice(extra);
        w.agent_with(w.agent_args(&args), None)
    };
    let agent = apiserver_agent(&[]).await;
    assert_eq!(readyz(&agent).await, 200);
    assert_eq!(
        agent.creds(&w.token("default", "app", "p")).await.status,
        200
    );
    assert_eq!(outcome(&agent, "verified"), 1);

    emu.require_bearer(Some("rotated-token".into()));
    let stale = apiserver_agent(&[]).await;
    assert_eq!(readyz(&stale).await, 503, "401 from the API server");
    std::fs::write(sa_dir.join("token"), "rotated-token").unwrap();
    stale.refresh_keys().await;
    assert_eq!(readyz(&stale).await, 200, "the token file is re-read");
    task.stop().await;
}

#[tokio::test]
async fn file_source_is_re_read_when_it_changes() {
    let w = World::start().await;
    let path = tmp("jwks.json");
    std::fs::write(&path, w.issuer.jwks().to_string()).unwrap();
    let source = format!("file:{}", path.display());
    let issuer = w.url();
    let agent = w
        .agent(&[
            "--jwks-source",
            &source,
            "--token-issuer",
            &issuer,
            "--jwks-refetch-interval",
            "1h",
        ])
        .await;
    assert_eq!(
        agent.creds(&w.token("default", "app", "a")).await.status,
        200
    );
    w.issuer.rotate().unwrap();
    assert_eq!(
        agent.creds(&w.token("default", "app", "b")).await.status,
        200,
        "not in the file yet: EKS Auth decides"
    );
    assert_eq!(outcome(&agent, "inconclusive_unknown_kid"), 1);
    agent.refresh_keys().await;
    assert_eq!(
        outcome(&agent, "verified"),
        1,
        "unchanged file, not re-read"
    );
    std::fs::write(&path, w.issuer.jwks().to_string()).unwrap();
    bump_mtime(&path);
    agent.refresh_keys().await;
    assert_eq!(
        agent.creds(&w.token("default", "app", "c")).await.status,
        200
    );
    assert_eq!(
        outcome(&agent, "verified"),
        2,
        "the rewritten file was read"
    );
}

#[tokio::test]
async fn source_outage_with_and_without_last_known_good_keys() {
    let w = World::start().await;
    let cache_path = tmp("lkg/jwks.json");
    let cache = cache_path.display().to_string();
    let url = w.url();
    {
        let agent = w
            .agent(&["--jwks-source", &url, "--jwks-cache-path", &cache])
            .await;
        assert_eq!(
            agent.creds(&w.token("default", "app", "a")).await.status,
            200
        );
    }
    assert!(cache_path.exists(), "last-known-good keys persisted");

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let with_copy = w
        .agent(&[
            "--jwks-source",
            &dead,
            "--jwks-cache-path",
            &cache,
            "--token-issuer",
            &url,
            "--strict-verification",
        ])
        .await;
    assert_eq!(readyz(&with_copy).await, 200);
    assert_eq!(
        with_copy
            .creds(&w.token("default", "app", "b"))
            .await
            .status,
        200
    );
    let forged = Issuer::generate(url.clone())
        .unwrap()
        .sign_with_header(&json!({"alg":"RS256","kid":kid(&w)}), &claims(&w))
        .unwrap();
    let calls = w.emulator.calls();
    assert_eq!(
        with_copy.creds(&forged).await.status,
        400,
        "still verifying with the persisted keys"
    );
    assert_eq!(w.emulator.calls(), calls);

    let without = w
        .agent(&["--jwks-source", &dead, "--token-issuer", &url])
        .await;
    assert_eq!(readyz(&without).await, 200, "ready: EKS Auth can decide");
    assert_eq!(
        without.creds(&w.token("default", "app", "c")).await.status,
        200,
        "admitted unverified: EKS Auth decides"
    );
    let r = without.creds(&forged).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("InvalidTokenException"),
        "EKS Auth refused the forgery: {}",
        r.body
    );
    assert_eq!(outcome(&without, "inconclusive_no_keys"), 2);
}

/// `--node-name`: a token of a pod on another node is refused on the node,
/// verified or not; tokens without the claim pass unless
/// `--require-node-claim`.
#[tokio::test]
async fn tokens_are_bound_to_their_node() {
    let w = World::start().await;
    let url = w.url();
    let other_node = w.spec_token(&TokenSpec {
        node: Some("ip-10-9-9-9.ec2.internal".into()),
        ..TokenSpec::pod("default", "app", "stolen")
    });
    let no_claim = w.spec_token(&TokenSpec {
        node: None,
        ..TokenSpec::pod("default", "app", "old-cluster")
    });
    let own = w.token("default", "app", "own");
    for extra in [vec![], vec!["--jwks-source", url.as_str()]] {
        let mut args = vec!["--node-name", NODE];
        args.extend_from_slice(&extra);
        let agent = w.agent(&args).await;
        let calls = w.emulator.calls();
        let r = agent.creds(&other_node).await;
        assert_eq!(
            (r.status, r.body.trim_end()),
            (
                400,
                format!("{PREFIX}token is bound to another node").as_str()
            ),
            "{extra:?}"
        );
        assert_eq!(w.emulator.calls(), calls, "refused on the node");
        assert_eq!(outcome(&agent, "other_node"), 1);
        assert_eq!(agent.creds(&own).await.status, 200);
        assert_eq!(agent.creds(&no_claim).await.status, 200);

        args.push("--require-node-claim");
        let strict = w.agent(&args).await;
        let r = strict.creds(&no_claim).await;
        assert_eq!(
            (r.status, r.body.trim_end()),
            (400, format!("{PREFIX}token has no node claim").as_str())
        );
        assert_eq!(strict.creds(&own).await.status, 200);
    }
}

/// Random byte-level mutations of valid tokens: never verified, and never
/// admitted at all when inconclusive tokens are refused.
#[tokio::test]
async fn mutated_tokens_are_never_accepted() {
    use pod_identity_agent::admission::{Admission, AdmissionConfig};
    use pod_identity_agent::cli::CacheScope;
    use pod_identity_agent::jwks::{KeySource, KeyStore, KeyStoreConfig};
    use pod_identity_agent::metrics::Metrics;

    let w = World::start().await;
    w.issuer.rotate_ec().unwrap();
    let mut valid = vec![w.token("default", "app", "p")];
    w.issuer.rotate().unwrap();
    valid.push(w.token("default", "app", "p"));
    let path = tmp("jwks.json");
    std::fs::write(&path, w.issuer.jwks().to_string()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(KeyStore::new(
        KeyStoreConfig {
            source: KeySource::File(path),
            client: pod_identity_agent::https::HttpsClient::new(
                &pod_identity_agent::https::Trust::system(),
                pod_identity_agent::https::ProxyConfig::disabled(),
            ),
            cache_path: None,
            refetch_interval: Duration::from_secs(3600),
        },
        metrics.clone(),
    ));
    store.initial_load().await.unwrap();
    let admission = |strict| {
        Admission::new(
            AdmissionConfig {
                audience: "pods.eks.amazonaws.com".into(),
                leeway_secs: 0,
                issuer: Some(w.url()),
                scope: CacheScope::Pod,
                memo_size: 100_000,
                memo_bytes: 1 << 28,
                strict,
                node_name: None,
                require_node_claim: false,
            },
            Some(store.clone()),
            pod_identity_agent::flow::Flows::new(),
            metrics.clone(),
        )
    };
    let (strict, lenient) = (admission(true), admission(false));
    for t in &valid {
        assert!(
            strict
                .admit(t.as_bytes(), now_secs())
                .await
                .unwrap()
                .verified
        );
    }
    // Fixed seeds: a failure names its seed and round, and reruns exactly.
    const SEEDS: [u64; 4] = [
        0x9E37_79B9_7F4A_7C15,
        0xD1B5_4A32_D192_ED03,
        0x8CB9_2BA7_2F3D_8DD7,
        0x2545_F491_4F6C_DD1D,
    ];
    let mut tried = 0;
    for seed in SEEDS {
        let mut rng = Mutator::new(seed);
        for round in 0..1000 {
            let base = valid[round % valid.len()].as_bytes();
            let m = rng.mutate(base);
            if m == base {
                continue;
            }
            tried += 1;
            let shown = || String::from_utf8_lossy(&m).into_owned();
            if let Ok(admitted) = strict.admit(&m, now_secs()).await {
                panic!(
                    "seed {seed:#x} round {round}: mutation admitted (verified={}): {}",
                    admitted.verified,
                    shown()
                );
            }
            if let Ok(admitted) = lenient.admit(&m, now_secs()).await {
                assert!(
                    !admitted.verified,
                    "seed {seed:#x} round {round}: mutation verified: {}",
                    shown()
                );
            }
        }
    }
    assert!(tried > 3500, "only {tried} distinct mutations");
}

/// Deterministic byte-level token mutations (xorshift64). Never panics:
/// every index is taken modulo a non-zero length.
struct Mutator(u64);

impl Mutator {
    const ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";

    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        Self::ALPHABET[self.below(Self::ALPHABET.len())]
    }

    fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
        let mut m = base.to_vec();
        for _ in 0..1 + self.below(3) {
            match (self.below(4), m.is_empty()) {
                (_, true) | (2, false) => {
                    let i = self.below(m.len() + 1);
                    let b = self.byte();
                    m.insert(i, b);
                }
                (0, false) => {
                    let i = self.below(m.len());
                    m[i] = self.byte();
                }
                (1, false) => {
                    let i = self.below(m.len());
                    m.remove(i);
                }
                (_, false) => {
                    let keep = self.below(m.len()).max(1);
                    m.truncate(keep);
                }
            }
        }
        m
    }
}

#[test]
fn mutator_survives_tiny_inputs() {
    let mut rng = Mutator::new(1);
    for len in 0..4 {
        for _ in 0..10_000 {
            rng.mutate(&b"abc"[..len]);
        }
    }
}

/// A key source in the API server's form at `http://127.0.0.1:<port>`:
/// discovery answered at once, `/openid/v1/jwks` with `doc`, each JWKS
/// answer waiting while a hold is set. `requests` counts JWKS requests.
struct SlowKeys {
    url: String,
    doc: std::sync::Mutex<String>,
    hold: std::sync::Mutex<Hold>,
    release: tokio::sync::Notify,
    requests: tokio::sync::watch::Sender<u64>,
}

#[derive(Clone, Copy)]
enum Hold {
    None,
    /// Until `release` is notified.
    UntilReleased,
    /// For this long (tokio's clock: paused in tests).
    For(Duration),
}

impl SlowKeys {
    async fn start(doc: String) -> Arc<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let keys = Arc::new(SlowKeys {
            url: format!("http://{}", listener.local_addr().unwrap()),
            doc: std::sync::Mutex::new(doc),
            hold: std::sync::Mutex::new(Hold::None),
            release: tokio::sync::Notify::new(),
            requests: tokio::sync::watch::channel(0).0,
        });
        let server = Arc::downgrade(&keys);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let Some(keys) = server.upgrade() else { return };
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let doc = if head.starts_with(b"GET /.well-known/openid-configuration ") {
                        json!({"issuer": "https://issuer.example", "jwks_uri": "unused"})
                            .to_string()
                    } else {
                        let hold = *keys.hold.lock().unwrap();
                        keys.requests.send_modify(|n| *n += 1);
                        match hold {
                            Hold::None => {}
                            Hold::UntilReleased => keys.release.notified().await,
                            Hold::For(d) => tokio::time::sleep(d).await,
                        }
                        keys.doc.lock().unwrap().clone()
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                        doc.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        keys
    }

    fn requests(&self) -> u64 {
        *self.requests.borrow()
    }

    fn store(&self, refetch_interval: Duration) -> Arc<pod_identity_agent::jwks::KeyStore> {
        use pod_identity_agent::jwks::{KeySource, KeyStore, KeyStoreConfig};
        let token = tmp("token");
        std::fs::write(&token, "sa-token").unwrap();
        Arc::new(KeyStore::new(
            KeyStoreConfig {
                source: KeySource::ApiServer {
                    base_url: self.url.clone(),
                    sa_dir: token.parent().unwrap().to_owned(),
                },
                client: pod_identity_agent::https::HttpsClient::new(
                    &pod_identity_agent::https::Trust::system(),
                    pod_identity_agent::https::ProxyConfig::disabled(),
                ),
                cache_path: None,
                refetch_interval,
            },
            Arc::new(pod_identity_agent::metrics::Metrics::new()),
        ))
    }
}

/// A refetch for an unknown kid runs in its own task: a client that sends
/// the kid and hangs up cancelled it (and used up the refetch interval), so
/// a newly published key was refused until the periodic refresh (issue #25).
#[tokio::test]
async fn a_client_hanging_up_cannot_cancel_a_key_refetch() {
    use pod_identity_agent::jwks::KeyLookup;

    let issuer = Issuer::generate("https://issuer.example").unwrap();
    let keys = SlowKeys::start(issuer.jwks().to_string()).await;
    let store = keys.store(Duration::from_secs(3600));
    store.initial_load().await.unwrap();
    let new_kid = issuer.rotate().unwrap();
    *keys.doc.lock().unwrap() = issuer.jwks().to_string();
    *keys.hold.lock().unwrap() = Hold::UntilReleased;

    let hung_up = {
        let (store, kid) = (store.clone(), new_kid.clone());
        tokio::spawn(async move { store.lookup(&kid).await })
    };
    let mut requests = keys.requests.subscribe();
    requests.wait_for(|n| *n == 2).await.unwrap();
    hung_up.abort();
    assert!(hung_up.await.is_err_and(|e| e.is_cancelled()));
    keys.release.notify_one();

    assert!(
        matches!(store.lookup(&new_kid).await, KeyLookup::Found(_)),
        "the refetch the client started finished without it"
    );
    assert_eq!(keys.requests(), 2, "one refetch");
}

/// The refetch interval starts when a refetch finishes: a fetch slower than
/// the interval does not leave the next unknown kid free to fetch again.
#[tokio::test(start_paused = true)]
async fn the_refetch_interval_starts_when_the_fetch_finishes() {
    use pod_identity_agent::jwks::KeyLookup;

    let issuer = Issuer::generate("https://issuer.example").unwrap();
    let keys = SlowKeys::start(issuer.jwks().to_string()).await;
    let store = keys.store(Duration::from_secs(2));
    store.initial_load().await.unwrap();
    let new_kid = issuer.rotate().unwrap();
    *keys.doc.lock().unwrap() = issuer.jwks().to_string();
    *keys.hold.lock().unwrap() = Hold::For(Duration::from_secs(3));

    let started = tokio::time::Instant::now();
    assert!(matches!(store.lookup(&new_kid).await, KeyLookup::Found(_)));
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the fetch was slow"
    );
    assert!(matches!(store.lookup("another").await, KeyLookup::Unknown));
    assert_eq!(keys.requests(), 2, "no refetch within 2 s of the last one");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(matches!(store.lookup("another").await, KeyLookup::Unknown));
    assert_eq!(keys.requests(), 3, "the interval has passed");
}

/// A pod's view: the fake API server's `KUBERNETES_SERVICE_*` and a
/// ServiceAccount directory holding its bearer token and CA.
struct InPod {
    api: testkit::apiserver::FakeApiServer,
    sa_dir: PathBuf,
}

impl InPod {
    async fn start(w: &World) -> Self {
        let api =
            testkit::apiserver::FakeApiServer::start(w.issuer.clone(), "agent-sa-token").await;
        let sa_dir = tmp("serviceaccount");
        api.write_service_account(&sa_dir).unwrap();
        Self { api, sa_dir }
    }

    /// An agent started with default flags in this pod (only the
    /// ServiceAccount directory points at the test's, and `extra`).
    async fn agent(&self, w: &World, extra: &[&str]) -> Agent {
        let dir = self.sa_dir.display().to_string();
        let mut args = vec!["--service-account-dir", dir.as_str()];
        args.extend_from_slice(extra);
        let env: Vec<(&str, String)> = self.api.service_env().into();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.agent_with_env(
            w.agent_args(&args),
            pod_identity_agent::env::Env::from_pairs(&env),
        )
        .await
    }
}

/// Default flags in a pod: keys and issuer come from the API server
/// (`--jwks-source auto`); a forged token and a token of another issuer are
/// refused without an EKS Auth call.
#[tokio::test]
async fn in_a_pod_default_flags_verify_with_the_api_servers_keys() {
    let w = World::start().await;
    let pod = InPod::start(&w).await;
    let agent = pod.agent(&w, &[]).await;
    assert_eq!(pod.api.requests(), 2, "discovery and JWKS at start");
    let r = agent.creds(&w.token("default", "app", "p")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(outcome(&agent, "verified"), 1);
    assert_eq!(w.emulator.calls(), 1);

    let attacker = Issuer::generate(w.url()).unwrap();
    let forged = attacker
        .sign_with_header(&json!({"alg":"RS256","kid":kid(&w)}), &claims(&w))
        .unwrap();
    let r = agent.creds(&forged).await;
    assert_eq!(
        (r.status, r.body.trim_end()),
        (400, format!("{PREFIX}token signature is invalid").as_str())
    );
    let mut other = claims(&w);
    other["iss"] = json!("https://oidc.eks.us-west-2.amazonaws.com/id/ANOTHERCLUSTER");
    let r = agent.creds(&w.issuer.sign_claims(&other).unwrap()).await;
    assert_eq!(
        (r.status, r.body.trim_end()),
        (400, format!("{PREFIX}token issuer is not trusted").as_str())
    );
    assert_eq!(w.emulator.calls(), 1, "refused on the node");
    assert_eq!(readyz(&agent).await, 200);

    // Outside a pod (no ServiceAccount token), the same flags verify nothing.
    let outside = w.agent(&[]).await;
    assert_eq!(
        outside.creds(&w.token("default", "app", "q")).await.status,
        200
    );
    assert!(outside.keys.is_none());
}

/// The API server refusing the keys (RBAC missing: 403) or unreachable:
/// tokens are forwarded to EKS Auth as inconclusive, the agent stays ready,
/// and keys that become readable later are picked up without a restart.
#[tokio::test]
async fn when_the_api_server_refuses_the_keys_tokens_are_forwarded() {
    let w = World::start().await;
    let pod = InPod::start(&w).await;
    pod.api.refuse(Some(403));
    let agent = pod.agent(&w, &["--jwks-refetch-interval", "0s"]).await;
    assert_eq!(
        readyz(&agent).await,
        200,
        "readiness does not wait for keys"
    );
    let r = agent.creds(&w.token("default", "app", "p")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(outcome(&agent, "inconclusive_no_keys"), 1);
    assert_eq!(w.emulator.calls(), 1, "forwarded");

    pod.api.refuse(None);
    let r = agent.creds(&w.token("default", "app", "q")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(outcome(&agent, "verified"), 1, "keys picked up");

    // Strict mode refuses instead, and is not ready without keys.
    pod.api.refuse(Some(403));
    let strict = pod.agent(&w, &["--strict-verification"]).await;
    assert_eq!(readyz(&strict).await, 503);
    let r = strict.creds(&w.token("default", "app", "s")).await;
    assert_eq!(
        (r.status, r.body.trim_end()),
        (400, format!("{PREFIX}no signing keys are loaded").as_str())
    );
}

/// Nothing is kept for a token that neither the keys nor EKS Auth
/// confirmed: forged and unverified tokens leave the memo empty; a verified
/// token is remembered at once, an unverified one once EKS Auth answered.
#[tokio::test]
async fn only_confirmed_tokens_are_remembered() {
    use pod_identity_agent::admission::{Admission, AdmissionConfig};
    use pod_identity_agent::cli::CacheScope;
    use pod_identity_agent::https::{HttpsClient, ProxyConfig, Trust};
    use pod_identity_agent::jwks::{KeySource, KeyStore, KeyStoreConfig};
    use pod_identity_agent::metrics::Metrics;

    let w = World::start().await;
    let path = tmp("jwks.json");
    std::fs::write(&path, w.issuer.jwks().to_string()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(KeyStore::new(
        KeyStoreConfig {
            source: KeySource::File(path),
            client: HttpsClient::new(&Trust::system(), ProxyConfig::disabled()),
            cache_path: None,
            refetch_interval: Duration::from_secs(3600),
        },
        metrics.clone(),
    ));
    store.initial_load().await.unwrap();
    let admission = |keys: Option<Arc<KeyStore>>| {
        Admission::new(
            AdmissionConfig {
                audience: "pods.eks.amazonaws.com".into(),
                leeway_secs: 0,
                issuer: Some(w.url()),
                scope: CacheScope::Pod,
                memo_size: 1000,
                memo_bytes: 1 << 20,
                strict: false,
                node_name: None,
                require_node_claim: false,
            },
            keys,
            pod_identity_agent::flow::Flows::new(),
            metrics.clone(),
        )
    };

    let verifying = admission(Some(store));
    let attacker = Issuer::generate(w.url()).unwrap();
    let mut c = claims(&w);
    for i in 0..50 {
        c["jti"] = json!(format!("forged-{i}"));
        c["padding"] = json!("p".repeat(9000));
        let forged = attacker
            .sign_with_header(&json!({"alg":"RS256","kid":kid(&w)}), &c)
            .unwrap();
        assert!(
            verifying
                .admit(forged.as_bytes(), now_secs())
                .await
                .is_err()
        );
    }
    assert_eq!(verifying.remembered_size(), (0, 0), "forged: nothing kept");
    let genuine = w.token("default", "app", "p");
    assert!(
        verifying
            .admit(genuine.as_bytes(), now_secs())
            .await
            .unwrap()
            .verified
    );
    assert_eq!(verifying.remembered_size().0, 1, "verified: remembered");

    let keyless = admission(None);
    let mut admitted = Vec::new();
    for i in 0..50 {
        let t = w.token("default", "app", &format!("unverified-{i}"));
        admitted.push(keyless.admit(t.as_bytes(), now_secs()).await.unwrap());
    }
    assert_eq!(
        keyless.remembered_size(),
        (0, 0),
        "unconfirmed: nothing kept"
    );
    keyless.confirm(&admitted[0], now_secs());
    let (n, bytes) = keyless.remembered_size();
    assert_eq!(n, 1);
    assert!(bytes > admitted[0].raw.len());
    assert!(
        keyless
            .remembered(admitted[0].raw.as_bytes(), now_secs())
            .unwrap()
            .is_some()
    );
}
