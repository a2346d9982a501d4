//! The payment lifecycle job: every `payments.lifecycle_interval_secs` it claims the provider
//! orders whose check is due ([`lifecycle::claim_due`]) and, for each,
//!
//! - expires it when it is past `expires_at`: asks the provider, applies a payment found, else
//!   closes the trade there and then here (`order.closed.v1`);
//! - reconciles it when it is still pending `payments.reconcile_after_secs` after checkout (or
//!   after the last check): a payment found by query is applied through the notification's own
//!   transition; otherwise it is checked again later (never after `expires_at`);
//! - finishes a refund an admin asked for whose provider has not answered finally yet (same
//!   refund number: the provider refunds once);
//! - refunds a payment that came after the order was closed, in full, with a refund number
//!   derived from the order (`order.late_payment_refunded.v1`; the buyer is told by the
//!   notifier).
//!
//! Several replicas may run it: a claim leases the order (its `payment_check_at` moves forward
//! in the claiming statement, rows locked by another claim are skipped), and every step is
//! idempotent at the provider and conditional here. A failed step is tried again after
//! `reconcile_after_secs`, doubled for each failure in a row (at most an hour apart).

use chrono::{DateTime, Duration, Utc};
use memberline_orders::lifecycle::{self, Closing, LateRefund, LifecycleError, Reconciled};
use memberline_orders::providers::{PaymentProvider, Payments};
use memberline_orders::refunds;
use memberline_orders::settle::Applied;
use memberline_platform::metrics::Metrics;
use memberline_platform::metrics::{LifecycleAction, LifecycleOutcome};
use memberline_platform::settings::PaymentSettings;
use memberline_schema::entities::order;
use memberline_schema::ids::OrderId;
use memberline_schema::states::{CloseReason, LateRefundStatus, OrderStatus, Provider};
use sea_orm::DatabaseConnection;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How long a claim keeps other replicas off an order: more than the longest provider call
/// with its retries.
fn lease(settings: &PaymentSettings) -> Duration {
    let call = Duration::milliseconds(settings.request_timeout_ms as i64);
    call * (settings.retry_attempts.max(1) as i32 + 1) * 3 + Duration::seconds(30)
}

/// A late refund, or an admin's refund, refused this many times in a row (not a timeout: a
/// business refusal, or an answer that did not verify) is marked failed for an operator.
const GIVE_UP_REFUSED_REFUND_AFTER: i32 = 5;

/// The job: what it needs, built once per process.
pub struct Lifecycle {
    db: DatabaseConnection,
    payments: Payments,
    settings: PaymentSettings,
    metrics: Arc<Metrics>,
}

impl Lifecycle {
    pub fn new(
        db: DatabaseConnection,
        payments: Payments,
        settings: PaymentSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            payments,
            settings,
            metrics,
        }
    }

    /// Runs passes every `payments.lifecycle_interval_secs` until `shutdown` fires. A pass in
    /// progress finishes its current order's step before stopping (each step is short and
    /// bounded by the provider timeouts; stopping between steps leaves nothing half done).
    pub async fn run(self, shutdown: CancellationToken) {
        let every = std::time::Duration::from_secs(self.settings.lifecycle_interval_secs.max(1));
        info!(
            interval_secs = every.as_secs(),
            "Payment lifecycle job started"
        );
        loop {
            match self.pass(&shutdown).await {
                Ok(0) => debug!("Payment lifecycle found nothing due"),
                Ok(n) => debug!(orders = n, "Payment lifecycle pass done"),
                Err(e) => warn!(error = %e, "Payment lifecycle pass failed; trying again later"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Claims due orders batch after batch and works on each; returns how many it handled.
    pub async fn pass(&self, shutdown: &CancellationToken) -> Result<usize, sea_orm::DbErr> {
        let mut handled = 0;
        let lease = lease(&self.settings);
        loop {
            if shutdown.is_cancelled() {
                return Ok(handled);
            }
            let batch = self.settings.lifecycle_batch_size.max(1);
            let due = lifecycle::claim_due(&self.db, batch, lease).await?;
            let claimed = due.len();
            for order in due {
                if shutdown.is_cancelled() {
                    // Unworked claims lapse with their lease; another pass takes them.
                    return Ok(handled);
                }
                // Each step renews the claim first: a slow batch must not let another replica
                // work on an order at the same time as this one.
                let Some(claimed_until) = order.payment_check_at else {
                    continue;
                };
                if !lifecycle::renew(&self.db, order.id, claimed_until, lease).await? {
                    debug!(
                        order_id = %order.id,
                        "Claim taken over by another replica; skipped"
                    );
                    continue;
                }
                self.step(&order).await;
                handled += 1;
            }
            if claimed < batch as usize {
                return Ok(handled);
            }
        }
    }

    /// One claimed order: whatever is due for it. Never fails: an error is logged, counted and
    /// the order checked again later (backing off while the provider keeps failing).
    async fn step(&self, order: &order::Model) {
        let Some(provider) = order.provider else {
            warn!(
                order_id = %order.id,
                "Claimed an order without a provider; skipped"
            );
            return;
        };
        let now = Utc::now();
        let Some(client) = self.payments.get(provider) else {
            warn!(
                order_id = %order.id, provider = %provider,
                "Provider is not enabled in this process; the order is checked again later"
            );
            self.retry_later(order.id, self.reconcile_after()).await;
            return;
        };
        let client = client.as_ref();
        let (action, result) = if order.status == OrderStatus::PendingPayment {
            if order.expires_at.is_none_or(|at| at <= now) {
                (LifecycleAction::Expire, self.expire(client, order).await)
            } else {
                (
                    LifecycleAction::Reconcile,
                    self.reconcile(client, order, now).await,
                )
            }
        } else if order.status == OrderStatus::RefundPending {
            (
                LifecycleAction::Refund,
                self.refund_pending(client, order).await,
            )
        } else if order.late_refund_status == Some(LateRefundStatus::Pending) {
            (
                LifecycleAction::LateRefund,
                self.refund(client, order).await,
            )
        } else {
            return;
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                self.failed(order, provider, action, &e).await;
                LifecycleOutcome::Error
            }
        };
        self.metrics.payment_lifecycle(provider, action, outcome);
    }

    /// A step without an answer: logged (ERROR when only an operator can fix it), and tried
    /// again later; a late refund the provider keeps refusing is given up as `failed`.
    async fn failed(
        &self,
        order: &order::Model,
        provider: Provider,
        action: LifecycleAction,
        e: &LifecycleError,
    ) {
        let attempts = self.retry_later(order.id, self.reconcile_after()).await;
        let needs_operator = match e {
            LifecycleError::Inconsistent(_) => true,
            LifecycleError::Provider(p) => !p.is_transient(),
            LifecycleError::Database(_) => false,
        };
        if !needs_operator {
            warn!(
                order_id = %order.id, order_no = %order.order_no, provider = %provider,
                action = action.as_str(), attempts, error = %e,
                "Payment lifecycle step failed; trying again later"
            );
            return;
        }
        error!(
            order_id = %order.id, order_no = %order.order_no, provider = %provider,
            action = action.as_str(), attempts, error = %e,
            "The provider refused a payment lifecycle step"
        );
        if action == LifecycleAction::LateRefund && attempts >= GIVE_UP_REFUSED_REFUND_AFTER {
            match lifecycle::give_up_late_refund(&self.db, order.id).await {
                Ok(()) => error!(
                    order_id = %order.id, order_no = %order.order_no, attempts,
                    "Late payment refund given up (late_refund_status = failed); an operator must refund it"
                ),
                Err(e) => {
                    warn!(order_id = %order.id, error = %e, "Could not mark the late refund failed")
                }
            }
        }
    }

    async fn expire(
        &self,
        client: &dyn PaymentProvider,
        order: &order::Model,
    ) -> Result<LifecycleOutcome, LifecycleError> {
        let closing =
            lifecycle::close(&self.db, client, &order.order_no, CloseReason::Expired).await?;
        let outcome = match closing {
            Closing::Closed => {
                info!(order_id = %order.id, order_no = %order.order_no, "Expired order closed at the provider and here");
                LifecycleOutcome::Closed
            }
            Closing::Paid(applied) => paid(order, &applied),
            Closing::NotPending(_) => LifecycleOutcome::NotPending,
        };
        Ok(outcome)
    }

    async fn reconcile(
        &self,
        client: &dyn PaymentProvider,
        order: &order::Model,
        now: DateTime<Utc>,
    ) -> Result<LifecycleOutcome, LifecycleError> {
        match lifecycle::reconcile(&self.db, client, &order.order_no).await? {
            Reconciled::Paid(applied) => Ok(paid(order, &applied)),
            Reconciled::Unpaid => {
                let next = now + self.reconcile_after();
                let next = order.expires_at.map_or(next, |at| next.min(at));
                self.reschedule(order.id, next).await;
                Ok(LifecycleOutcome::Unpaid)
            }
        }
    }

    async fn refund(
        &self,
        client: &dyn PaymentProvider,
        order: &order::Model,
    ) -> Result<LifecycleOutcome, LifecycleError> {
        let outcome = match lifecycle::refund_late(&self.db, client, order).await? {
            LateRefund::Refunded => {
                info!(order_id = %order.id, order_no = %order.order_no, "Late payment refunded");
                LifecycleOutcome::Refunded
            }
            LateRefund::Processing => {
                // Asked again, less and less often: a refund may stay processing for hours.
                let first = Duration::seconds(self.settings.lifecycle_interval_secs as i64);
                self.retry_later(order.id, first).await;
                LifecycleOutcome::Processing
            }
            LateRefund::Failed => {
                error!(
                    order_id = %order.id, order_no = %order.order_no,
                    "The provider did not refund a late payment (late_refund_status = failed); an operator must act"
                );
                LifecycleOutcome::Failed
            }
        };
        Ok(outcome)
    }

    /// A refund an admin asked for that has no final answer yet: asked again with the same
    /// refund number (the provider refunds once).
    async fn refund_pending(
        &self,
        client: &dyn PaymentProvider,
        order: &order::Model,
    ) -> Result<LifecycleOutcome, LifecycleError> {
        let Some(refund) = refunds::pending_of(&self.db, order.id).await? else {
            return Err(LifecycleError::Inconsistent(format!(
                "order {} is refund_pending without a pending refund",
                order.order_no
            )));
        };
        let first = Duration::seconds(self.settings.lifecycle_interval_secs as i64);
        Ok(
            match refunds::at_provider(&self.db, client, order, &refund).await? {
                refunds::AtProvider::Refunded => LifecycleOutcome::Refunded,
                refunds::AtProvider::Failed(_) => LifecycleOutcome::Failed,
                refunds::AtProvider::Pending { refused: None } => {
                    self.retry_later(order.id, first).await;
                    LifecycleOutcome::Processing
                }
                refunds::AtProvider::Pending { refused: Some(why) } => {
                    let attempts = self.retry_later(order.id, self.reconcile_after()).await;
                    if attempts >= GIVE_UP_REFUSED_REFUND_AFTER {
                        refunds::fail(&self.db, &refund.out_refund_no, &why).await?;
                        LifecycleOutcome::Failed
                    } else {
                        LifecycleOutcome::Refused
                    }
                }
            },
        )
    }

    fn reconcile_after(&self) -> Duration {
        Duration::seconds(self.settings.reconcile_after_secs as i64)
    }

    async fn retry_later(&self, order_id: OrderId, base: Duration) -> i32 {
        match lifecycle::retry_later(&self.db, order_id, base).await {
            Ok(attempts) => attempts,
            Err(e) => {
                // The lease still expires: the order is checked again then.
                warn!(%order_id, error = %e, "Could not schedule the next payment check");
                0
            }
        }
    }

    async fn reschedule(&self, order_id: OrderId, at: DateTime<Utc>) {
        if let Err(e) = lifecycle::schedule(&self.db, order_id, at).await {
            // The lease still expires: the order is checked again then.
            warn!(%order_id, error = %e, "Could not schedule the next payment check");
        }
    }
}

/// The metric outcome of a payment found by query, logged as a notification's would be.
fn paid(order: &order::Model, applied: &Applied) -> LifecycleOutcome {
    match applied {
        Applied::Paid { .. } => {
            info!(order_id = %order.id, order_no = %order.order_no, "Payment found by query and applied");
            LifecycleOutcome::Paid
        }
        Applied::AlreadyPaid { .. } => LifecycleOutcome::AlreadyPaid,
        // Refunded automatically by a later run of this job (logged where it was decided).
        Applied::LatePayment { .. } => LifecycleOutcome::LatePayment,
        Applied::NotEligible { .. } => LifecycleOutcome::NotEligible,
        // Logged and left to an operator where it was flagged (the order is no longer checked).
        Applied::Flagged { .. } => LifecycleOutcome::Flagged,
    }
}
