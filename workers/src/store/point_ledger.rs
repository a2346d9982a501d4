//! `point_ledger`: signed points entries with the balance after, one per order and reason
//! (`UNIQUE (order_id, reason)`). The workers write only purchase rewards; payments with points
//! and opening balances are the gateway's.

use super::{insert_once, one};
use chrono::{DateTime, Utc};
use memberline_schema::states::LedgerReason;
use sea_orm::{DatabaseTransaction, DbErr};

/// Reward points credited to the buyer for purchases paid on the UTC day of `paid_at`: the cap
/// counts by the day of the purchase, so a reward applied late (a retry across midnight) is
/// booked to its own day and never eats into the next day's.
pub async fn rewarded_on_day_of(
    txn: &DatabaseTransaction,
    user_id: i64,
    paid_at: DateTime<Utc>,
) -> Result<i64, DbErr> {
    let day = paid_at
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    Ok(one(
        txn,
        "SELECT COALESCE(sum(delta), 0)::bigint AS earned FROM point_ledger \
         WHERE user_id = $1 AND reason = $2 AND earned_at >= $3 AND earned_at < $4",
        [
            user_id.into(),
            LedgerReason::PurchaseReward.as_str().into(),
            day.into(),
            (day + chrono::Duration::days(1)).into(),
        ],
    )
    .await?
    .map(|r| r.try_get("", "earned"))
    .transpose()?
    .unwrap_or(0))
}

/// One purchase reward entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reward {
    pub user_id: i64,
    /// With the reason, the entry's business key.
    pub order_id: i64,
    /// Points credited (the entry's delta).
    pub credited: i64,
    /// The buyer's points after this entry.
    pub balance_after: i64,
    /// Points above the daily cap, not credited.
    pub flagged_excess: i64,
    /// When the order was paid: the day the reward counts toward.
    pub earned_at: DateTime<Utc>,
}

/// Writes an order's purchase reward entry; `false` when the order was rewarded before.
pub async fn credit_reward(txn: &DatabaseTransaction, reward: Reward) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO point_ledger \
         (user_id, order_id, reason, delta, balance_after, flagged_excess, earned_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (order_id, reason) DO NOTHING RETURNING id",
        [
            reward.user_id.into(),
            reward.order_id.into(),
            LedgerReason::PurchaseReward.as_str().into(),
            reward.credited.into(),
            reward.balance_after.into(),
            reward.flagged_excess.into(),
            reward.earned_at.into(),
        ],
    )
    .await
}
