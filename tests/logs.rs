//! The built binary at `-v trace`, through successes, cache hits, rotations,
//! verification failures and EKS Auth errors, never writes a pod token, a
//! secret access key or a session token (the pods' or its own).

mod common;

use common::*;
use serde_json::json;
use testkit::emulator::Faults;

async fn run_agent_and_collect(format: &str) {
    let w = World::start().await;
    let url = w.url();
    let agent = BinaryAgent::spawn(
        &[
            "--endpoint",
            &url,
            "--jwks-source",
            &url,
            "--eks-auth-max-attempts",
            "1",
            "-v",
            "trace",
            "--log-format",
            format,
        ],
        &[
            ("AWS_REGION", "us-west-2"),
            ("AWS_ACCESS_KEY_ID", NODE_AKID),
            ("AWS_SECRET_ACCESS_KEY", NODE_SECRET),
            ("AWS_SESSION_TOKEN", "NODE-SESSION-TOKEN-MARKER"),
        ],
    )
    .await;
    let addr = agent.addr;
    let ask = |t: String| async move {
        get(addr, "/v1/credentials", Some("169.254.170.23"), Some(&t)).await
    };

    let mut secrets: Vec<String> = vec![NODE_SECRET.into(), "NODE-SESSION-TOKEN-MARKER".into()];
    let mut tokens = Vec::new();
    let pod_a = testkit::issuer::TokenSpec::pod("default", "app", "pod-a");
    for _ in 0..2 {
        let t = w.spec_token(&pod_a);
        tokens.push(t.clone());
        for _ in 0..2 {
            let r = ask(t.clone()).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            secrets.push(v["SecretAccessKey"].as_str().unwrap().into());
            secrets.push(v["Token"].as_str().unwrap().into());
        }
    }
    let forged = w
        .issuer
        .sign_with_header(
            &json!({"alg":"RS256","kid":"not-a-key"}),
            &w.issuer.claims(&pod_a),
        )
        .unwrap();
    tokens.push(forged.clone());
    assert_eq!(ask(forged).await.status, 400);
    // More tokens local keys cannot decide: forwarded, and warned about once.
    for i in 0..3 {
        let t = w
            .issuer
            .sign_with_header(
                &json!({"alg":"RS256","kid":format!("unknown-{i}")}),
                &w.issuer.claims(&pod_a),
            )
            .unwrap();
        tokens.push(t.clone());
        assert_eq!(ask(t).await.status, 400, "EKS Auth refuses it");
    }
    let no_assoc = w.token("default", "nobody", "pod-b");
    tokens.push(no_assoc.clone());
    assert_eq!(ask(no_assoc).await.status, 404);
    w.emulator.set_faults(Faults {
        force_error: Some("ServiceUnavailableException".into()),
        ..Default::default()
    });
    let failing = w.token("ns2", "app2", "pod-c");
    tokens.push(failing.clone());
    assert_eq!(ask(failing).await.status, 503);
    tokens.push("garbage.not.jwt".into());
    assert_eq!(ask("garbage.not.jwt".into()).await.status, 400);

    let mut agent = agent;
    agent.child.start_kill().unwrap();
    agent.child.wait().await.unwrap();
    let logs = agent.log();

    assert!(
        logs.contains("fetched credentials from EKS Auth"),
        "info lines are there:\n{logs}"
    );
    assert!(
        logs.contains("credential request"),
        "per-request debug lines are there:\n{logs}"
    );
    assert!(logs.lines().count() > 10);
    assert_eq!(
        logs.matches("local verification inconclusive").count(),
        1,
        "the inconclusive warning is rate-limited:\n{logs}"
    );
    if format == "json" {
        for line in logs.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(v["level"].is_string());
        }
    }
    for t in &tokens {
        for part in t.split('.').filter(|p| p.len() > 16) {
            assert!(
                !logs.contains(part),
                "a token part leaked into the {format} logs"
            );
        }
    }
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a secret leaked into the {format} logs"
        );
        assert!(
            !logs.contains(&s[..16.min(s.len())]),
            "a secret prefix leaked into the {format} logs"
        );
    }
}

#[tokio::test]
async fn trace_json_logs_hold_no_secrets() {
    run_agent_and_collect("json").await;
}

#[tokio::test]
async fn trace_text_logs_hold_no_secrets() {
    run_agent_and_collect("text").await;
}
