//! The four workers' effects. Each handler decodes its event, checks the order exists and is
//! paid (an unknown order is a permanent error), and applies its effect inside the runtime's
//! transaction, backed by a business-key unique constraint. The SQL is in [`crate::store`];
//! handlers read as the domain steps of an effect.
//!
//! Membership, ledger and savings change a buyer's records, so they are [`PaidOrderEffect`]s:
//! the common start (decode, check the order, lock the buyer) is written once, here.

pub mod ledger;
pub mod membership;
pub mod notifier;
pub mod savings;

use crate::decide::HandlerError;
use crate::runtime::{Effects, Handler, Incoming};
use crate::store::orders::Claimed;
use crate::store::{orders, users};
use memberline_schema::events::{Envelope, Event, EventType, OrderPaid, OrderRefunded};
use memberline_schema::ids::BuyerId;
use memberline_schema::ids::EventId;
use memberline_schema::states::OrderStatus;
use memberline_schema::topology::Worker;
use sea_orm::DatabaseTransaction;

/// Decodes the whole envelope as `P`; a payload of another shape is permanent.
pub fn decode<P: Event>(msg: &Incoming) -> Result<Envelope<P>, HandlerError> {
    serde_json::from_value(msg.envelope.clone())
        .map_err(|e| HandlerError::permanent(anyhow::anyhow!("{} payload: {e}", P::routing_key())))
}

/// Decodes the `order.paid.v1` payload; another event type or version, or a wrong shape, is
/// permanent.
pub fn order_paid(msg: &Incoming) -> Result<Envelope<OrderPaid>, HandlerError> {
    if !msg.head.is::<OrderPaid>() {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "unexpected event {} v{}",
            msg.head.event_type,
            msg.head.version
        )));
    }
    decode(msg)
}

/// The claim of `msg` for `consumer` that the handler makes itself (see
/// [`Handler::claims_itself`]); `None` when the runtime made it.
fn claim_of(consumer: Worker, msg: &Incoming) -> Option<(&'static str, EventId, &str)> {
    (!msg.claimed).then_some((
        consumer.as_str(),
        msg.head.event_id,
        msg.head.event_type.as_str(),
    ))
}

/// Claims `msg` for `consumer` (unless the runtime did) and, in the same statement, reads the
/// order; fails permanently unless it exists, belongs to the buyer and is paid (or was paid
/// and is being, or was, refunded since). The order's standing, or `None` when the event was
/// consumed before (nothing checked, nothing to do).
pub async fn claim_paid_order(
    txn: &DatabaseTransaction,
    consumer: Worker,
    msg: &Incoming,
    event: &OrderPaid,
) -> Result<Option<orders::Standing>, HandlerError> {
    match orders::claim_standing(txn, claim_of(consumer, msg), event.order_id, None).await? {
        Claimed::Before => Ok(None),
        Claimed::Now(found) => check_paid(event, found.map(|(order, _)| order)).map(Some),
    }
}

/// The checks of [`claim_paid_order`] on an order's standing (`None`: no such order).
fn check_paid(
    event: &OrderPaid,
    order: Option<orders::Standing>,
) -> Result<orders::Standing, HandlerError> {
    let Some(order) = order else {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "unknown order {}",
            event.order_id
        )));
    };
    if order.buyer_id != event.buyer_id {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "order {} belongs to buyer {}, not {}",
            event.order_id,
            order.buyer_id,
            event.buyer_id
        )));
    }
    if !matches!(
        order.status,
        OrderStatus::Paid | OrderStatus::RefundPending | OrderStatus::Refunded
    ) {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "order {} is {}, not paid",
            event.order_id,
            order.status
        )));
    }
    Ok(order)
}

/// Locks the buyer's row for the rest of the transaction, serializing effects per buyer.
pub async fn lock_user(txn: &DatabaseTransaction, user_id: BuyerId) -> Result<(), HandlerError> {
    if !users::lock(txn, user_id).await? {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "unknown user {user_id}"
        )));
    }
    Ok(())
}

/// The common start of every effect that changes a buyer's records: decode `order.paid.v1`,
/// claim it for `consumer` (unless the runtime did), check its order, and lock the buyer so effects of one buyer's
/// orders apply one at a time. The claim, the check and the lock are one statement: the
/// order's standing is read as of the statement's start, as it was when they were three.
/// `None` when the event was consumed before (nothing checked, nothing to do).
pub async fn paid_order_claimed_and_locked(
    txn: &DatabaseTransaction,
    consumer: Worker,
    msg: &Incoming,
) -> Result<Option<Envelope<OrderPaid>>, HandlerError> {
    let env = order_paid(msg)?;
    let e = &env.payload;
    let claim = claim_of(consumer, msg);
    let found = match orders::claim_standing(txn, claim, e.order_id, Some(e.buyer_id)).await? {
        Claimed::Before => return Ok(None),
        Claimed::Now(found) => found,
    };
    let locked = found.is_some_and(|(_, locked)| locked);
    check_paid(e, found.map(|(order, _)| order))?;
    if !locked {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "unknown user {}",
            e.buyer_id
        )));
    }
    Ok(Some(env))
}

/// Fails permanently unless the refunded order exists, belongs to the buyer and is refunded.
pub async fn require_refunded_order(
    txn: &DatabaseTransaction,
    event: &OrderRefunded,
) -> Result<(), HandlerError> {
    let order = orders::standing(txn, event.order_id).await?;
    match order {
        Some(o) if o.buyer_id == event.buyer_id && o.status == OrderStatus::Refunded => Ok(()),
        Some(o) => Err(HandlerError::permanent(anyhow::anyhow!(
            "order {} of buyer {} is {}, not a refunded order of buyer {}",
            event.order_id,
            o.buyer_id,
            o.status,
            event.buyer_id
        ))),
        None => Err(HandlerError::permanent(anyhow::anyhow!(
            "unknown order {}",
            event.order_id
        ))),
    }
}

/// An effect of an order on the buyer's records: applied on `order.paid.v1`, reversed on
/// `order.refunded.v1`. Its [`Handler`] checks the order and locks the buyer first, so no such
/// effect can skip the check or the lock; effect and reversal of one buyer never interleave.
///
/// A reversal may arrive before the effect it reverses (the paid event waiting in a retry
/// tier): it then records a reversed placeholder under the effect's business key, so the late
/// effect finds its key taken and applies nothing.
#[async_trait::async_trait]
pub trait PaidOrderEffect: Send + Sync + 'static {
    /// The worker that applies this effect.
    const WORKER: Worker;

    /// Applies the effect of a checked paid order, with its buyer locked, inside `txn`.
    async fn apply_paid(
        &self,
        txn: &DatabaseTransaction,
        env: &Envelope<OrderPaid>,
    ) -> Result<Effects, HandlerError>;

    /// Reverses the effect of a checked refunded order, with its buyer locked, inside `txn`.
    async fn apply_refunded(
        &self,
        txn: &DatabaseTransaction,
        env: &Envelope<OrderRefunded>,
    ) -> Result<Effects, HandlerError>;

    /// Any other event this worker is bound to (`membership.revoked.v1` for membership).
    async fn apply_other(
        &self,
        _txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        Err(HandlerError::permanent(anyhow::anyhow!(
            "unexpected event {} v{}",
            msg.head.event_type,
            msg.head.version
        )))
    }
}

#[async_trait::async_trait]
impl<E: PaidOrderEffect> Handler for E {
    fn worker(&self) -> Worker {
        E::WORKER
    }

    /// `order.paid.v1` (the hot path) is claimed in the statement that checks the order and
    /// locks the buyer.
    fn claims_itself(&self, msg: &Incoming) -> bool {
        matches!(msg.head.kind(), Some(EventType::OrderPaid) | None)
    }

    /// `order.paid.v1` locks its buyer in its first statement, the one that claims it.
    fn batch_key(&self, msg: &Incoming) -> Option<i64> {
        if !msg.head.is::<OrderPaid>() {
            return None;
        }
        msg.envelope.get("payload")?.get("buyer_id")?.as_i64()
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        match msg.head.kind() {
            Some(EventType::OrderRefunded) => {
                if !msg.head.is::<OrderRefunded>() {
                    return Err(HandlerError::permanent(anyhow::anyhow!(
                        "unexpected event {} v{}",
                        msg.head.event_type,
                        msg.head.version
                    )));
                }
                let env = decode::<OrderRefunded>(msg)?;
                require_refunded_order(txn, &env.payload).await?;
                lock_user(txn, env.payload.buyer_id).await?;
                self.apply_refunded(txn, &env).await
            }
            Some(EventType::OrderPaid) | None => {
                match paid_order_claimed_and_locked(txn, E::WORKER, msg).await? {
                    Some(env) => self.apply_paid(txn, &env).await,
                    None => Ok(Effects::already_applied()),
                }
            }
            Some(_) => self.apply_other(txn, msg).await,
        }
    }
}
