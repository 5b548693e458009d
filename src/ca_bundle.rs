//! The HTTPS client for the agent's AWS calls (EKS Auth, and STS or SSO if
//! the credential chain uses them): the system roots, plus `--ca-bundle
//! <file>` / `AWS_CA_BUNDLE` for ISO partitions and TLS-intercepting
//! proxies; TLS is set up before the agent is ready ([`HttpsClient`]).
//!
//! The AWS SDKs for Go, Python and Java read `AWS_CA_BUNDLE` themselves; the
//! Rust SDK does not, so the agent loads the file and hands the SDK an HTTPS
//! client that trusts it. Contract:
//! - the file is PEM; every `CERTIFICATE` block is added to the system's
//!   roots (not instead of them); other blocks are ignored;
//! - certificates rustls cannot use as trust anchors are skipped with a
//!   warning; a file with none left, unreadable or not PEM stops the agent
//!   at start (the SDK's TLS setup would otherwise panic on first use);
//! - the client is the SDK's own (aws-smithy-http-client, rustls with
//!   aws-lc) with the same proxy handling as the default one:
//!   `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`; timeouts come from the SDK
//!   config as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_smithy_async::rt::sleep::SharedAsyncSleep;
use aws_smithy_http_client::Connector;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::timeout::TimeoutConfig;
use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tracing::{info, warn};

/// The environment variable the other AWS SDKs and the CLI read.
pub const ENV: &str = "AWS_CA_BUNDLE";

#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("reading CA bundle {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {} is not PEM: {source}", .path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA bundle {} holds no certificate usable as a trust anchor", .path.display())]
    Empty { path: PathBuf },
}

/// The usable certificates of a bundle file, re-encoded one per PEM block.
#[derive(Debug, Clone)]
pub struct CaBundle {
    path: PathBuf,
    certificates: Vec<String>,
}

impl CaBundle {
    /// `--ca-bundle` wins over `AWS_CA_BUNDLE`; an empty variable is unset.
    pub fn path_from(flag: Option<&Path>, env: fn(&str) -> Option<String>) -> Option<PathBuf> {
        flag.map(Path::to_path_buf)
            .or_else(|| env(ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
    }

    pub fn load(path: &Path) -> Result<Self, CaBundleError> {
        let bytes = std::fs::read(path).map_err(|source| CaBundleError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut certificates = Vec::new();
        let mut skipped = 0usize;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            let cert = cert.map_err(|source| CaBundleError::Pem {
                path: path.to_owned(),
                source,
            })?;
            // The same check the SDK's rustls setup makes (and panics on).
            if rustls::RootCertStore::empty().add(cert.clone()).is_ok() {
                certificates.push(pem(&cert));
            } else {
                skipped += 1;
            }
        }
        if skipped > 0 {
            warn!(path = %path.display(), skipped, "CA bundle: certificates not usable as trust anchors were skipped");
        }
        if certificates.is_empty() {
            return Err(CaBundleError::Empty {
                path: path.to_owned(),
            });
        }
        info!(path = %path.display(), certificates = certificates.len(), "trusting the CA bundle for AWS calls, besides the system roots");
        Ok(Self {
            path: path.to_owned(),
            certificates,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }

    fn trust_store(&self) -> TrustStore {
        let mut trust = TrustStore::default();
        for cert in &self.certificates {
            trust.add_pem_certificate(cert.as_bytes());
        }
        trust
    }
}

fn pem(cert: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Connect and read timeouts: the SDK asks for a connector per setting.
type TimeoutKey = (Option<Duration>, Option<Duration>);

/// The HTTPS client for the agent's AWS calls: what the SDK's default client
/// does (rustls with aws-lc, one connector and so one connection pool per
/// timeout setting, proxy from the environment), trusting the system roots
/// plus the CA bundle if there is one.
///
/// Unlike the default client, it sets TLS up when the SDK client is built
/// (the SDK's `validate_base_client_config` hook, called by
/// `Client::from_conf`): the root store (reading and parsing every system
/// root, ~150 certificates, milliseconds of CPU) is built before the agent
/// is ready, for the timeouts the client is configured with, instead of
/// inside the first EKS Auth calls on a fresh node.
#[derive(Debug, Clone)]
pub struct HttpsClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tls: TlsContext,
    connectors: RwLock<HashMap<TimeoutKey, SharedHttpConnector>>,
    built: AtomicUsize,
}

impl HttpsClient {
    pub fn new(bundle: Option<&CaBundle>) -> Self {
        let trust = bundle.map(CaBundle::trust_store).unwrap_or_default();
        let tls = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .expect("building a TLS context from a trust store cannot fail");
        Self {
            inner: Arc::new(Inner {
                tls,
                connectors: RwLock::new(HashMap::new()),
                built: AtomicUsize::new(0),
            }),
        }
    }

    pub fn shared(&self) -> SharedHttpClient {
        SharedHttpClient::new(self.clone())
    }

    /// Connectors built so far (one per timeout setting the SDK asked for).
    pub fn connectors_built(&self) -> usize {
        self.inner.built.load(Ordering::Relaxed)
    }

    fn connector(
        &self,
        key: TimeoutKey,
        settings: &HttpConnectorSettings,
        sleep: Option<SharedAsyncSleep>,
    ) -> SharedHttpConnector {
        if let Some(c) = self
            .inner
            .connectors
            .read()
            .expect("connector cache lock")
            .get(&key)
        {
            return c.clone();
        }
        let mut connectors = self.inner.connectors.write().expect("connector cache lock");
        connectors
            .entry(key)
            .or_insert_with(|| {
                let mut builder = Connector::builder()
                    .connector_settings(settings.clone())
                    .proxy_config(ProxyConfig::from_env());
                builder.set_sleep_impl(sleep);
                let connector = builder
                    .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                    .tls_context(self.inner.tls.clone())
                    .build();
                self.inner.built.fetch_add(1, Ordering::Relaxed);
                SharedHttpConnector::new(connector)
            })
            .clone()
    }
}

/// The settings the SDK's orchestrator derives from a `TimeoutConfig` when
/// it asks for a connector (aws-smithy-runtime, `try_attempt`).
fn settings_from(timeouts: Option<&TimeoutConfig>) -> HttpConnectorSettings {
    let mut builder = HttpConnectorSettings::builder();
    if let Some(t) = timeouts {
        builder.set_connect_timeout(t.connect_timeout());
        builder.set_read_timeout(t.read_timeout());
    }
    builder.build()
}

impl HttpClient for HttpsClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        self.connector(key, settings, components.sleep_impl())
    }

    fn validate_base_client_config(
        &self,
        components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        let settings = settings_from(cfg.load::<TimeoutConfig>());
        let key = (settings.connect_timeout(), settings.read_timeout());
        self.connector(key, &settings, components.sleep_impl());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connector the first EKS Auth call uses is the one built with the
    /// SDK client (same timeout key), not a new one built inside the call.
    #[tokio::test]
    async fn tls_is_set_up_with_the_client_for_the_timeouts_calls_use() {
        use aws_credential_types::Credentials;
        use aws_credential_types::provider::SharedCredentialsProvider;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (answered, mut calls) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = answered.send(());
            }
        });
        let client = HttpsClient::new(None);
        let eksauth = crate::eksauth::EksAuth::with_http_client(
            crate::eksauth::EksAuthConfig {
                cluster_name: "c".into(),
                endpoint: Some(format!("http://{addr}")),
                region: Some("us-west-2".into()),
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(30),
                max_attempts: 1,
                credentials: Some(SharedCredentialsProvider::new(Credentials::new(
                    "AKIDTEST", "secret", None, None, "test",
                ))),
            },
            Some(client.shared()),
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
        .await;
        assert_eq!(client.connectors_built(), 1, "TLS set up with the client");
        assert!(eksauth.assume("t").await.is_err());
        calls.recv().await.expect("the call reached the listener");
        assert_eq!(
            client.connectors_built(),
            1,
            "the call used the connector built at start"
        );
    }

    fn tmp(name: &str, content: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("pia-ca-{}-{name}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn flag_wins_and_empty_env_is_unset() {
        let env: fn(&str) -> Option<String> = |k| (k == ENV).then(|| "/env.pem".to_owned());
        let none: fn(&str) -> Option<String> = |_| Some(String::new());
        assert_eq!(
            CaBundle::path_from(Some(Path::new("/flag.pem")), env),
            Some(PathBuf::from("/flag.pem"))
        );
        assert_eq!(
            CaBundle::path_from(None, env),
            Some(PathBuf::from("/env.pem"))
        );
        assert_eq!(CaBundle::path_from(None, none), None);
    }

    #[test]
    fn unusable_files_are_errors_that_name_the_file() {
        let missing = std::env::temp_dir().join("pia-ca-does-not-exist.pem");
        let e = CaBundle::load(&missing).unwrap_err();
        assert!(e.to_string().contains("pia-ca-does-not-exist.pem"), "{e}");

        let empty = tmp("empty.pem", "no PEM here\n");
        assert!(matches!(
            CaBundle::load(&empty),
            Err(CaBundleError::Empty { .. })
        ));

        let garbage = tmp(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        assert!(CaBundle::load(&garbage).is_err());
        let _ = std::fs::remove_file(empty);
        let _ = std::fs::remove_file(garbage);
    }
}
