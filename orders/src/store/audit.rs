//! The audit log: who (a staff member) did what to whom or to the catalogue, and why. Written in the transaction of the
//! act it records, so an act without its entry (or the reverse) cannot be committed.

use memberline_schema::entities::audit_log;
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::AuditAction;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
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

/// Records `entry` in `txn`, with the actor's username as it is now; returns its id.
pub async fn record(txn: &DatabaseTransaction, entry: Entry<'_>) -> Result<i64, DbErr> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO audit_log (actor_id, actor_name, action, user_id, order_id, reason, \
                 details, at) \
             VALUES ($1, (SELECT username FROM staff WHERE id = $1), $2, $3, $4, $5, $6, $7) \
             RETURNING id",
            [
                entry.actor_id.into(),
                entry.action.as_str().into(),
                entry.user_id.into(),
                entry.order_id.into(),
                entry.reason.into(),
                entry.details.into(),
                chrono::Utc::now().into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)?;
    row.try_get("", "id")
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
