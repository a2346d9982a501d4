//! `user_passes`: single-use passes a buyer holds, one row per order (`UNIQUE (order_id)`).
//! Spending uses is not the workers' business.

use super::{insert_once, one};
use memberline_schema::ids::{BuyerId, OrderId, PlanId};
use sea_orm::{DatabaseTransaction, DbErr};

/// Grants the pass bought by order `order_id` with all of its `uses` left; `false` when the
/// order already granted its pass.
pub async fn grant(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    order_id: OrderId,
    plan_id: PlanId,
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

/// Takes away the unused uses of order `order_id`'s pass; the uses taken, or `None` when the
/// pass was revoked before (or the order has none).
pub async fn revoke(txn: &DatabaseTransaction, order_id: OrderId) -> Result<Option<i32>, DbErr> {
    one(
        txn,
        "UPDATE user_passes p SET uses_left = 0, revoked_at = now() \
         FROM (SELECT id, uses_left FROM user_passes WHERE order_id = $1) before \
         WHERE p.id = before.id AND p.revoked_at IS NULL RETURNING before.uses_left AS taken",
        [order_id.into()],
    )
    .await?
    .map(|r| r.try_get("", "taken"))
    .transpose()
}

/// Whether order `order_id` granted a pass (revoked or not).
pub async fn exists(txn: &DatabaseTransaction, order_id: OrderId) -> Result<bool, DbErr> {
    Ok(one(
        txn,
        "SELECT 1 AS found FROM user_passes WHERE order_id = $1",
        [order_id.into()],
    )
    .await?
    .is_some())
}

/// Records that order `order_id` (refunded before its pass was granted) has no pass: a revoked
/// placeholder with no uses left, so a late `order.paid.v1` grants nothing.
pub async fn add_revoked(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    order_id: OrderId,
    plan_id: PlanId,
    plan_name: &str,
    uses: i32,
) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO user_passes \
         (user_id, order_id, plan_id, plan_name, uses_total, uses_left, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, 0, now()) ON CONFLICT (order_id) DO NOTHING RETURNING id",
        [
            user_id.into(),
            order_id.into(),
            plan_id.into(),
            plan_name.into(),
            uses.max(1).into(),
        ],
    )
    .await
}
