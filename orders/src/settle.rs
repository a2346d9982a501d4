//! Applying what a provider says to our orders, in the database. Shared by the gateway
//! (notifications, cancel) and the workers (expiry, reconciliation, late refunds), so a payment
//! found by query goes through exactly the same transition as one that was notified.
//!
//! Every function here is one transaction that locks the order row first (several orders' rows,
//! in order-number order, for notifications that share one), then the buyers whose eligibility
//! a payment must pass: a notification, a query and an expiry racing on one order are
//! serialized, so are two payments of one buyer, and every transition is a conditional
//! `WHERE status = from` update (here in `store::notifications::pay`, elsewhere
//! [`crate::store::transitions::advance`]), so exactly one of them moves it.

use crate::providers::{Mismatch, Payment, PaymentProvider};
use crate::store::notifications as store;
pub use crate::store::notifications::Notification;
use crate::store::transitions;
use crate::{OrderError, rules};
use chrono::Utc;
use memberline_platform::outbox::{self, Wake};
use memberline_schema::entities::order;
use memberline_schema::events::{Envelope, LateRefundWhy, OrderPaid, PlanSold};
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::{NotificationOutcome, OrderStatus, PlanKind, Provider};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};

/// How a payment came to our knowledge (recorded in the order's status history).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The provider's notification.
    Notify,
    /// Our query (reconciliation, expiry, a refused close).
    Query,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Notify => "notify",
            Source::Query => "query",
        }
    }
}

/// What applying a verified payment did. Its [`Applied::outcome`] is what is stored with a
/// notification and counted in the notifications metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// `pending_payment → paid`, with its history and `order.paid.v1` in the outbox.
    Paid { order_id: OrderId },
    /// Already paid (a copy of a notification, `TRADE_FINISHED` after `TRADE_SUCCESS`, a query
    /// after the notify): nothing changed.
    AlreadyPaid { order_id: OrderId },
    /// The order was closed before the money came: not paid; an automatic refund is due.
    LatePayment { order_id: OrderId },
    /// The buyer could no longer have the plan when the money came (a permanent membership
    /// bought meanwhile): the order is closed unpaid and an automatic refund is due.
    NotEligible { order_id: OrderId },
    /// Genuine, but not for this order as we know it: flagged, not applied.
    Flagged {
        order_id: Option<OrderId>,
        flag: Flag,
    },
}

/// Why a genuine payment was not applied, for an operator: what kind of mismatch, and the
/// text kept on the order (`payment_flag`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    pub kind: NotificationOutcome,
    pub text: String,
}

impl Flag {
    /// No order has the payment's number.
    pub fn unknown_order(out_trade_no: &str) -> Self {
        Self {
            kind: NotificationOutcome::FlaggedUnknownOrder,
            text: format!("unknown order {out_trade_no}"),
        }
    }

    /// The payment does not match the order it names.
    pub fn mismatch(mismatch: &Mismatch) -> Self {
        let (kind, what) = match mismatch {
            Mismatch::Amount { .. } => (NotificationOutcome::FlaggedAmount, "amount"),
            Mismatch::Merchant { .. } => (NotificationOutcome::FlaggedMerchant, "merchant"),
            Mismatch::Currency(_) => (NotificationOutcome::FlaggedCurrency, "currency"),
        };
        Self {
            kind,
            text: format!("{what}: {mismatch}"),
        }
    }

    /// The order is paid with another provider.
    pub fn other_provider(provider: Provider) -> Self {
        Self {
            kind: NotificationOutcome::FlaggedMerchant,
            text: format!("merchant: the order is not paid with {provider}"),
        }
    }

    /// The provider refunded the payment before it was applied here.
    pub fn refunded_first(provider: Provider, transaction_id: &str) -> Self {
        Self {
            kind: NotificationOutcome::FlaggedRefunded,
            text: format!(
                "refunded at {provider} (transaction {transaction_id}) before it was applied here"
            ),
        }
    }
}

impl Applied {
    pub fn outcome(&self) -> NotificationOutcome {
        match self {
            Applied::Paid { .. } => NotificationOutcome::Applied,
            Applied::AlreadyPaid { .. } => NotificationOutcome::Duplicate,
            Applied::LatePayment { .. } => NotificationOutcome::LatePayment,
            Applied::NotEligible { .. } => NotificationOutcome::NotEligible,
            Applied::Flagged { flag, .. } => flag.kind,
        }
    }

    fn flag(&self) -> Option<&str> {
        match self {
            Applied::Flagged { flag, .. } => Some(&flag.text),
            _ => None,
        }
    }

    fn order_id(&self) -> Option<OrderId> {
        match self {
            Applied::Paid { order_id }
            | Applied::AlreadyPaid { order_id }
            | Applied::LatePayment { order_id }
            | Applied::NotEligible { order_id } => Some(*order_id),
            Applied::Flagged { order_id, .. } => *order_id,
        }
    }
}

/// What storing a notification did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// First copy: stored, and this is what became of its payment (if it carried one).
    New(Option<Applied>),
    /// A copy of a notification stored before: nothing done again.
    Duplicate,
}

/// A verified notification, its payment (if it reports one) and its provider's client.
pub struct Incoming<'a> {
    pub client: &'a dyn PaymentProvider,
    pub notification: &'a Notification<'a>,
    pub payment: Option<&'a Payment>,
}

/// What one notification did inside a shared transaction.
enum InTransaction {
    /// Stored (and applied): commits with the transaction.
    New(Option<Applied>),
    /// A copy of one stored before: nothing written.
    Duplicate,
    /// A copy was stored first, after this one may have written: the transaction must not
    /// commit.
    CopyStoredFirst,
}

/// Stores verified notifications and, for those that report a payment, applies it, in ONE
/// transaction: one answer per notification, in order; one commit. The notifications are of
/// different orders, locked in order-number order (`payment` is `None` for events that pay
/// nothing, Alipay `TRADE_CLOSED`, say).
///
/// The common case, the first copy of a notification that pays a pending order, takes four
/// round trips inside the transaction: lock the order (the same statement says whether this
/// notification was stored before); lock its buyer (a pass skips this and the next); count what
/// the eligibility rules need; one statement that moves the order to paid and writes its
/// history, its `order.paid.v1` outbox row and the notification. Notifications that share the
/// transaction share the buyers' lock. A copy of a notification already stored writes nothing.
///
/// `Err` when the transaction failed, or when a copy of one of them was stored first by another
/// request while it ran: with one notification, the first is its answer and the second a
/// duplicate; with several, the caller stores each again on its own (what committed is then
/// found stored, a duplicate).
///
/// `wake`: how the commit wakes the relay ([`Wake`]: in-process, the transaction opting out of
/// the outbox trigger's NOTIFY, or by that NOTIFY).
pub async fn notifications_together(
    db: &DatabaseConnection,
    incoming: &[Incoming<'_>],
    wake: &Wake,
) -> Result<Vec<Stored>, DbErr> {
    let mut by_order: Vec<usize> = (0..incoming.len()).collect();
    by_order.sort_by_key(|i| incoming[*i].payment.map(|p| p.out_trade_no.as_str()));
    let txn = db.begin().await?;
    match together_in(&txn, incoming, &by_order, wake).await {
        Ok(Some((answers, wrote))) if wrote => {
            txn.commit().await?;
            wake.committed();
            Ok(answers)
        }
        Ok(Some((answers, _))) => {
            txn.rollback().await?;
            Ok(answers)
        }
        Ok(None) => {
            // A copy was stored first: whatever this transaction did is undone (it found the
            // order already paid anyway, as the first copy committed before our insert
            // returned).
            txn.rollback().await?;
            match incoming.len() {
                1 => Ok(vec![Stored::Duplicate]),
                _ => Err(DbErr::Custom(
                    "a copy of a notification was stored first".into(),
                )),
            }
        }
        Err(e) => {
            txn.rollback().await?;
            Err(e)
        }
    }
}

/// The notifications of [`notifications_together`] in its transaction: every order locked first,
/// in order-number order; then the buyers whose eligibility a payment must pass, in id order;
/// then each notification applied. Every payment path takes its locks in that order (orders,
/// then buyers), so two of them never wait for each other in a circle. `None` when a copy of
/// one of them was stored first; otherwise the answers and whether anything was written.
async fn together_in(
    txn: &DatabaseTransaction,
    incoming: &[Incoming<'_>],
    by_order: &[usize],
    wake: &Wake,
) -> Result<Option<(Vec<Stored>, bool)>, DbErr> {
    let mut locked: Vec<Option<store::Locked>> = (0..incoming.len()).map(|_| None).collect();
    for &i in by_order {
        if let Some(payment) = incoming[i].payment {
            let notification = Some(incoming[i].notification);
            locked[i] =
                Some(store::lock_order(txn, &payment.out_trade_no, notification, wake).await?);
        }
    }
    lock_buyers(
        txn,
        locked
            .iter()
            .flatten()
            .filter(|l| !l.stored_before)
            .filter_map(|l| l.order.as_ref()),
    )
    .await?;
    let mut answers = vec![Stored::Duplicate; incoming.len()];
    let mut wrote = false;
    for &i in by_order {
        match one_in(txn, &incoming[i], locked[i].take()).await? {
            InTransaction::New(applied) => {
                answers[i] = Stored::New(applied);
                wrote = true;
            }
            InTransaction::Duplicate => {}
            InTransaction::CopyStoredFirst => return Ok(None),
        }
    }
    Ok(Some((answers, wrote)))
}

/// One notification inside the shared transaction, its order (if it reports a payment) locked.
async fn one_in(
    txn: &DatabaseTransaction,
    incoming: &Incoming<'_>,
    locked: Option<store::Locked>,
) -> Result<InTransaction, DbErr> {
    let notification = incoming.notification;
    let (applied, first_copy) = match (incoming.payment, locked) {
        (Some(payment), Some(locked)) => {
            if locked.stored_before {
                return Ok(InTransaction::Duplicate);
            }
            let settled = apply_locked(
                txn,
                incoming.client,
                payment,
                locked.order,
                Source::Notify,
                Some(notification),
            )
            .await?;
            (Some(settled.applied), settled.notification_stored)
        }
        _ => (None, None),
    };
    let first_copy = match first_copy {
        Some(first) => first,
        None => {
            store::insert_notification(
                txn,
                notification,
                applied
                    .as_ref()
                    .map_or(NotificationOutcome::Ignored, Applied::outcome),
                applied.as_ref().and_then(Applied::order_id),
                applied.as_ref().and_then(Applied::flag),
            )
            .await?
        }
    };
    Ok(match (first_copy, incoming.payment) {
        (true, _) => InTransaction::New(applied),
        // Nothing but the notification was tried, and it was not inserted.
        (false, None) => InTransaction::Duplicate,
        (false, Some(_)) => InTransaction::CopyStoredFirst,
    })
}

/// Applies a payment found by our own query — the same transition, and the same locks, as a
/// notification.
pub async fn queried_payment(
    db: &DatabaseConnection,
    client: &dyn PaymentProvider,
    payment: &Payment,
) -> Result<Applied, DbErr> {
    let txn = db.begin().await?;
    let locked = store::lock_order(&txn, &payment.out_trade_no, None, &Wake::by_notify()).await?;
    lock_buyers(&txn, locked.order.iter()).await?;
    let settled = apply_locked(&txn, client, payment, locked.order, Source::Query, None).await?;
    txn.commit().await?;
    Ok(settled.applied)
}

/// Whether a payment for `order` must pass the eligibility rules again: a pending order whose
/// plan they can refuse (a pass never is: the rules a payment can break are about
/// memberships).
fn judged_at_payment(order: &order::Model) -> bool {
    order.status == OrderStatus::PendingPayment && order.plan_kind != PlanKind::Pass
}

/// Locks the buyers of the `orders` whose payment is judged ([`judged_at_payment`]), in id
/// order, as a purchase locks its buyer: two payments of one buyer, or a payment and a
/// purchase, are judged one after the other, each seeing what the other committed.
async fn lock_buyers<'a>(
    txn: &DatabaseTransaction,
    orders: impl Iterator<Item = &'a order::Model>,
) -> Result<(), DbErr> {
    let mut buyers: Vec<BuyerId> = orders
        .filter(|o| judged_at_payment(o))
        .map(|o| o.buyer_id)
        .collect();
    buyers.sort_unstable();
    buyers.dedup();
    if buyers.is_empty() {
        return Ok(());
    }
    store::lock_buyers(txn, &buyers).await
}

/// What [`apply_locked`] did.
struct Settled {
    applied: Applied,
    /// When the payment was applied with its notification in one statement: whether the
    /// notification was new. `None`: the caller still has to store it.
    notification_stored: Option<bool>,
}

/// Decides what the payment does to the locked order and does it; the pending → paid
/// transition also stores `notification` when there is one.
async fn apply_locked(
    txn: &DatabaseTransaction,
    client: &dyn PaymentProvider,
    payment: &Payment,
    order: Option<order::Model>,
    source: Source,
    notification: Option<&Notification<'_>>,
) -> Result<Settled, DbErr> {
    let applied = |applied| Settled {
        applied,
        notification_stored: None,
    };
    let provider = client.provider();
    let Some(order) = order else {
        return Ok(applied(Applied::Flagged {
            order_id: None,
            flag: Flag::unknown_order(&payment.out_trade_no),
        }));
    };
    if order.provider != Some(provider) {
        return Ok(applied(Applied::Flagged {
            order_id: Some(order.id),
            flag: Flag::other_provider(provider),
        }));
    }
    if let Err(mismatch) = client.check(payment, order.channel_app_id.as_deref(), order.amount_fen)
    {
        return Ok(applied(Applied::Flagged {
            order_id: Some(order.id),
            flag: Flag::mismatch(&mismatch),
        }));
    }
    match order.status {
        OrderStatus::PendingPayment => {
            if let Err(refusal) = eligible_now(txn, &order).await? {
                refuse(txn, provider, payment, &order, source, &refusal).await?;
                return Ok(applied(Applied::NotEligible { order_id: order.id }));
            }
            let now = Utc::now();
            let reason = format!("paid_by_{provider}_{}", source.as_str());
            let paid = pay(txn, payment, &order, &reason, notification, now).await?;
            Ok(Settled {
                applied: Applied::Paid { order_id: order.id },
                notification_stored: notification.map(|_| paid),
            })
        }
        OrderStatus::Paid | OrderStatus::RefundPending | OrderStatus::Refunded => {
            Ok(applied(Applied::AlreadyPaid { order_id: order.id }))
        }
        OrderStatus::Closed => {
            // Money for an order we closed: never paid; the workers' lifecycle job refunds it
            // at once (and once: the refund number is derived from the order).
            record_for_refund(txn, payment, &order, source, LateRefundWhy::OrderClosed).await?;
            Ok(applied(Applied::LatePayment { order_id: order.id }))
        }
    }
}

/// Keeps the payment on the order for the lifecycle job's automatic refund, and why.
async fn record_for_refund(
    txn: &DatabaseTransaction,
    payment: &Payment,
    order: &order::Model,
    source: Source,
    why: LateRefundWhy,
) -> Result<(), DbErr> {
    let recorded = serde_json::json!({
        "transaction_id": payment.transaction_id,
        "amount_fen": payment.amount_fen,
        "paid_at": payment.paid_at,
        "source": source.as_str(),
        "why": why,
    });
    store::record_late_payment(txn, order.id, recorded).await
}

/// The eligibility rules again, now that the money came: since the order was placed the buyer
/// may have bought a permanent membership (with balance, or by paying another pending order).
/// The caller holds the buyer's lock ([`lock_buyers`]), taken before this statement: what it
/// counts includes every payment and purchase of theirs that committed before.
async fn eligible_now(
    txn: &DatabaseTransaction,
    order: &order::Model,
) -> Result<Result<(), OrderError>, DbErr> {
    if !judged_at_payment(order) {
        return Ok(Ok(()));
    }
    let counts = crate::store::orders::counts(txn, order.buyer_id, order.plan_id).await?;
    Ok(rules::eligibility(order.into(), order.pay_method, counts))
}

/// A payment the buyer may no longer have: the order is closed unpaid and the payment kept for
/// its automatic refund, as a late payment's is; the refund's `order.late_payment_refunded.v1`
/// tells the buyer why. (No `order.closed.v1`: its reasons are the buyer's and the clock's, and a
/// published event's values do not change in place.)
async fn refuse(
    txn: &DatabaseTransaction,
    provider: Provider,
    payment: &Payment,
    order: &order::Model,
    source: Source,
    refusal: &OrderError,
) -> Result<(), DbErr> {
    tracing::warn!(
        order_id = %order.id, buyer_id = %order.buyer_id, why = %refusal,
        "A payment came for a plan the buyer can no longer have; it will be refunded"
    );
    if !transitions::advance(
        txn,
        order.id,
        OrderStatus::PendingPayment,
        OrderStatus::Closed,
        &format!("paid_by_{provider}_{}_not_eligible", source.as_str()),
        Utc::now(),
    )
    .await?
    {
        return Err(DbErr::Custom(
            "a locked pending order changed status".into(),
        ));
    }
    record_for_refund(txn, payment, order, source, LateRefundWhy::NotEligible).await
}

/// Moves the locked pending `order` to paid (`store::notifications::pay`); `false` when `notification` had
/// been stored by a copy first (the caller rolls back).
async fn pay(
    txn: &DatabaseTransaction,
    payment: &Payment,
    order: &order::Model,
    reason: &str,
    notification: Option<&Notification<'_>>,
    now: chrono::DateTime<Utc>,
) -> Result<bool, DbErr> {
    let event = OrderPaid {
        order_id: order.id,
        order_no: order.order_no.clone(),
        buyer_id: order.buyer_id,
        plan: PlanSold::of_order(order),
        pay_method: order.pay_method,
        amount_fen: order.amount_fen,
        amount_points: order.amount_points,
        original_price_fen: order.original_price_fen,
        original_price_points: order.original_price_points,
        paid_at: now,
    };
    let row = outbox::Row::of(&Envelope::new(event, order.correlation_id, None))?;
    store::pay(
        txn,
        order.id,
        now,
        store::Trade {
            transaction_id: &payment.transaction_id,
            trade_type: payment.trade_type.as_deref(),
        },
        reason,
        &row,
        notification,
    )
    .await
}

/// The refund number of a late payment's automatic refund: derived from the order alone, so
/// however often it is retried, the provider refunds once.
pub fn late_refund_no(order_no: &str) -> String {
    format!("{order_no}L1")
}
