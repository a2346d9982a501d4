//! `savings_entries`: what each order saved against the catalogue's original price, one entry
//! per order (`UNIQUE (order_id)`). The buyer's totals live on `users`.

use super::insert_once;
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
