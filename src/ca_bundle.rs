//! `--ca-bundle <file>` / `AWS_CA_BUNDLE`: extra trusted roots for the
//! agent's AWS calls (EKS Auth, and STS or SSO if the credential chain uses
//! them), for ISO partitions and TLS-intercepting proxies.
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
use std::sync::RwLock;
use std::time::Duration;

use aws_smithy_http_client::Connector;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
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

    /// An SDK HTTP client trusting the system roots and this bundle.
    pub fn http_client(&self) -> SharedHttpClient {
        let mut trust = TrustStore::default();
        for cert in &self.certificates {
            trust.add_pem_certificate(cert.as_bytes());
        }
        let tls = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .expect("building a TLS context from a trust store cannot fail");
        SharedHttpClient::new(TrustingClient {
            tls,
            connectors: RwLock::new(HashMap::new()),
        })
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

/// What the SDK's default HTTPS client does (one connector, and so one
/// connection pool, per timeout setting; proxy from the environment), with
/// our trust store.
#[derive(Debug)]
struct TrustingClient {
    tls: TlsContext,
    connectors: RwLock<HashMap<TimeoutKey, SharedHttpConnector>>,
}

impl HttpClient for TrustingClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        if let Some(c) = self
            .connectors
            .read()
            .expect("connector cache lock")
            .get(&key)
        {
            return c.clone();
        }
        let mut builder = Connector::builder()
            .connector_settings(settings.clone())
            .proxy_config(ProxyConfig::from_env());
        builder.set_sleep_impl(components.sleep_impl());
        let connector = builder
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(self.tls.clone())
            .build();
        self.connectors
            .write()
            .expect("connector cache lock")
            .entry(key)
            .or_insert_with(|| SharedHttpConnector::new(connector))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
