//! `demo`: issuer + EKS Auth emulator + agent on 127.0.0.1, no AWS account.
//! The agent verifies tokens against the issuer's JWKS (OIDC discovery) and
//! signs its EKS Auth calls with demo node credentials the emulator checks.
//! Prints a ready-to-paste `curl` line and the SDK environment variables.

use std::path::PathBuf;
use std::sync::Arc;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use tokio::net::TcpListener;

use crate::agent::loopback_server;
use pod_identity_agent::app::{self, Options, ServerError};
use pod_identity_agent::instance::Phase;

use crate::cli::DemoArgs;
use crate::emulator::{Association, Emulator, RunningEmulator};
use crate::issuer::{Issuer, TokenSpec};

pub const DEMO_CLUSTER: &str = "demo-cluster";
pub const DEMO_ACCESS_KEY_ID: &str = "AKIDDEMONODEFAKE0001";
pub const DEMO_SECRET: &str = "demo-node-secret-not-a-real-key";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("binding 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error(transparent)]
    Issuer(#[from] crate::issuer::IssuerError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("self-check failed: {0}")]
    SelfCheck(String),
    #[error("internal: {0}")]
    Args(#[from] clap::Error),
}

pub async fn run(
    args: DemoArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Bind)?;
    let emu_url = format!("http://{}", listener.local_addr().map_err(DemoError::Bind)?);
    let issuer = Arc::new(Issuer::generate(emu_url.clone())?);
    let emulator = Arc::new(Emulator::new(issuer.clone()).with_cluster(DEMO_CLUSTER));
    emulator.associate(Association::new(
        "default",
        "demo-sa",
        "arn:aws:iam::111122223333:role/demo-role",
    ));
    emulator.add_node_credentials(DEMO_ACCESS_KEY_ID, DEMO_SECRET);
    let running_emulator = RunningEmulator::start(emulator, listener);

    let server_args = loopback_server(
        DEMO_CLUSTER,
        &emu_url,
        args.port,
        "127.0.0.1,localhost,169.254.170.23,fd00:ec2::23",
        &["--jwks-source", &emu_url, "--verbosity", &args.verbosity],
    )?;
    let mut opts = Options::new(server_args.clone());
    opts.credentials = Some(SharedCredentialsProvider::new(Credentials::new(
        DEMO_ACCESS_KEY_ID,
        DEMO_SECRET,
        None,
        None,
        "demo",
    )));
    let built = app::build(opts).await?;
    let listeners = app::bind(&server_args).await.map_err(ServerError::from)?;
    let agent_addr = listeners.credential_addrs()[0];
    let probe_addr = listeners.probe_addr();
    let metrics_addr = listeners.metrics_addr();

    let token = issuer.mint(&TokenSpec::pod("default", "demo-sa", "demo-pod"))?;
    let dir = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("eks-pod-identity-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Write {
        path: dir.clone(),
        source,
    })?;
    let token_file = dir.join("eks-pod-identity-token");
    std::fs::write(&token_file, &token).map_err(|source| DemoError::Write {
        path: token_file.clone(),
        source,
    })?;

    let instance = built.instance.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(app::run(built, listeners, async {
        let _ = stop_rx.await;
    }));
    // The agent's start-up lines first, then the self-check's, then the
    // instructions: the last thing on the screen is what to do next.
    while instance.phase() == Phase::Starting {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let url = format!("http://{agent_addr}/v1/credentials");
    let check = self_check(&url, &token).await;
    // Log lines go to stderr, the instructions to stdout: let the terminal
    // have the former before the latter.
    let _ = std::io::Write::flush(&mut std::io::stderr());
    println!();
    println!("EKS Pod Identity Agent demo (no AWS account involved)");
    println!("  agent:     {url}");
    println!("  emulator:  {emu_url} (EKS Auth + token issuer, cluster {DEMO_CLUSTER})");
    println!("  probes:    http://{probe_addr}/healthz  http://{probe_addr}/readyz");
    println!("  metrics:   http://{metrics_addr}/metrics");
    println!(
        "  token:     {} (ServiceAccount default/demo-sa, pod demo-pod)",
        token_file.display()
    );
    println!();
    println!("Ask for credentials like a pod's SDK does:");
    println!(
        "  curl -s -H \"Authorization: $(cat {})\" {url}",
        token_file.display()
    );
    println!();
    println!("Or point an AWS SDK at it:");
    println!("  export AWS_CONTAINER_CREDENTIALS_FULL_URI={url}");
    println!(
        "  export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}",
        token_file.display()
    );
    println!();
    match &check {
        Ok(summary) => println!("Self-check: {summary}"),
        Err(e) => println!("Self-check FAILED: {e}"),
    }
    if !args.once && check.is_ok() {
        println!("Serving until Ctrl-C.");
        shutdown.await;
    }
    let _ = stop_tx.send(());
    let _ = agent.await;
    running_emulator.stop().await;
    check.map(|_| ())
}

async fn self_check(url: &str, token: &str) -> Result<String, DemoError> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let req = http::Request::get(url)
        .header(http::header::AUTHORIZATION, token)
        .body(Empty::new())
        .map_err(|e| DemoError::SelfCheck(e.to_string()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| DemoError::SelfCheck(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| DemoError::SelfCheck(e.to_string()))?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(DemoError::SelfCheck(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| DemoError::SelfCheck(e.to_string()))?;
    Ok(format!(
        "200 OK, AccessKeyId {}, AccountId {}, Expiration {}",
        v["AccessKeyId"].as_str().unwrap_or("?"),
        v["AccountId"].as_str().unwrap_or("?"),
        v["Expiration"].as_str().unwrap_or("?")
    ))
}
