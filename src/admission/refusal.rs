//! Why local verification refused a token, or could not decide.

/// Messages name no key material and quote nothing from the token but its
/// `alg` (the pod-facing body is `Service account token failed
/// verification: <message>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("token algorithm {0:?} is not allowed")]
    Algorithm(String),
    #[error("token header carries its own key")]
    EmbeddedKey,
    #[error("token has no key id")]
    MissingKid,
    #[error("token key id is unknown")]
    UnknownKid,
    #[error("no signing keys are loaded")]
    NoKeys,
    #[error("token algorithm does not match its key")]
    KeyMismatch,
    #[error("token signature is invalid")]
    Signature,
    #[error("token issuer is not trusted")]
    Issuer,
    #[error("token subject is not a service account")]
    Subject,
    #[error("token kubernetes.io claims disagree with its subject")]
    KubernetesClaims,
    #[error("token is bound to another node")]
    OtherNode,
    #[error("token has no node claim")]
    NoNodeClaim,
}

impl Refusal {
    /// The `outcome` label of `pod_identity_token_verifications_total` when
    /// the token is refused (and the `reason` of the logs).
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Algorithm(_) => "algorithm",
            Refusal::EmbeddedKey => "embedded_key",
            Refusal::MissingKid => "missing_kid",
            Refusal::UnknownKid => "unknown_kid",
            Refusal::NoKeys => "no_keys",
            Refusal::KeyMismatch => "key_mismatch",
            Refusal::Signature => "signature",
            Refusal::Issuer => "issuer",
            Refusal::Subject => "subject",
            Refusal::KubernetesClaims => "kubernetes_claims",
            Refusal::OtherNode => "other_node",
            Refusal::NoNodeClaim => "no_node_claim",
        }
    }

    /// Local keys could not decide; EKS Auth can (forwarded unless
    /// `--strict-verification`).
    pub fn inconclusive(&self) -> bool {
        matches!(
            self,
            Refusal::MissingKid | Refusal::UnknownKid | Refusal::NoKeys
        )
    }

    /// The `outcome` label when the token is forwarded instead.
    pub fn forwarded_as_str(&self) -> &'static str {
        match self {
            Refusal::MissingKid => "inconclusive_missing_kid",
            Refusal::UnknownKid => "inconclusive_unknown_kid",
            Refusal::NoKeys => "inconclusive_no_keys",
            other => other.as_str(),
        }
    }
}
