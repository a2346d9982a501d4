//! The statements of refunds: refund rows (attempts, outcomes), the locks a completion or a
//! failure takes, the order's refund columns, and giving a balance or points order's payment
//! back with its ledger entry.

use chrono::{DateTime, Utc};
use memberline_schema::entities::{order, refund};
use memberline_schema::ids::OrderId;
use memberline_schema::states::{LedgerReason, OrderStatus, PayMethod, RefundStatus};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, Statement,
};

/// The newest refund of `order_id`, whatever its status.
pub async fn newest_of(
    txn: &DatabaseTransaction,
    order_id: OrderId,
) -> Result<Option<refund::Model>, DbErr> {
    refund::Entity::find()
        .filter(refund::Column::OrderId.eq(order_id))
        .order_by_desc(refund::Column::Attempt)
        .one(txn)
        .await
}

/// The pending refund of a `refund_pending` order (the newest attempt).
pub async fn pending_of<C: ConnectionTrait>(
    conn: &C,
    order_id: OrderId,
) -> Result<Option<refund::Model>, DbErr> {
    refund::Entity::find()
        .filter(refund::Column::OrderId.eq(order_id))
        .filter(refund::Column::Status.eq(RefundStatus::Pending))
        .order_by_desc(refund::Column::Attempt)
        .one(conn)
        .await
}

/// Records attempt `attempt` (number `out_refund_no`) at a full refund of `order`, pending.
pub async fn insert(
    txn: &DatabaseTransaction,
    order: &order::Model,
    attempt: i32,
    out_refund_no: &str,
    reason: &str,
    actor_id: i64,
    now: DateTime<Utc>,
) -> Result<refund::Model, DbErr> {
    refund::ActiveModel {
        order_id: Set(order.id),
        attempt: Set(attempt),
        out_refund_no: Set(out_refund_no.to_owned()),
        amount_fen: Set(order.amount_fen),
        amount_points: Set(order.amount_points),
        reason: Set(reason.to_owned()),
        status: Set(RefundStatus::Pending),
        provider_refund_id: Set(None),
        failure: Set(None),
        requested_by: Set(actor_id),
        created_at: Set(now),
        completed_at: Set(None),
        ..Default::default()
    }
    .insert(txn)
    .await
}

/// Refund `refund_id`.
pub async fn find(
    txn: &DatabaseTransaction,
    refund_id: i64,
) -> Result<Option<refund::Model>, DbErr> {
    refund::Entity::find_by_id(refund_id).one(txn).await
}

/// A provider refund of `order_id` was asked for `reason`: the lifecycle job asks the provider
/// again `recheck_after` from now, should the caller's own request get no final answer.
pub async fn at_provider_until(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    reason: &str,
    recheck_after: chrono::Duration,
) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET payment_check_at = now() + make_interval(secs => $3), \
         payment_check_attempts = 0, refund_reason = $2 WHERE id = $1",
        [
            order_id.into(),
            reason.into(),
            (recheck_after.num_milliseconds() as f64 / 1000.0).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Refund `refund_id` succeeded at `now`, with the provider's own id for it.
pub async fn mark_succeeded(
    txn: &DatabaseTransaction,
    refund_id: i64,
    provider_refund_id: Option<String>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    refund::Entity::update_many()
        .col_expr(
            refund::Column::Status,
            RefundStatus::Succeeded.as_str().into(),
        )
        .col_expr(refund::Column::ProviderRefundId, provider_refund_id.into())
        .col_expr(refund::Column::CompletedAt, now.into())
        .filter(refund::Column::Id.eq(refund_id))
        .exec(txn)
        .await?;
    Ok(())
}

/// Refund `refund_id` failed at `now`, for `why`.
pub async fn mark_failed(
    txn: &DatabaseTransaction,
    refund_id: i64,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    refund::Entity::update_many()
        .col_expr(refund::Column::Status, RefundStatus::Failed.as_str().into())
        .col_expr(refund::Column::Failure, why.into())
        .col_expr(refund::Column::CompletedAt, now.into())
        .filter(refund::Column::Id.eq(refund_id))
        .exec(txn)
        .await?;
    Ok(())
}

/// Sets `order_id`'s refund columns: the flag for an operator (a failed refund) and the
/// reason of the refund done.
pub async fn flag_refund(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    flag: Option<&str>,
    reason: Option<&str>,
) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET refund_flag = $2, refund_reason = $3 WHERE id = $1",
        [order_id.into(), flag.into(), reason.into()],
    ))
    .await?;
    Ok(())
}

/// A refund recorded as failed that the provider says succeeded after all, with its order
/// locked: what completing it finds.
pub struct FailedYetDone {
    pub order: order::Model,
    pub refund: refund::Model,
    /// A later attempt of the same order still pending at the provider (the order is
    /// `refund_pending` for it): superseded, the money came back by this one.
    pub superseded: Option<refund::Model>,
}

/// Locks the order of failed refund `out_refund_no` when the order has not been refunded since:
/// it is `paid` again, or `refund_pending` for a later attempt. `None` otherwise (or unknown).
pub async fn lock_failed(
    txn: &DatabaseTransaction,
    out_refund_no: &str,
) -> Result<Option<FailedYetDone>, DbErr> {
    let Some(refund) = refund::Entity::find()
        .filter(refund::Column::OutRefundNo.eq(out_refund_no))
        .filter(refund::Column::Status.eq(RefundStatus::Failed.as_str()))
        .one(txn)
        .await?
    else {
        return Ok(None);
    };
    let Some(order) = order::Entity::find_by_id(refund.order_id)
        .lock_exclusive()
        .one(txn)
        .await?
        .filter(|o| matches!(o.status, OrderStatus::Paid | OrderStatus::RefundPending))
    else {
        return Ok(None);
    };
    let superseded = if order.status == OrderStatus::RefundPending {
        let pending = refund::Entity::find()
            .filter(refund::Column::OrderId.eq(order.id))
            .filter(refund::Column::Status.eq(RefundStatus::Pending.as_str()))
            .one(txn)
            .await?;
        if pending.is_none() {
            return Err(DbErr::Custom(format!(
                "order {} is refund_pending without a pending refund",
                order.id
            )));
        }
        pending
    } else {
        None
    };
    Ok(Some(FailedYetDone {
        order,
        refund,
        superseded,
    }))
}

/// Whether refund `out_refund_no` is recorded as failed.
pub async fn is_failed(txn: &DatabaseTransaction, out_refund_no: &str) -> Result<bool, DbErr> {
    Ok(refund::Entity::find()
        .filter(refund::Column::OutRefundNo.eq(out_refund_no))
        .filter(refund::Column::Status.eq(RefundStatus::Failed.as_str()))
        .one(txn)
        .await?
        .is_some())
}

/// Locks the order of a pending refund and the refund; `None` when the refund is not pending
/// (or unknown).
pub async fn lock_pending(
    txn: &DatabaseTransaction,
    out_refund_no: &str,
) -> Result<Option<(order::Model, refund::Model)>, DbErr> {
    let Some(refund) = refund::Entity::find()
        .filter(refund::Column::OutRefundNo.eq(out_refund_no))
        .one(txn)
        .await?
    else {
        return Ok(None);
    };
    let order = order::Entity::find_by_id(refund.order_id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("order {}", refund.order_id)))?;
    // Re-read under the order lock: a concurrent completion may have finished it.
    let refund = refund::Entity::find_by_id(refund.id)
        .one(txn)
        .await?
        .filter(|r| r.status == RefundStatus::Pending);
    Ok(refund.map(|r| (order, r)))
}

/// Gives the buyer back what a balance or points order took, with its ledger entry.
pub async fn give_back(
    txn: &DatabaseTransaction,
    order: &order::Model,
    now: chrono::DateTime<Utc>,
) -> Result<(), DbErr> {
    let (column, ledger, amount) = match order.pay_method {
        PayMethod::Balance => ("balance_fen", "balance_ledger", order.amount_fen),
        PayMethod::Points => ("points", "point_ledger", order.amount_points),
        PayMethod::Free | PayMethod::AdminGrant => return Ok(()),
        PayMethod::Wechat | PayMethod::Alipay => {
            return Err(DbErr::Custom(
                "a provider order is refunded by its provider".into(),
            ));
        }
    };
    if amount == 0 {
        return Ok(());
    }
    // Constants above, never input.
    let sql = format!(
        "WITH credited AS (UPDATE users SET {column} = {column} + $2, updated_at = now() \
         WHERE id = $1 RETURNING {column} AS after) \
         INSERT INTO {ledger} (user_id, order_id, reason, delta, balance_after, created_at) \
         SELECT $1, $3, $4, $2, after, $5 FROM credited"
    );
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        [
            order.buyer_id.into(),
            amount.into(),
            order.id.into(),
            LedgerReason::OrderRefund.as_str().into(),
            now.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// The order as it is now in `txn`.
pub async fn reload(txn: &DatabaseTransaction, order_id: OrderId) -> Result<order::Model, DbErr> {
    order::Entity::find_by_id(order_id)
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("order {order_id}")))
}
