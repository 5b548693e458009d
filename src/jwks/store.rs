//! The key store: the current key set, its rotation, and the
//! last-known-good copy on disk.
//!
//! Refetch rules: an unknown `kid` triggers at most one fetch per
//! `--jwks-refetch-interval`; concurrent lookups queue on one async mutex and
//! re-check the key set after it, so a storm of unknown kids makes one fetch.
//! A periodic refresh picks up rotation without unknown kids. Every fetched
//! set is written to `--jwks-cache-path` (atomically) and loaded from there
//! at start when the source is unreachable.
//!
//! Invariant: [`KeyStore::generation`] changes whenever the key set does:
//! the first set loaded (tokens admitted unverified get checked), a kid
//! added (tokens whose kid was unknown get verified), removed, or given
//! other key material or another algorithm (tokens verified with the old
//! key are refused), or the issuer the source names changes. Admission
//! re-checks remembered tokens when it moves.
//!
//! The issuer travels with the keys: the API server's discovery document
//! or the issuer URL says whose tokens they sign, and the last-known-good
//! copy keeps it (an `issuer` member beside `keys`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::set::{Key, Keys, parse_jwks};
use super::source::{Fetched, Fetcher, KeySource};
use super::{JwksError, KeyLookup};
use crate::https::HttpsClient;
use crate::metrics::Metrics;

pub struct KeyStoreConfig {
    pub source: KeySource,
    /// The client HTTP(S) sources are fetched with (file sources ignore it).
    pub client: HttpsClient,
    pub cache_path: Option<PathBuf>,
    pub refetch_interval: Duration,
}

pub struct KeyStore {
    fetcher: Fetcher,
    cache_path: Option<PathBuf>,
    refetch_interval: Duration,
    keys: RwLock<Arc<Keys>>,
    /// The issuer the source names for these keys, if it names one.
    issuer: RwLock<Option<Arc<str>>>,
    loaded: AtomicBool,
    generation: AtomicU64,
    /// Held while fetching; the time of the last fetch caused by an
    /// unknown kid (periodic and initial loads do not count, so a key
    /// published just after one is still fetched at once).
    fetch_lock: tokio::sync::Mutex<Option<Instant>>,
    /// When a failed fetch was last warned about: once a minute at most
    /// (every fetch is counted in `pod_identity_jwks_fetches_total`).
    warned: std::sync::Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl KeyStore {
    pub fn new(config: KeyStoreConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            fetcher: Fetcher::new(config.source, config.client),
            cache_path: config.cache_path,
            refetch_interval: config.refetch_interval,
            keys: RwLock::new(Arc::new(Keys::new())),
            issuer: RwLock::new(None),
            loaded: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(None),
            warned: std::sync::Mutex::new(None),
            metrics,
        }
    }

    /// True once any key set was loaded (from the source or from disk).
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// See the module invariant.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The issuer the key source names (API server discovery, issuer URL).
    pub fn issuer(&self) -> Option<Arc<str>> {
        self.issuer.read().expect("issuer lock poisoned").clone()
    }

    pub fn source(&self) -> &KeySource {
        self.fetcher.source()
    }

    fn current(&self) -> Arc<Keys> {
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
            let recent = last.is_some_and(|t| t.elapsed() < self.refetch_interval);
            if !recent {
                *last = Some(Instant::now());
                if let Err(err) = self.fetch_and_install().await {
                    self.warn_failed(&err, "refetching signing keys for an unknown key id failed");
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
        let err = match self.fetch_and_install().await {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        let Some(path) = &self.cache_path else {
            return Err(err);
        };
        let Ok(doc) = tokio::fs::read(path).await else {
            return Err(err);
        };
        match read_persisted(&doc, self.fetcher.source()) {
            Ok((keys, issuer)) => {
                warn!(error = %err, path = %path.display(), keys = keys.len(),
                    "key source unreachable; using the last-known-good keys");
                self.install(keys, issuer);
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[self.fetcher.source().label(), "persisted"])
                    .inc();
                Ok(())
            }
            Err(perr) => {
                warn!(error = %perr, path = %path.display(), "last-known-good keys unreadable");
                Err(err)
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
                store.refresh().await;
            }
        })
    }

    /// A failed fetch, at most once a minute, with what to do about a
    /// refusal.
    fn warn_failed(&self, err: &JwksError, what: &str) {
        {
            let mut last = self.warned.lock().expect("warn lock poisoned");
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let hint = match err.status() {
            Some(401) => {
                "the key source did not accept the agent's ServiceAccount token; tokens are forwarded to EKS Auth unverified"
            }
            Some(403) => {
                "the key source refused the agent's ServiceAccount: bind the ClusterRole system:service-account-issuer-discovery to it (daemonset/base does); tokens are forwarded to EKS Auth unverified"
            }
            _ => "tokens whose key is not loaded are forwarded to EKS Auth unverified",
        };
        warn!(error = %err, hint, "{what}");
    }

    /// One periodic refresh (tests call it directly instead of waiting).
    pub async fn refresh(&self) {
        if self.fetcher.file_unchanged() {
            return;
        }
        if !self.loaded() {
            if let Err(err) = self.initial_load().await {
                self.warn_failed(&err, "signing keys still unavailable");
            }
            return;
        }
        let _guard = self.fetch_lock.lock().await;
        if let Err(err) = self.fetch_and_install().await {
            self.warn_failed(
                &err,
                "refreshing signing keys failed; keeping the current ones",
            );
        }
    }

    async fn fetch_and_install(&self) -> Result<(), JwksError> {
        let label = self.fetcher.source().label();
        let result = self.fetcher.fetch().await.and_then(|fetched| {
            let keys = parse_jwks(&fetched.jwks)?;
            Ok((fetched, keys))
        });
        match result {
            Ok((fetched, keys)) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[label, "ok"])
                    .inc();
                self.install(keys, fetched.issuer.clone());
                if let Some(path) = &self.cache_path
                    && let Err(err) = persist(path, &fetched).await
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

    fn install(&self, keys: Keys, issuer: Option<String>) {
        let mut guard = self.keys.write().expect("key lock poisoned");
        let mut current_issuer = self.issuer.write().expect("issuer lock poisoned");
        let issuer_changed = current_issuer.as_deref() != issuer.as_deref();
        if issuer_changed {
            info!(
                issuer = issuer.as_deref(),
                "token issuer from the key source"
            );
            *current_issuer = issuer.map(Into::into);
        }
        let same = |old: &Key| {
            keys.get(&old.kid)
                .is_some_and(|new| new.fingerprint == old.fingerprint)
        };
        let replaced: Vec<&str> = guard
            .values()
            .filter(|old| !same(old))
            .map(|old| old.kid.as_str())
            .collect();
        let first = !self.loaded();
        let added = keys.keys().any(|kid| !guard.contains_key(kid));
        if first || added || issuer_changed || !replaced.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        if !replaced.is_empty() {
            warn!(kids = ?replaced, "signing keys removed or replaced; tokens verified with them are checked again");
        }
        if first || added || !replaced.is_empty() {
            let mut kids: Vec<_> = keys.keys().cloned().collect();
            kids.sort();
            info!(?kids, "signing keys loaded");
        }
        self.metrics.jwks_keys.set(keys.len() as i64);
        *guard = Arc::new(keys);
        self.loaded.store(true, Ordering::Release);
    }
}

/// The JWKS document as fetched, with the issuer added beside `keys`.
async fn persist(path: &Path, fetched: &Fetched) -> std::io::Result<()> {
    let doc = match &fetched.issuer {
        None => fetched.jwks.to_vec(),
        Some(issuer) => {
            let mut value: serde_json::Value = serde_json::from_slice(&fetched.jwks)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("issuer".into(), issuer.clone().into());
            }
            serde_json::to_vec(&value)?
        }
    };
    let tmp = path.with_extension("tmp");
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::write(&tmp, &doc).await?;
    tokio::fs::rename(&tmp, path).await
}

/// A last-known-good copy: its keys, and its issuer, which sources that
/// name one (API server, issuer URL) must find there.
fn read_persisted(doc: &[u8], source: &KeySource) -> Result<(Keys, Option<String>), JwksError> {
    #[derive(serde::Deserialize)]
    struct Persisted {
        #[serde(default)]
        issuer: Option<String>,
    }
    let keys = parse_jwks(doc)?;
    let persisted: Persisted = serde_json::from_slice(doc).map_err(|source| JwksError::Json {
        what: "last-known-good keys".into(),
        source,
    })?;
    match (source, persisted.issuer) {
        (KeySource::File(_), _) => Ok((keys, None)),
        (KeySource::Issuer { url }, _) => Ok((keys, Some(url.clone()))),
        (KeySource::ApiServer { .. }, Some(issuer)) => Ok((keys, Some(issuer))),
        (KeySource::ApiServer { .. }, None) => Err(JwksError::NoPersistedIssuer),
    }
}
