//! The audit log: who (an admin) did what to whom, and why. Written in the transaction of the
//! act it records, so an act without its entry (or the reverse) cannot be committed.

use memberline_schema::entities::audit_log;
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::AuditAction;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};

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

/// A page of the audit log, newest first: about buyer `user_id` when given, before entry
/// `cursor` when given, at most `limit`; and the cursor of the next page when there is one.
pub async fn page<C: ConnectionTrait>(
    conn: &C,
    user_id: Option<BuyerId>,
    cursor: Option<i64>,
    limit: u64,
) -> Result<(Vec<audit_log::Model>, Option<i64>), DbErr> {
    let mut select = audit_log::Entity::find()
        .order_by_desc(audit_log::Column::Id)
        .limit(limit + 1);
    if let Some(cursor) = cursor {
        select = select.filter(audit_log::Column::Id.lt(cursor));
    }
    if let Some(user) = user_id {
        select = select.filter(audit_log::Column::UserId.eq(user));
    }
    Ok(super::cut_page(select.all(conn).await?, limit, |r| r.id))
}
