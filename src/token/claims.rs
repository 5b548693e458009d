//! What a token says: its header, its claims as golang-jwt's
//! `RegisteredClaims` and Kubernetes' `kubernetes.io` read them, and who it
//! says it is ([`Identity`] once verified, [`Subject`] for logs).

use serde::Deserialize;

/// The workload a *verified* token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    /// `kubernetes.io.node.name`: the node the pod was scheduled to.
    pub node_name: Option<String>,
}

/// Who a token says it is, for log lines only: read once at admission from
/// its (possibly unverified) claims, carried with the request and the
/// cached credential, never used to decide anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub pod: Option<String>,
}

impl Subject {
    pub fn of(claims: &Claims) -> Self {
        let (namespace, service_account) = claims
            .sub
            .as_deref()
            .and_then(service_account)
            .map(|(ns, sa)| (Some(ns.to_owned()), Some(sa.to_owned())))
            .unwrap_or_default();
        let pod = claims
            .kubernetes
            .as_ref()
            .and_then(|k| k.pod.as_ref())
            .and_then(|p| p.name.clone());
        Self {
            namespace,
            service_account,
            pod,
        }
    }
}

/// `system:serviceaccount:<namespace>:<name>` split, both parts non-empty
/// and the name without `:` (the one place this format is read).
pub fn service_account(sub: &str) -> Option<(&str, &str)> {
    let (namespace, name) = sub
        .strip_prefix("system:serviceaccount:")?
        .split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

/// Whether Go's `encoding/json` matches JSON member `key` to struct field
/// `field` (an ASCII name): `bytes.EqualFold`, where besides ASCII case
/// only U+017F (ſ) folds to an ASCII letter of our field names (`s`).
pub(crate) fn go_field_matches(key: &str, field: &str) -> bool {
    let mut k = key.chars();
    let mut f = field.chars();
    loop {
        match (k.next(), f.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) => {
                let a = if a == '\u{17f}' {
                    's'
                } else {
                    a.to_ascii_lowercase()
                };
                if a != b.to_ascii_lowercase() {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    /// `jwk`, `jku`, `x5u` or `x5c` present: a token asking to be checked
    /// with a key it names itself. Kubernetes never issues one.
    pub embeds_key: bool,
}

#[derive(Debug, Clone, Default)]
pub enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedRef {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KubernetesClaims {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod: Option<NamedRef>,
    #[serde(default)]
    pub serviceaccount: Option<NamedRef>,
    #[serde(default)]
    pub node: Option<NamedRef>,
}

#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Audience,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    /// `kubernetes.io`, when present and well-formed.
    pub kubernetes: Option<KubernetesClaims>,
    /// `kubernetes.io` present but not of the expected shape.
    pub kubernetes_malformed: bool,
}
