//! Ledger: consumption reward points (a configurable rate per yuan paid in money, times the
//! level's bonus; points payments earn no points), growth value (per yuan of value paid, points
//! at face value), and the level recomputed from growth (`level.changed.v1` when it
//! moves). A per-buyer daily cap (UTC day) limits credited points; points above it are not
//! credited and the excess is recorded on the entry as flagged. One reward entry per order
//! (`UNIQUE (order_id, reason)`).

use super::{insert_once, paid_order_locked};
use crate::decide::HandlerError;
use crate::runtime::{Effects, Handler, Incoming};
use memberline_gateway::outbox;
use memberline_gateway::settings::WorkerSettings;
use memberline_schema::events::{Envelope, LevelChanged};
use memberline_schema::topology::Worker;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};

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
impl Handler for Ledger {
    fn worker(&self) -> Worker {
        Worker::Ledger
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = paid_order_locked(txn, msg).await?;
        let e = &env.payload;
        let user = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT u.points, u.growth, u.level_id, l.points_bonus_percent \
                 FROM users u JOIN levels l ON l.id = u.level_id WHERE u.id = $1",
                [e.buyer_id.into()],
            ))
            .await?
            .ok_or_else(|| HandlerError::permanent(anyhow::anyhow!("unknown user")))?;
        let points: i64 = user.try_get("", "points")?;
        let growth: i64 = user.try_get("", "growth")?;
        let level: i16 = user.try_get("", "level_id")?;
        let bonus: i16 = user.try_get("", "points_bonus_percent")?;

        let reward = reward_points(e.amount_fen, self.points_per_yuan, bonus);
        // Growth counts everything paid: fen, and points at their face value (1 point = 1 fen,
        // as the catalogue prices them), so points buyers still grow toward the next level.
        let growth_delta =
            (e.amount_fen.max(0) + e.amount_points.max(0)) * self.growth_per_yuan / 100;
        if reward == 0 && growth_delta == 0 {
            // Points and free orders earn nothing; the consumed-event claim still records it.
            return Ok(Effects::applied());
        }
        let earned_today: i64 = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT COALESCE(sum(delta), 0)::bigint AS earned FROM point_ledger \
                 WHERE user_id = $1 AND reason = 'purchase_reward' \
                 AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
                [e.buyer_id.into()],
            ))
            .await?
            .map(|r| r.try_get("", "earned"))
            .transpose()?
            .unwrap_or(0);
        let (credited, excess) = apply_cap(reward, earned_today, self.daily_cap);
        let inserted = insert_once(
            txn,
            "INSERT INTO point_ledger (user_id, order_id, reason, delta, balance_after, flagged_excess) \
             VALUES ($1, $2, 'purchase_reward', $3, $4, $5) \
             ON CONFLICT (order_id, reason) DO NOTHING RETURNING id",
            vec![
                e.buyer_id.into(),
                e.order_id.into(),
                credited.into(),
                (points + credited).into(),
                excess.into(),
            ],
        )
        .await?;
        if !inserted {
            return Ok(Effects::already_applied());
        }
        if excess > 0 {
            tracing::warn!(
                user_id = e.buyer_id,
                order_id = e.order_id,
                excess,
                "Daily points cap reached; excess flagged, not credited"
            );
        }
        let new_growth = growth + growth_delta;
        let new_level: i16 = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM levels WHERE min_growth <= $1 ORDER BY min_growth DESC LIMIT 1",
                [new_growth.into()],
            ))
            .await?
            .map(|r| r.try_get("", "id"))
            .transpose()?
            .unwrap_or(level);
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE users SET points = points + $2, growth = $3, level_id = $4, updated_at = now() \
             WHERE id = $1",
            [
                e.buyer_id.into(),
                credited.into(),
                new_growth.into(),
                new_level.into(),
            ],
        ))
        .await?;
        if new_level != level {
            let changed = LevelChanged {
                user_id: e.buyer_id,
                from_level: level,
                to_level: new_level,
                growth: new_growth,
                order_id: e.order_id,
            };
            outbox::enqueue(
                txn,
                &Envelope::new(changed, env.correlation_id, Some(env.event_id)),
            )
            .await?;
        }
        Ok(Effects::applied())
    }
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
