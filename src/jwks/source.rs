//! Where signing keys come from (`--jwks-source`), and fetching them.
//!
//! - `apiserver`: `GET <kube-api>/openid/v1/jwks` with the mounted
//!   ServiceAccount token (re-read per fetch: the kubelet rotates it) and CA
//!   (RBAC: `system:service-account-issuer-discovery`);
//! - an issuer URL: `GET <issuer>/.well-known/openid-configuration` → `jwks_uri`;
//! - `file:<path>`: a JWKS document, re-read when its mtime changes.
//!
//! Documents are capped at 1 MiB and each HTTP fetch at 5 s.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::JwksError;

const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    ApiServer {
        /// `https://host:port`
        base_url: String,
        /// Mounted ServiceAccount directory holding `token` and `ca.crt`.
        sa_dir: PathBuf,
    },
    Issuer {
        url: String,
    },
    File(PathBuf),
}

impl KeySource {
    /// The `source` label of `pod_identity_jwks_fetches_total`.
    pub fn label(&self) -> &'static str {
        match self {
            KeySource::ApiServer { .. } => "apiserver",
            KeySource::Issuer { .. } => "issuer",
            KeySource::File(_) => "file",
        }
    }
}

/// Resolves `--jwks-source`. `env` supplies KUBERNETES_SERVICE_HOST/PORT
/// (an argument, so tests need no process environment).
pub fn resolve_source(
    spec: &str,
    kube_api_url: Option<&str>,
    sa_dir: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<KeySource>, JwksError> {
    match spec {
        "" | "none" => Ok(None),
        "apiserver" => {
            let base_url = match kube_api_url {
                Some(u) => u.to_owned(),
                None => {
                    let host = env("KUBERNETES_SERVICE_HOST").ok_or(JwksError::NoApiServer)?;
                    let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
                    if host.contains(':') {
                        format!("https://[{host}]:{port}")
                    } else {
                        format!("https://{host}:{port}")
                    }
                }
            };
            Ok(Some(KeySource::ApiServer {
                base_url,
                sa_dir: sa_dir.to_owned(),
            }))
        }
        s if s.starts_with("file:") => Ok(Some(KeySource::File(PathBuf::from(&s[5..])))),
        s if s.starts_with("https://") || s.starts_with("http://") => {
            Ok(Some(KeySource::Issuer { url: s.to_owned() }))
        }
        other => Err(JwksError::BadSource(other.to_owned())),
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A key source with what fetching from it needs.
pub struct Fetcher {
    source: KeySource,
    client: HttpsClient,
    /// mtime of the file at the last read (file sources).
    file_mtime: Mutex<Option<SystemTime>>,
}

impl Fetcher {
    /// `ca_file`: extra PEM roots for HTTPS sources, beside the system's.
    pub fn new(source: KeySource, ca_file: Option<&Path>) -> Result<Self, JwksError> {
        Ok(Self {
            source,
            client: https_client(ca_file)?,
            file_mtime: Mutex::new(None),
        })
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// True for a file source whose mtime has not changed since the last
    /// read: the periodic refresh skips it.
    pub fn file_unchanged(&self) -> bool {
        let KeySource::File(path) = &self.source else {
            return false;
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        mtime.is_some() && mtime == *self.file_mtime.lock().expect("mtime lock poisoned")
    }

    /// The raw JWKS document.
    pub async fn fetch(&self) -> Result<Bytes, JwksError> {
        match &self.source {
            KeySource::File(path) => {
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let doc = tokio::fs::read(path)
                    .await
                    .map_err(|source| JwksError::Io {
                        path: path.clone(),
                        source,
                    })?;
                *self.file_mtime.lock().expect("mtime lock poisoned") = mtime;
                Ok(doc.into())
            }
            KeySource::Issuer { url } => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    url.trim_end_matches('/')
                );
                #[derive(Deserialize)]
                struct Discovery {
                    jwks_uri: String,
                }
                let doc = self.get(&discovery, None).await?;
                let d: Discovery =
                    serde_json::from_slice(&doc).map_err(|source| JwksError::Json {
                        what: discovery.clone(),
                        source,
                    })?;
                self.get(&d.jwks_uri, None).await
            }
            KeySource::ApiServer { base_url, sa_dir } => {
                let token_path = sa_dir.join("token");
                let token = tokio::fs::read_to_string(&token_path)
                    .await
                    .map_err(|source| JwksError::Io {
                        path: token_path,
                        source,
                    })?;
                let url = format!("{}/openid/v1/jwks", base_url.trim_end_matches('/'));
                self.get(&url, Some(token.trim())).await
            }
        }
    }

    async fn get(&self, url: &str, bearer: Option<&str>) -> Result<Bytes, JwksError> {
        let http_err = |source: Box<dyn std::error::Error + Send + Sync>| JwksError::Http {
            url: url.to_owned(),
            source,
        };
        let mut req = http::Request::get(url).header(http::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Empty::new()).map_err(|e| http_err(e.into()))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| http_err(e.into()))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(JwksError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                });
            }
            Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(http_err)
        };
        tokio::time::timeout(FETCH_TIMEOUT, fut)
            .await
            .map_err(|_| JwksError::Timeout {
                url: url.to_owned(),
            })?
    }
}

fn https_client(ca_file: Option<&Path>) -> Result<HttpsClient, JwksError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem_err = |source| JwksError::Pem {
            path: path.to_owned(),
            source,
        };
        for cert in CertificateDer::pem_file_iter(path).map_err(pem_err)? {
            roots.add(cert.map_err(pem_err)?).map_err(JwksError::Tls)?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(JwksError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let sa = Path::new("/sa");
        let env = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".to_owned()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_owned()),
            _ => None,
        };
        assert_eq!(resolve_source("none", None, sa, env).unwrap(), None);
        assert_eq!(
            resolve_source("apiserver", None, sa, env).unwrap(),
            Some(KeySource::ApiServer {
                base_url: "https://10.0.0.1:443".into(),
                sa_dir: sa.into()
            })
        );
        assert_eq!(
            resolve_source("file:/k.json", None, sa, env).unwrap(),
            Some(KeySource::File("/k.json".into()))
        );
        assert!(resolve_source("bogus", None, sa, env).is_err());
        assert!(resolve_source("apiserver", None, sa, |_| None).is_err());
    }

    #[test]
    fn a_ca_file_that_is_not_pem_keeps_its_error() {
        let path = std::env::temp_dir().join(format!("pia-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        let err = Fetcher::new(KeySource::File("/k.json".into()), Some(&path))
            .err()
            .expect("a truncated PEM is refused");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(err, JwksError::Pem { .. }), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }
}
