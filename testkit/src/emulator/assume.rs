//! The `AssumeRoleForPodIdentity` operation.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::seconds::Ended;
use super::{ACCOUNT_ID, ApiError, Emulator, RawResponse, api_error, error_for_code, tokens};
use crate::issuer::uuid;

/// What one call answers.
pub(crate) enum Answer {
    Ok(Value),
    Err(ApiError),
    Raw(RawResponse),
    /// Close the connection without a response.
    Drop,
}

impl Emulator {
    pub(crate) async fn assume(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        cluster: &str,
    ) -> Answer {
        let second = self.clock.now_ms() / 1000;
        self.per_second.started(second);
        let answer = self.answer(parts, body, cluster).await;
        self.per_second.ended(
            second,
            match &answer {
                Answer::Ok(_) => Ended::Success,
                Answer::Err(e) if e.code == "ThrottlingException" => Ended::Throttled,
                _ => Ended::Error,
            },
        );
        answer
    }

    async fn answer(&self, parts: &http::request::Parts, body: &[u8], cluster: &str) -> Answer {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.send_modify(|n| *n += 1);
        let faults = self.faults();
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.drop_connection {
            return Answer::Drop;
        }
        let akid = match self.check_sigv4(parts, body) {
            Ok(akid) => akid,
            Err(e) => return Answer::Err(e),
        };
        {
            let mut seen = self.access_key_ids.lock().expect("emulator lock");
            if !seen.contains(&akid) {
                seen.push(akid);
            }
        }
        if let Some(raw) = faults.raw_response.clone() {
            return Answer::Raw(raw);
        }
        if let Some(per_s) = faults.throttle_above_per_s
            && !self.within_rate(per_s)
        {
            self.throttled.fetch_add(1, Ordering::SeqCst);
            return Answer::Err(error_for_code("ThrottlingException"));
        }
        if let Some(code) = &faults.force_error {
            return Answer::Err(error_for_code(code));
        }
        if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
            return Answer::Err(error_for_code(
                faults
                    .error_code
                    .as_deref()
                    .unwrap_or("InternalServerException"),
            ));
        }
        match self.issue(body, cluster, &faults) {
            Ok(v) => {
                self.successes.fetch_add(1, Ordering::SeqCst);
                Answer::Ok(v)
            }
            Err(e) => Answer::Err(e),
        }
    }

    fn issue(&self, body: &[u8], cluster: &str, faults: &super::Faults) -> Result<Value, ApiError> {
        let valid_name = !cluster.is_empty()
            && cluster.len() <= 100
            && cluster.starts_with(|c: char| c.is_ascii_alphanumeric())
            && cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(api_error(
                400,
                "InvalidParameterException",
                "clusterName is invalid",
            ));
        }
        if self.cluster_name.as_deref().is_some_and(|c| c != cluster) {
            return Err(api_error(
                404,
                "ResourceNotFoundException",
                format!("No cluster found for name: {cluster}."),
            ));
        }
        #[derive(Deserialize)]
        struct Input {
            token: Option<String>,
        }
        let input: Input = serde_json::from_slice(body).map_err(|_| {
            api_error(
                400,
                "InvalidRequestException",
                "request body is not valid JSON",
            )
        })?;
        let raw = input
            .token
            .filter(|t| t.split('.').count() == 3)
            .ok_or_else(|| api_error(400, "InvalidParameterException", "token must be a JWT"))?;
        let now = self.now_secs();
        let pod = tokens::check(&self.issuer, &raw, now)?;
        let assoc = self
            .associations
            .read()
            .expect("emulator lock")
            .get(&(pod.namespace.clone(), pod.service_account.clone()))
            .cloned()
            .ok_or_else(|| {
                api_error(404, "ResourceNotFoundException", format!(
                    "Pod Identity Association not found for namespace {} and service account {}.",
                    pod.namespace, pod.service_account
                ))
            })?;
        let lifetime_s = faults.credential_lifetime_s.unwrap_or_else(|| {
            self.credential_lifetime
                .read()
                .expect("emulator lock")
                .as_secs() as i64
        });
        let role_name = assoc.role_arn.rsplit('/').next().unwrap_or("role");
        let session: String = format!("eks-{cluster}-{}-{}", pod.pod_name, uuid())
            .chars()
            .take(64)
            .collect();
        let role_arn = faults.role_arn.clone().unwrap_or_else(|| {
            format!("arn:aws:sts::{ACCOUNT_ID}:assumed-role/{role_name}/{session}")
        });
        let mut answer = json!({
            "subject": {"namespace": pod.namespace, "serviceAccount": pod.service_account},
            "audience": "pods.eks.amazonaws.com",
            "podIdentityAssociation": {
                "associationArn": format!("arn:aws:eks:{}:{ACCOUNT_ID}:podidentityassociation/{cluster}/{}", self.region, assoc.association_id),
                "associationId": assoc.association_id,
            },
            "assumedRoleUser": {
                "arn": role_arn,
                "assumeRoleId": format!("AROA{}:{session}", random_upper(17)),
            },
            "credentials": {
                "sessionToken": fake_session_token(),
                "secretAccessKey": STANDARD.encode(rand::random::<[u8; 30]>()),
                "accessKeyId": format!("ASIA{}", random_upper(16)),
                "expiration": faults
                    .credential_expiration
                    .map_or(json!(now + lifetime_s), |e| json!(e)),
            },
        });
        if let (Some(field), Some(obj)) = (&faults.omit_field, answer.as_object_mut()) {
            obj.remove(field);
        }
        Ok(answer)
    }
}

fn random_upper(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..n)
        .map(|_| ALPHABET[rand::random::<u8>() as usize % ALPHABET.len()] as char)
        .collect()
}

/// As long as a real STS session token (~1 KB).
fn fake_session_token() -> String {
    let mut raw = Vec::with_capacity(720);
    while raw.len() < 720 {
        raw.extend_from_slice(&rand::random::<[u8; 32]>());
    }
    format!("IQoJb3JpZ2luX2VjE{}", STANDARD.encode(raw))
}
