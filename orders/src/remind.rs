//! A buyer asks the shop to hurry with a paid order: `order.reminded.v1`, which the notifier
//! turns into a "customer reminder" on the merchant consoles. At most one a minute per order,
//! by the database's clock (instances may disagree by a few seconds).

use crate::OrderError;
use crate::store;
use chrono::{DateTime, Utc};
use memberline_platform::outbox;
use memberline_schema::events::{Envelope, OrderReminded};
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::OrderStatus;
use sea_orm::{DatabaseConnection, TransactionTrait};
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
    let found = store::orders::of_buyer(&txn, order_id, buyer_id, true)
        .await?
        .ok_or(OrderError::OrderNotFound(order_id))?;
    if found.status != OrderStatus::Paid {
        return Err(OrderError::NotPaid(found.status));
    }
    // The database's clock, not this instance's.
    let (now, wait) = store::orders::reminder_wait(&txn, order_id, EVERY_SECS)
        .await?
        .ok_or(OrderError::OrderNotFound(order_id))?;
    if let Some(wait_secs) = wait.filter(|w| *w > 0) {
        return Err(OrderError::RemindTooSoon { wait_secs });
    }
    store::orders::mark_reminded(&txn, order_id, now).await?;
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
