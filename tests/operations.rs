//! What an SRE relies on: metrics content, rate limiting and fairness,
//! connection hardening, graceful drain, and hybrid-node credential rotation.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use testkit::emulator::Faults;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn scrape_value(families: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .sum()
}

#[tokio::test]
async fn metrics_after_known_traffic() {
    let w = World::start().await;
    let agent = w.agent(&["--eks-auth-max-attempts", "1"]).await;
    let t = w.token("default", "app", "p");
    for _ in 0..3 {
        assert_eq!(agent.creds(&t).await.status, 200);
    }
    assert_eq!(agent.creds("garbage").await.status, 400);
    assert_eq!(
        get(agent.addr, "/v1/credentials", Some("10.0.0.1"), Some(&t))
            .await
            .status,
        403
    );
    assert_eq!(
        agent.creds(&w.token("default", "nobody", "q")).await.status,
        404
    );
    agent.cache.maintain().await;

    let r = get(agent.metrics_addr, "/metrics", Some("localhost"), None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let scrape = prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition format");
    let v = |name: &str, labels: &[(&str, &str)]| scrape_value(&scrape, name, labels);
    assert_eq!(v("pod_identity_http_response", &[("code", "200")]), 3.0);
    assert_eq!(v("pod_identity_http_response", &[("code", "400")]), 1.0);
    assert_eq!(v("pod_identity_http_response", &[("code", "403")]), 1.0);
    assert_eq!(v("pod_identity_http_response", &[("code", "404")]), 1.0);
    assert_eq!(v("pod_identity_cache_state", &[("state", "hit")]), 2.0);
    assert_eq!(v("pod_identity_cache_state", &[("state", "miss")]), 2.0);
    assert_eq!(
        v(
            "pod_identity_cache_errors",
            &[
                ("type", "NonRecoverable"),
                ("code", "ResourceNotFoundException")
            ]
        ),
        1.0
    );
    assert_eq!(
        v("pod_identity_eksauth_calls_total", &[("code", "OK")]),
        1.0
    );
    assert_eq!(
        v(
            "pod_identity_eksauth_calls_total",
            &[("code", "ResourceNotFoundException")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "pod_identity_eksauth_duration_seconds_count",
            &[("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "pod_identity_request_duration_seconds_count",
            &[("outcome", "hit")]
        ),
        0.0,
        "hits are counted, not timed"
    );
    assert_eq!(
        v(
            "pod_identity_request_duration_seconds_count",
            &[("outcome", "miss")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "pod_identity_request_duration_seconds_count",
            &[("outcome", "error")]
        ),
        3.0
    );
    assert_eq!(v("pod_identity_requests_in_flight", &[]), 0.0);
    assert_eq!(v("pod_identity_cache_entries", &[]), 1.0);
    assert_eq!(
        v(
            "pod_identity_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for family in [
        "pod_identity_request_duration_seconds",
        "pod_identity_eksauth_duration_seconds",
    ] {
        assert!(
            r.body.contains(&format!("# TYPE {family} histogram")),
            "{family}"
        );
    }
}

async fn from(ip: &str, agent: SocketAddr, token: &str) -> u16 {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(agent).await.unwrap();
    let req = format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: 169.254.170.23\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    parse_response(&buf).status
}

/// One pod in a retry loop spends its own share: once it is past it and
/// the global bucket is down to its reserve, it is refused, and a
/// neighbour's requests (another flow: its own address) are still served.
#[tokio::test]
async fn a_looping_pod_does_not_starve_its_neighbours() {
    let w = World::start().await;
    let agent = w
        .agent(&[
            "--per-client-rate-limit",
            "5",
            "--per-client-rate-limit-burst",
            "10",
            "--rate-limit",
            "1",
            "--rate-limit-burst",
            "80",
        ])
        .await;
    let looping = w.token("default", "app", "looping");
    let neighbour = w.token("default", "app", "neighbour");
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(from("127.0.0.1", agent.addr, &looping).await);
    }
    // Its own 10, then borrowed down to the reserve (20 of 80), and what
    // refilled meanwhile.
    let limited = flood.iter().filter(|s| **s == 429).count();
    assert!(limited >= 120, "{limited} of 200 refused");
    assert!(flood.iter().all(|s| *s == 200 || *s == 429));
    let r = agent.creds(&looping).await;
    assert_eq!((r.status, r.body.as_str()), (429, "Too Many Requests\n"));
    for _ in 0..10 {
        assert_eq!(
            from("127.0.0.2", agent.addr, &neighbour).await,
            200,
            "the neighbour, with its own address, is served"
        );
    }
    let m = &agent.metrics.rate_limited;
    assert!(m.with_label_values(&["flow"]).get() >= 120);
    assert_eq!(m.with_label_values(&["global"]).get(), 0);
}

/// A host-network caller fetching for 300 pods within a second (a CSI
/// driver at node start) is never refused with the default limits, verified
/// or not: Java, Go and Rust SDKs treat a 429 as final.
#[tokio::test]
async fn a_host_network_caller_fetching_for_300_pods_gets_no_429() {
    let w = World::start().await;
    let url = w.url();
    // The EKS Auth call cap is not what this is about (300 first calls at
    // its default 20/s would take 13 s).
    // Nor are EKS Auth's timeouts: 300 calls at once on a loaded CI
    // machine can take longer than the default 1 s attempt.
    let uncapped = [
        "--eks-auth-rate-limit",
        "0",
        "--eks-auth-request-timeout",
        "30s",
    ];
    for extra in [vec![], vec!["--jwks-source", url.as_str()]] {
        let agent = w.agent(&[&uncapped[..], &extra[..]].concat()).await;
        let tokens: Vec<String> = (0..300)
            .map(|i| w.token("default", "app", &format!("pod-{i}")))
            .collect();
        let tasks: Vec<_> = tokens
            .into_iter()
            .map(|t| {
                let addr = agent.addr;
                tokio::spawn(async move { from("127.0.0.1", addr, &t).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 200, "{extra:?}");
        }
        assert_eq!(
            agent
                .metrics
                .rate_limited
                .with_label_values(&["flow"])
                .get()
                + agent
                    .metrics
                    .rate_limited
                    .with_label_values(&["global"])
                    .get(),
            0
        );
    }
}

/// A pod looping as fast as it can (thousands of requests a second, all
/// refused after its burst) delays another pod's requests by a bounded
/// factor, and never gets it refused. Ratio of medians in one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_pod_delays_another_pods_requests_boundedly() {
    let w = World::start().await;
    // Verified tokens: two pods, two flows, though both call from 127.0.0.1.
    let url = w.url();
    let agent = w.agent(&["--jwks-source", &url]).await;
    let victim = w.token("default", "app", "victim");
    let looping = w.token("default", "app", "looping");
    assert_eq!(agent.creds(&victim).await.status, 200);
    let median_latency = |samples: &mut Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    let mut conn = KeepAlive::connect(agent.addr).await;
    // 1 + 40 + 40 requests stay within the victim's own burst (100); one
    // every 5 ms, the same in both phases, keeps the looping pod busy for a
    // while in between.
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    let mut quiet = Vec::new();
    for _ in 0..40 {
        pace.tick().await;
        let started = Instant::now();
        assert_eq!(conn.get(&victim).await, 200);
        quiet.push(started.elapsed());
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loopers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, looping, addr) = (stop.clone(), looping.clone(), agent.addr);
            tokio::spawn(async move {
                let mut conn = KeepAlive::connect(addr).await;
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let status = conn.get(&looping).await;
                    assert!(status == 200 || status == 429, "{status}");
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let looping_started = Instant::now();
    let mut busy = Vec::new();
    for _ in 0..40 {
        pace.tick().await;
        let started = Instant::now();
        assert_eq!(conn.get(&victim).await, 200, "never refused");
        busy.push(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for l in loopers {
        sent += l.await.unwrap();
    }
    let rate = sent as f64 / looping_started.elapsed().as_secs_f64();
    let (quiet, busy) = (median_latency(&mut quiet), median_latency(&mut busy));
    let refused = agent
        .metrics
        .rate_limited
        .with_label_values(&["flow"])
        .get();
    eprintln!(
        "looping pod: {sent} requests ({rate:.0}/s), {refused} refused; victim median {quiet:?} quiet, {busy:?} busy"
    );
    assert!(refused > 0, "the looping pod ran into its limit");
    assert!(
        busy.as_secs_f64() <= 25.0 * quiet.as_secs_f64().max(50e-6),
        "victim median latency {busy:?} under load vs {quiet:?} quiet"
    );
}

/// A keep-alive HTTP/1.1 connection issuing credential requests.
struct KeepAlive {
    stream: tokio::io::BufReader<TcpStream>,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: tokio::io::BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    /// The status of one request; the body is read and dropped.
    async fn get(&mut self, token: &str) -> u16 {
        use tokio::io::AsyncBufReadExt;
        let req = format!(
            "GET /v1/credentials HTTP/1.1\r\nHost: 169.254.170.23\r\nAuthorization: {token}\r\n\r\n"
        );
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        status
    }
}

/// Upstream's global bucket (here 1/s, burst 5) over distinct pods.
#[tokio::test]
async fn global_limit_like_upstream() {
    let w = World::start().await;
    let agent = w
        .agent(&[
            "--rate-limit",
            "1",
            "--rate-limit-burst",
            "5",
            "--per-client-rate-limit",
            "0",
        ])
        .await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let t = w.token("default", "app", &format!("pod-{i}"));
        statuses.push(from("127.0.0.1", agent.addr, &t).await);
    }
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 14,
        "{statuses:?}"
    );
    assert!(
        statuses[..5].iter().all(|s| *s == 200),
        "the burst is admitted: {statuses:?}"
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let w = World::start().await;
    let agent = w.agent(&[]).await;
    let huge = "x".repeat(20 * 1024);
    let r = get(
        agent.addr,
        "/v1/credentials",
        Some("169.254.170.23"),
        Some(&huge),
    )
    .await;
    assert_eq!(r.status, 431);
    let agent = w.agent(&["--max-header-bytes", "65536"]).await;
    let r = get(
        agent.addr,
        "/v1/credentials",
        Some("169.254.170.23"),
        Some(&huge),
    )
    .await;
    assert_eq!(
        r.status, 400,
        "a larger limit admits it (and the token is refused)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_do_not_delay_a_normal_request() {
    raise_fd_limit();
    let w = World::start().await;
    let agent = w.agent(&["--header-read-timeout", "2s"]).await;
    let mut held = Vec::new();
    for i in 0..2000 {
        let mut s = TcpStream::connect(agent.addr).await.unwrap();
        if i % 2 == 0 {
            // Slowloris: a request head that never completes.
            s.write_all(b"GET /v1/credentials HTTP/1.1\r\nHost: 169.254.170.23\r\nX-Slow: ")
                .await
                .unwrap();
        }
        held.push(s);
    }
    let t = w.token("default", "app", "p");
    let started = Instant::now();
    // From another address: the 2,000 from 127.0.0.1 hold (or were refused)
    // that source's share of the connections.
    let status = tokio::time::timeout(Duration::from_secs(10), from("127.0.0.2", agent.addr, &t))
        .await
        .expect("served while 2,000 connections hang");
    assert_eq!(status, 200);
    eprintln!(
        "request with 2,000 stalled connections took {:?}",
        started.elapsed()
    );
    // The header deadline closes them.
    let mut closed = 0;
    for s in held.iter_mut().step_by(50) {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(
        closed, 40,
        "every sampled stalled connection was closed by the header deadline"
    );
}

#[tokio::test]
async fn connection_cap_closes_the_excess() {
    let w = World::start().await;
    let agent = w
        .agent(&["--max-connections", "5", "--header-read-timeout", "30s"])
        .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(agent.addr).await.unwrap());
    }
    let open = agent.metrics.open_connections.clone();
    assert!(eventually(Duration::from_secs(30), || open.get() == 5).await);
    let mut extra = TcpStream::connect(agent.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the sixth connection is closed at once");
    assert_eq!(
        agent
            .metrics
            .rejected_connections
            .with_label_values(&["cap"])
            .get(),
        1
    );
    drop(held);
    assert!(eventually(Duration::from_secs(30), || open.get() == 0).await);
    assert_eq!(
        agent.creds(&w.token("default", "app", "p")).await.status,
        200
    );
}

#[tokio::test]
async fn drain_lets_in_flight_requests_finish() {
    let w = World::start().await;
    w.emulator.set_faults(Faults {
        latency_ms: 800,
        ..Default::default()
    });
    let agent = w.agent(&["--drain-timeout", "5s"]).await;
    let addr = agent.addr;
    let t = w.token("default", "app", "p");
    let in_flight = tokio::spawn(async move {
        get(addr, "/v1/credentials", Some("169.254.170.23"), Some(&t)).await
    });
    w.emulator.calls_started(1).await;
    let open = agent.metrics.open_connections.clone();
    // True only once every connection ended: the in-flight one could end
    // only by answering (it gets a 200) or by being cut (it would not).
    assert!(agent.stop().await, "drained within the grace period");
    assert_eq!(open.get(), 0);
    assert_eq!(in_flight.await.unwrap().status, 200);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn drain_is_bounded() {
    let w = World::start().await;
    w.emulator.set_faults(Faults {
        latency_ms: 5000,
        ..Default::default()
    });
    let agent = w
        .agent(&[
            "--drain-timeout",
            "300ms",
            "--eks-auth-request-timeout",
            "10s",
        ])
        .await;
    let addr = agent.addr;
    let t = w.token("default", "app", "p");
    let _stuck = tokio::spawn(async move {
        get(addr, "/v1/credentials", Some("169.254.170.23"), Some(&t)).await
    });
    w.emulator.calls_started(1).await;
    // The call takes 5 s; a drain that waited for it would report success.
    assert!(
        !agent.stop().await,
        "gives up at the grace period and says so"
    );
}

#[tokio::test]
async fn sigterm_drains_the_binary() {
    let w = World::start().await;
    w.emulator.set_faults(Faults {
        latency_ms: 700,
        ..Default::default()
    });
    let url = w.url();
    let agent = BinaryAgent::spawn(
        &["--endpoint", &url, "--log-format", "text"],
        &[
            ("AWS_REGION", "us-west-2"),
            ("AWS_ACCESS_KEY_ID", NODE_AKID),
            ("AWS_SECRET_ACCESS_KEY", NODE_SECRET),
        ],
    )
    .await;
    let mut agent = agent;
    let addr = agent.addr;
    let t = w.token("default", "app", "p");
    let in_flight = tokio::spawn(async move {
        get(addr, "/v1/credentials", Some("169.254.170.23"), Some(&t)).await
    });
    w.emulator.calls_started(1).await;
    let pid = nix::unistd::Pid::from_raw(agent.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), agent.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        in_flight.await.unwrap().status,
        200,
        "the in-flight request finished"
    );
    assert!(status.success());
    let logs = agent.log();
    assert!(
        logs.contains("SIGTERM received") && logs.contains("drained"),
        "{logs}"
    );
}

#[tokio::test]
async fn rotate_credentials_rereads_the_shared_credentials_file() {
    let w = World::start().await;
    let (akid1, akid2) = ("AKIDHYBRIDFAKE000001", "AKIDHYBRIDFAKE000002");
    w.emulator.add_node_credentials(akid1, "hybrid-secret-1");
    w.emulator.add_node_credentials(akid2, "hybrid-secret-2");
    let dir = std::env::temp_dir().join(format!("pia-hybrid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("credentials");
    let write = |akid: &str, secret: &str| {
        std::fs::write(
            &file,
            format!("[default]\naws_access_key_id = {akid}\naws_secret_access_key = {secret}\n"),
        )
        .unwrap();
    };
    write(akid1, "hybrid-secret-1");
    let url = w.url();
    let file_env = file.display().to_string();
    let agent = BinaryAgent::spawn(
        &[
            "--endpoint",
            &url,
            "--region",
            "us-west-2",
            "--rotate-credentials",
            "--credentials-reload-interval",
            "1s",
        ],
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", &file_env),
            ("AWS_ACCESS_KEY_ID", "AKIDSHOULDNOTBEUSED0"),
            ("AWS_SECRET_ACCESS_KEY", "wrong"),
        ],
    )
    .await;
    let addr = agent.addr;
    let ask = |pod: &str| {
        let t = w.token("default", "app", pod);
        async move {
            get(addr, "/v1/credentials", Some("169.254.170.23"), Some(&t))
                .await
                .status
        }
    };
    assert_eq!(ask("a").await, 200);
    write(akid2, "hybrid-secret-2");
    let mut pod = 0;
    let seen_new = eventually_async(Duration::from_secs(30), || {
        pod += 1;
        let request = ask(&format!("b{pod}"));
        let emulator = w.emulator.clone();
        async move {
            assert_eq!(request.await, 200, "signed with a key the emulator accepts");
            emulator.stats().access_key_ids.last().map(String::as_str) == Some(akid2)
        }
    })
    .await;
    assert!(seen_new, "the rotated key was picked up without a restart");
    let ids = w.emulator.stats().access_key_ids;
    assert_eq!(ids[0], akid1);
    assert!(
        !ids.iter().any(|k| k == "AKIDSHOULDNOTBEUSED0"),
        "the file wins over the environment"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
