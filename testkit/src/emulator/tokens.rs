//! How the emulator checks a pod token, the way EKS Auth would: signature
//! against the issuer's published keys, audience, expiry, subject. Written
//! with jsonwebtoken's own JWK parser and `decode` and the claim structs
//! below, and with no code from the agent crate.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use super::{ApiError, api_error};
use crate::issuer::Issuer;

#[derive(Deserialize)]
struct PodClaims {
    sub: String,
    #[serde(default)]
    iss: Option<String>,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<KubeClaims>,
}

#[derive(Deserialize)]
struct KubeClaims {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    pod: Option<Named>,
    #[serde(default)]
    serviceaccount: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    name: Option<String>,
}

/// Who a valid token belongs to.
pub(crate) struct PodIdentity {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
}

fn invalid(message: &str) -> ApiError {
    api_error(400, "InvalidTokenException", message)
}

pub(crate) fn check(issuer: &Issuer, token: &str, now_secs: i64) -> Result<PodIdentity, ApiError> {
    let header = decode_header(token).map_err(|_| invalid("The token is invalid."))?;
    let jwks: JwkSet = serde_json::from_value(issuer.jwks())
        .map_err(|_| api_error(500, "InternalServerException", "issuer keys unreadable"))?;
    let jwk = header
        .kid
        .as_deref()
        .and_then(|kid| jwks.find(kid))
        .ok_or_else(|| invalid("The token is invalid."))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| invalid("The token is invalid."))?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&["pods.eks.amazonaws.com"]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    // Expiry follows the emulator's clock (tests move it), checked below.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let data = decode::<PodClaims>(token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidAudience => invalid("The token audience is invalid."),
            _ => invalid("The token is invalid."),
        }
    })?;
    let claims = data.claims;
    // EKS Auth knows the cluster's OIDC issuer.
    if claims.iss.as_deref() != Some(issuer.url()) {
        return Err(invalid("The token issuer is invalid."));
    }
    if claims.exp <= now_secs {
        return Err(api_error(
            400,
            "ExpiredTokenException",
            "The token has expired.",
        ));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now_secs + 60) {
        return Err(invalid("The token is not valid yet."));
    }
    let (namespace, service_account) = claims
        .sub
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| invalid("The token subject is invalid."))?;
    let kube = claims.kubernetes;
    let agrees = kube.as_ref().is_none_or(|k| {
        k.namespace.as_deref().is_none_or(|n| n == namespace)
            && k.serviceaccount
                .as_ref()
                .and_then(|s| s.name.as_deref())
                .is_none_or(|n| n == service_account)
    });
    if !agrees {
        return Err(invalid("The token subject is invalid."));
    }
    let pod_name = kube
        .and_then(|k| k.pod)
        .and_then(|p| p.name)
        .unwrap_or_default();
    Ok(PodIdentity {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name,
    })
}
