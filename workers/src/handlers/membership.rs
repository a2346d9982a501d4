//! Membership: a paid plan extends the buyer's membership. A new period starts at
//! `max(now, end of the current membership)` (a lapsed member starts now, an active one stacks)
//! and lasts the plan's days; a permanent plan makes it permanent; a pass adds its uses.
//! One period (or pass) per order, enforced by a unique constraint.

use super::{insert_once, paid_order_locked};
use crate::decide::HandlerError;
use crate::runtime::{Effects, Handler, Incoming};
use chrono::{DateTime, Duration, Utc};
use memberline_gateway::outbox;
use memberline_schema::events::{Envelope, MembershipExtended, PlanKind};
use memberline_schema::topology::Worker;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};

pub struct Membership;

/// Where a new period starts: now for a lapsed (or new) member, the current end otherwise.
pub fn period_start(now: DateTime<Utc>, current_end: Option<DateTime<Utc>>) -> DateTime<Utc> {
    match current_end {
        Some(end) if end > now => end,
        _ => now,
    }
}

#[async_trait::async_trait]
impl Handler for Membership {
    fn worker(&self) -> Worker {
        Worker::Membership
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        // Locks the buyer: two orders stacking at once must not both start at the same end.
        let env = paid_order_locked(txn, msg).await?;
        let e = &env.payload;
        let now = Utc::now();
        let extended = match e.plan_kind {
            PlanKind::Membership | PlanKind::Permanent => {
                // A timed period [start, until), or a permanent one (no end) starting now.
                let (start, until) = if e.plan_kind == PlanKind::Membership {
                    let days = e.duration_days.filter(|d| *d > 0).ok_or_else(|| {
                        HandlerError::permanent(anyhow::anyhow!("membership plan without days"))
                    })?;
                    let end = txn
                        .query_one_raw(Statement::from_sql_and_values(
                            DbBackend::Postgres,
                            "SELECT max(ends_at) AS end FROM membership_periods WHERE user_id = $1",
                            [e.buyer_id.into()],
                        ))
                        .await?
                        .and_then(|r| r.try_get::<Option<DateTime<Utc>>>("", "end").ok())
                        .flatten();
                    let start = period_start(now, end);
                    let until = start
                        .checked_add_signed(Duration::days(i64::from(days)))
                        .ok_or_else(|| {
                            HandlerError::permanent(anyhow::anyhow!(
                                "{days} days after {start} is out of range"
                            ))
                        })?;
                    (start, Some(until))
                } else {
                    (now, None)
                };
                let inserted = insert_once(
                    txn,
                    "INSERT INTO membership_periods (user_id, order_id, starts_at, ends_at, permanent) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING RETURNING id",
                    vec![
                        e.buyer_id.into(),
                        e.order_id.into(),
                        start.into(),
                        until.into(),
                        until.is_none().into(),
                    ],
                )
                .await?;
                if !inserted {
                    return Ok(Effects::already_applied());
                }
                MembershipExtended {
                    user_id: e.buyer_id,
                    order_id: e.order_id,
                    plan_kind: e.plan_kind,
                    starts_at: Some(start),
                    ends_at: until,
                    permanent: until.is_none(),
                    pass_uses: None,
                }
            }
            PlanKind::Pass => {
                let uses = e.uses.filter(|u| *u > 0).ok_or_else(|| {
                    HandlerError::permanent(anyhow::anyhow!("pass plan without uses"))
                })?;
                let inserted = insert_once(
                    txn,
                    "INSERT INTO user_passes (user_id, order_id, plan_id, plan_name, uses_total, uses_left) \
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (order_id) DO NOTHING RETURNING id",
                    vec![
                        e.buyer_id.into(),
                        e.order_id.into(),
                        e.plan_id.into(),
                        e.plan_name.clone().into(),
                        uses.into(),
                    ],
                )
                .await?;
                if !inserted {
                    return Ok(Effects::already_applied());
                }
                MembershipExtended {
                    user_id: e.buyer_id,
                    order_id: e.order_id,
                    plan_kind: e.plan_kind,
                    starts_at: None,
                    ends_at: None,
                    permanent: false,
                    pass_uses: Some(uses),
                }
            }
        };
        let follow_up = Envelope::new(extended, env.correlation_id, Some(env.event_id));
        outbox::enqueue(txn, &follow_up).await?;
        Ok(Effects::applied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lapsed_or_new_member_starts_now() {
        let now = Utc::now();
        assert_eq!(period_start(now, None), now);
        assert_eq!(period_start(now, Some(now - Duration::days(3))), now);
    }

    #[test]
    fn an_active_member_stacks_after_the_current_end() {
        let now = Utc::now();
        let end = now + Duration::days(12);
        assert_eq!(period_start(now, Some(end)), end);
    }
}
