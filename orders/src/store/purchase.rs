//! The three statements of balance, points and free purchases, between BEGIN and COMMIT. They
//! take one purchase or several of different buyers at once (purchases that arrive together
//! share one transaction, `crate::purchases`); the statements are the same either way:
//!
//! 1. [`lock`]: lock the buyers, in id order (the rows as each one's last purchase left them);
//! 2. [`check`]: with a snapshot taken after the locks (so it sees every purchase of these
//!    buyers that committed while this one waited, and the catalogue as it is now), per
//!    purchase the plan, the level's discount, the counts the eligibility rules need, the
//!    idempotency key if it was used before, and the order's id (a refused purchase leaves a
//!    gap in the ids, as a sequence may anyway); and, when the gateway embeds the relay, the
//!    transaction's opt-out of the outbox NOTIFY (the relay is woken in-process after the
//!    commit instead);
//! 3. [`write`]: every row of every accepted purchase at once, in one statement of
//!    data-modifying CTEs: the orders, the debits and their ledger entries, the status
//!    history, the outbox rows, and the idempotency keys with the responses a retry replays.
//!
//! Five round trips for a transaction (one more per 12 KiB of rows to write, see
//! [`WRITE_CHUNK_BYTES`]), whatever the number of purchases in it, where one statement per row
//! took fourteen for each purchase; the rules and the rows are the same. The
//! purchases travel as one JSON parameter each way (`jsonb_to_recordset`); every per-purchase
//! lookup is a `LATERAL … LIMIT 1` subquery, so it stays an index probe whatever the planner
//! guesses of the batch's size, and the buyers are found by `id = ANY (ARRAY(…))`, an index
//! scan, never a join the planner could turn into a scan of every user.

use crate::OrderError;
use crate::rules::{Charge, Counts};
use memberline_platform::db::violated_constraint;
use memberline_platform::idempotency::{self, Stored};
use memberline_platform::outbox::{self, Wake};
use memberline_schema::entities::{order, plan, user};
use memberline_schema::ids::{BuyerId, OrderId, PlanId};
use memberline_schema::states::{LedgerReason, OrderStatus, PayMethod, PlanKind};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, FromQueryResult, Iterable, Statement, Value,
};
use serde::Serialize;
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
        "SELECT {} FROM users u \
         WHERE u.id = ANY (ARRAY(SELECT b::bigint FROM jsonb_array_elements_text($1::jsonb) b)) \
         ORDER BY u.id FOR UPDATE OF u",
        columns::<user::Column>("u")
    )
});

/// Locks the buyers `buyer_ids`, in id order (so that two transactions locking several buyers
/// never wait for each other in a cycle): every purchase of one buyer waits here for the one
/// before, and reads the row as that one left it. A buyer id without a row is left out.
pub(crate) async fn lock(
    txn: &DatabaseTransaction,
    buyer_ids: &[BuyerId],
) -> Result<Vec<user::Model>, OrderError> {
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            LOCK_SQL.as_str(),
            [serde_json::json!(buyer_ids).into()],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok(user::Model::from_query_result(row, "u_")?))
        .collect()
}

/// A permanent membership the buyer `buyer` (an SQL expression) holds or has paid for: a live
/// permanent period, or a paid permanent order whose period the membership worker has not
/// written yet (otherwise two quick purchases would both be charged). A refunded or revoked
/// permanent membership no longer counts.
pub(crate) fn permanent_count(buyer: &str) -> String {
    format!(
        "((SELECT count(*) FROM membership_periods \
            WHERE user_id = {buyer} AND permanent AND removed_at IS NULL) \
        + (SELECT count(*) FROM orders o WHERE o.buyer_id = {buyer} \
            AND o.plan_kind = '{permanent}' AND o.status IN ('{paid}', '{refund_pending}') \
            AND NOT EXISTS (SELECT 1 FROM membership_periods p WHERE p.order_id = o.id)))",
        permanent = PlanKind::Permanent,
        paid = OrderStatus::Paid,
        refund_pending = OrderStatus::RefundPending,
    )
}

/// Free claims of plan `plan` by buyer `buyer` (SQL expressions).
pub(crate) fn free_claims(buyer: &str, plan: &str) -> String {
    format!(
        "(SELECT count(*) FROM orders \
          WHERE buyer_id = {buyer} AND plan_id = {plan} AND pay_method = '{free}')",
        free = PayMethod::Free,
    )
}

/// What [`check`] read for one purchase.
pub(crate) struct Checked {
    /// `None` when no plan has the id asked for.
    pub plan: Option<plan::Model>,
    /// The share of the price the buyer's level pays, in percent; `None` for a buyer without
    /// a row.
    pub discount_percent: Option<i16>,
    pub counts: Counts,
    pub stored: Option<Stored>,
    /// The id the order gets.
    pub order_id: OrderId,
}

/// The next order id. The sequence is named once, when the statement is prepared (where
/// `pg_get_serial_sequence` searched the catalogue at every purchase).
pub(crate) const NEXT_ORDER_ID: &str = "nextval('orders_id_seq'::regclass)";

static CHECK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT r.i, {}, \
                (SELECT l.discount_percent FROM users u JOIN levels l ON l.id = u.level_id \
                 WHERE u.id = r.buyer) AS discount_percent, \
                {} AS permanent, {} AS free_claims, \
                k.request_hash AS k_request_hash, k.status_code AS k_status_code, \
                k.response_body AS k_response_body, k.order_id AS k_order_id, \
                {NEXT_ORDER_ID} AS order_id, \
                {} AS outbox_notify \
         FROM jsonb_to_recordset($1::jsonb) AS r(i integer, buyer bigint, plan bigint, key text) \
         LEFT JOIN LATERAL (SELECT * FROM plans WHERE id = r.plan LIMIT 1) p ON true \
         LEFT JOIN LATERAL {} k ON true \
         ORDER BY r.i",
        columns::<plan::Column>("p"),
        permanent_count("r.buyer"),
        free_claims("r.buyer", "r.plan"),
        outbox::notify_setting_sql("$2"),
        idempotency::lookup_sql(idempotency::OwnerKind::Buyer, "r.buyer", "r.key"),
    )
});

/// One purchase [`check`] reads for: buyer, plan and idempotency key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Asked<'a> {
    pub buyer_id: BuyerId,
    pub plan_id: PlanId,
    pub key: &'a str,
}

/// Everything the purchases decide on, read after the buyers' locks, in the order asked. With
/// `notify` false the transaction opts out of the outbox trigger's NOTIFY (see
/// `m20261125_000011_outbox_notify_opt_out`): the caller wakes its relay itself after the
/// commit.
pub(crate) async fn check(
    txn: &DatabaseTransaction,
    asked: &[Asked<'_>],
    wake: &Wake,
) -> Result<Vec<Checked>, OrderError> {
    let input: Vec<_> = asked
        .iter()
        .enumerate()
        .map(|(i, a)| serde_json::json!({"i": i, "buyer": a.buyer_id, "plan": a.plan_id, "key": a.key}))
        .collect();
    let notify = wake.notify_setting();
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            CHECK_SQL.as_str(),
            [serde_json::Value::Array(input).into(), notify.into()],
        ))
        .await?;
    if rows.len() != asked.len() {
        return Err(anyhow::anyhow!(
            "the checks returned {} rows for {} purchases",
            rows.len(),
            asked.len()
        )
        .into());
    }
    rows.iter().map(checked).collect()
}

fn checked(row: &sea_orm::QueryResult) -> Result<Checked, OrderError> {
    let plan = match row.try_get::<Option<i64>>("", "p_id")? {
        Some(_) => Some(plan::Model::from_query_result(row, "p_")?),
        None => None,
    };
    let stored = Stored::from_row(row, "k_")?;
    Ok(Checked {
        plan,
        discount_percent: row.try_get("", "discount_percent")?,
        counts: Counts {
            permanent: row.try_get("", "permanent")?,
            free_claims: row.try_get("", "free_claims")?,
        },
        stored,
        order_id: row.try_get("", "order_id")?,
    })
}

/// Everything [`write`] commits for one purchase.
pub(crate) struct Purchase<'a> {
    pub buyer: &'a user::Model,
    pub order: &'a order::Model,
    pub charge: Charge,
    pub history_reason: &'a str,
    pub outbox: &'a outbox::Row,
    pub key: idempotency::Key<'a>,
    pub response: &'a serde_json::Value,
}

/// One purchase as a row of [`WRITE_SQL`]'s `jsonb_to_recordset`: the field names are its
/// column names.
#[derive(Serialize)]
struct WriteRow<'a> {
    id: OrderId,
    order_no: &'a str,
    buyer_id: BuyerId,
    plan_id: PlanId,
    plan_code: &'a str,
    plan_name: &'a str,
    plan_kind: &'a str,
    duration_days: Option<i32>,
    uses: Option<i32>,
    pay_method: &'a str,
    amount_fen: i64,
    amount_points: i64,
    original_price_fen: i64,
    original_price_points: Option<i64>,
    status: &'a str,
    correlation_id: uuid::Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
    history_reason: &'a str,
    outbox: &'a outbox::Row,
    key_user_id: i64,
    key: &'a str,
    request_hash: &'a str,
    response: &'a serde_json::Value,
}

impl<'a> From<&'a Purchase<'a>> for WriteRow<'a> {
    fn from(w: &'a Purchase<'a>) -> Self {
        let o = w.order;
        WriteRow {
            id: o.id,
            order_no: &o.order_no,
            buyer_id: o.buyer_id,
            plan_id: o.plan_id,
            plan_code: &o.plan_code,
            plan_name: &o.plan_name,
            plan_kind: o.plan_kind.as_str(),
            duration_days: o.duration_days,
            uses: o.uses,
            pay_method: o.pay_method.as_str(),
            amount_fen: w.charge.fen,
            amount_points: w.charge.points,
            original_price_fen: o.original_price_fen,
            original_price_points: o.original_price_points,
            status: o.status.as_str(),
            correlation_id: o.correlation_id,
            created_at: o.created_at,
            history_reason: w.history_reason,
            outbox: w.outbox,
            key_user_id: w.key.owner,
            key: w.key.key,
            request_hash: w.key.request_hash,
            response: w.response,
        }
    }
}

static WRITE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "\
WITH r AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset($1::text::jsonb) AS r(id bigint, order_no text, buyer_id bigint,
        plan_id bigint, plan_code text, plan_name text, plan_kind text, duration_days integer,
        uses integer, pay_method text, amount_fen bigint, amount_points bigint,
        original_price_fen bigint, original_price_points bigint, status text,
        correlation_id uuid, created_at timestamptz, history_reason text, outbox jsonb,
        key_user_id bigint, key text, request_hash text, response jsonb)
), o AS (
    INSERT INTO orders (id, order_no, buyer_id, plan_id, plan_code, plan_name, plan_kind,
        duration_days, uses, pay_method, amount_fen, amount_points, original_price_fen,
        original_price_points, status, provider, correlation_id, paid_at, created_at, updated_at,
        payment_check_at)
    SELECT id, order_no, buyer_id, plan_id, plan_code, plan_name, plan_kind, duration_days,
        uses, pay_method, amount_fen, amount_points, original_price_fen, original_price_points,
        status, NULL, correlation_id, created_at, created_at, created_at, NULL
    FROM r
), u AS (
    UPDATE users SET
        balance_fen = balance_fen - (SELECT d.amount_fen FROM r d WHERE d.buyer_id = users.id),
        points = points - (SELECT d.amount_points FROM r d WHERE d.buyer_id = users.id),
        updated_at = now()
    WHERE id = ANY (ARRAY(SELECT buyer_id FROM r WHERE amount_fen > 0 OR amount_points > 0))
    RETURNING id, balance_fen, points
), b AS (
    INSERT INTO balance_ledger (user_id, order_id, reason, delta, balance_after, created_at)
    SELECT r.buyer_id, r.id, $2, -r.amount_fen, u.balance_fen, r.created_at
    FROM r JOIN u ON u.id = r.buyer_id WHERE r.amount_fen > 0
), p AS (
    INSERT INTO point_ledger (user_id, order_id, reason, delta, balance_after, flagged_excess,
        created_at)
    SELECT r.buyer_id, r.id, $2, -r.amount_points, u.points, 0, r.created_at
    FROM r JOIN u ON u.id = r.buyer_id WHERE r.amount_points > 0
), h AS (
    INSERT INTO order_status_history (order_id, from_status, to_status, reason, at)
    SELECT id, NULL, status, history_reason, created_at FROM r
), e AS (
    {}
), k AS (
    {}
)
SELECT (SELECT count(*) FROM k) AS keys_claimed",
        outbox::insert_sql("r.outbox", Some("r")),
        idempotency::insert_answered_sql(
            idempotency::OwnerKind::Buyer,
            "SELECT key_user_id, key, request_hash, 201, response, id FROM r"
        ),
    )
});

/// The most JSON one [`WRITE_SQL`] carries. With its statement and parameters it then fits one
/// TLS record (16 KiB of plaintext), which goes out in one segment. sqlx leaves Nagle's
/// algorithm on: a message of several records sends its first, and the rest waits for the
/// server's delayed acknowledgement, 40 ms, while the server waits for the rest. Purchases
/// beyond it go in another statement of the same transaction.
const WRITE_CHUNK_BYTES: usize = 12 * 1024;

/// Writes the purchases, of different buyers; `false` (and the caller rolls back) when an
/// idempotency key was claimed meanwhile by a request that does not lock its buyer. A
/// constraint the funds' checks should have kept is reported as the refusal it stands for only
/// for a single purchase: with several, the caller cannot tell whose it is and retries each
/// alone.
pub(crate) async fn write(
    txn: &DatabaseTransaction,
    purchases: &[Purchase<'_>],
) -> Result<bool, OrderError> {
    let mut chunks: Vec<String> = Vec::new();
    for purchase in purchases {
        let row = serde_json::to_string(&WriteRow::from(purchase)).map_err(anyhow::Error::from)?;
        match chunks.last_mut() {
            Some(chunk) if chunk.len() + row.len() < WRITE_CHUNK_BYTES => {
                chunk.push(',');
                chunk.push_str(&row);
            }
            _ => chunks.push(format!("[{row}")),
        }
    }
    let mut claimed = 0;
    for mut chunk in chunks {
        chunk.push(']');
        claimed += write_chunk(txn, purchases, chunk).await?;
    }
    Ok(claimed == purchases.len() as i64)
}

/// One [`WRITE_SQL`] on `rows` (a JSON array of some of `purchases`): the keys it claimed.
async fn write_chunk(
    txn: &DatabaseTransaction,
    purchases: &[Purchase<'_>],
    rows: String,
) -> Result<i64, OrderError> {
    let values: Vec<Value> = vec![rows.into(), LedgerReason::OrderPayment.as_str().into()];
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            WRITE_SQL.as_str(),
            values,
        ))
        .await
        .map_err(|e| match (purchases, violated_constraint(&e).as_deref()) {
            // The funds were checked on the locked row; the CHECK constraints are the net.
            ([one], Some("users_balance_not_negative")) => OrderError::InsufficientBalance {
                needed: one.charge.fen,
                have: one.buyer.balance_fen,
            },
            ([one], Some("users_points_not_negative")) => OrderError::InsufficientPoints {
                needed: one.charge.points,
                have: one.buyer.points,
            },
            ([_], Some("orders_one_free_claim")) => OrderError::FreePlanAlreadyClaimed,
            _ => e.into(),
        })?
        .ok_or_else(|| anyhow::anyhow!("the purchase returned no row"))?;
    Ok(row.try_get("", "keys_claimed")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::IdenStatic;

    #[test]
    fn the_reads_take_every_column_of_the_buyer_and_the_plan() {
        for c in user::Column::iter() {
            assert!(LOCK_SQL.contains(&format!("u.{0} AS u_{0}", c.as_str())));
        }
        for c in plan::Column::iter() {
            assert!(CHECK_SQL.contains(&format!("p.{0} AS p_{0}", c.as_str())));
        }
    }

    /// Every field of a purchase's JSON row is a column of the statement's recordset, and the
    /// other way round.
    #[test]
    fn the_json_rows_and_the_recordset_name_the_same_columns() {
        let recordset = &WRITE_SQL[WRITE_SQL.find("AS r(").unwrap() + 5..];
        let recordset = &recordset[..recordset.find(')').unwrap()];
        let declared: Vec<&str> = recordset
            .split(',')
            .map(|c| c.split_whitespace().next().unwrap())
            .collect();
        let row = serde_json::to_value(WriteRow {
            id: OrderId(1),
            order_no: "",
            buyer_id: BuyerId(1),
            plan_id: PlanId(1),
            plan_code: "",
            plan_name: "",
            plan_kind: "",
            duration_days: None,
            uses: None,
            pay_method: "",
            amount_fen: 0,
            amount_points: 0,
            original_price_fen: 0,
            original_price_points: None,
            status: "",
            correlation_id: uuid::Uuid::nil(),
            created_at: chrono::Utc::now(),
            history_reason: "",
            outbox: &outbox::Row {
                id: memberline_schema::ids::EventId(uuid::Uuid::nil()),
                aggregate_type: "",
                aggregate_id: String::new(),
                event_type: memberline_schema::states::EventType::OrderPaid,
                routing_key: String::new(),
                correlation_id: uuid::Uuid::nil(),
                payload: serde_json::Value::Null,
                created_at: chrono::Utc::now(),
            },
            key_user_id: 1,
            key: "",
            request_hash: "",
            response: &serde_json::Value::Null,
        })
        .unwrap();
        let fields: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = declared.clone();
        sorted.sort_unstable();
        let mut fields_sorted = fields.clone();
        fields_sorted.sort_unstable();
        assert_eq!(sorted, fields_sorted);
    }

    /// The response stored for replays is built from the model, not read back: every order
    /// column is either written or left to a default that is what the model says.
    #[test]
    fn every_order_column_is_written_or_left_to_a_default_the_model_agrees_with() {
        let insert = &WRITE_SQL
            [WRITE_SQL.find("INSERT INTO orders").unwrap()..WRITE_SQL.find("), u AS").unwrap()];
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
            "channel",
            "channel_app_id",
            "trade_type",
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
