//! Applying what a provider says to our orders, in the database. Shared by the gateway
//! (notifications, cancel) and the workers (expiry, reconciliation, late refunds), so a payment
//! found by query goes through exactly the same transition as one that was notified.
//!
//! Every function here is one transaction that locks the order row first (several orders' rows,
//! in order-number order, for notifications that share one): a notification, a query and an
//! expiry racing on one order are serialized, and every transition is a
//! conditional `WHERE status = from` update (here in [`PAID_SQL`], elsewhere
//! [`crate::transitions::advance`]), so exactly one of them moves it.

use crate::providers::{Mismatch, Payment, PaymentProvider};
use crate::transitions;
use chrono::Utc;
use memberline_platform::outbox::{self, Wake};
use memberline_schema::entities::order;
use memberline_schema::events::{Envelope, OrderPaid, PlanSold};
use memberline_schema::ids::OrderId;
use memberline_schema::states::{NotificationOutcome, OrderStatus, Provider};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, FromQueryResult,
    Statement, TransactionTrait, Value,
};
use std::sync::LazyLock;

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
            | Applied::LatePayment { order_id } => Some(*order_id),
            Applied::Flagged { order_id, .. } => *order_id,
        }
    }
}

/// A verified notification to store: raw, unique per provider event.
#[derive(Clone, Debug)]
pub struct Notification<'a> {
    pub provider: Provider,
    /// WeChat `id`, Alipay `notify_id`.
    pub event_id: &'a str,
    pub out_trade_no: Option<&'a str>,
    pub headers: serde_json::Value,
    pub raw_body: &'a str,
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
/// The common case, the first copy of a notification that pays a pending order, takes two
/// round trips inside the transaction: lock the order (the same statement says whether this
/// notification was stored before); one statement that moves the order to paid and writes its
/// history, its `order.paid.v1` outbox row and the notification. A copy of a notification
/// already stored writes nothing.
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
    let mut answers = vec![Stored::Duplicate; incoming.len()];
    let mut wrote = false;
    for i in by_order {
        let outcome = match one_in(&txn, &incoming[i], wake).await {
            Ok(outcome) => outcome,
            Err(e) => {
                txn.rollback().await?;
                return Err(e);
            }
        };
        match outcome {
            InTransaction::New(applied) => {
                answers[i] = Stored::New(applied);
                wrote = true;
            }
            InTransaction::Duplicate => {}
            InTransaction::CopyStoredFirst => {
                // Stored by an earlier copy: whatever this transaction did is undone (it found
                // the order already paid anyway, as the first copy committed before our insert
                // returned).
                txn.rollback().await?;
                return match incoming.len() {
                    1 => Ok(vec![Stored::Duplicate]),
                    _ => Err(DbErr::Custom(
                        "a copy of a notification was stored first".into(),
                    )),
                };
            }
        }
    }
    if !wrote {
        txn.rollback().await?;
        return Ok(answers);
    }
    txn.commit().await?;
    wake.committed();
    Ok(answers)
}

/// One notification inside the shared transaction.
async fn one_in(
    txn: &DatabaseTransaction,
    incoming: &Incoming<'_>,
    wake: &Wake,
) -> Result<InTransaction, DbErr> {
    let notification = incoming.notification;
    let (applied, first_copy) = match incoming.payment {
        Some(payment) => {
            let locked = lock_order(txn, &payment.out_trade_no, Some(notification), wake).await?;
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
        None => (None, None),
    };
    let first_copy = match first_copy {
        Some(first) => first,
        None => store_notification(txn, notification, applied.as_ref()).await?,
    };
    Ok(match (first_copy, incoming.payment) {
        (true, _) => InTransaction::New(applied),
        // Nothing but the notification was tried, and it was not inserted.
        (false, None) => InTransaction::Duplicate,
        (false, Some(_)) => InTransaction::CopyStoredFirst,
    })
}

/// Inserts the notification with `applied`'s outcome; `false` when a copy was stored first.
async fn store_notification(
    txn: &DatabaseTransaction,
    notification: &Notification<'_>,
    applied: Option<&Applied>,
) -> Result<bool, DbErr> {
    let inserted = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO payment_notifications \
             (provider, provider_event_id, out_trade_no, headers, raw_body, verified, outcome, \
              order_id, flag) \
             VALUES ($1, $2, $3, $4, $5, true, $6, $7, $8) \
             ON CONFLICT (provider, provider_event_id) DO NOTHING RETURNING id",
            [
                notification.provider.as_str().into(),
                notification.event_id.into(),
                notification.out_trade_no.map(str::to_owned).into(),
                notification.headers.clone().into(),
                notification.raw_body.into(),
                applied
                    .map_or(NotificationOutcome::Ignored, Applied::outcome)
                    .as_str()
                    .into(),
                applied.and_then(Applied::order_id).into(),
                applied.and_then(Applied::flag).map(str::to_owned).into(),
            ],
        ))
        .await?;
    Ok(inserted.is_some())
}

/// Applies a payment found by our own query — the same transition as a notification.
pub async fn queried_payment(
    db: &DatabaseConnection,
    client: &dyn PaymentProvider,
    payment: &Payment,
) -> Result<Applied, DbErr> {
    let txn = db.begin().await?;
    let locked = lock_order(&txn, &payment.out_trade_no, None, &Wake::by_notify()).await?;
    let settled = apply_locked(&txn, client, payment, locked.order, Source::Query, None).await?;
    txn.commit().await?;
    Ok(settled.applied)
}

/// The order of a payment, locked, and whether the notification that reports it was stored
/// before.
struct Locked {
    order: Option<order::Model>,
    stored_before: bool,
}

/// Locks the order `$1` (when there is one) and looks the notification `$2`/`$3` up, in one
/// statement; `$4` 'off' opts the transaction out of the outbox trigger's NOTIFY (see
/// [`notifications_together`]). A lock taken in a CTE: `FOR UPDATE` cannot apply to the
/// nullable side of the outer join that keeps the row when no order has the number.
static LOCK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH o AS (SELECT * FROM orders WHERE order_no = $1 FOR UPDATE) \
         SELECT o.*, EXISTS (SELECT 1 FROM payment_notifications \
                             WHERE provider = $2 AND provider_event_id = $3) AS stored_before, \
                {} AS outbox_notify \
         FROM (SELECT 1) one LEFT JOIN o ON true",
        outbox::notify_setting_sql("$4")
    )
});

async fn lock_order(
    txn: &DatabaseTransaction,
    out_trade_no: &str,
    notification: Option<&Notification<'_>>,
    wake: &Wake,
) -> Result<Locked, DbErr> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            LOCK_SQL.as_str(),
            [
                out_trade_no.into(),
                notification.map(|n| n.provider.as_str().to_owned()).into(),
                notification.map(|n| n.event_id.to_owned()).into(),
                wake.notify_setting().into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("the order lock returned no row".into()))?;
    let order = match row.try_get::<Option<i64>>("", "id")? {
        Some(_) => Some(order::Model::from_query_result(&row, "")?),
        None => None,
    };
    Ok(Locked {
        order,
        stored_before: row.try_get("", "stored_before")?,
    })
}

/// What [`apply_locked`] did.
struct Settled {
    applied: Applied,
    /// When the payment was applied with its notification in one statement: whether the
    /// notification was new. `None`: the caller still has to store it.
    notification_stored: Option<bool>,
}

/// The paid transition with everything it writes, in one statement: the order (`$1`) moved
/// from pending to paid at `$2` with the provider's transaction id `$3`; its history row
/// (reason `$4`); its `order.paid.v1` outbox row (`$5`, as JSON); and, when `$7` is not null,
/// the notification that reported it (`$6`–`$10`). `advanced` is 0 when the order was not
/// pending; `stored` is 0 when a copy of the notification was stored first.
static PAID_SQL: LazyLock<String> = LazyLock::new(|| {
    let (from, to) = (OrderStatus::PendingPayment, OrderStatus::Paid);
    transitions::allowed(from, to).expect("pending -> paid is a transition");
    format!(
        "\
WITH o AS (
    UPDATE orders SET status = '{to}', paid_at = $2, updated_at = $2, version = version + 1,
        provider_txn_id = $3
    WHERE id = $1 AND status = '{from}'
    RETURNING id
), h AS (
    INSERT INTO order_status_history (order_id, from_status, to_status, reason, at)
    SELECT id, '{from}', '{to}', $4, $2 FROM o
), e AS (
    {}
), n AS (
    INSERT INTO payment_notifications (provider, provider_event_id, out_trade_no, headers,
        raw_body, verified, outcome, order_id)
    SELECT $6, $7, $8, $9, $10, true, 'applied', id FROM o WHERE $7::text IS NOT NULL
    ON CONFLICT (provider, provider_event_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM o) AS advanced, (SELECT count(*) FROM n) AS stored",
        outbox::insert_sql("$5::jsonb", Some("o")),
    )
});

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
    if let Err(mismatch) = client.check(payment, order.amount_fen) {
        return Ok(applied(Applied::Flagged {
            order_id: Some(order.id),
            flag: Flag::mismatch(&mismatch),
        }));
    }
    match order.status {
        OrderStatus::PendingPayment => {
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
            let recorded = serde_json::json!({
                "transaction_id": payment.transaction_id,
                "amount_fen": payment.amount_fen,
                "paid_at": payment.paid_at,
                "source": source.as_str(),
            });
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE orders SET late_payment = $2, late_refund_status = 'pending', \
                 payment_check_at = now(), updated_at = now() \
                 WHERE id = $1 AND late_payment IS NULL",
                [order.id.into(), recorded.into()],
            ))
            .await?;
            Ok(applied(Applied::LatePayment { order_id: order.id }))
        }
    }
}

/// Moves the locked pending `order` to paid ([`PAID_SQL`]); `false` when `notification` had
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
    let values: Vec<Value> = vec![
        order.id.into(),
        now.into(),
        payment.transaction_id.clone().into(),
        reason.into(),
        row.to_json()?.into(),
        notification.map(|n| n.provider.as_str().to_owned()).into(),
        notification.map(|n| n.event_id.to_owned()).into(),
        notification
            .and_then(|n| n.out_trade_no)
            .map(str::to_owned)
            .into(),
        notification.map(|n| n.headers.clone()).into(),
        notification.map(|n| n.raw_body.to_owned()).into(),
    ];
    let result = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            PAID_SQL.as_str(),
            values,
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("the payment returned no row".into()))?;
    if result.try_get::<i64>("", "advanced")? != 1 {
        return Err(DbErr::Custom(
            "a locked pending order changed status".into(),
        ));
    }
    Ok(result.try_get::<i64>("", "stored")? == 1)
}

/// The refund number of a late payment's automatic refund: derived from the order alone, so
/// however often it is retried, the provider refunds once.
pub fn late_refund_no(order_no: &str) -> String {
    format!("{order_no}L1")
}
