//! Keys: who may share a credential ([`CacheKey`]), and the token kept
//! to fetch and renew it with ([`TokenRef`]). Below the cache and the
//! policy, which both key their state by them.
//!
//! Invariant: a key derives from a *verified* identity or from the exact
//! token ([`CacheKey::for_request`] is the only constructor used on the
//! request path); never from unverified claims.

use std::sync::Arc;

use crate::cli::CacheScope;
use crate::token::{Identity, Subject, TokenHash};

/// A key is 33 bytes and allocates nothing: identities are kept as SHA-256
/// digests, which are as strict as the identities themselves (collision
/// resistance), and a cache of 10,000 pods holds no key strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// Unverified token: only byte-equal tokens share a credential.
    Token(TokenHash),
    /// Verified token: one credential per pod (the agent serves one
    /// cluster); digest of (namespace, serviceaccount, pod uid).
    Pod(TokenHash),
    /// Verified token, `--cache-scope service-account`; digest of
    /// (namespace, serviceaccount).
    ServiceAccount(TokenHash),
}

/// SHA-256 over NUL-separated parts: Kubernetes names and uids hold no NUL,
/// so distinct identities never share an input.
fn digest(parts: &[&str]) -> TokenHash {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    TokenHash(out)
}

impl CacheKey {
    /// The only place keys are made. `identity` must come from a verified
    /// signature; without one the key is the token itself.
    pub fn for_request(hash: TokenHash, identity: Option<&Identity>, scope: CacheScope) -> Self {
        match (identity, scope) {
            (Some(id), CacheScope::ServiceAccount) => {
                CacheKey::ServiceAccount(digest(&[&id.namespace, &id.service_account]))
            }
            (
                Some(Identity {
                    namespace,
                    service_account,
                    pod_uid: Some(uid),
                    ..
                }),
                CacheScope::Pod,
            ) => CacheKey::Pod(digest(&[namespace, service_account, uid])),
            _ => CacheKey::Token(hash),
        }
    }
}

/// A token the cache may use to fetch or refresh.
#[derive(Clone)]
pub struct TokenRef {
    pub raw: Arc<str>,
    pub hash: TokenHash,
    /// Token `exp` in epoch seconds: a token past it cannot refresh.
    pub expires: Option<i64>,
    /// Who it says it is, for logs (read once, at admission).
    pub subject: Arc<Subject>,
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
        let pod = |ns: &str, sa: &str, uid: &str| Identity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_uid: Some(uid.into()),
            ..id.clone()
        };
        let key = |i: &Identity| CacheKey::for_request(hash, Some(i), CacheScope::Pod);
        assert_eq!(key(&pod("ns", "sa", "u")), key(&pod("ns", "sa", "u")));
        assert_ne!(key(&pod("ns", "sa", "u")), key(&pod("ns", "sau", "")));
        assert_ne!(key(&pod("ns", "sa", "u")), key(&pod("nss", "a", "u")));
    }
}
