//! The audit log: who (an admin) did what to whom, and why. Written in the transaction of the
//! act it records, so an act without its entry (or the reverse) cannot be committed.

use memberline_schema::entities::audit_log;
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::AuditAction;
use sea_orm::{ActiveModelTrait, DatabaseTransaction, DbErr, Set};

/// One act to record.
pub struct Entry<'a> {
    pub actor_id: i64,
    pub action: AuditAction,
    pub user_id: Option<BuyerId>,
    pub order_id: Option<OrderId>,
    pub reason: &'a str,
    pub details: serde_json::Value,
}

/// Records `entry` in `txn`; returns its id.
pub async fn record(txn: &DatabaseTransaction, entry: Entry<'_>) -> Result<i64, DbErr> {
    let row = audit_log::ActiveModel {
        actor_id: Set(entry.actor_id),
        action: Set(entry.action),
        user_id: Set(entry.user_id),
        order_id: Set(entry.order_id),
        reason: Set(entry.reason.to_owned()),
        details: Set(entry.details),
        at: Set(chrono::Utc::now()),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    Ok(row.id)
}
