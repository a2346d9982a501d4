//! The inbox: a worker claims an event id in `consumed_events` in the same transaction as its
//! effect. A second claim of the same (consumer, event id) finds the row and does nothing, so
//! a redelivered, re-published or replayed event is acknowledged without effect. The claim is
//! the transaction's first statement, or part of the handler's first statement when it
//! [claims the event itself](crate::runtime::Handler::claims_itself).

use crate::decide::{HandlerError, Outcome};
use crate::runtime::{Effects, Handler, Incoming};
use crate::store::consumed_events;
use sea_orm::{DatabaseTransaction, TransactionTrait};

/// Claims `event_id` for `consumer` inside `txn`; `false` when it was claimed before.
pub async fn claim(
    txn: &DatabaseTransaction,
    consumer: &str,
    msg: &Incoming,
) -> Result<bool, sea_orm::DbErr> {
    consumed_events::claim(txn, consumer, msg.head.event_id, &msg.head.event_type).await
}

/// Claim (unless the handler does: [`Incoming::claimed`]), apply, commit. Returns the outcome and, once committed, the effects whose follow-ups
/// (pushes, waking the channel sender) the runtime carries out.
pub async fn apply_once(
    handler: &dyn Handler,
    db: &sea_orm::DatabaseConnection,
    msg: &Incoming,
) -> Result<(Outcome, Effects), HandlerError> {
    let txn = db.begin().await?;
    if msg.claimed && !claim(&txn, handler.worker().as_str(), msg).await? {
        let _ = txn.rollback().await;
        return Ok((Outcome::Duplicate, Effects::default()));
    }
    match handler.apply(&txn, msg).await {
        Ok(effects) if effects.already_applied => {
            let _ = txn.rollback().await;
            Ok((Outcome::Duplicate, Effects::default()))
        }
        Ok(effects) => {
            txn.commit().await?;
            Ok((Outcome::Applied, effects))
        }
        Err(e) => {
            let _ = txn.rollback().await;
            Err(e)
        }
    }
}
