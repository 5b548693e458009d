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

pub use set::{Key, parse_jwks};
pub use source::{KeySource, resolve_source};
pub use store::{KeyStore, KeyStoreConfig};

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error(
        "invalid key source {0:?}: expected auto, none, apiserver, file:<path> or an http(s) issuer URL"
    )]
    BadSource(String),
    #[error("apiserver key source needs KUBERNETES_SERVICE_HOST/PORT or --kube-api-url")]
    NoApiServer,
    #[error(
        "--jwks-source file: needs --token-issuer (the issuer of verified tokens is always checked)"
    )]
    NoIssuer,
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    CaBundle(#[from] crate::https::CaBundleError),
    #[error(transparent)]
    Fetch(#[from] crate::https::GetError),
    #[error("the issuer's discovery document has no jwks_uri")]
    NoJwksUri,
    #[error("parsing {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the key set holds no usable (RSA or EC P-256/P-384) key")]
    NoUsableKeys,
    #[error("the last-known-good copy names no issuer")]
    NoPersistedIssuer,
}

impl JwksError {
    /// The key source answered with this HTTP status.
    pub fn status(&self) -> Option<u16> {
        match self {
            JwksError::Fetch(e) => e.status(),
            _ => None,
        }
    }
}

pub enum KeyLookup {
    Found(Arc<Key>),
    /// Keys are loaded, and a refetch (if one was allowed) did not bring
    /// this kid.
    Unknown,
    /// No key set was ever loaded (source down, nothing persisted).
    NoKeys,
}
