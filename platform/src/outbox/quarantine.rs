//! The rows the relay gave up on after `relay.quarantine_after_attempts` failed publishes, for
//! an operator to inspect and release (`GET /v1/admin/outbox/quarantined`,
//! `POST /v1/admin/outbox/{id}/release`).

use super::NOTIFY_CHANNEL;
use chrono::{DateTime, Utc};
use memberline_schema::entities::outbox;
use memberline_schema::ids::EventId;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};

/// At most `limit` quarantined rows, oldest first.
pub async fn list<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<outbox::Model>, DbErr> {
    outbox::Entity::find()
        .filter(outbox::Column::QuarantinedAt.is_not_null())
        .filter(outbox::Column::PublishedAt.is_null())
        .order_by_asc(outbox::Column::CreatedAt)
        .limit(limit)
        .all(db)
        .await
}

/// Releases quarantined row `id`: its attempts start again from zero and the relay is woken to
/// publish it at once. `false` when no quarantined row has that id.
pub async fn release<C: ConnectionTrait>(db: &C, id: EventId) -> Result<bool, DbErr> {
    let released = outbox::Entity::update_many()
        .col_expr(
            outbox::Column::QuarantinedAt,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(outbox::Column::Attempts, Expr::value(0))
        .col_expr(outbox::Column::NextAttemptAt, Expr::cust("now()"))
        .filter(outbox::Column::Id.eq(id))
        .filter(outbox::Column::QuarantinedAt.is_not_null())
        .filter(outbox::Column::PublishedAt.is_null())
        .exec(db)
        .await?
        .rows_affected;
    if released == 0 {
        return Ok(false);
    }
    // Wake the relay now rather than at its next poll.
    db.execute_raw(Statement::from_string(
        DbBackend::Postgres,
        format!("SELECT pg_notify('{NOTIFY_CHANNEL}', '')"),
    ))
    .await?;
    Ok(true)
}
