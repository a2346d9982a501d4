//! `savings_entries`: what each order saved against the catalogue's original price, one entry
//! per order (`UNIQUE (order_id)`). The buyer's totals live on `users`.

use super::users::PromoterThresholds;
use super::{insert_once, one};
use memberline_schema::ids::{BuyerId, OrderId};
use sea_orm::{DatabaseTransaction, DbErr};

/// Records what order `order_id` saved and, when it is `counted` as a purchase (what it paid,
/// in fen, and the promoter thresholds), adds the purchase to the buyer's savings, purchase
/// count and total paid, and makes them a promoter once a threshold is reached: one
/// statement; `false` (and nothing written) when the order was recorded before.
pub async fn record(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    order_id: OrderId,
    (saved_fen, saved_points): (i64, i64),
    counted: Option<(i64, PromoterThresholds)>,
) -> Result<bool, DbErr> {
    let (paid_fen, thresholds) = counted.unzip();
    insert_once(
        txn,
        "WITH s AS ( \
             INSERT INTO savings_entries (user_id, order_id, saved_fen, saved_points) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING RETURNING id \
         ), u AS ( \
             UPDATE users SET total_saved_fen = total_saved_fen + $3, \
                 total_saved_points = total_saved_points + $4, \
                 purchase_count = purchase_count + 1, total_paid_fen = total_paid_fen + $5, \
                 is_promoter = is_promoter OR purchase_count + 1 >= $6 \
                               OR total_paid_fen + $5 >= $7, \
                 updated_at = now() \
             WHERE id = $1 AND $5::bigint IS NOT NULL AND EXISTS (SELECT 1 FROM s) \
         ) \
         SELECT id FROM s",
        [
            user_id.into(),
            order_id.into(),
            saved_fen.into(),
            saved_points.into(),
            paid_fen.into(),
            thresholds.map(|t| t.min_purchases).into(),
            thresholds.map(|t| t.min_paid_fen).into(),
        ],
    )
    .await
}

/// What order `order_id` saved, taken off as reversed; `None` when it was reversed before or
/// never recorded.
pub async fn reverse(
    txn: &DatabaseTransaction,
    order_id: OrderId,
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
    user_id: BuyerId,
    order_id: OrderId,
) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO savings_entries (user_id, order_id, saved_fen, saved_points, reversed_at) \
         VALUES ($1, $2, 0, 0, now()) ON CONFLICT (order_id) DO NOTHING RETURNING id",
        [user_id.into(), order_id.into()],
    )
    .await
}
