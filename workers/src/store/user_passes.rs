//! `user_passes`: single-use passes a buyer holds, one row per order (`UNIQUE (order_id)`).
//! Spending uses is not the workers' business.

use super::insert_once;
use sea_orm::{DatabaseTransaction, DbErr};

/// Grants the pass bought by order `order_id` with all of its `uses` left; `false` when the
/// order already granted its pass.
pub async fn grant(
    txn: &DatabaseTransaction,
    user_id: i64,
    order_id: i64,
    plan_id: i64,
    plan_name: &str,
    uses: i32,
) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO user_passes (user_id, order_id, plan_id, plan_name, uses_total, uses_left) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (order_id) DO NOTHING RETURNING id",
        [
            user_id.into(),
            order_id.into(),
            plan_id.into(),
            plan_name.into(),
            uses.into(),
        ],
    )
    .await
}
