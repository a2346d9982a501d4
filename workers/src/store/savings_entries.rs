//! `savings_entries`: what each order saved against the catalogue's original price, one entry
//! per order (`UNIQUE (order_id)`). The buyer's totals live on `users`.

use super::{insert_once, one};
use sea_orm::{DatabaseTransaction, DbErr};

/// Records what order `order_id` saved; `false` when the order was recorded before.
pub async fn record(
    txn: &DatabaseTransaction,
    user_id: i64,
    order_id: i64,
    saved_fen: i64,
    saved_points: i64,
) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO savings_entries (user_id, order_id, saved_fen, saved_points) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING RETURNING id",
        [
            user_id.into(),
            order_id.into(),
            saved_fen.into(),
            saved_points.into(),
        ],
    )
    .await
}

/// What order `order_id` saved, taken off as reversed; `None` when it was reversed before or
/// never recorded.
pub async fn reverse(
    txn: &DatabaseTransaction,
    order_id: i64,
) -> Result<Option<(i64, i64)>, DbErr> {
    let Some(row) = one(
        txn,
        "UPDATE savings_entries SET reversed_at = now() \
         WHERE order_id = $1 AND reversed_at IS NULL RETURNING saved_fen, saved_points",
        [order_id.into()],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some((
        row.try_get("", "saved_fen")?,
        row.try_get("", "saved_points")?,
    )))
}

/// Records that order `order_id` (refunded before its saving was recorded) saved nothing: a
/// reversed placeholder, so a late `order.paid.v1` records nothing. `false` when the order
/// has an entry.
pub async fn add_reversed(
    txn: &DatabaseTransaction,
    user_id: i64,
    order_id: i64,
) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO savings_entries (user_id, order_id, saved_fen, saved_points, reversed_at) \
         VALUES ($1, $2, 0, 0, now()) ON CONFLICT (order_id) DO NOTHING RETURNING id",
        [user_id.into(), order_id.into()],
    )
    .await
}
