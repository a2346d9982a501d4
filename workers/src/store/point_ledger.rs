//! `point_ledger`: signed points entries with the balance after, one per order and reason
//! (`UNIQUE (order_id, reason)`). The workers write only purchase rewards; payments with points
//! and opening balances are the gateway's.

use super::users::Rewards;
use super::{insert_once, one};
use chrono::{DateTime, Utc};
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::LedgerReason;
use sea_orm::{DatabaseTransaction, DbErr};

/// What a purchase reward is decided on, read in one statement with the buyer locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewardBasis {
    /// The order's reward was reversed (or the order refunded before any reward).
    pub reversed: bool,
    /// The buyer's points, growth, level and its bonus; `None` for no such user (or level).
    pub user: Option<Rewards>,
    /// Reward points credited to the buyer for purchases paid on the UTC day of `paid_at`: the
    /// cap counts by the day of the purchase, so a reward applied late (a retry across
    /// midnight) is booked to its own day and never eats into the next day's.
    pub earned_that_day: i64,
    /// The highest level whose `min_growth` is at most the buyer's growth plus the order's.
    pub level_after: Option<i16>,
}

/// Reads the [`RewardBasis`] of order `order_id` for buyer `user_id`, paid at `paid_at`, that
/// adds `growth` (one round trip where it took four).
pub async fn reward_basis(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    order_id: OrderId,
    paid_at: DateTime<Utc>,
    growth: i64,
) -> Result<RewardBasis, DbErr> {
    let day = paid_at
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let row = one(
        txn,
        "SELECT EXISTS (SELECT 1 FROM point_ledger WHERE order_id = $2 AND reason = $3) \
                    AS reversed, \
                u.points, u.growth, u.level_id, l.points_bonus_percent, \
                (SELECT COALESCE(sum(delta), 0)::bigint FROM point_ledger \
                 WHERE user_id = $1 AND reason = $4 AND earned_at >= $5 AND earned_at < $6) \
                    AS earned, \
                (SELECT id FROM levels WHERE min_growth <= u.growth + $7 \
                 ORDER BY min_growth DESC LIMIT 1) AS level_after \
         FROM (SELECT 1) one \
         LEFT JOIN users u ON u.id = $1 \
         LEFT JOIN levels l ON l.id = u.level_id",
        [
            user_id.into(),
            order_id.into(),
            LedgerReason::RewardReversal.as_str().into(),
            LedgerReason::PurchaseReward.as_str().into(),
            day.into(),
            (day + chrono::Duration::days(1)).into(),
            growth.into(),
        ],
    )
    .await?
    .ok_or_else(|| DbErr::Custom("the reward basis returned no row".into()))?;
    let user = match row.try_get::<Option<i16>>("", "points_bonus_percent")? {
        Some(points_bonus_percent) => Some(Rewards {
            points: row.try_get("", "points")?,
            growth: row.try_get("", "growth")?,
            level_id: row.try_get("", "level_id")?,
            points_bonus_percent,
        }),
        None => None,
    };
    Ok(RewardBasis {
        reversed: row.try_get("", "reversed")?,
        user,
        earned_that_day: row.try_get("", "earned")?,
        level_after: row.try_get("", "level_after")?,
    })
}

/// One purchase reward entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reward {
    pub user_id: BuyerId,
    /// With the reason, the entry's business key.
    pub order_id: OrderId,
    /// Points credited (the entry's delta).
    pub credited: i64,
    /// The buyer's points after this entry.
    pub balance_after: i64,
    /// Points above the daily cap, not credited.
    pub flagged_excess: i64,
    /// When the order was paid: the day the reward counts toward.
    pub earned_at: DateTime<Utc>,
    /// Growth the order added (recorded so that a refund takes back exactly this).
    pub growth: i64,
}

/// Writes an order's purchase reward entry and, in the same statement, credits it to the buyer
/// with their growth after it and `level_id`; `false` (and nothing written) when the order was
/// rewarded before.
pub async fn credit_reward(
    txn: &DatabaseTransaction,
    reward: Reward,
    growth_after: i64,
    level_id: i16,
) -> Result<bool, DbErr> {
    let row = one(
        txn,
        "WITH r AS ( \
             INSERT INTO point_ledger \
             (user_id, order_id, reason, delta, balance_after, flagged_excess, earned_at, \
              growth_delta) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (order_id, reason) DO NOTHING RETURNING id \
         ), u AS ( \
             UPDATE users SET points = points + $4, growth = $9, level_id = $10, \
                 updated_at = now() \
             WHERE id = $1 AND EXISTS (SELECT 1 FROM r) \
         ) \
         SELECT count(*) AS written FROM r",
        [
            reward.user_id.into(),
            reward.order_id.into(),
            LedgerReason::PurchaseReward.as_str().into(),
            reward.credited.into(),
            reward.balance_after.into(),
            reward.flagged_excess.into(),
            reward.earned_at.into(),
            reward.growth.into(),
            growth_after.into(),
            level_id.into(),
        ],
    )
    .await?;
    Ok(row.map(|r| r.try_get::<i64>("", "written")).transpose()? == Some(1))
}

/// Order `order_id`'s purchase reward: `(points credited, growth added)`.
pub async fn reward_of(
    txn: &DatabaseTransaction,
    order_id: OrderId,
) -> Result<Option<(i64, i64)>, DbErr> {
    let Some(row) = one(
        txn,
        "SELECT delta, growth_delta FROM point_ledger WHERE order_id = $1 AND reason = $2",
        [
            order_id.into(),
            LedgerReason::PurchaseReward.as_str().into(),
        ],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some((
        row.try_get("", "delta")?,
        row.try_get("", "growth_delta")?,
    )))
}

/// Whether order `order_id`'s reward was reversed (or the order refunded before any reward).
pub async fn reversed(txn: &DatabaseTransaction, order_id: OrderId) -> Result<bool, DbErr> {
    Ok(one(
        txn,
        "SELECT 1 AS found FROM point_ledger WHERE order_id = $1 AND reason = $2",
        [
            order_id.into(),
            LedgerReason::RewardReversal.as_str().into(),
        ],
    )
    .await?
    .is_some())
}

/// A refunded order's reward taken back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reversal {
    pub user_id: BuyerId,
    pub order_id: OrderId,
    /// Points taken back (the entry's delta is minus this).
    pub taken: i64,
    /// The buyer's points after this entry.
    pub balance_after: i64,
    /// Growth taken back (the entry's growth_delta is minus this).
    pub growth: i64,
    /// Reward points already spent, which could not be taken back.
    pub shortfall: i64,
}

/// Writes an order's reward reversal entry; `false` when the order's reward was reversed before.
pub async fn reverse_reward(txn: &DatabaseTransaction, r: Reversal) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO point_ledger \
         (user_id, order_id, reason, delta, balance_after, growth_delta, shortfall) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (order_id, reason) DO NOTHING RETURNING id",
        [
            r.user_id.into(),
            r.order_id.into(),
            LedgerReason::RewardReversal.as_str().into(),
            (-r.taken).into(),
            r.balance_after.into(),
            (-r.growth).into(),
            r.shortfall.into(),
        ],
    )
    .await
}
