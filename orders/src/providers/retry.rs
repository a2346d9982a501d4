//! Bounded retries of idempotent provider calls (query, close, refund with the same number):
//! a few quick attempts with jittered exponential backoff, only after errors that
//! [`PaymentError::is_transient`] allows. A refusal or an unverifiable answer is never repeated.

use crate::providers::PaymentError;
use backon::{ExponentialBuilder, Retryable};
use std::future::Future;
use std::time::Duration;

/// Runs `call` up to `attempts` times.
pub(crate) async fn idempotent<T, F, Fut>(attempts: usize, call: F) -> Result<T, PaymentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PaymentError>>,
{
    call.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(attempts.saturating_sub(1))
            .with_jitter(),
    )
    .when(PaymentError::is_transient)
    .notify(
        |e, after| tracing::warn!(error = %e, retry_in = ?after, "provider call failed; retrying"),
    )
    .await
}
