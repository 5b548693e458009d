//! `--ca-bundle` and `AWS_CA_BUNDLE`: EKS Auth (the emulator) served over
//! TLS with a certificate from a CA made here. Trusted with the bundle,
//! refused without it; the proxy from the environment still applies.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use common::{Agent, BinaryAgent, CLUSTER, NODE_AKID, NODE_SECRET, ROLE};
use pod_identity_agent::app;
use pod_identity_agent::cli::loopback_server;
use testkit::emulator::{Association, Emulator, RunningEmulator};
use testkit::issuer::{Issuer, TokenSpec};

/// Name the proxy test's endpoint uses; resolvable only through the proxy.
const PROXIED_HOST: &str = "eks-auth.proxy.test";

/// A CA (PEM) and a server config whose certificate it signed, for
/// 127.0.0.1 and [`PROXIED_HOST`].
fn test_ca() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer as CaIssuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = CaIssuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), PROXIED_HOST.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

struct TlsWorld {
    issuer: Arc<Issuer>,
    emu: RunningEmulator,
    ca: PathBuf,
}

impl TlsWorld {
    async fn start() -> Self {
        let (ca_pem, config) = test_ca();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let issuer = Arc::new(Issuer::generate(url.clone()).unwrap());
        let emulator = Arc::new(Emulator::new(issuer.clone()).with_cluster(CLUSTER));
        emulator.associate(Association::new("default", "app", ROLE));
        emulator.add_node_credentials(NODE_AKID, NODE_SECRET);
        emulator.set_base_url(&url);
        let emu = RunningEmulator::start_tls(emulator, listener, config);
        let ca = std::env::temp_dir().join(format!(
            "pia-ca-bundle-{}-{}.pem",
            std::process::id(),
            testkit::issuer::uuid()
        ));
        // A bundle as found on nodes: other blocks around the certificate.
        std::fs::write(&ca, format!("# test CA\n{ca_pem}\n")).unwrap();
        Self { issuer, emu, ca }
    }

    fn token(&self) -> String {
        self.issuer
            .mint(&TokenSpec::pod("default", "app", "tls-pod"))
            .unwrap()
    }

    async fn agent(&self, extra: &[&str]) -> Agent {
        let args = loopback_server(CLUSTER, &self.emu.url(), 0, "169.254.170.23", extra).unwrap();
        let mut opts = app::Options::new(args);
        opts.credentials = Some(SharedCredentialsProvider::new(Credentials::new(
            NODE_AKID,
            NODE_SECRET,
            None,
            None,
            "test",
        )));
        opts.env = |_| None;
        Agent::start(opts).await
    }
}

impl Drop for TlsWorld {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca);
    }
}

#[tokio::test]
async fn ca_bundle_flag_makes_the_private_ca_trusted() {
    let w = TlsWorld::start().await;
    let ca = w.ca.to_str().unwrap();
    let agent = w.agent(&["--ca-bundle", ca]).await;
    let r = agent.creds(&w.token()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["AccessKeyId"]
            .as_str()
            .unwrap()
            .starts_with("ASIA")
    );
}

#[tokio::test]
async fn without_the_bundle_the_private_ca_is_refused() {
    let w = TlsWorld::start().await;
    let agent = w.agent(&["--eks-auth-max-attempts", "1"]).await;
    let r = agent.creds(&w.token()).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.starts_with("calling EKS Auth failed"), "{}", r.body);
}

fn binary_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("AWS_REGION", "us-west-2"),
        ("AWS_ACCESS_KEY_ID", NODE_AKID),
        ("AWS_SECRET_ACCESS_KEY", NODE_SECRET),
    ];
    env.extend_from_slice(extra);
    env
}

#[tokio::test]
async fn aws_ca_bundle_is_honoured_by_the_binary() {
    let w = TlsWorld::start().await;
    let url = w.emu.url();
    let ca = w.ca.to_str().unwrap();
    let agent = BinaryAgent::spawn(
        &["--endpoint", &url],
        &binary_env(&[("AWS_CA_BUNDLE", ca)]),
        std::process::Stdio::null(),
    )
    .await;
    let r = agent.creds(&w.token()).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // And not by accident: the same binary without it.
    let agent = BinaryAgent::spawn(
        &["--endpoint", &url, "--eks-auth-max-attempts", "1"],
        &binary_env(&[]),
        std::process::Stdio::null(),
    )
    .await;
    let r = agent.creds(&w.token()).await;
    assert_eq!(r.status, 500, "{}", r.body);
}

#[test]
fn an_unusable_bundle_stops_the_agent_at_start() {
    for (how, env, args) in [
        (
            "AWS_CA_BUNDLE",
            vec![("AWS_CA_BUNDLE", "/nonexistent/ca.pem")],
            vec![],
        ),
        (
            "--ca-bundle",
            vec![],
            vec!["--ca-bundle", "/nonexistent/ca.pem"],
        ),
    ] {
        let out = std::process::Command::new(common::bin())
            .args([
                "server",
                "-c",
                CLUSTER,
                "-b",
                "127.0.0.1",
                "-p",
                "0",
                "--probe-port",
                "0",
                "--metrics-port",
                "0",
                "--metrics-address",
                "127.0.0.1",
            ])
            .args(&args)
            .env_clear()
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{how}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("reading CA bundle /nonexistent/ca.pem"),
            "{how}: {err}"
        );
    }
}

/// An HTTP CONNECT proxy in front of `upstream`, counting tunnels to
/// [`PROXIED_HOST`].
async fn connect_proxy(upstream: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
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
                if !String::from_utf8_lossy(&head)
                    .starts_with(&format!("CONNECT {PROXIED_HOST}:443 "))
                {
                    return;
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn the_bundle_and_https_proxy_work_together() {
    let w = TlsWorld::start().await;
    let (proxy, tunnels) = connect_proxy(w.emu.addr).await;
    let proxy_url = format!("http://{proxy}");
    let endpoint = format!("https://{PROXIED_HOST}");
    let ca = w.ca.to_str().unwrap();
    let agent = BinaryAgent::spawn(
        &[
            "--endpoint",
            &endpoint,
            "--ca-bundle",
            ca,
            "--eks-auth-max-attempts",
            "1",
        ],
        &binary_env(&[("HTTPS_PROXY", &proxy_url)]),
        std::process::Stdio::null(),
    )
    .await;
    let r = agent.creds(&w.token()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        tunnels.load(Ordering::SeqCst),
        1,
        "EKS Auth reached through the proxy"
    );
}
