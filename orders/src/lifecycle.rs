//! What happens to a provider order after checkout, besides its notification: expiry and
//! cancellation ([`close`]), reconciliation ([`reconcile`]) and the automatic refund of a payment
//! that came after the order was closed ([`refund_late`]). The workers' lifecycle job calls these
//! for due orders ([`claim_due`]); the gateway calls [`close`] for a buyer's cancel.
//!
//! Provider calls are made outside any database transaction; each database step is one short
//! transaction that locks the order row and changes it only from the state it expects, so a
//! notification, a query, an expiry and a cancel racing on one order leave one outcome.

use crate::providers::{
    CloseOutcome, PaymentError, PaymentProvider, RefundRequest, RefundState, TradeState,
};
use crate::settle::{self, Applied, Flag};
use crate::transitions;
use chrono::{DateTime, Duration, Utc};
use memberline_platform::outbox;
use memberline_schema::entities::order;
use memberline_schema::events::{Envelope, LatePaymentRefunded, OrderClosed};
use memberline_schema::ids::OrderId;
use memberline_schema::states::{CloseReason, LateRefundStatus, OrderStatus, Provider};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QuerySelect, Statement, TransactionTrait,
};

/// Why a lifecycle step could not finish; the job tries the order again later.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("provider: {0}")]
    Provider(#[from] PaymentError),
    #[error("database: {0}")]
    Database(#[from] DbErr),
    /// The provider contradicted itself (refused a close as "paid", then reported no payment).
    #[error("{0}")]
    Inconsistent(String),
}

/// What [`close`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Closed at the provider and here, with `order.closed.v1` in the outbox.
    Closed,
    /// The buyer paid before the close: the payment was applied as a notification would have.
    Paid(Applied),
    /// The order was no longer pending when we came to close it (paid or closed meanwhile).
    NotPending(OrderStatus),
}

/// Closes a pending order: first asks the provider (a payment found is applied, never closed
/// over; a trade the provider already closed, on its own timeout say, is not closed again), then
/// closes the trade there (Alipay's "trade does not exist" counts as closed: the buyer never
/// scanned), and only then closes it here. A trade the provider refuses to close is queried
/// again: paid → applied; closed or unknown → closed here.
pub async fn close(
    db: &DatabaseConnection,
    client: &dyn PaymentProvider,
    order_no: &str,
    reason: CloseReason,
) -> Result<Closing, LifecycleError> {
    let closed_there = match found(db, client, order_no).await? {
        Found::Payment(applied) => return Ok(Closing::Paid(applied)),
        Found::Closed => true,
        Found::Unpaid => false,
    };
    if !closed_there && client.close(order_no).await? == CloseOutcome::AlreadyPaid {
        match found(db, client, order_no).await? {
            Found::Payment(applied) => return Ok(Closing::Paid(applied)),
            Found::Closed => {}
            Found::Unpaid => {
                return Err(LifecycleError::Inconsistent(format!(
                    "{} refused to close {order_no}, but reports it waiting for payment",
                    client.provider()
                )));
            }
        }
    }
    close_locally(db, order_no, reason).await
}

/// What a query of a pending order's trade found.
enum Found {
    /// A payment, applied (or flagged) as a notification would have been.
    Payment(Applied),
    /// Closed at the provider, or never created there: nothing can be paid any more.
    Closed,
    /// Waiting for the buyer.
    Unpaid,
}

/// Queries the trade; a payment found is applied through the notification's transition. A
/// payment that does not match the order, or that the provider already refunded, is flagged on
/// the order for an operator, who alone decides what it means; the order is no longer checked.
async fn found(
    db: &DatabaseConnection,
    client: &dyn PaymentProvider,
    order_no: &str,
) -> Result<Found, LifecycleError> {
    let applied = match client.query(order_no).await? {
        TradeState::Paid(payment) => settle::queried_payment(db, client, &payment).await?,
        TradeState::Refunded(payment) => Applied::Flagged {
            order_id: None,
            flag: Flag::refunded_first(client.provider(), &payment.transaction_id),
        },
        TradeState::Closed => return Ok(Found::Closed),
        // WeChat's "order does not exist": nothing was created there, nothing can be paid.
        TradeState::NotFound if client.provider() == Provider::Wechat => {
            return Ok(Found::Closed);
        }
        // Alipay's "trade does not exist" is a code nobody scanned yet: it can still be paid
        // until it is closed (which Alipay then answers with "trade does not exist").
        TradeState::NotPaid | TradeState::NotFound => return Ok(Found::Unpaid),
    };
    if let Applied::Flagged { flag, .. } = &applied {
        flag_order(db, order_no, &flag.text).await?;
    }
    Ok(Found::Payment(applied))
}

/// Leaves a pending order to an operator: the flag says why, and the job stops checking it.
async fn flag_order(db: &DatabaseConnection, order_no: &str, flag: &str) -> Result<(), DbErr> {
    tracing::error!(
        order_no,
        flag,
        "A payment reported by the provider was not applied; the order waits for an operator"
    );
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET payment_flag = $2, payment_check_at = NULL, updated_at = now() \
         WHERE order_no = $1 AND status = 'pending_payment'",
        [order_no.into(), flag.into()],
    ))
    .await?;
    Ok(())
}

async fn close_locally(
    db: &DatabaseConnection,
    order_no: &str,
    reason: CloseReason,
) -> Result<Closing, LifecycleError> {
    let txn = db.begin().await?;
    let order = order::Entity::find()
        .filter(order::Column::OrderNo.eq(order_no))
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("order {order_no}")))?;
    let (Some(provider), OrderStatus::PendingPayment) = (order.provider, order.status) else {
        txn.rollback().await?;
        return Ok(Closing::NotPending(order.status));
    };
    let now = Utc::now();
    let history = match reason {
        CloseReason::Expired => "expired",
        CloseReason::Cancelled => "cancelled_by_buyer",
    };
    if !transitions::advance(
        &txn,
        order.id,
        OrderStatus::PendingPayment,
        OrderStatus::Closed,
        history,
        now,
    )
    .await?
    {
        return Err(DbErr::Custom("a locked pending order changed status".into()).into());
    }
    let event = OrderClosed {
        order_id: order.id,
        order_no: order.order_no.clone(),
        buyer_id: order.buyer_id,
        provider,
        reason,
        amount_fen: order.amount_fen,
        closed_at: now,
    };
    outbox::enqueue(&txn, &Envelope::new(event, order.correlation_id, None)).await?;
    txn.commit().await?;
    Ok(Closing::Closed)
}

/// What [`reconcile`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// A payment we had not heard of (or had): applied.
    Paid(Applied),
    /// Not paid yet.
    Unpaid,
}

/// Asks the provider about a pending order whose notification has not come (yet).
pub async fn reconcile(
    db: &DatabaseConnection,
    client: &dyn PaymentProvider,
    order_no: &str,
) -> Result<Reconciled, LifecycleError> {
    Ok(match found(db, client, order_no).await? {
        Found::Payment(applied) => Reconciled::Paid(applied),
        // Closed at the provider (its own timeout): closed here at expiry.
        Found::Closed | Found::Unpaid => Reconciled::Unpaid,
    })
}

/// What [`refund_late`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LateRefund {
    /// Refunded: `order.late_payment_refunded.v1` is in the outbox (or was, by an earlier run).
    Refunded,
    /// Accepted by the provider, not done yet: ask again later.
    Processing,
    /// The provider gave up on it: marked `failed` for an operator.
    Failed,
}

/// Refunds, in full, the late payment recorded on a closed order. The refund number is derived
/// from the order ([`settle::late_refund_no`]), so however often this runs (a retry, two
/// replicas, a crash between the provider's answer and our commit) the provider refunds once.
pub async fn refund_late(
    db: &DatabaseConnection,
    client: &dyn PaymentProvider,
    order: &order::Model,
) -> Result<LateRefund, LifecycleError> {
    let late = order.late_payment.as_ref().ok_or_else(|| {
        LifecycleError::Inconsistent(format!("order {} has no late payment", order.order_no))
    })?;
    let amount_fen = late["amount_fen"].as_i64().ok_or_else(|| {
        LifecycleError::Inconsistent(format!("late payment of {} has no amount", order.order_no))
    })?;
    let transaction_id = late["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let out_refund_no = settle::late_refund_no(&order.order_no);
    let request = RefundRequest {
        out_trade_no: order.order_no.clone(),
        out_refund_no: out_refund_no.clone(),
        refund_fen: amount_fen,
        total_fen: amount_fen,
        reason: "订单已关闭，款项原路退回 (order closed before payment)".to_owned(),
    };
    let state = client.refund(&request).await?;
    let (status, refund_id) = match state {
        RefundState::Processing => return Ok(LateRefund::Processing),
        RefundState::Succeeded { refund_id } => (LateRefundStatus::Refunded, refund_id),
        RefundState::Abnormal | RefundState::Closed => (LateRefundStatus::Failed, None),
        RefundState::NotFound => {
            return Err(LifecycleError::Inconsistent(format!(
                "{} answered a refund request for {} with no refund",
                client.provider(),
                order.order_no
            )));
        }
    };
    let now = Utc::now();
    let txn = db.begin().await?;
    let changed = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE orders SET late_refund_status = $2, late_refunded_at = $3, \
             late_refund_id = $4, updated_at = now() \
             WHERE id = $1 AND late_refund_status = 'pending'",
            [
                order.id.into(),
                status.as_str().into(),
                (status == LateRefundStatus::Refunded).then_some(now).into(),
                refund_id.clone().into(),
            ],
        ))
        .await?
        .rows_affected();
    if changed == 1 && status == LateRefundStatus::Refunded {
        let provider = order.provider.ok_or_else(|| {
            LifecycleError::Inconsistent(format!("order {} has no provider", order.order_no))
        })?;
        let event = LatePaymentRefunded {
            order_id: order.id,
            order_no: order.order_no.clone(),
            buyer_id: order.buyer_id,
            provider,
            transaction_id,
            out_refund_no,
            refund_id,
            amount_fen,
            refunded_at: now,
        };
        outbox::enqueue(&txn, &Envelope::new(event, order.correlation_id, None)).await?;
    }
    txn.commit().await?;
    Ok(if status == LateRefundStatus::Failed {
        LateRefund::Failed
    } else {
        LateRefund::Refunded
    })
}

/// Claims up to `batch` orders whose lifecycle check is due: pending provider orders (to
/// reconcile or expire), refunds still waiting for their provider, and closed orders with a late
/// payment to refund. Claiming moves each
/// one's `payment_check_at` to `now + lease`, so another replica skips it until then (and picks
/// it up again if this one died working on it); [`renew`] extends the claim before each step
/// and [`schedule`] / [`retry_later`] set the real next check.
pub async fn claim_due(
    db: &DatabaseConnection,
    batch: u32,
    lease: Duration,
) -> Result<Vec<order::Model>, DbErr> {
    order::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE orders SET payment_check_at = now() + make_interval(secs => $1) \
             WHERE id IN (SELECT id FROM orders \
                 WHERE (status IN ('pending_payment', 'refund_pending') \
                        OR late_refund_status = 'pending') \
                   AND payment_check_at <= now() \
                 ORDER BY payment_check_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
            [
                (lease.num_milliseconds() as f64 / 1000.0).into(),
                i64::from(batch).into(),
            ],
        ))
        .all(db)
        .await
}

/// Renews the claim on `order` just before working on it, if it is still ours: the claim
/// stored `claimed_until` in `payment_check_at`, and another replica that claimed the order
/// since (because this one was slow) stored another value. `false`: leave the order alone.
pub async fn renew(
    db: &DatabaseConnection,
    order_id: OrderId,
    claimed_until: DateTime<Utc>,
    lease: Duration,
) -> Result<bool, DbErr> {
    let renewed = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE orders SET payment_check_at = now() + make_interval(secs => $3) \
             WHERE id = $1 AND payment_check_at = $2",
            [
                order_id.into(),
                claimed_until.into(),
                (lease.num_milliseconds() as f64 / 1000.0).into(),
            ],
        ))
        .await?
        .rows_affected();
    Ok(renewed == 1)
}

/// Sets when the lifecycle job next looks at `order_id`, after a check that got a final
/// answer (the backoff starts over).
pub async fn schedule(
    db: &DatabaseConnection,
    order_id: OrderId,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET payment_check_at = $2, payment_check_attempts = 0 WHERE id = $1",
        [order_id.into(), at.into()],
    ))
    .await?;
    Ok(())
}

/// Schedules the next check of `order_id` after one without a final answer: `base` doubled
/// per such check in a row (at most 64 times, and at most an hour unless `base` is longer).
/// Returns how many checks in a row that makes.
pub async fn retry_later(
    db: &DatabaseConnection,
    order_id: OrderId,
    base: Duration,
) -> Result<i32, DbErr> {
    let base = base.num_milliseconds() as f64 / 1000.0;
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE orders SET payment_check_attempts = payment_check_attempts + 1, \
             payment_check_at = now() + make_interval(secs => \
                 least($2 * power(2, least(payment_check_attempts, 6)), greatest($2, 3600))) \
             WHERE id = $1 RETURNING payment_check_attempts",
            [order_id.into(), base.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get("", "payment_check_attempts")?,
        None => 0,
    })
}

/// Gives up the automatic refund of a late payment the provider keeps refusing: `failed`, for
/// an operator (who sees the refusal in the logs).
pub async fn give_up_late_refund(db: &DatabaseConnection, order_id: OrderId) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET late_refund_status = 'failed', updated_at = now() \
         WHERE id = $1 AND late_refund_status = 'pending'",
        [order_id.into()],
    ))
    .await?;
    Ok(())
}
