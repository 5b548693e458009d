//! Token parsing and basic claim validation, byte for byte as upstream:
//! every token of `tests/data/golang-jwt/cases.tsv` (2,345 hand-picked and
//! seeded-mutation tokens) with the answer upstream v0.1.37's validation
//! gives (golang-jwt v5.2.2 `ParseUnverified` + `NewValidator().Validate`,
//! Go 1.26.1; produced by `tests/data/golang-jwt/oracle.go`, see
//! `generate.py`). Times in the corpus are far past or future, so answers do
//! not depend on the clock. A sample also goes through the running agent,
//! to prove the HTTP boundary adds nothing.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use pod_identity_agent::token::{self, Validity};
use testkit::issuer::now_secs;

struct Case {
    token: Vec<u8>,
    /// Upstream's message, or `OK` when the token goes on to EKS Auth.
    expected: String,
}

fn corpus() -> Vec<Case> {
    let text = include_str!("data/golang-jwt/cases.tsv");
    text.lines()
        .map(|line| {
            let (token, expected) = line.split_once('\t').expect("token<TAB>answer");
            Case {
                token: STANDARD.decode(token).expect("base64 token"),
                expected: unescape(expected),
            }
        })
        .collect()
}

/// The oracle escaped `\` and newlines to keep one answer per line.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// The keyless answer, as upstream's `validateToken` words it.
fn ours(token: &[u8]) -> String {
    match token::parse(token) {
        Err(e) => e.to_string(),
        Ok(parsed) => {
            let validity = Validity {
                not_before: parsed.claims.nbf,
                expires: parsed.claims.exp,
            };
            match validity.check(now_secs(), 0) {
                Ok(()) => "OK".into(),
                Err(e) => e.to_string(),
            }
        }
    }
}

#[test]
fn every_corpus_token_gets_upstreams_answer() {
    let cases = corpus();
    assert!(cases.len() > 2000);
    let mismatches: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let got = ours(&c.token);
            (got != c.expected).then(|| {
                format!(
                    "{}\n  upstream: {}\n  ours:     {got}",
                    String::from_utf8_lossy(&c.token),
                    c.expected
                )
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
}

/// Through the agent: a refused token gets 400 and the message plus a
/// newline; an accepted one reaches EKS Auth (which refuses these, having
/// never issued them).
#[tokio::test]
async fn the_endpoint_answers_the_same() {
    let w = World::start().await;
    let agent = w
        .agent(&["--rate-limit", "0", "--per-client-rate-limit", "0"])
        .await;
    let cases = corpus();
    // Every distinct answer once, plus every 25th token.
    let mut seen = std::collections::HashSet::new();
    let sample = cases
        .iter()
        .enumerate()
        .filter(|(i, c)| seen.insert(c.expected.clone()) || i % 25 == 0);
    for (_, case) in sample {
        let mut head =
            b"GET /v1/credentials HTTP/1.1\r\nHost: 169.254.170.23\r\nAuthorization: ".to_vec();
        head.extend_from_slice(&case.token);
        head.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let r = raw(agent.addr, &head).await;
        if case.expected == "OK" {
            // Upstream checks no audience; a token without ours is refused
            // here instead of by EKS Auth (README: deliberate differences).
            const AUDIENCE: &str = "Service account token failed basic claim validations: token has invalid audience\n";
            assert_ne!(r.status, 200, "EKS Auth never issued this token");
            assert!(
                r.body.starts_with('[') || r.body == AUDIENCE,
                "EKS Auth's answer: {}",
                r.body
            );
        } else {
            // hyper refuses what no HTTP client may send (a tab or DEL in a
            // header value); everything else must be upstream's answer.
            if r.status == 400 && r.body.is_empty() {
                continue;
            }
            assert_eq!(
                (r.status, r.body.as_str()),
                (400, format!("{}\n", case.expected).as_str()),
                "{}",
                String::from_utf8_lossy(&case.token)
            );
        }
    }
}
