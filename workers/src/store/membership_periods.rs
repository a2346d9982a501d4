//! `membership_periods`: one `[starts_at, ends_at)` period per order (`UNIQUE (order_id)`); a
//! permanent membership is a period without an end. Expiry is derived from these rows.

use super::{insert_once, one};
use chrono::{DateTime, Utc};
use sea_orm::{DatabaseTransaction, DbErr};

/// The end of the buyer's latest period, if they have one (permanent periods have no end and
/// are not counted).
pub async fn latest_end(
    txn: &DatabaseTransaction,
    user_id: i64,
) -> Result<Option<DateTime<Utc>>, DbErr> {
    Ok(one(
        txn,
        "SELECT max(ends_at) AS end FROM membership_periods WHERE user_id = $1",
        [user_id.into()],
    )
    .await?
    .and_then(|r| r.try_get::<Option<DateTime<Utc>>>("", "end").ok())
    .flatten())
}

/// Adds order `order_id`'s period `[starts_at, ends_at)`, permanent when `ends_at` is `None`;
/// `false` when the order already has its period.
pub async fn add(
    txn: &DatabaseTransaction,
    user_id: i64,
    order_id: i64,
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO membership_periods (user_id, order_id, starts_at, ends_at, permanent) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING RETURNING id",
        [
            user_id.into(),
            order_id.into(),
            starts_at.into(),
            ends_at.into(),
            ends_at.is_none().into(),
        ],
    )
    .await
}
