//! Refunds of paid orders (full today; a `refunds` row carries its amounts, so partial refunds
//! can come later). Shared by the gateway (an admin's refund, WeChat refund notifications) and
//! the workers' lifecycle job (provider refunds still waiting for an answer).
//!
//! - Balance, points, free and granted orders are refunded in one transaction ([`begin`]): the
//!   money or points go back with a ledger entry, the order becomes `refunded` with its history,
//!   the refund row is `succeeded`, and `order.refunded.v1` is in the outbox.
//! - WeChat / Alipay orders: [`begin`] records the refund (`pending`, number
//!   `<order_no>R<attempt>`) and moves the order to `refund_pending`; [`at_provider`] then asks
//!   the provider, outside any transaction. A success [`complete`]s it (the same one transaction
//!   as above, minus the ledger); a refund the provider says ended without the money going back
//!   (WeChat `ABNORMAL` / `CLOSED`) [`fail`]s it (the order is `paid` again, with a
//!   `refund_flag` for an operator). Anything else (processing, a timeout, an error answer)
//!   leaves it pending for the provider's notification or the lifecycle job, which asks again
//!   with the same number: the provider refunds once. A success that comes after all for a
//!   refund recorded as failed still completes it: the provider's word wins.

use crate::providers::{PaymentError, PaymentProvider, RefundRequest, RefundState};
use crate::store::refunds as store;
use crate::store::transitions;
use chrono::Utc;
use memberline_platform::outbox;
use memberline_schema::entities::{order, refund};
use memberline_schema::events::{Envelope, OrderRefunded, PlanSold};
use memberline_schema::ids::OrderId;
use memberline_schema::states::OrderStatus;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};

/// Why a refund cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("no order {0}")]
    OrderNotFound(OrderId),
    #[error("the order is {0}; only a paid order can be refunded")]
    NotRefundable(OrderStatus),
    #[error("{0} is not enabled, so its orders cannot be refunded now")]
    ProviderDisabled(memberline_schema::states::Provider),
    #[error(transparent)]
    Database(#[from] DbErr),
}

/// What [`begin`] did.
#[derive(Debug)]
pub enum Begun {
    /// Refunded in this transaction (no provider involved).
    Refunded {
        order: Box<order::Model>,
        refund: refund::Model,
    },
    /// Recorded; the provider must be asked ([`at_provider`]) once this transaction committed.
    AtProvider {
        order: Box<order::Model>,
        refund: refund::Model,
    },
}

/// The refund number of attempt `attempt` of an order: derived, so a retry refunds once.
pub fn refund_no(order_no: &str, attempt: i32) -> String {
    format!("{order_no}R{attempt}")
}

/// Starts a full refund of `order_id` inside `txn` (see the module docs). The caller writes
/// its audit entry in the same transaction.
/// `recheck_after`: when the lifecycle job asks the provider again should the caller's own
/// request get no final answer (`payments.reconcile_after_secs`).
pub async fn begin(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    actor_id: i64,
    reason: &str,
    recheck_after: chrono::Duration,
) -> Result<Begun, RefundError> {
    let order = crate::store::orders::lock(txn, order_id)
        .await?
        .ok_or(RefundError::OrderNotFound(order_id))?;
    if order.status != OrderStatus::Paid {
        return Err(RefundError::NotRefundable(order.status));
    }
    let attempt = 1 + store::newest_of(txn, order.id)
        .await?
        .map_or(0, |r| r.attempt);
    let now = Utc::now();
    let out_refund_no = refund_no(&order.order_no, attempt);
    let refund = store::insert(txn, &order, attempt, &out_refund_no, reason, actor_id, now).await?;
    if order.provider.is_some() {
        advance(
            txn,
            &order,
            OrderStatus::Paid,
            OrderStatus::RefundPending,
            "refund_requested",
        )
        .await?;
        // The caller asks the provider at once; should it get no final answer, the lifecycle
        // job asks again (same refund number) `recheck_after` later.
        store::at_provider_until(txn, order.id, reason, recheck_after).await?;
        let order = store::reload(txn, order.id).await?;
        return Ok(Begun::AtProvider {
            order: Box::new(order),
            refund,
        });
    }
    store::give_back(txn, &order, now).await?;
    let (order, refund) = finish(txn, order, refund, OrderStatus::Paid, None).await?;
    Ok(Begun::Refunded {
        order: Box::new(order),
        refund,
    })
}

/// What asking the provider came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtProvider {
    /// Refunded: `order.refunded.v1` is in the outbox.
    Refunded,
    /// Not final yet: the provider's notification or the lifecycle job finishes it. `refused`
    /// carries an answer that was an error rather than a refund state (a refusal, an answer
    /// that did not verify): it is NOT taken as "no refund" — the provider may well have
    /// refunded — so the refund stays pending and is asked again, and only a run of such
    /// answers makes the lifecycle job give up ([`fail`]).
    Pending { refused: Option<String> },
    /// The provider said the refund ended without the money going back (WeChat `ABNORMAL` /
    /// `CLOSED`); the order is paid again, flagged for an operator.
    Failed(String),
}

/// Asks the provider to refund `refund` of `order` (outside any transaction) and records a
/// final answer.
pub async fn at_provider(
    db: &DatabaseConnection,
    client: &dyn PaymentProvider,
    order: &order::Model,
    refund: &refund::Model,
) -> Result<AtProvider, DbErr> {
    let request = RefundRequest {
        out_trade_no: order.order_no.clone(),
        out_refund_no: refund.out_refund_no.clone(),
        refund_fen: refund.amount_fen,
        total_fen: order.amount_fen,
        reason: refund.reason.clone(),
    };
    match client.refund(&request).await {
        Ok(RefundState::Succeeded { refund_id }) => {
            complete(db, &refund.out_refund_no, refund_id).await?;
            Ok(AtProvider::Refunded)
        }
        Ok(RefundState::Processing) => Ok(AtProvider::Pending { refused: None }),
        Ok(state @ (RefundState::Abnormal | RefundState::Closed)) => {
            let why = format!("{} answered the refund with {state:?}", client.provider());
            fail(db, &refund.out_refund_no, &why).await?;
            Ok(AtProvider::Failed(why))
        }
        Ok(RefundState::NotFound) => Ok(AtProvider::Pending {
            refused: Some(format!(
                "{} answered a refund request with no refund",
                client.provider()
            )),
        }),
        Err(e) if e.is_transient() => {
            tracing::warn!(
                order_id = %order.id, out_refund_no = %refund.out_refund_no, error = %e,
                "Refund request got no answer; it is asked again with the same number"
            );
            Ok(AtProvider::Pending { refused: None })
        }
        Err(e) => {
            tracing::error!(
                order_id = %order.id, out_refund_no = %refund.out_refund_no, error = %e,
                "The provider refused a refund request; it stays pending and is asked again"
            );
            Ok(AtProvider::Pending {
                refused: Some(refused(client, &e)),
            })
        }
    }
}

fn refused(client: &dyn PaymentProvider, e: &PaymentError) -> String {
    format!("{} refused the refund: {e}", client.provider())
}

/// The provider confirmed refund `out_refund_no`: the order becomes `refunded` with
/// `order.refunded.v1`. `false` when it was done before (a copy of the notification).
///
/// The provider's word wins over ours: a refund we had given up as failed (WeChat completes an
/// ABNORMAL one once the merchant sorts the buyer's account out) is completed too, with a
/// warning, whether its order is `paid` again or `refund_pending` for a later attempt (which is
/// then marked failed, superseded: should the provider refund that one too, its success finds
/// the order refunded and is logged as an error for an operator).
pub async fn complete(
    db: &DatabaseConnection,
    out_refund_no: &str,
    provider_refund_id: Option<String>,
) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    if let Some((order, refund)) = store::lock_pending(&txn, out_refund_no).await? {
        finish(
            &txn,
            order,
            refund,
            OrderStatus::RefundPending,
            provider_refund_id,
        )
        .await?;
        txn.commit().await?;
        return Ok(true);
    }
    let Some(found) = store::lock_failed(&txn, out_refund_no).await? else {
        if store::is_failed(&txn, out_refund_no).await? {
            tracing::error!(
                out_refund_no,
                "The provider completed a refund recorded as failed of an order refunded by \
                 another attempt: the buyer was refunded twice; an operator must recover it"
            );
        }
        txn.rollback().await?;
        return Ok(false);
    };
    let from = found.order.status;
    tracing::warn!(
        order_id = %found.order.id,
        out_refund_no,
        superseded = found.superseded.as_ref().map(|r| r.out_refund_no.as_str()),
        "The provider completed a refund recorded as failed; the order is refunded after all"
    );
    if let Some(later) = &found.superseded {
        store::mark_failed(
            &txn,
            later.id,
            &format!("superseded: the provider refunded {out_refund_no}"),
            Utc::now(),
        )
        .await?;
    }
    finish(&txn, found.order, found.refund, from, provider_refund_id).await?;
    txn.commit().await?;
    Ok(true)
}

/// The provider did not refund `out_refund_no` (WeChat `REFUND.ABNORMAL` / `REFUND.CLOSED`, a
/// refusal): the order is `paid` again with `refund_flag = why`, and an ERROR for an operator.
/// `false` when the refund was not pending any more.
pub async fn fail(db: &DatabaseConnection, out_refund_no: &str, why: &str) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    let Some((order, refund)) = store::lock_pending(&txn, out_refund_no).await? else {
        txn.rollback().await?;
        return Ok(false);
    };
    store::mark_failed(&txn, refund.id, why, Utc::now()).await?;
    advance(
        &txn,
        &order,
        OrderStatus::RefundPending,
        OrderStatus::Paid,
        "refund_failed",
    )
    .await?;
    store::flag_refund(&txn, order.id, Some(why), None).await?;
    txn.commit().await?;
    tracing::error!(
        order_id = %order.id,
        out_refund_no,
        why,
        "Refund failed at the provider; the order is paid again and waits for an operator"
    );
    Ok(true)
}

/// Marks the refund succeeded and the order refunded (from `from`), with its history and
/// `order.refunded.v1`.
async fn finish(
    txn: &DatabaseTransaction,
    order: order::Model,
    refund: refund::Model,
    from: OrderStatus,
    provider_refund_id: Option<String>,
) -> Result<(order::Model, refund::Model), DbErr> {
    let now = Utc::now();
    store::mark_succeeded(txn, refund.id, provider_refund_id, now).await?;
    advance(txn, &order, from, OrderStatus::Refunded, "refunded").await?;
    store::flag_refund(txn, order.id, None, Some(&refund.reason)).await?;
    let event = OrderRefunded {
        order_id: order.id,
        order_no: order.order_no.clone(),
        buyer_id: order.buyer_id,
        plan: PlanSold::of_order(&order),
        pay_method: order.pay_method,
        refund_fen: refund.amount_fen,
        refund_points: refund.amount_points,
        refund_id: refund.id,
        reason: refund.reason.clone(),
        refunded_at: now,
    };
    outbox::enqueue(txn, &Envelope::new(event, order.correlation_id, None)).await?;
    let order = store::reload(txn, order.id).await?;
    let refund = store::find(txn, refund.id)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("refund {}", refund.id)))?;
    Ok((order, refund))
}

async fn advance(
    txn: &DatabaseTransaction,
    order: &order::Model,
    from: OrderStatus,
    to: OrderStatus,
    reason: &str,
) -> Result<(), DbErr> {
    if !transitions::advance(txn, order.id, from, to, reason, Utc::now()).await? {
        return Err(DbErr::Custom(format!(
            "locked order {} was not {from}",
            order.id
        )));
    }
    Ok(())
}

pub use crate::store::refunds::pending_of;
