//! The one HTTPS client: `--ca-bundle` and `AWS_CA_BUNDLE`, the proxy from
//! the environment, for EKS Auth (the emulator served over TLS with a
//! certificate from a CA made here) and for signing-key fetches alike.
//! Trusted with the bundle, refused without it.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use common::{Agent, BinaryAgent, CLUSTER, NODE_AKID, NODE_SECRET, ROLE, World};
use pod_identity_agent::app;
use pod_identity_agent::env::Env;
use testkit::agent::loopback_server;
use testkit::emulator::{Association, Emulator, RunningEmulator};
use testkit::issuer::{Issuer, TokenSpec};
use testkit::net::ConnectProxy;
use testkit::tls::TestCa;

/// Name the proxy tests' endpoints use; resolvable only through the proxy.
const PROXIED_HOST: &str = "eks-auth.proxy.test";

struct TlsWorld {
    issuer: Arc<Issuer>,
    emu: RunningEmulator,
    ca: PathBuf,
}

impl TlsWorld {
    async fn start() -> Self {
        let ca = TestCa::new();
        let config = ca.server_config(&["127.0.0.1", PROXIED_HOST]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let issuer = Arc::new(Issuer::generate(url.clone()).unwrap());
        let emulator = Arc::new(Emulator::new(issuer.clone()).with_cluster(CLUSTER));
        emulator.associate(Association::new("default", "app", ROLE));
        emulator.add_node_credentials(NODE_AKID, NODE_SECRET);
        emulator.set_base_url(&url);
        let emu = RunningEmulator::start_tls(emulator, listener, config);
        let path = std::env::temp_dir().join(format!(
            "pia-ca-bundle-{}-{}.pem",
            std::process::id(),
            testkit::issuer::uuid()
        ));
        // A bundle as found on nodes: other blocks around the certificate.
        std::fs::write(&path, format!("# test CA\n{}\n", ca.pem())).unwrap();
        Self {
            issuer,
            emu,
            ca: path,
        }
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
        opts.env = pod_identity_agent::env::Env::empty();
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
    let agent =
        BinaryAgent::spawn(&["--endpoint", &url], &binary_env(&[("AWS_CA_BUNDLE", ca)])).await;
    let r = agent.creds(&w.token()).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // And not by accident: the same binary without it.
    let agent = BinaryAgent::spawn(
        &["--endpoint", &url, "--eks-auth-max-attempts", "1"],
        &binary_env(&[]),
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

#[tokio::test]
async fn the_bundle_and_https_proxy_work_together() {
    let w = TlsWorld::start().await;
    let target = format!("{PROXIED_HOST}:443");
    let proxy = ConnectProxy::start(&[(&target, w.emu.addr)]).await;
    let proxy_url = proxy.url();
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
    )
    .await;
    let r = agent.creds(&w.token()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        proxy.tunnels(&target),
        1,
        "EKS Auth reached through the proxy"
    );
}

/// An issuer URL behind a private CA: the keys load with the CA given only
/// as `--ca-bundle` (the bundle the agent trusts for EKS Auth), through
/// `HTTPS_PROXY` too. Key fetches go through the same client as EKS Auth.
#[tokio::test]
async fn keys_load_through_the_same_client_as_eks_auth() {
    let w = World::start().await;
    let ca = TestCa::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let keys_addr = listener.local_addr().unwrap();
    let keys = Arc::new(Emulator::new(w.issuer.clone()));
    let _keys = RunningEmulator::start_tls(
        keys.clone(),
        listener,
        ca.server_config(&["127.0.0.1", PROXIED_HOST]),
    );
    let bundle = std::env::temp_dir().join(format!(
        "pia-keys-bundle-{}-{}.pem",
        std::process::id(),
        testkit::issuer::uuid()
    ));
    ca.write_pem(&bundle).unwrap();
    let bundle_arg = bundle.display().to_string();
    let issuer = w.url();
    let verified = |agent: &Agent| {
        agent
            .metrics
            .token_verifications
            .with_label_values(&["verified"])
            .get()
    };

    // Directly: the bundle is the only way the CA is known.
    let direct = format!("https://{keys_addr}");
    keys.set_base_url(&direct);
    for (with_bundle, expected) in [(true, 1), (false, 0)] {
        let mut extra = vec!["--jwks-source", &direct, "--token-issuer", &issuer];
        if with_bundle {
            extra.extend(["--ca-bundle", &bundle_arg]);
        }
        let agent = w.agent(&extra).await;
        let r = agent.creds(&w.token("default", "app", "p")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(verified(&agent), expected, "bundle given: {with_bundle}");
    }

    // Through HTTPS_PROXY: the issuer's name resolves only there.
    let target = format!("{PROXIED_HOST}:443");
    let proxy = ConnectProxy::start(&[(&target, keys_addr)]).await;
    let proxied = format!("https://{PROXIED_HOST}");
    keys.set_base_url(&proxied);
    let args = w.agent_args(&[
        "--jwks-source",
        &proxied,
        "--token-issuer",
        &issuer,
        "--ca-bundle",
        &bundle_arg,
    ]);
    let proxy_url = proxy.url();
    let no_proxy = "127.0.0.1";
    let agent = w
        .agent_with_env(
            args,
            Env::from_pairs(&[("HTTPS_PROXY", &proxy_url), ("NO_PROXY", no_proxy)]),
        )
        .await;
    let r = agent.creds(&w.token("default", "app", "p")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(verified(&agent), 1);
    assert!(
        proxy.tunnels(&target) >= 1,
        "keys fetched through the proxy"
    );
    let _ = std::fs::remove_file(bundle);
}
