//! Where signing keys come from (`--jwks-source`), and fetching them.
//!
//! - `auto` (the default): `apiserver` when the agent runs in a pod with a
//!   ServiceAccount (`KUBERNETES_SERVICE_HOST` set, or `--kube-api-url`,
//!   and a `token` in `--service-account-dir`), else `none`;
//! - `none`: no local verification (upstream's behaviour);
//! - `apiserver`: `GET <kube-api>/.well-known/openid-configuration` (for
//!   the `issuer`) and `GET <kube-api>/openid/v1/jwks`, with the mounted
//!   ServiceAccount token (re-read per fetch: the kubelet rotates it) and
//!   trusting the mounted `ca.crt` (RBAC: `system:service-account-issuer-discovery`,
//!   bound to every ServiceAccount by Kubernetes' bootstrap policy);
//! - an issuer URL: `GET <issuer>/.well-known/openid-configuration` →
//!   `jwks_uri`; the expected `iss` is the URL;
//! - `file:<path>`: a JWKS document, re-read when its mtime changes
//!   (`--token-issuer` required).
//!
//! Every fetch goes through the agent's one HTTPS client
//! ([`crate::https::HttpsClient`]: trust store, proxy, timeouts, 1 MiB cap).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;

use super::JwksError;
use crate::https::HttpsClient;

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
    let api_server = |base_url: Option<String>| {
        base_url.map(|base_url| KeySource::ApiServer {
            base_url,
            sa_dir: sa_dir.to_owned(),
        })
    };
    let base_url = || {
        kube_api_url.map(str::to_owned).or_else(|| {
            let host = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty())?;
            let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
            Some(if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            })
        })
    };
    match spec {
        "none" => Ok(None),
        // In a pod with a ServiceAccount token: the API server's keys.
        "auto" if sa_dir.join("token").is_file() => Ok(api_server(base_url())),
        "auto" => Ok(None),
        "apiserver" => api_server(base_url())
            .map(Some)
            .ok_or(JwksError::NoApiServer),
        s if s.starts_with("file:") => Ok(Some(KeySource::File(PathBuf::from(&s[5..])))),
        s if s.starts_with("https://") || s.starts_with("http://") => {
            Ok(Some(KeySource::Issuer { url: s.to_owned() }))
        }
        other => Err(JwksError::BadSource(other.to_owned())),
    }
}

/// What one fetch brought: the JWKS document and, when the source says,
/// the issuer whose tokens the keys sign.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub jwks: Bytes,
    pub issuer: Option<String>,
}

/// The part of an OIDC discovery document we read.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    #[serde(default)]
    jwks_uri: Option<String>,
}

/// A key source with what fetching from it needs.
pub struct Fetcher {
    source: KeySource,
    /// For HTTP(S) sources: the issuer's trust, or the API server's own CA.
    client: HttpsClient,
    /// mtime of the file at the last read (file sources).
    file_mtime: Mutex<Option<SystemTime>>,
}

impl Fetcher {
    pub fn new(source: KeySource, client: HttpsClient) -> Self {
        Self {
            source,
            client,
            file_mtime: Mutex::new(None),
        }
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

    pub async fn fetch(&self) -> Result<Fetched, JwksError> {
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
                Ok(Fetched {
                    jwks: doc.into(),
                    issuer: None,
                })
            }
            KeySource::Issuer { url } => {
                let discovery = self.discovery(url, None).await?;
                let jwks_uri = discovery.jwks_uri.ok_or(JwksError::NoJwksUri)?;
                Ok(Fetched {
                    jwks: self.client.get(&jwks_uri, None).await?,
                    issuer: Some(url.clone()),
                })
            }
            KeySource::ApiServer { base_url, sa_dir } => {
                let token_path = sa_dir.join("token");
                let token = tokio::fs::read_to_string(&token_path)
                    .await
                    .map_err(|source| JwksError::Io {
                        path: token_path,
                        source,
                    })?;
                let token = Some(token.trim());
                // The issuer is the cluster's (EKS: the public OIDC URL), not
                // the API server's address; its keys are fetched from the API
                // server all the same (the issuer URL may be unreachable from
                // the node).
                let discovery = self.discovery(base_url, token).await?;
                let url = format!("{}/openid/v1/jwks", base_url.trim_end_matches('/'));
                Ok(Fetched {
                    jwks: self.client.get(&url, token).await?,
                    issuer: Some(discovery.issuer),
                })
            }
        }
    }

    async fn discovery(&self, base: &str, bearer: Option<&str>) -> Result<Discovery, JwksError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            base.trim_end_matches('/')
        );
        let doc = self.client.get(&url, bearer).await?;
        serde_json::from_slice(&doc).map_err(|source| JwksError::Json { what: url, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa_dir(with_token: bool) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pia-sa-{}-{with_token}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if with_token {
            std::fs::write(dir.join("token"), "t").unwrap();
        }
        dir
    }

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

    /// `auto` is the API server exactly when the agent runs in a pod with
    /// a ServiceAccount token; anywhere else, no local verification.
    #[test]
    fn auto_means_in_a_pod_with_a_service_account() {
        let in_pod = |k: &str| (k == "KUBERNETES_SERVICE_HOST").then(|| "fd00::1".to_owned());
        let (with, without) = (sa_dir(true), sa_dir(false));
        assert_eq!(
            resolve_source("auto", None, &with, in_pod).unwrap(),
            Some(KeySource::ApiServer {
                base_url: "https://[fd00::1]:443".into(),
                sa_dir: with.clone()
            })
        );
        assert_eq!(
            resolve_source("auto", None, &without, in_pod).unwrap(),
            None
        );
        assert_eq!(resolve_source("auto", None, &with, |_| None).unwrap(), None);
        assert_eq!(
            resolve_source("auto", Some("https://api:6443"), &with, |_| None).unwrap(),
            Some(KeySource::ApiServer {
                base_url: "https://api:6443".into(),
                sa_dir: with.clone()
            }),
            "--kube-api-url stands in for the service variables"
        );
        let _ = std::fs::remove_dir_all(with);
        let _ = std::fs::remove_dir_all(without);
    }
}
