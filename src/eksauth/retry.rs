//! What the SDK may retry inside one call.
//!
//! Standard retries stay for transient failures (5xx, timeouts, connection
//! errors), bounded by the SDK's retry quota. A throttled attempt is never
//! retried by the SDK: its retry would go out 0–1 s later past the node-wide
//! [gate](crate::policy::Gate), into the same empty EKS Auth bucket
//! (measured: about a third of all calls while throttled). The throttling
//! answer goes back to the policy instead, which halves the gate's rate and
//! opens the identity's backoff window, so every later attempt is paced.

use aws_sdk_eksauth::error::ProvideErrorMetadata;
use aws_sdk_eksauth::operation::assume_role_for_pod_identity::AssumeRoleForPodIdentityError;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority,
};

/// Forbids a retry of a throttling answer; no opinion on anything else.
#[derive(Debug, Default)]
pub struct NoThrottleRetry;

impl ClassifyRetry for NoThrottleRetry {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(err)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let throttled = OrchestratorError::as_operation_error(err)
            .and_then(|e| e.downcast_ref::<AssumeRoleForPodIdentityError>())
            .is_some_and(is_throttling);
        if throttled {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "no retry of throttling (the call gate paces)"
    }

    /// After every SDK classifier, so its verdict on throttling stands.
    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// The modeled variant, or its code in another case (which the SDK leaves
/// unmodeled but the agent reads as throttling, like upstream).
fn is_throttling(e: &AssumeRoleForPodIdentityError) -> bool {
    e.is_throttling_exception()
        || e.code()
            .is_some_and(|c| c.eq_ignore_ascii_case("ThrottlingException"))
}
