//! The credential endpoint against the real emulator: every status and
//! message of the contract, probes, binding rules, and the built binary.

mod common;

use std::time::Duration;

use common::*;
use pod_identity_agent::clock::ManualClock;
use testkit::emulator::Faults;
use testkit::issuer::{TokenSpec, now_secs};

const ALLOWED: &str = "[127.0.0.1 169.254.170.23 fd00:ec2::23]";

#[tokio::test]
async fn success_has_the_exact_wire_shape() {
    let w = World::start().await;
    let agent = w.agent(&[]).await;
    let token = w.token("default", "app", "pod-a");
    let r = agent.creds(&token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let keys: Vec<&str> = r
        .body
        .trim_start_matches('{')
        .split(",\"")
        .map(|kv| kv.trim_start_matches('"').split('"').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "AccessKeyId",
            "SecretAccessKey",
            "Token",
            "AccountId",
            "Expiration"
        ],
        "{}",
        r.body
    );
    let v = r.json();
    assert!(v["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert_eq!(v["AccountId"], "111122223333");
    let exp = v["Expiration"].as_str().unwrap();
    assert!(exp.ends_with('Z'), "{exp}");
    let parsed =
        aws_smithy_types::DateTime::from_str(exp, aws_smithy_types::date_time::Format::DateTime)
            .unwrap();
    let in_s = parsed.secs() - now_secs();
    assert!(
        (6 * 3600 - 60..=6 * 3600).contains(&in_s),
        "expires in {in_s}s"
    );
    assert_eq!(w.emulator.calls(), 1);
    let again = agent.creds(&token).await;
    assert_eq!(
        again.body, r.body,
        "the same token is served from the cache"
    );
    assert_eq!(w.emulator.calls(), 1);
}

#[tokio::test]
async fn routing_and_host_check() {
    let w = World::start().await;
    let agent = w.agent(&[]).await;
    let token = w.token("default", "app", "pod-a");

    let r = get(agent.addr, "/", Some("169.254.170.23"), None).await;
    assert_eq!(r.status, 404);
    let r = get(
        agent.addr,
        "/v1/credentials/x",
        Some("169.254.170.23"),
        Some(&token),
    )
    .await;
    assert_eq!(r.status, 404);
    // Upstream routes every method to the handler.
    let r = request(
        agent.addr,
        "POST",
        "/v1/credentials",
        Some("169.254.170.23"),
        Some(&token),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    for (host, bare) in [
        ("10.1.2.3", "10.1.2.3"),
        ("10.1.2.3:80", "10.1.2.3"),
        ("[fd00:ec2::24]", "fd00:ec2::24"),
        ("[fd00:ec2::24]:80", "fd00:ec2::24"),
        ("169.254.170.2", "169.254.170.2"),
    ] {
        let r = get(agent.addr, "/v1/credentials", Some(host), Some(&token)).await;
        assert_eq!(r.status, 403, "{host}");
        assert_eq!(
            r.body,
            format!(
                "Access Denied. Called agent through invalid address, please use either {ALLOWED} address not {bare}\n"
            )
        );
    }
    let r = get(agent.addr, "/v1/credentials", None, Some(&token)).await;
    assert_eq!(r.status, 400, "HTTP/1.1 without Host, as Go's server");
    for host in [
        "169.254.170.23",
        "169.254.170.23:80",
        "[fd00:ec2::23]",
        "[fd00:ec2::23]:80",
        "127.0.0.1:1234",
    ] {
        let r = get(agent.addr, "/v1/credentials", Some(host), Some(&token)).await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
    assert_eq!(w.emulator.calls(), 1, "403s never reach EKS Auth");
}

#[tokio::test]
async fn token_checks_need_no_key() {
    let w = World::start().await;
    let agent = w.agent(&[]).await;
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "Service account token cannot be empty\n"),
        (
            "not-a-jwt".into(),
            "Service account token cannot be parsed: token is malformed: token contains an invalid number of segments\n",
        ),
        (
            "e30.e30.c2ln".into(),
            "Service account token cannot be parsed: token is unverifiable: signing method (alg) is unspecified\n",
        ),
        (
            w.spec_token(&TokenSpec {
                issued_at: Some(now_secs() - 7200),
                lifetime: Duration::from_secs(3600),
                ..TokenSpec::pod("default", "app", "p")
            }),
            "Service account token failed basic claim validations: token is expired\n",
        ),
        (
            w.spec_token(&TokenSpec {
                issued_at: Some(now_secs() + 3600),
                ..TokenSpec::pod("default", "app", "p")
            }),
            "Service account token failed basic claim validations: token is not valid yet\n",
        ),
        (
            w.spec_token(&TokenSpec {
                audience: vec!["sts.amazonaws.com".into()],
                ..TokenSpec::pod("default", "app", "p")
            }),
            "Service account token failed basic claim validations: token has invalid audience\n",
        ),
    ];
    for (token, message) in cases {
        let r = get(
            agent.addr,
            "/v1/credentials",
            Some("169.254.170.23"),
            Some(&token),
        )
        .await;
        assert_eq!((r.status, r.body.as_str()), (400, message));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    let r = get(agent.addr, "/v1/credentials", Some("169.254.170.23"), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "Service account token cannot be empty\n")
    );
    assert_eq!(
        w.emulator.calls(),
        0,
        "no locally refused token reaches EKS Auth"
    );
}

#[tokio::test]
async fn audience_is_configurable() {
    let w = World::start().await;
    let agent = w.agent(&["--audience", "custom.example"]).await;
    let r = agent.creds(&w.token("default", "app", "p")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid audience"));
}

async fn eks_error(faults: Faults) -> Resp {
    let w = World::start().await;
    w.emulator.set_faults(faults);
    let agent = w.agent(&["--eks-auth-max-attempts", "1"]).await;
    agent.creds(&w.token("default", "app", "p")).await
}

/// `[<request-id>]: (<Code>): <message>, fault: <fault>`
fn assert_service_error(r: &Resp, status: u16, code: &str, fault: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let body = r.body.trim_end();
    let (rid, rest) = body.strip_prefix('[').unwrap().split_once("]: ").unwrap();
    assert_eq!(rid.len(), 36, "request id is the emulator's uuid: {body}");
    assert!(rest.starts_with(&format!("({code}): ")), "{body}");
    assert!(rest.ends_with(&format!(", fault: {fault}")), "{body}");
}

#[tokio::test]
async fn eks_auth_errors_pass_their_status_through() {
    for (code, status, fault) in [
        ("AccessDeniedException", 400, "client"),
        ("InvalidTokenException", 400, "client"),
        ("ExpiredTokenException", 400, "client"),
        ("InvalidParameterException", 400, "client"),
        ("InvalidRequestException", 400, "client"),
        ("ResourceNotFoundException", 404, "client"),
        ("ThrottlingException", 429, "client"),
        ("InternalServerException", 500, "server"),
        ("ServiceUnavailableException", 503, "server"),
    ] {
        let r = eks_error(Faults {
            force_error: Some(code.into()),
            ..Default::default()
        })
        .await;
        assert_service_error(&r, status, code, fault);
    }
}

#[tokio::test]
async fn pod_without_association_gets_404() {
    let w = World::start().await;
    let agent = w.agent(&[]).await;
    let r = agent
        .creds(&w.token("default", "no-association", "p"))
        .await;
    assert_service_error(&r, 404, "ResourceNotFoundException", "client");
    assert!(
        r.body
            .contains("not found for namespace default and service account no-association")
    );
}

#[tokio::test]
async fn incomplete_answers_are_500() {
    for field in ["credentials", "assumedRoleUser"] {
        let r = eks_error(Faults {
            omit_field: Some(field.into()),
            ..Default::default()
        })
        .await;
        assert_eq!(r.status, 500, "{field}: {}", r.body);
        assert!(r.body.contains("missing"), "{}", r.body);
    }
}

/// Credentials an SDK could not use are never a 200, and never cached
/// (upstream internal/credsretriever/refreshing_cache_test.go "error out if
/// ttl is too small": the message names the time actually left).
#[tokio::test]
async fn expired_or_expiring_credentials_are_500_and_not_cached() {
    // One clock for agent and emulator, on a whole second: the time left is
    // exactly the lifetime the emulator is told to give.
    let start = now_secs();
    let clock = ManualClock::at_ms(start as u64 * 1000);
    let w = World::start_with_clock(clock.clone()).await;
    let agent = w
        .agent_with(w.agent_args(&["--eks-auth-max-attempts", "1"]), Some(clock))
        .await;
    let t = w.spec_token(&TokenSpec {
        issued_at: Some(start),
        ..TokenSpec::pod("default", "app", "p")
    });
    for (lifetime_s, left, calls) in [(-60, "-60.00", 2), (0, "0.00", 4), (15, "15.00", 6)] {
        w.emulator.set_faults(Faults {
            credential_lifetime_s: Some(lifetime_s),
            ..Default::default()
        });
        for _ in 0..2 {
            let r = agent.creds(&t).await;
            assert_eq!(r.status, 500, "lifetime {lifetime_s}s: {}", r.body);
            assert_eq!(
                r.body,
                format!(
                    "fetched credentials are expired or will expire within the next {left} seconds\n"
                )
            );
            assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        }
        assert_eq!(w.emulator.calls(), calls, "nothing was cached");
    }
    w.emulator.set_faults(Faults {
        credential_lifetime_s: Some(16),
        ..Default::default()
    });
    assert_eq!(agent.creds(&t).await.status, 200, "16 s left is usable");
}

/// A 2xx from EKS Auth whose body is not an answer is an error status, never
/// a 200 without the JSON document.
#[tokio::test]
async fn a_success_status_without_a_credential_document_is_500() {
    use testkit::emulator::RawResponse;
    for (content_type, body) in [
        (Some("text/html"), "<html><body>OK</body></html>"),
        (Some("application/json"), "{\"credentials\":"),
        (Some("application/json"), "[]"),
        (None, "not json"),
    ] {
        let r = eks_error(Faults {
            raw_response: Some(RawResponse {
                status: 200,
                content_type: content_type.map(str::to_owned),
                body: body.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
        assert_eq!(r.status, 500, "{body}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
}

/// A client that hangs up mid-request does not leave the request counted.
#[tokio::test]
async fn in_flight_gauge_survives_clients_that_hang_up() {
    use tokio::io::AsyncWriteExt;
    let w = World::start().await;
    w.emulator.set_faults(Faults {
        latency_ms: 600_000,
        ..Default::default()
    });
    let agent = w.agent(&[]).await;
    let t = w.token("default", "app", "p");
    let mut conn = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    conn.write_all(
        format!(
            "GET /v1/credentials HTTP/1.1\r\nHost: 169.254.170.23\r\nAuthorization: {t}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    w.emulator.calls_started(1).await;
    assert_eq!(agent.metrics.in_flight.get(), 1);
    drop(conn);
    assert!(
        eventually(Duration::from_secs(30), || agent.metrics.in_flight.get()
            == 0)
        .await,
        "in-flight gauge stuck at {}",
        agent.metrics.in_flight.get()
    );
}

#[tokio::test]
async fn unreachable_and_slow_eks_auth_are_500() {
    let w = World::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut args = w.agent_args(&["--eks-auth-max-attempts", "1"]);
    args.endpoint = Some(dead);
    let agent = w.agent_with(args, None).await;
    let r = agent.creds(&w.token("default", "app", "p")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.starts_with("calling EKS Auth failed"), "{}", r.body);

    // EKS Auth never answers in time: the 1 s attempt timeout, not the
    // test's own deadline, ends the request.
    w.emulator.set_faults(Faults {
        latency_ms: 600_000,
        ..Default::default()
    });
    let agent = w.agent(&["--eks-auth-max-attempts", "1"]).await;
    let r = agent.creds(&w.token("default", "app", "p")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body.starts_with("calling EKS Auth timed out"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn probes_follow_upstream_semantics() {
    let w = World::start().await;
    let agent = w.agent(&[]).await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            get(agent.probe, path, Some("localhost"), None).await.status,
            200,
            "{path}"
        );
        assert_eq!(
            get(agent.metrics_addr, path, Some("localhost"), None)
                .await
                .status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        get(agent.probe, "/metrics", Some("localhost"), None)
            .await
            .status,
        404
    );

    use pod_identity_agent::probe::Probes;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let p = Probes::with_deadline(
        vec![agent.addr, closed_addr],
        None,
        Default::default(),
        Duration::from_secs(2),
    );
    assert_eq!(
        p.healthy().await.as_u16(),
        500,
        "a listener that does not answer 404 fails"
    );
    // SYNs dropped: the connect itself runs into the deadline, which is a
    // 408 like any other timeout (a connect timeout must not turn it into 500).
    let blackhole = Blackhole::new().unwrap();
    let p = Probes::with_deadline(
        vec![agent.addr, blackhole.addr],
        None,
        Default::default(),
        Duration::from_millis(500),
    );
    assert_eq!(p.healthy().await.as_u16(), 408, "blackholed bind address");
    // Accepts connections but never answers: the shared deadline expires.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = Probes::with_deadline(
        vec![agent.addr, silent.local_addr().unwrap()],
        None,
        Default::default(),
        Duration::from_millis(500),
    );
    assert_eq!(p.healthy().await.as_u16(), 408);
}

#[tokio::test]
async fn ipv4_bind_failure_is_fatal_ipv6_is_not() {
    let w = World::start().await;
    let mut args = w.agent_args(&["--ipv6-bind-wait", "300ms"]);
    args.bind_hosts = vec!["127.0.0.1".into(), "[fd00:ec2::99]".into()];
    let listeners = pod_identity_agent::app::bind(&args).await.unwrap();
    assert_eq!(listeners.credential_addrs().len(), 1);
    assert_eq!(
        listeners.pending_v6.len(),
        1,
        "unassigned IPv6 address left pending, not fatal"
    );
    drop(listeners);

    let mut args = w.agent_args(&[]);
    args.bind_hosts = vec!["192.0.2.77".into()];
    let err = pod_identity_agent::app::bind(&args)
        .await
        .err()
        .expect("IPv4 failure is fatal");
    assert!(err.to_string().contains("192.0.2.77"), "{err}");
}

#[test]
fn unknown_flags_exit_64() {
    let out = std::process::Command::new(bin())
        .args(["server", "--cluster-name", "c", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
    let out = std::process::Command::new(bin())
        .args(["server"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "missing --cluster-name");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster-name"));
    let out = std::process::Command::new(bin())
        .args(["--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

/// The built binary, configured the way a DaemonSet does it: endpoint from
/// `AWS_ENDPOINT_URL_EKS_AUTH`, credentials and region from the environment.
#[tokio::test]
async fn binary_serves_with_sdk_environment() {
    let w = World::start().await;
    let agent = BinaryAgent::spawn(
        &[],
        &[
            ("AWS_ENDPOINT_URL_EKS_AUTH", &w.url()),
            ("AWS_REGION", "us-west-2"),
            ("AWS_ACCESS_KEY_ID", NODE_AKID),
            ("AWS_SECRET_ACCESS_KEY", NODE_SECRET),
        ],
    )
    .await;
    let r = agent.creds(&w.token("default", "app", "p")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        w.emulator.stats().access_key_ids,
        vec![NODE_AKID.to_string()]
    );
}

/// A forward proxy for plain-HTTP targets: counts requests and sends them
/// to `upstream` whatever host they name.
async fn counting_proxy(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                // Absolute-form request line: the client is using us as a proxy.
                if String::from_utf8_lossy(&head).starts_with("POST http://eks-auth.proxy.test") {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                server.write_all(&head).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn eks_auth_calls_honour_http_proxy_and_no_proxy() {
    let w = World::start().await;
    let (proxy, proxied) = counting_proxy(w.emu.addr).await;
    for (no_proxy, expect) in [("", 200), ("eks-auth.proxy.test", 500)] {
        let proxy_url = format!("http://{proxy}");
        // The endpoint resolves only through the proxy.
        let agent = BinaryAgent::spawn(
            &["--eks-auth-max-attempts", "1"],
            &[
                ("AWS_ENDPOINT_URL_EKS_AUTH", "http://eks-auth.proxy.test"),
                ("HTTP_PROXY", &proxy_url),
                ("NO_PROXY", no_proxy),
                ("AWS_REGION", "us-west-2"),
                ("AWS_ACCESS_KEY_ID", NODE_AKID),
                ("AWS_SECRET_ACCESS_KEY", NODE_SECRET),
            ],
        )
        .await;
        let before = proxied.load(std::sync::atomic::Ordering::SeqCst);
        let r = agent.creds(&w.token("default", "app", "p")).await;
        assert_eq!(r.status, expect, "NO_PROXY={no_proxy:?}: {}", r.body);
        let through = proxied.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(
            through,
            usize::from(no_proxy.is_empty()),
            "NO_PROXY={no_proxy:?}"
        );
    }
}
