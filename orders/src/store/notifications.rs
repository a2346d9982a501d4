//! The statements of provider notifications and the payments they report: locking an order
//! by its number with the notification's first-copy check, locking the buyers whose eligibility
//! the payments must pass, the paid transition with its history,
//! outbox row and notification in one statement, a notification stored alone, and a payment
//! recorded late on a closed order.

use super::transitions;
use chrono::{DateTime, Utc};
use memberline_platform::outbox::{self, Wake};
use memberline_schema::entities::order;
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::{NotificationOutcome, OrderStatus, Provider};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, FromQueryResult, Statement, Value,
};
use std::sync::LazyLock;

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

/// The order of a payment, locked, and whether the notification that reports it was stored
/// before.
pub struct Locked {
    pub order: Option<order::Model>,
    pub stored_before: bool,
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

pub async fn lock_order(
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

/// Locks the buyers `buyer_ids` (sorted, so that two transactions never wait for each other in a
/// circle) until the transaction ends. `FOR NO KEY UPDATE`: it waits for a purchase's lock and
/// another payment's, not for the workers' rows that merely reference the buyer.
pub async fn lock_buyers(txn: &DatabaseTransaction, buyer_ids: &[BuyerId]) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        [buyer_ids.iter().map(|b| b.0).collect::<Vec<i64>>().into()],
    ))
    .await?;
    Ok(())
}

/// Inserts the notification with its outcome; `false` when a copy was stored first.
pub async fn insert_notification(
    txn: &DatabaseTransaction,
    notification: &Notification<'_>,
    outcome: NotificationOutcome,
    order_id: Option<OrderId>,
    flag: Option<&str>,
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
                outcome.as_str().into(),
                order_id.into(),
                flag.map(str::to_owned).into(),
            ],
        ))
        .await?;
    Ok(inserted.is_some())
}

/// The paid transition with everything it writes, in one statement: the order (`$1`) moved
/// from pending to paid at `$2` with the provider's transaction id `$3` and trade type `$11`;
/// its history row
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
        provider_txn_id = $3, trade_type = $11
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
    SELECT $6, $7, $8, $9, $10, true, '{applied}', id FROM o WHERE $7::text IS NOT NULL
    ON CONFLICT (provider, provider_event_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM o) AS advanced, (SELECT count(*) FROM n) AS stored",
        outbox::insert_sql("$5::jsonb", Some("o")),
        applied = NotificationOutcome::Applied,
    )
});

/// The provider's trade that paid an order: its transaction id and, when the provider says,
/// its type (WeChat `trade_type`).
#[derive(Clone, Copy, Debug)]
pub struct Trade<'a> {
    pub transaction_id: &'a str,
    pub trade_type: Option<&'a str>,
}

/// Moves the locked pending `order_id` to paid at `now` ([`PAID_SQL`]) with its history
/// (`reason`), its outbox `row` and, when given, the `notification` that reported it; `false`
/// when a copy of that notification was stored first (the caller rolls back).
pub async fn pay(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    now: DateTime<Utc>,
    trade: Trade<'_>,
    reason: &str,
    row: &outbox::Row,
    notification: Option<&Notification<'_>>,
) -> Result<bool, DbErr> {
    let values: Vec<Value> = vec![
        order_id.into(),
        now.into(),
        trade.transaction_id.to_owned().into(),
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
        trade.trade_type.map(str::to_owned).into(),
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

/// Records a payment that came for the closed `order_id` (`recorded`: what the provider
/// said), once: the lifecycle job refunds it at once.
pub async fn record_late_payment(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    recorded: serde_json::Value,
) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET late_payment = $2, late_refund_status = 'pending', \
         payment_check_at = now(), updated_at = now() \
         WHERE id = $1 AND late_payment IS NULL",
        [order_id.into(), recorded.into()],
    ))
    .await?;
    Ok(())
}
