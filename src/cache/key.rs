//! Cache keys: who may share a cached credential.
//!
//! Invariant: a key derives from a *verified* identity or from the exact
//! token ([`CacheKey::for_request`] is the only constructor used on the
//! request path); never from unverified claims.

use std::sync::Arc;

use crate::cli::CacheScope;
use crate::token::{Identity, TokenHash};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// Unverified token: only byte-equal tokens share a credential.
    Token(TokenHash),
    /// Verified token: one credential per pod (the agent serves one cluster).
    Pod {
        namespace: Arc<str>,
        service_account: Arc<str>,
        pod_uid: Arc<str>,
    },
    /// Verified token, `--cache-scope service-account`.
    ServiceAccount {
        namespace: Arc<str>,
        service_account: Arc<str>,
    },
}

impl CacheKey {
    /// The only place keys are made. `identity` must come from a verified
    /// signature; without one the key is the token itself.
    pub fn for_request(hash: TokenHash, identity: Option<&Identity>, scope: CacheScope) -> Self {
        match (identity, scope) {
            (Some(id), CacheScope::ServiceAccount) => CacheKey::ServiceAccount {
                namespace: id.namespace.as_str().into(),
                service_account: id.service_account.as_str().into(),
            },
            (
                Some(Identity {
                    namespace,
                    service_account,
                    pod_uid: Some(uid),
                    ..
                }),
                CacheScope::Pod,
            ) => CacheKey::Pod {
                namespace: namespace.as_str().into(),
                service_account: service_account.as_str().into(),
                pod_uid: uid.as_str().into(),
            },
            _ => CacheKey::Token(hash),
        }
    }
}

/// Who is asking, for logs only (may come from unverified claims).
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub namespace: Option<Arc<str>>,
    pub service_account: Option<Arc<str>>,
    pub pod: Option<Arc<str>>,
}

/// A token the cache may use to fetch or refresh.
#[derive(Clone)]
pub struct TokenRef {
    pub raw: Arc<str>,
    pub hash: TokenHash,
    /// Token `exp` in epoch seconds: a token past it cannot refresh.
    pub expires: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_come_from_unverified_claims() {
        let hash = TokenHash::of("t");
        assert_eq!(
            CacheKey::for_request(hash, None, CacheScope::ServiceAccount),
            CacheKey::Token(hash)
        );
        let id = Identity {
            namespace: "ns".into(),
            service_account: "sa".into(),
            pod_name: Some("p".into()),
            pod_uid: None,
            node_name: None,
        };
        assert_eq!(
            CacheKey::for_request(hash, Some(&id), CacheScope::Pod),
            CacheKey::Token(hash),
            "a verified token without a pod uid falls back to the token"
        );
    }
}
