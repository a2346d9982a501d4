//! Membership: a paid plan extends the buyer's membership. A new period starts at
//! `max(now, end of the current membership)` (a lapsed member starts now, an active one stacks)
//! and lasts the plan's days; a permanent plan makes it permanent; a pass adds its uses.
//! One period (or pass) per order, enforced by a unique constraint.
//!
//! A refund removes exactly the order's period and moves every later period earlier by its
//! length (a pass loses its unused uses); an admin's revocation ends the membership at once.
//! Both announce the membership as it is afterwards (`membership.changed.v1`).
//!
//! Each keeps the dashboard's rollups ([`memberline_orders::stats`]) in the same transaction:
//! the sale or refund, and the buyer's part of the members' counts.

use super::{PaidOrderEffect, decode, lock_user};
use crate::decide::HandlerError;
use crate::runtime::{Effects, Incoming};
use crate::store::{membership_periods, user_passes};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use memberline_orders::stats;
use memberline_platform::outbox;
use memberline_schema::events::{
    Envelope, MembershipChange, MembershipChanged, MembershipExtended, MembershipRevoked,
    OrderPaid, OrderRefunded, PlanKind,
};
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::topology::Worker;
use sea_orm::DatabaseTransaction;

pub struct Membership {
    /// The shop's time zone, whose days the dashboard counts in.
    pub time_zone: chrono_tz::Tz,
}

/// Where a new period starts: now for a lapsed (or new) member, the current end otherwise.
pub fn period_start(now: DateTime<Utc>, current_end: Option<DateTime<Utc>>) -> DateTime<Utc> {
    match current_end {
        Some(end) if end > now => end,
        _ => now,
    }
}

#[async_trait::async_trait]
impl PaidOrderEffect for Membership {
    const WORKER: Worker = Worker::Membership;

    async fn apply_paid(
        &self,
        txn: &DatabaseTransaction,
        env: &Envelope<OrderPaid>,
    ) -> Result<Effects, HandlerError> {
        let e = &env.payload;
        let before = stats::membership(txn, e.buyer_id).await?;
        let (effects, added) = paid(txn, env, &before).await?;
        let after = added.map_or_else(|| before.clone(), |p| before.with(p));
        let tz = self.time_zone;
        let counted =
            stats::record(txn, stats::paid(e, tz), &stats::moved(&before, &after, tz)).await?;
        Ok(counted_anyway(effects, counted))
    }

    async fn apply_refunded(
        &self,
        txn: &DatabaseTransaction,
        env: &Envelope<OrderRefunded>,
    ) -> Result<Effects, HandlerError> {
        let e = &env.payload;
        let before = stats::membership(txn, e.buyer_id).await?;
        let effects = refunded(txn, env).await?;
        let after = stats::membership(txn, e.buyer_id).await?;
        let tz = self.time_zone;
        let counted = stats::record(
            txn,
            stats::refunded(e, tz),
            &stats::moved(&before, &after, tz),
        )
        .await?;
        Ok(counted_anyway(effects, counted))
    }

    /// `membership.revoked.v1`: the membership ends at `revoked_at` (deduplicated by the
    /// runtime's consumed-event claim: the event itself is the business key).
    async fn apply_other(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        if !msg.head.is::<MembershipRevoked>() {
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "unexpected event {} v{}",
                msg.head.event_type,
                msg.head.version
            )));
        }
        let env = decode::<MembershipRevoked>(msg)?;
        let e = &env.payload;
        lock_user(txn, e.user_id).await?;
        let before = stats::membership(txn, e.user_id).await?;
        let removed = membership_periods::revoke(txn, e.user_id, e.revoked_at).await?;
        let after = stats::membership(txn, e.user_id).await?;
        stats::record(txn, None, &stats::moved(&before, &after, self.time_zone)).await?;
        changed(
            txn,
            &env,
            e.user_id,
            MembershipChange::Revoke,
            None,
            removed,
            0,
        )
        .await
    }
}

/// An effect its business key found done that still counted on the dashboard (the sale of an
/// order refunded before its paid event came, the refund of a revoked membership): applied,
/// so its transaction commits.
fn counted_anyway(effects: Effects, counted: bool) -> Effects {
    if effects.already_applied && counted {
        Effects::applied()
    } else {
        effects
    }
}

/// Applies paid order `env`, with its buyer locked (two orders stacking at once must not both
/// start at the same end), on the buyer's membership `before`; with the period it added, if
/// any.
async fn paid(
    txn: &DatabaseTransaction,
    env: &Envelope<OrderPaid>,
    before: &stats::Membership,
) -> Result<(Effects, Option<stats::Period>), HandlerError> {
    let e = &env.payload;
    if e.plan.plan_kind != PlanKind::Pass
        && membership_periods::revoked_since(txn, e.buyer_id, e.paid_at).await?
    {
        // Paid before an admin revoked the membership, applied after: the revocation
        // covers it (a removed placeholder keeps its business key).
        let effects = if membership_periods::add_removed(txn, e.buyer_id, e.order_id).await? {
            Effects::applied()
        } else {
            Effects::already_applied()
        };
        return Ok((effects, None));
    }
    let (extended, added) = match e.plan.plan_kind {
        PlanKind::Membership | PlanKind::Permanent => match add_period(txn, e, before).await? {
            Some((extended, period)) => (Some(extended), Some(period)),
            None => (None, None),
        },
        PlanKind::Pass => (grant_pass(txn, e).await?, None),
    };
    let Some(extended) = extended else {
        return Ok((Effects::already_applied(), None));
    };
    let follow_up = Envelope::new(extended, env.correlation_id, Some(env.event_id));
    outbox::enqueue(txn, &follow_up).await?;
    Ok((Effects::applied(), added))
}

/// Removes exactly the refunded order's period (later periods move earlier by its length) or
/// takes its pass's unused uses.
async fn refunded(
    txn: &DatabaseTransaction,
    env: &Envelope<OrderRefunded>,
) -> Result<Effects, HandlerError> {
    let e = &env.payload;
    let (removed_secs, removed_pass_uses) = match e.plan.plan_kind {
        PlanKind::Membership | PlanKind::Permanent => {
            match membership_periods::of_order(txn, e.order_id).await? {
                Some(period) if period.removed => return Ok(Effects::already_applied()),
                Some(period) => {
                    membership_periods::remove_and_close_gap(txn, e.buyer_id, e.order_id, period)
                        .await?;
                    let secs = period
                        .ends_at
                        .map_or(0, |end| (end - period.starts_at).num_seconds());
                    (secs, 0)
                }
                // Refunded before its period was added: nothing to take, and nothing
                // will be added.
                None => {
                    membership_periods::add_removed(txn, e.buyer_id, e.order_id).await?;
                    return Ok(Effects::applied());
                }
            }
        }
        PlanKind::Pass => match user_passes::revoke(txn, e.order_id).await? {
            Some(taken) => (0, taken),
            None if user_passes::exists(txn, e.order_id).await? => {
                return Ok(Effects::already_applied());
            }
            None => {
                user_passes::add_revoked(
                    txn,
                    e.buyer_id,
                    e.order_id,
                    e.plan.plan_id,
                    &e.plan.plan_name,
                    e.plan.uses.unwrap_or(1),
                )
                .await?;
                return Ok(Effects::applied());
            }
        },
    };
    changed(
        txn,
        env,
        e.buyer_id,
        MembershipChange::Refund,
        Some(e.order_id),
        removed_secs,
        removed_pass_uses,
    )
    .await
}

/// Announces what the buyer's membership is after a reversal (`membership.changed.v1`).
async fn changed<P: memberline_schema::events::Event + Sync>(
    txn: &DatabaseTransaction,
    cause: &Envelope<P>,
    user_id: BuyerId,
    change: MembershipChange,
    order_id: Option<OrderId>,
    removed_secs: i64,
    removed_pass_uses: i32,
) -> Result<Effects, HandlerError> {
    let (ends_at, permanent) = membership_periods::standing(txn, user_id).await?;
    let event = MembershipChanged {
        user_id,
        change,
        order_id,
        removed_secs,
        removed_pass_uses,
        ends_at: if permanent { None } else { ends_at },
        permanent,
    };
    let follow_up = Envelope::new(event, cause.correlation_id, Some(cause.event_id));
    outbox::enqueue(txn, &follow_up).await?;
    Ok(Effects::applied())
}

/// Adds the order's period: `[start, start + days)` stacked after the current membership for a
/// timed plan, or a permanent one (no end) starting now. `None` when the order already has it.
async fn add_period(
    txn: &DatabaseTransaction,
    e: &OrderPaid,
    before: &stats::Membership,
) -> Result<Option<(MembershipExtended, stats::Period)>, HandlerError> {
    // Microseconds, as PostgreSQL keeps them: the period added is the one read back later.
    let now = Utc::now().trunc_subsecs(6);
    let (start, until) = if e.plan.plan_kind == PlanKind::Membership {
        let days = e.plan.duration_days.filter(|d| *d > 0).ok_or_else(|| {
            HandlerError::permanent(anyhow::anyhow!("membership plan without days"))
        })?;
        let start = period_start(now, before.latest_end());
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
    if !membership_periods::add(txn, e.buyer_id, e.order_id, start, until).await? {
        return Ok(None);
    }
    let extended = MembershipExtended {
        starts_at: Some(start),
        ends_at: until,
        permanent: until.is_none(),
        ..announcement(e)
    };
    let period = stats::Period {
        starts_at: start,
        ends_at: until,
        paid_at: e.paid_at,
        live: true,
    };
    Ok(Some((extended, period)))
}

/// Grants the order's pass with all its uses. `None` when the order already granted it.
async fn grant_pass(
    txn: &DatabaseTransaction,
    e: &OrderPaid,
) -> Result<Option<MembershipExtended>, HandlerError> {
    let uses = e
        .plan
        .uses
        .filter(|u| *u > 0)
        .ok_or_else(|| HandlerError::permanent(anyhow::anyhow!("pass plan without uses")))?;
    if !user_passes::grant(
        txn,
        e.buyer_id,
        e.order_id,
        e.plan.plan_id,
        &e.plan.plan_name,
        uses,
    )
    .await?
    {
        return Ok(None);
    }
    Ok(Some(MembershipExtended {
        pass_uses: Some(uses),
        ..announcement(e)
    }))
}

/// `membership.extended.v1` for order `e` with nothing granted yet; the caller fills in what it
/// granted.
fn announcement(e: &OrderPaid) -> MembershipExtended {
    MembershipExtended {
        user_id: e.buyer_id,
        order_id: e.order_id,
        plan_kind: e.plan.plan_kind,
        starts_at: None,
        ends_at: None,
        permanent: false,
        pass_uses: None,
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
