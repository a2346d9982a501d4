//! `users`: the buyer's row lock that serializes effects per buyer, and the running totals the
//! ledger and savings workers keep on it (points, growth, level, purchases, savings, promoter).
//! Balances paid from at purchase time are the gateway's, not written here.

use super::{one, statement};
use memberline_schema::ids::BuyerId;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};

/// Locks the buyer's row until the transaction ends; `false` when there is no such user.
pub async fn lock(txn: &DatabaseTransaction, user_id: BuyerId) -> Result<bool, DbErr> {
    Ok(one(
        txn,
        "SELECT id FROM users WHERE id = $1 FOR UPDATE",
        [user_id.into()],
    )
    .await?
    .is_some())
}

/// What the ledger worker reads before crediting a reward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewards {
    /// Points held now.
    pub points: i64,
    pub growth: i64,
    pub level_id: i16,
    /// The level's multiplier on reward points, in percent.
    pub points_bonus_percent: i16,
}

/// The buyer's points, growth, level and that level's points bonus; `None` for no such user.
pub async fn rewards(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
) -> Result<Option<Rewards>, DbErr> {
    let Some(row) = one(
        txn,
        "SELECT u.points, u.growth, u.level_id, l.points_bonus_percent \
         FROM users u JOIN levels l ON l.id = u.level_id WHERE u.id = $1",
        [user_id.into()],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Rewards {
        points: row.try_get("", "points")?,
        growth: row.try_get("", "growth")?,
        level_id: row.try_get("", "level_id")?,
        points_bonus_percent: row.try_get("", "points_bonus_percent")?,
    }))
}

/// Adds `points` to the buyer's points and sets their growth and level.
pub async fn add_reward(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    points: i64,
    growth: i64,
    level_id: i16,
) -> Result<(), DbErr> {
    txn.execute_raw(statement(
        "UPDATE users SET points = points + $2, growth = $3, level_id = $4, updated_at = now() \
         WHERE id = $1",
        [
            user_id.into(),
            points.into(),
            growth.into(),
            level_id.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// One purchase as the buyer's running totals count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Purchase {
    pub saved_fen: i64,
    pub saved_points: i64,
    pub paid_fen: i64,
}

/// When a buyer becomes a promoter: at this many purchases, or this much paid in total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromoterThresholds {
    pub min_purchases: i32,
    pub min_paid_fen: i64,
}

/// Takes one purchase off the buyer's totals (a refund), never below zero, and sets promoter
/// status from the thresholds again.
pub async fn remove_purchase(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    purchase: Purchase,
    promoter: PromoterThresholds,
) -> Result<(), DbErr> {
    txn.execute_raw(statement(
        "UPDATE users SET total_saved_fen = greatest(total_saved_fen - $2, 0), \
         total_saved_points = greatest(total_saved_points - $3, 0), \
         purchase_count = greatest(purchase_count - 1, 0), \
         total_paid_fen = greatest(total_paid_fen - $4, 0), \
         is_promoter = greatest(purchase_count - 1, 0) >= $5 \
                       OR greatest(total_paid_fen - $4, 0) >= $6, \
         updated_at = now() WHERE id = $1",
        [
            user_id.into(),
            purchase.saved_fen.into(),
            purchase.saved_points.into(),
            purchase.paid_fen.into(),
            promoter.min_purchases.into(),
            promoter.min_paid_fen.into(),
        ],
    ))
    .await?;
    Ok(())
}
