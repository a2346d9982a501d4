//! A buyer asks the shop to hurry with a paid order: `order.reminded.v1`, which the notifier
//! turns into a "customer reminder" on the merchant consoles. At most one a minute per order,
//! by the database's clock (instances may disagree by a few seconds).

use crate::OrderError;
use chrono::{DateTime, Utc};
use memberline_platform::outbox;
use memberline_schema::entities::order;
use memberline_schema::events::{Envelope, OrderReminded};
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::OrderStatus;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QuerySelect, Statement, TransactionTrait,
};
use uuid::Uuid;

/// Seconds between two reminders of one order.
pub const EVERY_SECS: i64 = 60;

/// Reminds the shop of `buyer_id`'s paid order `order_id`: when it was reminded.
pub async fn remind(
    db: &DatabaseConnection,
    buyer_id: BuyerId,
    order_id: OrderId,
    correlation_id: Uuid,
) -> Result<DateTime<Utc>, OrderError> {
    let txn = db.begin().await?;
    let found = order::Entity::find_by_id(order_id)
        .filter(order::Column::BuyerId.eq(buyer_id))
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or(OrderError::OrderNotFound(order_id))?;
    if found.status != OrderStatus::Paid {
        return Err(OrderError::NotPaid(found.status));
    }
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT now() AS now, \
             ceil(extract(epoch FROM reminded_at + make_interval(secs => $2) - now()))::bigint \
                 AS wait \
             FROM orders WHERE id = $1",
            [order_id.into(), (EVERY_SECS as f64).into()],
        ))
        .await?
        .ok_or(OrderError::OrderNotFound(order_id))?;
    let now: DateTime<Utc> = row.try_get("", "now")?;
    let wait: Option<i64> = row.try_get("", "wait")?;
    if let Some(wait_secs) = wait.filter(|w| *w > 0) {
        return Err(OrderError::RemindTooSoon { wait_secs });
    }
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET reminded_at = $2 WHERE id = $1",
        [order_id.into(), now.into()],
    ))
    .await?;
    let event = OrderReminded {
        order_id: found.id,
        order_no: found.order_no.clone(),
        buyer_id: found.buyer_id,
        plan_name: found.plan_name.clone(),
        reminded_at: now,
    };
    outbox::enqueue(&txn, &Envelope::new(event, correlation_id, None)).await?;
    txn.commit().await?;
    Ok(now)
}
