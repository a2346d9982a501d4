//! Ledger: consumption reward points (a configurable rate per yuan paid in money, times the
//! level's bonus; points payments earn no points), growth value (per yuan of value paid, points
//! at face value), and the level recomputed from growth (`level.changed.v1` when it
//! moves). A per-buyer daily cap limits credited points per UTC day of the purchase (its
//! `paid_at`, stored on the entry; not the day the worker runs); points above it are not
//! credited and the excess is recorded on the entry as flagged. One reward entry per order
//! (`UNIQUE (order_id, reason)`).

use super::PaidOrderEffect;
use crate::decide::HandlerError;
use crate::runtime::Effects;
use crate::store::{levels, point_ledger, users};
use memberline_platform::outbox;
use memberline_platform::settings::WorkerSettings;
use memberline_schema::events::{Envelope, LevelChanged, OrderPaid, OrderRefunded};
use memberline_schema::topology::Worker;
use sea_orm::DatabaseTransaction;

pub struct Ledger {
    pub points_per_yuan: i64,
    pub growth_per_yuan: i64,
    pub daily_cap: i64,
}

impl Ledger {
    pub fn from_settings(s: &WorkerSettings) -> Self {
        Self {
            points_per_yuan: s.points_per_yuan,
            growth_per_yuan: s.growth_per_yuan,
            daily_cap: s.daily_points_cap,
        }
    }
}

/// Reward for `amount_fen` paid: `fen × rate × bonus% / 10 000`, rounded down (whole points).
pub fn reward_points(amount_fen: i64, points_per_yuan: i64, bonus_percent: i16) -> i64 {
    let exact = i128::from(amount_fen.max(0))
        * i128::from(points_per_yuan.max(0))
        * i128::from(bonus_percent.max(0));
    (exact / 10_000) as i64
}

/// Splits a reward into what is credited under the daily cap and the flagged excess.
pub fn apply_cap(reward: i64, earned_today: i64, cap: i64) -> (i64, i64) {
    let room = (cap - earned_today).max(0);
    let credited = reward.min(room);
    (credited, reward - credited)
}

#[async_trait::async_trait]
impl PaidOrderEffect for Ledger {
    const WORKER: Worker = Worker::Ledger;

    async fn apply_paid(
        &self,
        txn: &DatabaseTransaction,
        env: &Envelope<OrderPaid>,
    ) -> Result<Effects, HandlerError> {
        let e = &env.payload;
        // Growth counts everything paid: fen, and points at their face value (1 point = 1 fen,
        // as the catalogue prices them), so points buyers still grow toward the next level.
        let growth_delta =
            (e.amount_fen.max(0) + e.amount_points.max(0)) * self.growth_per_yuan / 100;
        // Everything the reward depends on, in one read: whether it was reversed, the buyer's
        // points, growth and level bonus, what they earned that day, their level after it.
        let basis =
            point_ledger::reward_basis(txn, e.buyer_id, e.order_id, e.paid_at, growth_delta)
                .await?;
        if basis.reversed {
            // Refunded before this reward was applied: nothing to give.
            return Ok(Effects::already_applied());
        }
        let user = basis
            .user
            .ok_or_else(|| HandlerError::permanent(anyhow::anyhow!("unknown user")))?;

        let reward = reward_points(
            e.amount_fen,
            self.points_per_yuan,
            user.points_bonus_percent,
        );
        if reward == 0 && growth_delta == 0 {
            // Points and free orders earn nothing; the consumed-event claim still records it.
            return Ok(Effects::applied());
        }
        let (credited, excess) = apply_cap(reward, basis.earned_that_day, self.daily_cap);
        let entry = point_ledger::Reward {
            user_id: e.buyer_id,
            order_id: e.order_id,
            credited,
            balance_after: user.points + credited,
            flagged_excess: excess,
            earned_at: e.paid_at,
            growth: growth_delta,
        };
        let new_growth = user.growth + growth_delta;
        let new_level = basis.level_after.unwrap_or(user.level_id);
        // The entry and the buyer's new points, growth and level: one statement.
        if !point_ledger::credit_reward(txn, entry, new_growth, new_level).await? {
            return Ok(Effects::already_applied());
        }
        if excess > 0 {
            tracing::warn!(
                user_id = %e.buyer_id,
                order_id = %e.order_id,
                excess,
                "Daily points cap reached; excess flagged, not credited"
            );
        }
        let changed = LevelChanged {
            user_id: e.buyer_id,
            from_level: user.level_id,
            to_level: new_level,
            growth: new_growth,
            order_id: e.order_id,
        };
        announce_level(txn, env, changed).await?;
        Ok(Effects::applied())
    }

    /// Takes back the reward points and growth the order earned (points the buyer already spent
    /// are recorded as the entry's shortfall: the balance never goes below zero) and recomputes
    /// the level (`level.changed.v1` when it drops).
    async fn apply_refunded(
        &self,
        txn: &DatabaseTransaction,
        env: &Envelope<OrderRefunded>,
    ) -> Result<Effects, HandlerError> {
        let e = &env.payload;
        if point_ledger::reversed(txn, e.order_id).await? {
            return Ok(Effects::already_applied());
        }
        let user = users::rewards(txn, e.buyer_id)
            .await?
            .ok_or_else(|| HandlerError::permanent(anyhow::anyhow!("unknown user")))?;
        let (credited, growth_added) = point_ledger::reward_of(txn, e.order_id)
            .await?
            .unwrap_or((0, 0));
        // Entries written before growth was recorded on them: the same rule as the reward.
        let growth_back = if growth_added > 0 || credited == 0 {
            growth_added
        } else {
            (e.refund_fen.max(0) + e.refund_points.max(0)) * self.growth_per_yuan / 100
        };
        let taken = credited.min(user.points).max(0);
        let reversal = point_ledger::Reversal {
            user_id: e.buyer_id,
            order_id: e.order_id,
            taken,
            balance_after: user.points - taken,
            growth: growth_back,
            shortfall: credited.max(0) - taken,
        };
        // Also written when the order earned nothing (or its reward is not applied yet): the
        // reward, if it comes late, then finds the order reversed and gives nothing.
        if !point_ledger::reverse_reward(txn, reversal).await? {
            return Ok(Effects::already_applied());
        }
        if reversal.shortfall > 0 {
            tracing::warn!(
                user_id = %e.buyer_id,
                order_id = %e.order_id,
                shortfall = reversal.shortfall,
                "Refunded order's reward points were already spent; the shortfall is recorded"
            );
        }
        let new_growth = (user.growth - growth_back).max(0);
        let new_level = levels::for_growth(txn, new_growth)
            .await?
            .unwrap_or(user.level_id);
        users::add_reward(txn, e.buyer_id, -taken, new_growth, new_level).await?;
        let changed = LevelChanged {
            user_id: e.buyer_id,
            from_level: user.level_id,
            to_level: new_level,
            growth: new_growth,
            order_id: e.order_id,
        };
        announce_level(txn, env, changed).await?;
        Ok(Effects::applied())
    }
}

/// Writes `changed` to the outbox, caused by `cause`, when the level did change.
async fn announce_level<P: memberline_schema::events::Event>(
    txn: &DatabaseTransaction,
    cause: &Envelope<P>,
    changed: LevelChanged,
) -> Result<(), HandlerError> {
    if changed.to_level != changed.from_level {
        let envelope = Envelope::new(changed, cause.correlation_id, Some(cause.event_id));
        outbox::enqueue(txn, &envelope).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reward_is_the_rate_per_yuan_times_the_level_bonus_rounded_down() {
        assert_eq!(reward_points(3000, 1, 100), 30); // 30 yuan at 1/yuan
        assert_eq!(reward_points(2700, 1, 125), 33); // 33.75
        assert_eq!(reward_points(99, 1, 100), 0);
        assert_eq!(reward_points(0, 5, 150), 0);
    }

    #[test]
    fn the_daily_cap_credits_up_to_the_room_left_and_flags_the_rest() {
        assert_eq!(apply_cap(100, 0, 1000), (100, 0));
        assert_eq!(apply_cap(100, 950, 1000), (50, 50));
        assert_eq!(apply_cap(100, 1000, 1000), (0, 100));
        assert_eq!(apply_cap(100, 1200, 1000), (0, 100));
    }
}
