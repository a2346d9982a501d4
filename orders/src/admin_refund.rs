//! An admin refunds a paid order in full (`POST /v1/admin/orders/{id}/refund`), idempotently
//! per Idempotency-Key. Balance, points, free and granted orders are refunded in one
//! transaction; WeChat / Alipay orders are recorded `refund_pending` first and then refunded at
//! the provider outside any transaction (see [`memberline_orders::refunds`]). Every refund is
//! in the audit log, written in the transaction that starts it.

use crate::providers::Payments;
use crate::refunds::{self, Begun, RefundError};
use crate::store;
use crate::store::audit;
use crate::{OrderError, OrderView};
use memberline_platform::idempotency::{self, Answer, Claim};
use memberline_schema::entities::order;
use memberline_schema::ids::OrderId;
use memberline_schema::states::{AuditAction, OrderStatus};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde_json::json;

/// A refund request.
pub struct RefundOrder {
    pub actor_id: i64,
    pub order_id: OrderId,
    pub reason: String,
    pub idempotency_key: String,
    pub request_hash: String,
}

impl RefundOrder {
    fn key(&self) -> idempotency::Key<'_> {
        idempotency::Key {
            owner_kind: idempotency::OwnerKind::Staff,
            owner: self.actor_id,
            key: &self.idempotency_key,
            request_hash: &self.request_hash,
        }
    }
}

/// Refunds (or goes on refunding) `cmd.order_id`. See the module docs.
/// `recheck_after`: when the payment lifecycle job asks the provider again if this request
/// gets no final answer.
pub async fn refund(
    db: &DatabaseConnection,
    payments: &Payments,
    recheck_after: chrono::Duration,
    cmd: &RefundOrder,
) -> Result<Answer, OrderError> {
    // Which provider client a provider order needs, checked before anything is written.
    let found = store::orders::find(db, cmd.order_id)
        .await?
        .ok_or(OrderError::OrderNotFound(cmd.order_id))?;
    let client = match found.provider {
        Some(provider) => Some(
            payments
                .get(provider)
                .ok_or(OrderError::ProviderUnavailable("disabled"))?,
        ),
        None => None,
    };

    let txn = db.begin().await?;
    match idempotency::claim(&txn, cmd.key()).await? {
        Claim::Claimed => {}
        Claim::Replay(answer) => {
            txn.rollback().await?;
            return Ok(answer);
        }
        Claim::InFlight { .. } => {
            // An earlier copy recorded a provider refund and has no stored answer (it is still
            // at the provider, or got no final answer): the answer is the order's state now;
            // the provider is not asked again from here (the first copy, the notification or
            // the lifecycle job finish it).
            txn.rollback().await?;
            return answer(db, cmd).await;
        }
    }
    let begun = refunds::begin(&txn, cmd.order_id, cmd.actor_id, &cmd.reason, recheck_after)
        .await
        .map_err(|e| match e {
            RefundError::OrderNotFound(id) => OrderError::OrderNotFound(id),
            RefundError::NotRefundable(status) => OrderError::NotRefundable(status),
            RefundError::ProviderDisabled(_) => OrderError::ProviderUnavailable("disabled"),
            RefundError::Database(e) => OrderError::Database(e),
        })?;
    let (order, refund) = match &begun {
        Begun::Refunded { order, refund } | Begun::AtProvider { order, refund } => {
            (order.as_ref().clone(), refund.clone())
        }
    };
    audit::record(
        &txn,
        audit::Entry {
            actor_id: cmd.actor_id,
            action: AuditAction::OrderRefund,
            user_id: Some(order.buyer_id),
            order_id: Some(order.id),
            reason: &cmd.reason,
            details: json!({
                "refund_id": refund.id,
                "out_refund_no": refund.out_refund_no,
                "amount_fen": refund.amount_fen,
                "amount_points": refund.amount_points,
                "pay_method": order.pay_method,
            }),
        },
    )
    .await?;
    if let Begun::Refunded { .. } = begun {
        let answer = Answer::fresh(200, view(order)?);
        idempotency::store(&txn, cmd.key(), &answer).await?;
        txn.commit().await?;
        return Ok(answer);
    }
    idempotency::link(&txn, cmd.key(), order.id).await?;
    txn.commit().await?;
    let client = client.ok_or_else(|| anyhow::anyhow!("provider order without a client"))?;
    refunds::at_provider(db, client.as_ref(), &order, &refund).await?;
    answer(db, cmd).await
}

/// The answer to a provider refund, from the order's state once the provider was asked (so
/// concurrent copies all answer what is true): 200 `refunded`; 202 `refund_pending` (not
/// stored: a retry answers what is true then); 502 `refund_failed` when the order is paid again
/// with a refund flag.
async fn answer(db: &DatabaseConnection, cmd: &RefundOrder) -> Result<Answer, OrderError> {
    let order = reload(db, cmd.order_id).await?;
    let (status, body) = match (order.status, order.refund_flag.clone()) {
        (OrderStatus::Refunded, _) => (200, view(order)?),
        (OrderStatus::RefundPending, _) => {
            return Ok(Answer::fresh(202, view(order)?));
        }
        (OrderStatus::Paid, Some(why)) => (
            502,
            json!({"error": {"code": "refund_failed", "message": format!(
                "the provider did not refund ({why}); the order is paid again and flagged for an operator"
            )}}),
        ),
        (status, _) => return Err(OrderError::NotRefundable(status)),
    };
    let answer = Answer::fresh(status, body);
    idempotency::store(db, cmd.key(), &answer).await?;
    Ok(answer)
}

fn view(order: order::Model) -> Result<serde_json::Value, OrderError> {
    Ok(serde_json::to_value(OrderView::from(order)).map_err(anyhow::Error::from)?)
}

async fn reload(db: &DatabaseConnection, order_id: OrderId) -> Result<order::Model, OrderError> {
    store::orders::find(db, order_id)
        .await?
        .ok_or(OrderError::OrderNotFound(order_id))
}
