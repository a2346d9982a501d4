//! The three statements of a balance, points or free purchase, between BEGIN and COMMIT:
//!
//! 1. [`lock`]: lock the buyer (the row as the last purchase before this one left it);
//! 2. [`check`]: with a snapshot taken after the lock (so it sees every purchase of this buyer
//!    that committed while this one waited, and the catalogue as it is now), the plan, the
//!    level's discount, the counts the eligibility rules need, the idempotency key if it was
//!    used before, and the order's id (a refused purchase leaves a gap in the ids, as a
//!    sequence may anyway); and, when the gateway embeds the relay, the transaction's opt-out of
//!    the outbox NOTIFY (the relay is woken in-process after the commit instead);
//! 3. [`write`]: every row at once, in one statement of data-modifying CTEs: the order, the
//!    debit and its ledger entry, the status history, the outbox row, and the idempotency key
//!    with the response a retry replays.
//!
//! Five round trips in all, where one statement per row took fourteen; the rules and the rows
//! are the same.

use super::OrderError;
use super::placement::{Charge, KeyRef};
use memberline_platform::db::violated_constraint;
use memberline_platform::outbox;
use memberline_schema::entities::{order, plan, user};
use memberline_schema::states::LedgerReason;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, FromQueryResult, Iterable, Statement, Value,
};
use std::sync::LazyLock;

/// `<alias>.<column> AS "<alias>_<column>"` for every column of an entity.
fn columns<C: sea_orm::ColumnTrait + Iterable>(alias: &str) -> String {
    C::iter()
        .map(|c| format!("{alias}.{0} AS {alias}_{0}", c.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

static LOCK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM users u WHERE u.id = $1 FOR UPDATE",
        columns::<user::Column>("u")
    )
});

/// Locks the buyer: every purchase of one buyer waits here for the one before, and reads the
/// row as that one left it.
pub(super) async fn lock(
    txn: &DatabaseTransaction,
    buyer_id: i64,
) -> Result<user::Model, OrderError> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            LOCK_SQL.as_str(),
            [buyer_id.into()],
        ))
        .await?
        .ok_or(OrderError::UnknownBuyer)?;
    Ok(user::Model::from_query_result(&row, "u_")?)
}

/// A permanent membership the buyer holds or has paid for (`$1` buyer): a live permanent
/// period, or a paid permanent order whose period the membership worker has not written yet
/// (otherwise two quick purchases would both be charged). A refunded or revoked permanent
/// membership no longer counts.
pub(super) const PERMANENT_COUNT: &str = "(SELECT count(*) FROM membership_periods \
        WHERE user_id = $1 AND permanent AND removed_at IS NULL) \
    + (SELECT count(*) FROM orders o WHERE o.buyer_id = $1 AND o.plan_kind = 'permanent' \
        AND o.status IN ('paid', 'refund_pending') \
        AND NOT EXISTS (SELECT 1 FROM membership_periods p WHERE p.order_id = o.id))";

/// Free claims of plan `$2` by buyer `$1`.
pub(super) const FREE_CLAIMS: &str =
    "(SELECT count(*) FROM orders WHERE buyer_id = $1 AND plan_id = $2 AND pay_method = 'free')";

/// What the eligibility rules count.
#[derive(Clone, Copy, Debug)]
pub(super) struct Counts {
    pub permanent: i64,
    pub free_claims: i64,
}

/// An idempotency key used before.
pub(crate) struct StoredKey {
    pub request_hash: String,
    pub status_code: Option<i16>,
    pub response_body: Option<serde_json::Value>,
    pub order_id: Option<i64>,
}

/// What [`check`] read.
pub(super) struct Checked {
    /// `None` when no plan has the id asked for.
    pub plan: Option<plan::Model>,
    /// The share of the price the buyer's level pays, in percent.
    pub discount_percent: i16,
    pub counts: Counts,
    pub stored: Option<StoredKey>,
    /// The id the order gets.
    pub order_id: i64,
}

/// The next order id. The sequence is named once, when the statement is prepared (where
/// `pg_get_serial_sequence` searched the catalogue at every purchase).
pub(super) const NEXT_ORDER_ID: &str = "nextval('orders_id_seq'::regclass)";

static CHECK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, \
                (SELECT l.discount_percent FROM users u JOIN levels l ON l.id = u.level_id \
                 WHERE u.id = $1) AS discount_percent, \
                {PERMANENT_COUNT} AS permanent, {FREE_CLAIMS} AS free_claims, \
                k.request_hash, k.status_code, k.response_body, k.order_id AS key_order_id, \
                {NEXT_ORDER_ID} AS order_id, \
                set_config('memberline.outbox_notify', $4, true) AS outbox_notify \
         FROM (SELECT 1) one \
         LEFT JOIN plans p ON p.id = $2 \
         LEFT JOIN idempotency_keys k ON k.user_id = $1 AND k.key = $3",
        columns::<plan::Column>("p")
    )
});

/// Everything a purchase decides on, read after the buyer's lock: buyer `$1`, plan `$2`,
/// idempotency key `$3`. With `notify` false the transaction opts out of the outbox trigger's
/// NOTIFY (`$4`, see `m20261125_000011_outbox_notify_opt_out`): the caller wakes its relay
/// itself after the commit.
pub(super) async fn check(
    txn: &DatabaseTransaction,
    buyer_id: i64,
    plan_id: i64,
    key: &str,
    notify: bool,
) -> Result<Checked, OrderError> {
    let notify = if notify { "on" } else { "off" };
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            CHECK_SQL.as_str(),
            [buyer_id.into(), plan_id.into(), key.into(), notify.into()],
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the checks returned no row"))?;
    let plan = match row.try_get::<Option<i64>>("", "p_id")? {
        Some(_) => Some(plan::Model::from_query_result(&row, "p_")?),
        None => None,
    };
    let stored = match row.try_get::<Option<String>>("", "request_hash")? {
        Some(request_hash) => Some(StoredKey {
            request_hash,
            status_code: row.try_get("", "status_code")?,
            response_body: row.try_get("", "response_body")?,
            order_id: row.try_get("", "key_order_id")?,
        }),
        None => None,
    };
    Ok(Checked {
        plan,
        discount_percent: row
            .try_get::<Option<i16>>("", "discount_percent")?
            .ok_or_else(|| anyhow::anyhow!("the buyer's level is missing"))?,
        counts: Counts {
            permanent: row.try_get("", "permanent")?,
            free_claims: row.try_get("", "free_claims")?,
        },
        stored,
        order_id: row.try_get("", "order_id")?,
    })
}

/// Everything [`write`] commits.
pub(super) struct Purchase<'a> {
    pub buyer: &'a user::Model,
    pub order: &'a order::Model,
    pub charge: Charge,
    pub history_reason: &'a str,
    pub outbox: outbox::Row,
    pub key: KeyRef<'a>,
    pub response: &'a serde_json::Value,
}

const WRITE_SQL: &str = "\
WITH o AS (
    INSERT INTO orders (id, order_no, buyer_id, plan_id, plan_code, plan_name, plan_kind,
        duration_days, uses, pay_method, amount_fen, amount_points, original_price_fen,
        original_price_points, status, provider, correlation_id, paid_at, created_at, updated_at,
        payment_check_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, NULL, $16, $17,
        $17, $17, NULL)
    RETURNING id
), u AS (
    UPDATE users SET balance_fen = balance_fen - $11, points = points - $12, updated_at = now()
    WHERE id = $3 AND ($11 > 0 OR $12 > 0)
    RETURNING balance_fen, points
), b AS (
    INSERT INTO balance_ledger (user_id, order_id, reason, delta, balance_after, created_at)
    SELECT $3, $1, $18, -$11, u.balance_fen, $17 FROM u WHERE $11 > 0
), p AS (
    INSERT INTO point_ledger (user_id, order_id, reason, delta, balance_after, flagged_excess,
        created_at)
    SELECT $3, $1, $18, -$12, u.points, 0, $17 FROM u WHERE $12 > 0
), h AS (
    INSERT INTO order_status_history (order_id, from_status, to_status, reason, at)
    VALUES ($1, NULL, $15, $19, $17)
), e AS (
    INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, routing_key,
        correlation_id, payload, created_at)
    VALUES ($20, $21, $22, $23, $24, $31, $25, $26)
), k AS (
    INSERT INTO idempotency_keys (user_id, key, request_hash, status_code, response_body,
        order_id)
    VALUES ($27, $28, $29, 201, $30, $1)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM k) AS key_claimed";

/// Writes the purchase; `false` (and the caller rolls back) when the idempotency key was
/// claimed meanwhile by a request that does not lock this buyer.
pub(super) async fn write(txn: &DatabaseTransaction, w: Purchase<'_>) -> Result<bool, OrderError> {
    let o = w.order;
    let values: Vec<Value> = vec![
        o.id.into(),
        o.order_no.clone().into(),
        o.buyer_id.into(),
        o.plan_id.into(),
        o.plan_code.clone().into(),
        o.plan_name.clone().into(),
        o.plan_kind.as_str().into(),
        o.duration_days.into(),
        o.uses.into(),
        o.pay_method.as_str().into(),
        w.charge.fen.into(),
        w.charge.points.into(),
        o.original_price_fen.into(),
        o.original_price_points.into(),
        o.status.as_str().into(),
        o.correlation_id.into(),
        o.created_at.into(),
        LedgerReason::OrderPayment.as_str().into(),
        w.history_reason.into(),
        w.outbox.id.into(),
        w.outbox.aggregate_type.into(),
        w.outbox.aggregate_id.into(),
        w.outbox.event_type.as_str().into(),
        w.outbox.routing_key.into(),
        w.outbox.payload.into(),
        w.outbox.created_at.into(),
        w.key.user_id.into(),
        w.key.key.into(),
        w.key.request_hash.into(),
        w.response.clone().into(),
        w.outbox.correlation_id.into(),
    ];
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            WRITE_SQL,
            values,
        ))
        .await
        .map_err(|e| match violated_constraint(&e).as_deref() {
            // The funds were checked on the locked row; the CHECK constraints are the net.
            Some("users_balance_not_negative") => OrderError::InsufficientBalance {
                needed: w.charge.fen,
                have: w.buyer.balance_fen,
            },
            Some("users_points_not_negative") => OrderError::InsufficientPoints {
                needed: w.charge.points,
                have: w.buyer.points,
            },
            Some("orders_one_free_claim") => OrderError::FreePlanAlreadyClaimed,
            _ => e.into(),
        })?
        .ok_or_else(|| anyhow::anyhow!("the purchase returned no row"))?;
    let claimed: i64 = row.try_get("", "key_claimed")?;
    Ok(claimed == 1)
}

/// The statuses and kinds the SQL above spells out, checked against the enums.
#[cfg(test)]
mod tests {
    use super::*;
    use memberline_schema::states::{OrderStatus, PayMethod, PlanKind};
    use sea_orm::IdenStatic;

    #[test]
    fn the_sql_spells_the_enums_as_serde_does() {
        assert_eq!(PlanKind::Permanent.as_str(), "permanent");
        assert_eq!(OrderStatus::Paid.as_str(), "paid");
        assert_eq!(OrderStatus::RefundPending.as_str(), "refund_pending");
        assert_eq!(PayMethod::Free.as_str(), "free");
    }

    #[test]
    fn the_reads_take_every_column_of_the_buyer_and_the_plan() {
        for c in user::Column::iter() {
            assert!(LOCK_SQL.contains(&format!("u.{0} AS u_{0}", c.as_str())));
        }
        for c in plan::Column::iter() {
            assert!(CHECK_SQL.contains(&format!("p.{0} AS p_{0}", c.as_str())));
        }
    }

    /// The response stored for replays is built from the model, not read back: every order
    /// column is either written or left to a default that is what the model says.
    #[test]
    fn every_order_column_is_written_or_left_to_a_default_the_model_agrees_with() {
        let insert = &WRITE_SQL[..WRITE_SQL.find("RETURNING id").unwrap()];
        // NULL or the number the model sets for a paid order (version 1, no attempts).
        let defaults = [
            "provider_txn_id",
            "provider_payload",
            "expires_at",
            "closed_at",
            "version",
            "late_payment",
            "late_refund_status",
            "late_refunded_at",
            "payment_check_attempts",
            "payment_flag",
            "late_refund_id",
            "refunded_at",
            "refund_reason",
            "refund_flag",
            "reminded_at",
        ];
        for c in order::Column::iter() {
            let name = c.as_str();
            let written = insert
                .split(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                .any(|word| word == name);
            assert!(
                written || defaults.contains(&name),
                "orders.{name} is neither written by the purchase nor a known default"
            );
        }
    }
}
