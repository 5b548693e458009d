//! EKS Auth protection: per-identity backoff after recoverable failures
//! (exact call counts under a manual clock), the node-wide call gate (its
//! cap, its bounded queue), and the slow-down when EKS Auth throttles.

mod common;

use std::time::Duration;

use common::*;
use testkit::emulator::Faults;
use testkit::issuer::TokenSpec;

const OPEN: [&str; 6] = [
    "--rate-limit",
    "0",
    "--per-client-rate-limit",
    "0",
    "--eks-auth-max-attempts",
    "1",
];

fn fail_with(w: &World, code: &str) {
    w.emulator.set_faults(Faults {
        force_error: Some(code.into()),
        ..Default::default()
    });
}

/// A pod with no cached credential while EKS Auth fails: one call, then its
/// answer replayed until the window ends; windows grow (≥ ½ and ≤ 1 of 1 s,
/// 2 s, 4 s) and a success resets them.
#[tokio::test]
async fn a_failing_identity_backs_off_with_exact_call_counts() {
    let (w, clock) = World::with_manual_clock().await;
    let agent = w.agent(&OPEN).await;
    let t = w.token("default", "app", "p");
    let other = w.token("default", "app", "other");
    fail_with(&w, "ServiceUnavailableException");

    let first = agent.creds(&t).await;
    assert_eq!(first.status, 503);
    assert_eq!(w.emulator.calls(), 1);
    for _ in 0..5 {
        let again = agent.creds(&t).await;
        assert_eq!(
            (again.status, again.body.as_str()),
            (503, first.body.as_str()),
            "the last answer, replayed"
        );
    }
    assert_eq!(w.emulator.calls(), 1, "inside the first window");
    assert_eq!(agent.creds(&other).await.status, 503);
    assert_eq!(w.emulator.calls(), 2, "another identity is not held back");

    // Window 1 is 0.5–1 s: at 0.45 s still replayed, at 1 s over.
    clock.advance(Duration::from_millis(450));
    agent.creds(&t).await;
    assert_eq!(w.emulator.calls(), 2);
    clock.advance(Duration::from_millis(550));
    agent.creds(&t).await;
    assert_eq!(w.emulator.calls(), 3, "second call after the first window");
    // Window 2 is 1–2 s.
    clock.advance(Duration::from_millis(950));
    agent.creds(&t).await;
    assert_eq!(w.emulator.calls(), 3);
    clock.advance(Duration::from_millis(1050));
    agent.creds(&t).await;
    assert_eq!(w.emulator.calls(), 4);
    // Window 3 is 2–4 s; EKS Auth recovers meanwhile.
    w.emulator.set_faults(Faults::default());
    clock.advance(Duration::from_millis(1900));
    assert_eq!(agent.creds(&t).await.status, 503, "still backing off");
    assert_eq!(w.emulator.calls(), 4);
    clock.advance(Duration::from_millis(2100));
    assert_eq!(agent.creds(&t).await.status, 200);
    assert_eq!(w.emulator.calls(), 5);
    assert_eq!(
        agent
            .metrics
            .calls_avoided
            .with_label_values(&["backoff"])
            .get(),
        5 + 1 + 1 + 1
    );

    // A success reset the count: the next failure opens a 0.5–1 s window.
    let t2 = w.token("default", "app", "p2");
    fail_with(&w, "ThrottlingException");
    assert_eq!(agent.creds(&t2).await.status, 429);
    clock.advance(Duration::from_millis(1000));
    agent.creds(&t2).await;
    assert_eq!(w.emulator.calls(), 7, "a fresh identity starts at 1 s");
}

/// Verified tokens are keyed by identity: a rotated token of a pod that is
/// backing off shares the backoff.
#[tokio::test]
async fn a_rotated_token_shares_its_pods_backoff() {
    let (w, _clock) = World::with_manual_clock().await;
    let url = w.url();
    let mut args = OPEN.to_vec();
    args.extend(["--jwks-source", url.as_str()]);
    let agent = w.agent(&args).await;
    let spec = TokenSpec::pod("default", "app", "p");
    fail_with(&w, "InternalServerException");
    assert_eq!(agent.creds(&w.spec_token(&spec)).await.status, 500);
    assert_eq!(agent.creds(&w.spec_token(&spec)).await.status, 500);
    assert_eq!(w.emulator.calls(), 1, "the second token is the same pod");
    let another_pod = w.token("default", "app", "p");
    assert_eq!(agent.creds(&another_pod).await.status, 500);
    assert_eq!(w.emulator.calls(), 2, "another pod (uid) is not");
}

/// Irrecoverable answers keep their own (negative) cache; a pod whose
/// credential is still valid keeps being served while EKS Auth fails.
#[tokio::test]
async fn backoff_applies_only_without_a_credential_to_serve() {
    let (w, clock) = World::with_manual_clock().await;
    let agent = w.agent(&OPEN).await;
    let t = w.token("default", "app", "p");
    let cached = agent.creds(&t).await;
    assert_eq!(cached.status, 200);
    clock.advance(Duration::from_secs(3 * 3600 + 60));
    fail_with(&w, "ServiceUnavailableException");
    let r = agent.creds(&t).await;
    assert_eq!((r.status, r.body.as_str()), (200, cached.body.as_str()));
    assert_eq!(
        agent
            .metrics
            .calls_avoided
            .with_label_values(&["backoff"])
            .get(),
        0
    );
}

/// The node-wide gate: a burst, then a queue, then 503 at once.
#[tokio::test]
async fn the_gate_caps_calls_and_bounds_its_queue() {
    let w = World::start().await;
    let mut args = OPEN.to_vec();
    args.extend([
        "--eks-auth-rate-limit",
        "0.01",
        "--eks-auth-rate-burst",
        "2",
        "--eks-auth-queue-size",
        "3",
    ]);
    let agent = w.agent(&args).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..7 {
        let t = w.token("default", "app", &format!("p{i}"));
        let (addr, tx) = (agent.addr, tx.clone());
        tokio::spawn(async move {
            let r = get(addr, "/v1/credentials", Some("169.254.170.23"), Some(&t)).await;
            let _ = tx.send(r);
        });
    }
    // Two through at once, three queued (for 100 s each at 0.01/s), two
    // refused: the four quick answers.
    let mut quick = Vec::new();
    for _ in 0..4 {
        quick.push(rx.recv().await.unwrap());
    }
    let mut statuses: Vec<u16> = quick.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503, 503]);
    let refused = quick.iter().find(|r| r.status == 503).unwrap();
    assert_eq!(
        refused.body,
        "too many credential requests are waiting for EKS Auth (3 queued); retry shortly\n"
    );
    assert_eq!(w.emulator.calls(), 2);
    assert_eq!(agent.metrics.eksauth_queue_depth.get(), 3);
    assert_eq!(agent.metrics.queue_rejected(), 2);
}

/// One throttling answer lowers the allowed rate for every identity.
#[tokio::test]
async fn throttling_lowers_the_nodes_call_rate() {
    let w = World::start().await;
    w.emulator.set_faults(Faults {
        throttle_above_per_s: Some(3.0),
        ..Default::default()
    });
    let agent = w.agent(&OPEN).await;
    assert_eq!(agent.metrics.eksauth_allowed_rate.get(), 20.0);
    let mut throttled = 0;
    for i in 0..6 {
        let r = agent
            .creds(&w.token("default", "app", &format!("p{i}")))
            .await;
        if r.status == 429 {
            throttled += 1;
        }
    }
    assert!(throttled >= 1, "the emulator throttled");
    assert_eq!(agent.metrics.eksauth_throttled.get(), 1, "counted once");
    // Halved to 10/s, then growing back toward 20/s over ten seconds.
    let rate = agent.metrics.eksauth_allowed_rate.get();
    assert!((10.0..20.0).contains(&rate), "{rate}");
}

/// With the SDK's default attempts (3), a transient failure is retried
/// inside the call, a throttling answer never: that retry would go out past
/// the node-wide gate into the same empty EKS Auth bucket.
#[tokio::test]
async fn the_sdk_retries_transient_failures_but_never_throttling() {
    let w = World::start().await;
    let agent = w.agent(&OPEN[..4]).await;
    fail_with(&w, "ThrottlingException");
    let r = agent.creds(&w.token("default", "app", "throttled")).await;
    assert_eq!(r.status, 429);
    assert_eq!(w.emulator.calls(), 1, "throttling: one attempt");
    fail_with(&w, "InternalServerException");
    let r = agent.creds(&w.token("default", "app", "failing")).await;
    assert_eq!(r.status, 500);
    assert_eq!(w.emulator.calls(), 1 + 3, "transient: the SDK's 3 attempts");
}
