//! `--rotate-credentials` (hybrid nodes): the agent's own AWS credentials
//! come from the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//! `$HOME/.aws/credentials`), profile `[default]`, re-read every
//! `--credentials-reload-interval` (1 min), so a file rotated by the hybrid
//! node's credential process is picked up without a restart.
//!
//! The returned credentials expire one interval after the read; the SDK's
//! identity cache then asks again and we read the file again.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{self, ProvideCredentials, future};
use tracing::{info, warn};

#[derive(Debug)]
pub struct SharedFileCredentials {
    path: PathBuf,
    interval: Duration,
    last_key_id: std::sync::Mutex<Option<String>>,
}

impl SharedFileCredentials {
    pub fn new(path: PathBuf, interval: Duration) -> Self {
        Self {
            path,
            interval,
            last_key_id: std::sync::Mutex::new(None),
        }
    }

    pub fn from_env(env: &crate::env::Env, interval: Duration) -> Self {
        let path = env
            .var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env.var("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".aws/credentials")
            });
        Self::new(path, interval)
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the SDK's identity cache compares expiry with the real wall clock"
    )]
    async fn load(&self) -> provider::Result {
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            warn!(path = %self.path.display(), error = %e, "cannot read the shared credentials file");
            CredentialsError::not_loaded(e)
        })?;
        let profile = parse_default_profile(&text).ok_or_else(|| {
            CredentialsError::invalid_configuration(format!(
                "{}: no aws_access_key_id/aws_secret_access_key in [default]",
                self.path.display()
            ))
        })?;
        {
            let mut last = self.last_key_id.lock().expect("last key lock");
            if last.as_deref() != Some(profile.0.as_str()) {
                info!(path = %self.path.display(), access_key_id = %profile.0, "loaded node credentials from the shared credentials file");
                *last = Some(profile.0.clone());
            }
        }
        Ok(Credentials::new(
            profile.0,
            profile.1,
            profile.2,
            Some(SystemTime::now() + self.interval),
            "SharedFileCredentials",
        ))
    }
}

impl ProvideCredentials for SharedFileCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.load())
    }
}

/// `(access key id, secret, session token)` of `[default]` in an INI-style
/// AWS credentials file.
fn parse_default_profile(text: &str) -> Option<(String, String, Option<String>)> {
    let mut in_default = false;
    let (mut akid, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_default = section.trim() == "default";
            continue;
        }
        if !in_default {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => akid = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    Some((akid?, secret?, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_default_profile_only() {
        let text = "[other]\naws_access_key_id = X\naws_secret_access_key = Y\n\n[default]\n# c\naws_access_key_id=AKIDFAKE\naws_secret_access_key = s3cr3t\naws_session_token = tok\n";
        assert_eq!(
            parse_default_profile(text),
            Some(("AKIDFAKE".into(), "s3cr3t".into(), Some("tok".into())))
        );
        assert_eq!(
            parse_default_profile("[other]\naws_access_key_id=X\n"),
            None
        );
    }
}
