//! A buyer's account as `/v1/me` shows it, read from the database: the profile with the level,
//! membership periods and passes; the point and balance ledgers; the inbox. Reads that belong
//! together are taken in one snapshot, so they never disagree while the workers write.

use memberline_schema::entities::{
    balance_ledger, level, membership_period, notification, point_ledger, user, user_pass,
};
use memberline_schema::ids::BuyerId;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};

/// A read-only transaction whose reads all see the same instant.
async fn snapshot(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_config(
        Some(sea_orm::IsolationLevel::RepeatableRead),
        Some(sea_orm::AccessMode::ReadOnly),
    )
    .await
}

/// What the profile is made of, as of one instant.
pub struct Profile {
    pub buyer: user::Model,
    pub level: level::Model,
    /// The periods not taken back (a refund or a revocation removes one).
    pub periods: Vec<membership_period::Model>,
    /// Passes with uses left.
    pub passes: Vec<user_pass::Model>,
}

/// `buyer_id`'s profile; `None` for a buyer without a row.
pub async fn profile(db: &DatabaseConnection, buyer_id: BuyerId) -> Result<Option<Profile>, DbErr> {
    let txn = snapshot(db).await?;
    let Some(buyer) = user::Entity::find_by_id(buyer_id).one(&txn).await? else {
        return Ok(None);
    };
    let level = level::Entity::find_by_id(buyer.level_id)
        .one(&txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("level {}", buyer.level_id)))?;
    let periods = membership_period::Entity::find()
        .filter(membership_period::Column::UserId.eq(buyer.id))
        .filter(membership_period::Column::RemovedAt.is_null())
        .all(&txn)
        .await?;
    let passes = user_pass::Entity::find()
        .filter(user_pass::Column::UserId.eq(buyer.id))
        .filter(user_pass::Column::UsesLeft.gt(0))
        .order_by_asc(user_pass::Column::Id)
        .all(&txn)
        .await?;
    txn.commit().await?;
    Ok(Some(Profile {
        buyer,
        level,
        periods,
        passes,
    }))
}

/// The newest `limit` entries of `buyer_id`'s point ledger (when `points`) and balance ledger
/// (when `balance`).
pub async fn ledgers(
    db: &DatabaseConnection,
    buyer_id: BuyerId,
    points: bool,
    balance: bool,
    limit: u64,
) -> Result<(Vec<point_ledger::Model>, Vec<balance_ledger::Model>), DbErr> {
    let points = match points {
        true => {
            point_ledger::Entity::find()
                .filter(point_ledger::Column::UserId.eq(buyer_id))
                .order_by_desc(point_ledger::Column::Id)
                .limit(limit)
                .all(db)
                .await?
        }
        false => Vec::new(),
    };
    let balance = match balance {
        true => {
            balance_ledger::Entity::find()
                .filter(balance_ledger::Column::UserId.eq(buyer_id))
                .order_by_desc(balance_ledger::Column::Id)
                .limit(limit)
                .all(db)
                .await?
        }
        false => Vec::new(),
    };
    Ok((points, balance))
}

/// The newest `limit` messages of `buyer_id`'s inbox (only unread ones when `unread_only`),
/// and how many are unread, as of one instant.
pub async fn inbox(
    db: &DatabaseConnection,
    buyer_id: BuyerId,
    unread_only: bool,
    limit: u64,
) -> Result<(Vec<notification::Model>, u64), DbErr> {
    let mut select = notification::Entity::find()
        .filter(notification::Column::UserId.eq(buyer_id))
        .order_by_desc(notification::Column::Id)
        .limit(limit);
    if unread_only {
        select = select.filter(notification::Column::ReadAt.is_null());
    }
    let txn = snapshot(db).await?;
    let rows = select.all(&txn).await?;
    let unread = notification::Entity::find()
        .filter(notification::Column::UserId.eq(buyer_id))
        .filter(notification::Column::ReadAt.is_null())
        .count(&txn)
        .await?;
    txn.commit().await?;
    Ok((rows, unread))
}

/// Marks `buyer_id`'s message `id` read, once (idempotent): the message, or `None` when it is
/// not theirs.
pub async fn mark_read(
    db: &DatabaseConnection,
    buyer_id: BuyerId,
    id: i64,
) -> Result<Option<notification::Model>, DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE notifications SET read_at = COALESCE(read_at, now()) \
             WHERE id = $1 AND user_id = $2 RETURNING id",
            [id.into(), buyer_id.into()],
        ))
        .await?;
    if row.is_none() {
        return Ok(None);
    }
    notification::Entity::find_by_id(id).one(db).await
}
