//! What a pod gets when credentials cannot be had: the policy's boundary.
//! Statuses are chosen in one place, the endpoint's `RequestError::status`.

use crate::eksauth::EksAuthError;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// What EKS Auth answered, or why it could not be reached.
    #[error(transparent)]
    EksAuth(#[from] EksAuthError),
    /// The node's call queue is full ([`super::Gate`]): refused at once
    /// (503, which SDKs retry) rather than queued.
    #[error(
        "too many credential requests are waiting for EKS Auth ({queued} queued); retry shortly"
    )]
    Saturated { queued: usize },
    /// The credentials EKS Auth issued are already expired or expire within
    /// the serving margin: an SDK could not use them. `remaining_ms` is their
    /// time left when checked (negative when past), printed as upstream does.
    #[error("fetched credentials are expired or will expire within the next {:.2} seconds", *.remaining_ms as f64 / 1000.0)]
    Expiring { remaining_ms: i64 },
    /// The task fetching for this identity ended without a result (it
    /// panicked): its waiters get a 500, the next request a fresh fetch.
    #[error("fetching credentials failed unexpectedly; retry")]
    Aborted,
}

impl FetchError {
    /// The error code for metrics and logs.
    pub fn code(&self) -> &str {
        match self {
            FetchError::EksAuth(e) => e.code(),
            FetchError::Saturated { .. } => "QueueFull",
            FetchError::Expiring { .. } => "ExpiringCredentials",
            FetchError::Aborted => "FetchAborted",
        }
    }

    /// The EKS Auth error, if that is what it is.
    pub fn eksauth(&self) -> Option<&EksAuthError> {
        match self {
            FetchError::EksAuth(e) => Some(e),
            _ => None,
        }
    }

    /// See [`EksAuthError::is_irrecoverable`].
    pub fn is_irrecoverable(&self) -> bool {
        self.eksauth().is_some_and(EksAuthError::is_irrecoverable)
    }

    /// See [`EksAuthError::is_recoverable`].
    pub fn is_recoverable(&self) -> bool {
        self.eksauth().is_some_and(EksAuthError::is_recoverable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiring_is_printed_with_the_time_left() {
        assert_eq!(
            FetchError::Expiring {
                remaining_ms: 14_000
            }
            .to_string(),
            "fetched credentials are expired or will expire within the next 14.00 seconds"
        );
        assert_eq!(
            FetchError::Expiring {
                remaining_ms: -3_600_000
            }
            .to_string(),
            "fetched credentials are expired or will expire within the next -3600.00 seconds"
        );
    }
}
