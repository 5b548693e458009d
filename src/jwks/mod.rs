//! Signing keys for local token verification.
//!
//! - [`source`]: where keys come from (`--jwks-source`: API server, OIDC
//!   issuer, file) and fetching them;
//! - [`set`]: the JWKS document, its usable keys, and the one table of
//!   allowed algorithms that token verification shares;
//! - [`store`]: the current set, rotation, refetch on unknown kids, and the
//!   last-known-good copy on disk.

pub mod set;
pub mod source;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

pub use set::{ALGORITHMS, Key, KeyType, algorithm, parse_jwks};
pub use source::{KeySource, resolve_source};
pub use store::{KeyStore, KeyStoreConfig};

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
    #[error("reading PEM certificates from {path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
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

pub enum KeyLookup {
    Found(Arc<Key>),
    /// Keys are loaded, and a refetch (if one was allowed) did not bring
    /// this kid.
    Unknown,
    /// No key set was ever loaded (source down, nothing persisted).
    NoKeys,
}
