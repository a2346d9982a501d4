//! The payment lifecycle job's statements on orders: claiming due checks with a lease,
//! renewing and rescheduling them, flagging an order for an operator, and ending a late
//! payment's refund.

use chrono::{DateTime, Duration, Utc};
use memberline_schema::entities::order;
use memberline_schema::ids::OrderId;
use memberline_schema::states::{LateRefundStatus, OrderStatus};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    Statement,
};

/// Brings the next provider check of the pending order `order_no` forward to now: its buyer
/// came back from a cashier, so a payment is likely, and only a query (or the notification)
/// may apply it.
pub async fn check_now(db: &DatabaseConnection, order_no: &str) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "UPDATE orders SET payment_check_at = now() \
             WHERE order_no = $1 AND status = '{}' AND payment_check_at > now()",
            OrderStatus::PendingPayment
        ),
        [order_no.into()],
    ))
    .await?;
    Ok(())
}

/// Flags the pending order `order_no` for an operator with `flag`, and stops checking it.
pub async fn flag(db: &DatabaseConnection, order_no: &str, flag: &str) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "UPDATE orders SET payment_flag = $2, payment_check_at = NULL, updated_at = now() \
             WHERE order_no = $1 AND status = '{}'",
            OrderStatus::PendingPayment
        ),
        [order_no.into(), flag.into()],
    ))
    .await?;
    Ok(())
}

/// Ends the pending refund of `order_id`'s late payment as `status` (refunded at `now` with
/// the provider's `refund_id`, or failed); `false` when it was not pending any more.
pub async fn end_late_refund(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    status: LateRefundStatus,
    now: DateTime<Utc>,
    refund_id: Option<String>,
) -> Result<bool, DbErr> {
    let changed = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE orders SET late_refund_status = $2, late_refunded_at = $3, \
             late_refund_id = $4, updated_at = now() \
             WHERE id = $1 AND late_refund_status = 'pending'",
            [
                order_id.into(),
                status.as_str().into(),
                (status == LateRefundStatus::Refunded).then_some(now).into(),
                refund_id.into(),
            ],
        ))
        .await?
        .rows_affected();
    Ok(changed == 1)
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
            format!(
                "UPDATE orders SET payment_check_at = now() + make_interval(secs => $1) \
                 WHERE id IN (SELECT id FROM orders \
                     WHERE (status IN ('{}', '{}') OR late_refund_status = '{}') \
                       AND payment_check_at <= now() \
                     ORDER BY payment_check_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING *",
                OrderStatus::PendingPayment,
                OrderStatus::RefundPending,
                LateRefundStatus::Pending,
            ),
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
