//! What happens to a provider order after checkout, besides its notification: expiry and
//! cancellation ([`close`]), reconciliation ([`reconcile`]) and the automatic refund of a payment
//! that came after the order was closed ([`refund_late`]). The workers' lifecycle job calls these
//! for due orders ([`claim_due`], with the other scheduling statements of
//! `crate::store::payment_checks`); the gateway calls [`close`] for a buyer's cancel.
//!
//! Provider calls are made outside any database transaction; each database step is one short
//! transaction that locks the order row and changes it only from the state it expects, so a
//! notification, a query, an expiry and a cancel racing on one order leave one outcome.

use crate::providers::{
    CloseOutcome, PaymentError, PaymentProvider, RefundRequest, RefundState, TradeState,
};
use crate::settle::{self, Applied, Flag};
use crate::store;
use crate::store::payment_checks;
use crate::store::transitions;
use chrono::Utc;
use memberline_platform::outbox;
use memberline_schema::entities::order;
use memberline_schema::events::{Envelope, LatePaymentRefunded, LateRefundWhy, OrderClosed};
use memberline_schema::states::{CloseReason, LateRefundStatus, OrderStatus, Provider};
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};

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
    payment_checks::flag(db, order_no, flag).await
}

async fn close_locally(
    db: &DatabaseConnection,
    order_no: &str,
    reason: CloseReason,
) -> Result<Closing, LifecycleError> {
    let txn = db.begin().await?;
    let order = store::orders::lock_by_no(&txn, order_no)
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
    let why: LateRefundWhy = serde_json::from_value(late["why"].clone()).unwrap_or_default();
    let out_refund_no = settle::late_refund_no(&order.order_no);
    let request = RefundRequest {
        out_trade_no: order.order_no.clone(),
        out_refund_no: out_refund_no.clone(),
        refund_fen: amount_fen,
        total_fen: amount_fen,
        reason: match why {
            LateRefundWhy::OrderClosed => "订单已关闭，款项原路退回 (order closed before payment)",
            LateRefundWhy::NotEligible => {
                "会员资格已变更，款项原路退回 (the plan could no longer be bought)"
            }
        }
        .to_owned(),
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
    let changed =
        payment_checks::end_late_refund(&txn, order.id, status, now, refund_id.clone()).await?;
    if changed && status == LateRefundStatus::Refunded {
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
            why,
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

pub use crate::store::payment_checks::{
    claim_due, give_up_late_refund, renew, retry_later, schedule,
};
