//! Applying what a provider says to our orders, in the database. Shared by the gateway
//! (notifications, cancel) and the workers (expiry, reconciliation, late refunds), so a payment
//! found by query goes through exactly the same transition as one that was notified.
//!
//! Every function here is one transaction that locks the order row first: a notification, a
//! query and an expiry racing on one order are serialized, and [`transitions::advance`] (a
//! conditional `WHERE status = from` update) lets exactly one of them move it.

use crate::transitions;
use crate::{Mismatch, Payment, PaymentProvider};
use chrono::Utc;
use memberline_platform::outbox;
use memberline_schema::entities::order;
use memberline_schema::events::{Envelope, OrderPaid, PlanSold};
use memberline_schema::states::{OrderStatus, Provider};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QuerySelect, Statement, TransactionTrait,
};

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

/// What applying a verified payment did. The `&'static str` of [`Applied::outcome`] is what is
/// stored with a notification and counted in the notifications metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// `pending_payment → paid`, with its history and `order.paid.v1` in the outbox.
    Paid { order_id: i64 },
    /// Already paid (a copy of a notification, `TRADE_FINISHED` after `TRADE_SUCCESS`, a query
    /// after the notify): nothing changed.
    AlreadyPaid { order_id: i64 },
    /// The order was closed before the money came: not paid; an automatic refund is due.
    LatePayment { order_id: i64 },
    /// Genuine, but not for this order as we know it: flagged, not applied.
    Flagged { order_id: Option<i64>, flag: String },
}

impl Applied {
    pub fn outcome(&self) -> &'static str {
        match self {
            Applied::Paid { .. } => "applied",
            Applied::AlreadyPaid { .. } => "duplicate",
            Applied::LatePayment { .. } => "late_payment",
            Applied::Flagged { flag, .. } if flag.starts_with("amount") => "flagged_amount",
            Applied::Flagged { flag, .. } if flag.starts_with("merchant") => "flagged_merchant",
            Applied::Flagged { flag, .. } if flag.starts_with("currency") => "flagged_currency",
            Applied::Flagged { .. } => "flagged_unknown_order",
        }
    }

    fn flag(&self) -> Option<&str> {
        match self {
            Applied::Flagged { flag, .. } => Some(flag),
            _ => None,
        }
    }

    fn order_id(&self) -> Option<i64> {
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

/// Stores a verified notification and, when it reports a payment, applies it — one
/// transaction. `payment` is `None` for events that pay nothing (Alipay `TRADE_CLOSED`, say).
pub async fn notification(
    db: &DatabaseConnection,
    client: &dyn PaymentProvider,
    notification: &Notification<'_>,
    payment: Option<&Payment>,
) -> Result<Stored, DbErr> {
    // A copy of a notification already stored is answered without a transaction or the order
    // lock: providers send many, sometimes at once, and each must be answered within seconds.
    let stored_before = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS stored FROM payment_notifications \
             WHERE provider = $1 AND provider_event_id = $2",
            [
                notification.provider.as_str().into(),
                notification.event_id.into(),
            ],
        ))
        .await?;
    if stored_before.is_some() {
        return Ok(Stored::Duplicate);
    }
    let txn = db.begin().await?;
    let applied = match payment {
        Some(payment) => Some(apply_in(&txn, client, payment, Source::Notify).await?),
        None => None,
    };
    let outcome = applied.as_ref().map_or("ignored", Applied::outcome);
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
                outcome.into(),
                applied.as_ref().and_then(Applied::order_id).into(),
                applied
                    .as_ref()
                    .and_then(Applied::flag)
                    .map(str::to_owned)
                    .into(),
            ],
        ))
        .await?;
    if inserted.is_none() {
        // Stored by an earlier copy: whatever this transaction did is undone (it found the
        // order already paid anyway, as the first copy committed before our insert returned).
        txn.rollback().await?;
        return Ok(Stored::Duplicate);
    }
    txn.commit().await?;
    Ok(Stored::New(applied))
}

/// Applies a payment found by our own query — the same transition as a notification.
pub async fn queried_payment(
    db: &DatabaseConnection,
    client: &dyn PaymentProvider,
    payment: &Payment,
) -> Result<Applied, DbErr> {
    let txn = db.begin().await?;
    let applied = apply_in(&txn, client, payment, Source::Query).await?;
    txn.commit().await?;
    Ok(applied)
}

async fn lock_order(
    txn: &DatabaseTransaction,
    out_trade_no: &str,
) -> Result<Option<order::Model>, DbErr> {
    order::Entity::find()
        .filter(order::Column::OrderNo.eq(out_trade_no))
        .lock_exclusive()
        .one(txn)
        .await
}

/// Locks the order and moves it to paid if it is pending and the payment matches it.
async fn apply_in(
    txn: &DatabaseTransaction,
    client: &dyn PaymentProvider,
    payment: &Payment,
    source: Source,
) -> Result<Applied, DbErr> {
    let provider = client.provider();
    let Some(order) = lock_order(txn, &payment.out_trade_no).await? else {
        return Ok(Applied::Flagged {
            order_id: None,
            flag: format!("unknown order {}", payment.out_trade_no),
        });
    };
    if order.provider != Some(provider) {
        return Ok(Applied::Flagged {
            order_id: Some(order.id),
            flag: format!("merchant: the order is not paid with {provider}"),
        });
    }
    if let Err(mismatch) = client.check(payment, order.amount_fen) {
        let flag = match &mismatch {
            Mismatch::Amount { .. } => format!("amount: {mismatch}"),
            Mismatch::Merchant { .. } => format!("merchant: {mismatch}"),
            Mismatch::Currency(_) => format!("currency: {mismatch}"),
        };
        return Ok(Applied::Flagged {
            order_id: Some(order.id),
            flag,
        });
    }
    match order.status {
        OrderStatus::PendingPayment => {
            let now = Utc::now();
            let reason = format!("paid_by_{provider}_{}", source.as_str());
            if !transitions::advance(
                txn,
                order.id,
                OrderStatus::PendingPayment,
                OrderStatus::Paid,
                &reason,
                now,
            )
            .await?
            {
                return Err(DbErr::Custom(
                    "a locked pending order changed status".into(),
                ));
            }
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE orders SET provider_txn_id = $2 WHERE id = $1",
                [order.id.into(), payment.transaction_id.clone().into()],
            ))
            .await?;
            let event = OrderPaid {
                order_id: order.id,
                order_no: order.order_no.clone(),
                buyer_id: order.buyer_id,
                plan: PlanSold::of_order(&order),
                pay_method: order.pay_method,
                amount_fen: order.amount_fen,
                amount_points: order.amount_points,
                original_price_fen: order.original_price_fen,
                original_price_points: order.original_price_points,
                paid_at: now,
            };
            outbox::enqueue(txn, &Envelope::new(event, order.correlation_id, None)).await?;
            Ok(Applied::Paid { order_id: order.id })
        }
        OrderStatus::Paid | OrderStatus::RefundPending | OrderStatus::Refunded => {
            Ok(Applied::AlreadyPaid { order_id: order.id })
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
            Ok(Applied::LatePayment { order_id: order.id })
        }
    }
}

/// The refund number of a late payment's automatic refund: derived from the order alone, so
/// however often it is retried, the provider refunds once.
pub fn late_refund_no(order_no: &str) -> String {
    format!("{order_no}L1")
}
