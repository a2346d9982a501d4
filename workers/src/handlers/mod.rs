//! The four workers' effects. Each handler decodes `order.paid.v1`, checks the order exists and
//! is paid (an unknown order is a permanent error), and applies its effect inside the
//! runtime's transaction, backed by a business-key unique constraint.

pub mod ledger;
pub mod membership;
pub mod notifier;
pub mod savings;

use crate::decide::HandlerError;
use crate::runtime::Incoming;
use memberline_schema::events::{Envelope, OrderPaid};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};

/// Decodes the `order.paid.v1` payload; a wrong shape is permanent.
pub fn order_paid(msg: &Incoming) -> Result<Envelope<OrderPaid>, HandlerError> {
    if msg.head.event_type != "order.paid" || msg.head.version != 1 {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "unexpected event {} v{}",
            msg.head.event_type,
            msg.head.version
        )));
    }
    serde_json::from_value(msg.envelope.clone())
        .map_err(|e| HandlerError::permanent(anyhow::anyhow!("order.paid.v1 payload: {e}")))
}

/// Fails permanently unless the order exists, belongs to the buyer and is paid.
pub async fn require_paid_order(
    txn: &DatabaseTransaction,
    event: &OrderPaid,
) -> Result<(), HandlerError> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT buyer_id, status FROM orders WHERE id = $1",
            [event.order_id.into()],
        ))
        .await?;
    let Some(row) = row else {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "unknown order {}",
            event.order_id
        )));
    };
    let buyer: i64 = row.try_get("", "buyer_id")?;
    let status: String = row.try_get("", "status")?;
    if buyer != event.buyer_id {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "order {} belongs to buyer {buyer}, not {}",
            event.order_id,
            event.buyer_id
        )));
    }
    if status != "paid" && status != "refunded" {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "order {} is {status}, not paid",
            event.order_id
        )));
    }
    Ok(())
}

/// Locks the buyer's row for the rest of the transaction, serializing effects per buyer.
pub async fn lock_user(txn: &DatabaseTransaction, user_id: i64) -> Result<(), HandlerError> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM users WHERE id = $1 FOR UPDATE",
            [user_id.into()],
        ))
        .await?;
    if row.is_none() {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "unknown user {user_id}"
        )));
    }
    Ok(())
}

/// The common start of every effect that changes a buyer's records: decode `order.paid.v1`,
/// check its order, and lock the buyer so effects of one buyer's orders apply one at a time.
pub async fn paid_order_locked(
    txn: &DatabaseTransaction,
    msg: &Incoming,
) -> Result<Envelope<OrderPaid>, HandlerError> {
    let env = order_paid(msg)?;
    require_paid_order(txn, &env.payload).await?;
    lock_user(txn, env.payload.buyer_id).await?;
    Ok(env)
}

/// Runs an INSERT … ON CONFLICT DO NOTHING RETURNING; `false` when the business key existed.
pub async fn insert_once(
    txn: &DatabaseTransaction,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<bool, HandlerError> {
    Ok(txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?
        .is_some())
}
