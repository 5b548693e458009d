//! Signing keys for local token verification: where they come from, how they
//! rotate, and the last-known-good copy on disk.
//!
//! Sources (`--jwks-source`):
//! - `apiserver`: `GET <kube-api>/openid/v1/jwks` with the mounted
//!   ServiceAccount token and CA (RBAC: `system:service-account-issuer-discovery`);
//! - an issuer URL: `GET <issuer>/.well-known/openid-configuration` → `jwks_uri`;
//! - `file:<path>`: a JWKS document, re-read when its mtime changes.
//!
//! Refetch rules: an unknown `kid` triggers at most one fetch per
//! `--jwks-refetch-interval`; concurrent lookups queue on one async mutex and
//! re-check the key set after it, so a storm of unknown kids makes one fetch.
//! A periodic refresh picks up rotation without unknown kids. Every fetched
//! set is written to `--jwks-cache-path` (atomically) and loaded from there
//! at start when the source is unreachable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tracing::{info, warn};

use crate::metrics::Metrics;

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
    fn label(&self) -> &'static str {
        match self {
            KeySource::ApiServer { .. } => "apiserver",
            KeySource::Issuer { .. } => "issuer",
            KeySource::File(_) => "file",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error(
        "invalid key source {0:?}: expected none, apiserver, file:<path> or an http(s) issuer URL"
    )]
    BadSource(String),
    #[error("apiserver key source needs KUBERNETES_SERVICE_HOST/PORT or --kube-api-url")]
    NoApiServer,
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    #[error("fetching {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("fetching {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("fetching {url}: timed out")]
    Timeout { url: String },
    #[error("parsing {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the key set holds no usable (RSA or EC P-256/P-384) key")]
    NoUsableKeys,
}

/// One verification key.
pub struct Key {
    pub kid: String,
    /// The `alg` the key declares, or the family default (RS256 / ES256 / ES384).
    pub alg: Algorithm,
    pub decoding: DecodingKey,
}

impl Key {
    /// The token's `alg` must equal the key's.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.alg == alg
    }
}

pub enum KeyLookup {
    Found(Arc<Key>),
    Unknown,
    /// No key set was ever loaded (source down, nothing persisted).
    NoKeys,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn parse_alg(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        _ => return None,
    })
}

/// Parses a JWKS document; keys that are not asymmetric signing keys
/// (`oct`, `use: enc`, unknown `alg`, no `kid`) are skipped.
pub fn parse_jwks(doc: &[u8]) -> Result<HashMap<String, Arc<Key>>, JwksError> {
    let set: JwkSet = serde_json::from_slice(doc).map_err(|source| JwksError::Json {
        what: "JWKS".into(),
        source,
    })?;
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.kid.filter(|k| !k.is_empty()) else {
            continue;
        };
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let declared = match jwk.alg.as_deref() {
            Some(a) => match parse_alg(a) {
                Some(alg) => Some(alg),
                None => continue,
            },
            None => None,
        };
        let (decoding, alg) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => {
                let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
                    continue;
                };
                let alg = declared.unwrap_or(Algorithm::RS256);
                if !matches!(
                    alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                ) {
                    continue;
                }
                (DecodingKey::from_rsa_components(n, e), alg)
            }
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (Some(x), Some(y)) = (&jwk.x, &jwk.y) else {
                    continue;
                };
                let curve_alg = if crv == "P-256" {
                    Algorithm::ES256
                } else {
                    Algorithm::ES384
                };
                if declared.is_some_and(|a| a != curve_alg) {
                    continue;
                }
                (DecodingKey::from_ec_components(x, y), curve_alg)
            }
            _ => continue,
        };
        let Ok(decoding) = decoding else { continue };
        keys.insert(kid.clone(), Arc::new(Key { kid, alg, decoding }));
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(keys)
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub struct KeyStoreConfig {
    pub source: KeySource,
    pub ca_file: Option<PathBuf>,
    pub cache_path: Option<PathBuf>,
    pub refetch_interval: Duration,
}

pub struct KeyStore {
    config: KeyStoreConfig,
    client: HttpsClient,
    keys: RwLock<Arc<HashMap<String, Arc<Key>>>>,
    loaded: AtomicBool,
    removal_epoch: AtomicU64,
    /// Held while fetching; the time of the last fetch caused by an
    /// unknown kid (periodic and initial loads do not count, so a key
    /// published just after one is still fetched at once).
    fetch_lock: tokio::sync::Mutex<Option<Instant>>,
    file_mtime: std::sync::Mutex<Option<SystemTime>>,
    metrics: Arc<Metrics>,
}

impl KeyStore {
    pub fn new(config: KeyStoreConfig, metrics: Arc<Metrics>) -> Result<Self, JwksError> {
        let client = https_client(config.ca_file.as_deref())?;
        Ok(Self {
            config,
            client,
            keys: RwLock::new(Arc::new(HashMap::new())),
            loaded: AtomicBool::new(false),
            removal_epoch: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(None),
            file_mtime: std::sync::Mutex::new(None),
            metrics,
        })
    }

    /// True once any key set was loaded (from the source or from disk).
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Bumped whenever a key disappears, so tokens verified with it are
    /// verified again.
    pub fn removal_epoch(&self) -> u64 {
        self.removal_epoch.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<HashMap<String, Arc<Key>>> {
        self.keys.read().expect("key lock poisoned").clone()
    }

    pub async fn lookup(&self, kid: &str) -> KeyLookup {
        if let Some(k) = self.current().get(kid) {
            return KeyLookup::Found(k.clone());
        }
        {
            let mut last = self.fetch_lock.lock().await;
            // Someone else may have fetched while we queued.
            if let Some(k) = self.current().get(kid) {
                return KeyLookup::Found(k.clone());
            }
            let recent = last.is_some_and(|t| t.elapsed() < self.config.refetch_interval);
            if !recent {
                *last = Some(Instant::now());
                if let Err(err) = self.fetch_and_install().await {
                    warn!(error = %err, "refetching signing keys for an unknown key id failed");
                }
            }
        }
        match self.current().get(kid) {
            Some(k) => KeyLookup::Found(k.clone()),
            None if self.loaded() => KeyLookup::Unknown,
            None => KeyLookup::NoKeys,
        }
    }

    /// First load at start: the source, else the last-known-good copy.
    pub async fn initial_load(&self) -> Result<(), JwksError> {
        let _guard = self.fetch_lock.lock().await;
        match self.fetch_and_install().await {
            Ok(()) => Ok(()),
            Err(err) => {
                let Some(path) = &self.config.cache_path else {
                    return Err(err);
                };
                match tokio::fs::read(path).await {
                    Ok(doc) => match parse_jwks(&doc) {
                        Ok(keys) => {
                            warn!(error = %err, path = %path.display(), keys = keys.len(),
                                "key source unreachable; using the last-known-good keys");
                            self.install(keys);
                            self.metrics
                                .jwks_fetches
                                .with_label_values(&[self.config.source.label(), "persisted"])
                                .inc();
                            Ok(())
                        }
                        Err(perr) => {
                            warn!(error = %perr, path = %path.display(), "last-known-good keys unreadable");
                            Err(err)
                        }
                    },
                    Err(_) => Err(err),
                }
            }
        }
    }

    /// Periodic refresh: HTTP sources every `interval`, file sources when
    /// their mtime changes (checked every `interval`).
    pub fn spawn_refresh(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                if let KeySource::File(path) = &store.config.source {
                    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                    if mtime.is_some() && mtime == *store.file_mtime.lock().expect("mtime lock") {
                        continue;
                    }
                }
                if !store.loaded() {
                    if let Err(err) = store.initial_load().await {
                        warn!(error = %err, "signing keys still unavailable");
                    }
                    continue;
                }
                let _guard = store.fetch_lock.lock().await;
                if let Err(err) = store.fetch_and_install().await {
                    warn!(error = %err, "refreshing signing keys failed; keeping the current ones");
                }
            }
        })
    }

    async fn fetch_and_install(&self) -> Result<(), JwksError> {
        let label = self.config.source.label();
        let result = self.fetch().await.and_then(|doc| {
            let keys = parse_jwks(&doc)?;
            Ok((doc, keys))
        });
        match result {
            Ok((doc, keys)) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[label, "ok"])
                    .inc();
                self.install(keys);
                if let Some(path) = &self.config.cache_path
                    && let Err(err) = persist(path, &doc).await
                {
                    warn!(error = %err, "could not persist last-known-good keys");
                }
                Ok(())
            }
            Err(err) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[label, "error"])
                    .inc();
                Err(err)
            }
        }
    }

    fn install(&self, keys: HashMap<String, Arc<Key>>) {
        let mut guard = self.keys.write().expect("key lock poisoned");
        let removed = guard.keys().any(|kid| !keys.contains_key(kid));
        let changed = removed || keys.keys().any(|kid| !guard.contains_key(kid));
        if removed {
            self.removal_epoch.fetch_add(1, Ordering::AcqRel);
        }
        if changed || !self.loaded() {
            let mut kids: Vec<_> = keys.keys().cloned().collect();
            kids.sort();
            info!(?kids, "signing keys loaded");
        }
        self.metrics.jwks_keys.set(keys.len() as i64);
        *guard = Arc::new(keys);
        self.loaded.store(true, Ordering::Release);
    }

    async fn fetch(&self) -> Result<Bytes, JwksError> {
        match &self.config.source {
            KeySource::File(path) => {
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let doc = tokio::fs::read(path)
                    .await
                    .map_err(|source| JwksError::Io {
                        path: path.clone(),
                        source,
                    })?;
                *self.file_mtime.lock().expect("mtime lock") = mtime;
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
                // Re-read per fetch: the kubelet rotates the token.
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
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| JwksError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| JwksError::Io {
                path: path.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
            roots.add(cert).map_err(JwksError::Tls)?;
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

async fn persist(path: &Path, doc: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::write(&tmp, doc).await?;
    tokio::fs::rename(&tmp, path).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_unusable_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","kid":"hs","alg":"HS256","n":"AQAB","e":"AQAB"}
        ]}"#;
        assert!(matches!(parse_jwks(doc), Err(JwksError::NoUsableKeys)));
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
}
