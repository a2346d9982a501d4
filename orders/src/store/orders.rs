//! Statements on order rows that the domain's operations share: the next order id, the
//! eligibility counts, a pending order's provider code, and a buyer's reminder. Status changes
//! have their own module (`super::transitions`), the purchase its own statements
//! (`super::purchase`).

use super::purchase;
use crate::rules::Counts;
use chrono::{DateTime, Utc};
use memberline_schema::entities::order;
use memberline_schema::ids::{BuyerId, OrderId, PlanId};
use memberline_schema::states::{OrderStatus, PayChannel, PayMethod};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
};

/// The id the next order gets.
pub async fn next_id(txn: &DatabaseTransaction) -> Result<OrderId, DbErr> {
    txn.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        format!("SELECT {} AS id", purchase::NEXT_ORDER_ID),
    ))
    .await?
    .ok_or_else(|| DbErr::Custom("nextval returned no row".into()))?
    .try_get("", "id")
}

/// Order `order_id`, read with `conn` (a pool or a transaction).
pub async fn find<C: ConnectionTrait>(
    conn: &C,
    order_id: OrderId,
) -> Result<Option<order::Model>, DbErr> {
    order::Entity::find_by_id(order_id).one(conn).await
}

/// Order `order_id` when it is `buyer_id`'s, read with `conn`; locked until `conn` (then a
/// transaction) ends when `lock`.
pub async fn of_buyer<C: ConnectionTrait>(
    conn: &C,
    order_id: OrderId,
    buyer_id: BuyerId,
    lock: bool,
) -> Result<Option<order::Model>, DbErr> {
    let select = order::Entity::find_by_id(order_id).filter(order::Column::BuyerId.eq(buyer_id));
    match lock {
        true => select.lock_exclusive().one(conn).await,
        false => select.one(conn).await,
    }
}

/// Which orders a page lists: all of them, or those of one buyer, status, pay method or
/// channel, created in `[from, to)`.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    pub buyer_id: Option<BuyerId>,
    pub status: Option<OrderStatus>,
    pub pay_method: Option<PayMethod>,
    pub channel: Option<PayChannel>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl OrderFilter {
    /// One buyer's orders.
    pub fn of_buyer(buyer_id: BuyerId) -> Self {
        Self {
            buyer_id: Some(buyer_id),
            ..Self::default()
        }
    }
}

/// The orders `filter` lets through, newest first, before order `cursor` when given.
fn filtered(filter: &OrderFilter, cursor: Option<i64>) -> sea_orm::Select<order::Entity> {
    let mut select = order::Entity::find().order_by_desc(order::Column::Id);
    if let Some(buyer_id) = filter.buyer_id {
        select = select.filter(order::Column::BuyerId.eq(buyer_id));
    }
    if let Some(status) = filter.status {
        select = select.filter(order::Column::Status.eq(status));
    }
    if let Some(pay_method) = filter.pay_method {
        select = select.filter(order::Column::PayMethod.eq(pay_method));
    }
    if let Some(channel) = filter.channel {
        select = select.filter(order::Column::Channel.eq(channel));
    }
    if let Some(from) = filter.from {
        select = select.filter(order::Column::CreatedAt.gte(from));
    }
    if let Some(to) = filter.to {
        select = select.filter(order::Column::CreatedAt.lt(to));
    }
    if let Some(cursor) = cursor {
        select = select.filter(order::Column::Id.lt(cursor));
    }
    select
}

/// A page of the orders `filter` lets through, newest first; before order `cursor` when given;
/// at most `limit`. The cursor of the next page when there is one.
pub async fn page<C: ConnectionTrait>(
    conn: &C,
    filter: &OrderFilter,
    cursor: Option<i64>,
    limit: u64,
) -> Result<(Vec<order::Model>, Option<i64>), DbErr> {
    let rows = filtered(filter, cursor).limit(limit + 1).all(conn).await?;
    Ok(super::cut_page(rows, limit, |o| o.id.0))
}

/// An order as the CSV export writes it, with its buyer's name.
#[derive(Clone, Debug, sea_orm::FromQueryResult)]
pub struct ExportRow {
    pub id: i64,
    pub order_no: String,
    pub buyer_id: i64,
    pub buyer_name: Option<String>,
    pub plan_code: String,
    pub plan_name: String,
    pub pay_method: String,
    pub channel: Option<String>,
    pub status: String,
    pub amount_fen: i64,
    pub amount_points: i64,
    pub original_price_fen: i64,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub refunded_at: Option<DateTime<Utc>>,
}

/// Up to `limit` orders `filter` lets through, as exported, newest first, before order
/// `cursor` when given: the export reads the orders page by page, so its memory stays flat.
pub async fn export_page<C: ConnectionTrait>(
    conn: &C,
    filter: &OrderFilter,
    cursor: Option<i64>,
    limit: u64,
) -> Result<Vec<ExportRow>, DbErr> {
    use sea_orm::sea_query::Expr;
    filtered(filter, cursor)
        .select_only()
        .columns([
            order::Column::Id,
            order::Column::OrderNo,
            order::Column::BuyerId,
            order::Column::PlanCode,
            order::Column::PlanName,
            order::Column::PayMethod,
            order::Column::Channel,
            order::Column::Status,
            order::Column::AmountFen,
            order::Column::AmountPoints,
            order::Column::OriginalPriceFen,
            order::Column::CreatedAt,
            order::Column::PaidAt,
            order::Column::RefundedAt,
        ])
        .column_as(
            Expr::cust("(SELECT name FROM users u WHERE u.id = orders.buyer_id)"),
            "buyer_name",
        )
        .limit(limit)
        .into_model::<ExportRow>()
        .all(conn)
        .await
}

/// Order `order_id`, locked until `txn` ends.
pub async fn lock(
    txn: &DatabaseTransaction,
    order_id: OrderId,
) -> Result<Option<order::Model>, DbErr> {
    order::Entity::find_by_id(order_id)
        .lock_exclusive()
        .one(txn)
        .await
}

/// The order numbered `order_no`, locked until `txn` ends.
pub async fn lock_by_no(
    txn: &DatabaseTransaction,
    order_no: &str,
) -> Result<Option<order::Model>, DbErr> {
    order::Entity::find()
        .filter(order::Column::OrderNo.eq(order_no))
        .lock_exclusive()
        .one(txn)
        .await
}

/// Inserts `order` as it is.
pub async fn insert(txn: &DatabaseTransaction, order: order::Model) -> Result<order::Model, DbErr> {
    order::ActiveModel::from(order).insert(txn).await
}

/// The id of the order numbered `order_no`.
pub async fn id_of<C: ConnectionTrait>(conn: &C, order_no: &str) -> Result<Option<OrderId>, DbErr> {
    Ok(order::Entity::find()
        .filter(order::Column::OrderNo.eq(order_no))
        .one(conn)
        .await?
        .map(|o| o.id))
}

/// What the eligibility rules count for `buyer_id` and `plan_id`. Under a lock of the buyer
/// taken by an earlier statement (a statement's snapshot is taken before any lock it waits for),
/// it includes everything of theirs committed before.
pub async fn counts(
    txn: &DatabaseTransaction,
    buyer_id: BuyerId,
    plan_id: PlanId,
) -> Result<Counts, DbErr> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT {} AS permanent, {} AS free_claims",
                purchase::permanent_count("$1"),
                purchase::free_claims("$1", "$2")
            ),
            [buyer_id.into(), plan_id.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("count returned no row".into()))?;
    Ok(Counts {
        permanent: row.try_get("", "permanent")?,
        free_claims: row.try_get("", "free_claims")?,
    })
}

/// Keeps the provider's `payload` (the code to scan) with `order_id` while it is still
/// pending; `false` when it is not (cancelled or expired meanwhile).
pub async fn store_code(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    payload: &serde_json::Value,
) -> Result<bool, DbErr> {
    let stored = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "UPDATE orders SET provider_payload = $2, updated_at = now() \
                 WHERE id = $1 AND status = '{}'",
                OrderStatus::PendingPayment
            ),
            [order_id.into(), payload.clone().into()],
        ))
        .await?
        .rows_affected();
    Ok(stored == 1)
}

/// The database's clock now, and the whole seconds left before `order_id` may be reminded
/// about again (`every_secs` after its last reminder; `None` or not positive: it may).
pub async fn reminder_wait(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    every_secs: i64,
) -> Result<Option<(DateTime<Utc>, Option<i64>)>, DbErr> {
    let Some(row) = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT now() AS now, \
             ceil(extract(epoch FROM reminded_at + make_interval(secs => $2) - now()))::bigint \
                 AS wait \
             FROM orders WHERE id = $1",
            [order_id.into(), (every_secs as f64).into()],
        ))
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((row.try_get("", "now")?, row.try_get("", "wait")?)))
}

/// Records that `order_id` was reminded about at `at`.
pub async fn mark_reminded(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET reminded_at = $2 WHERE id = $1",
        [order_id.into(), at.into()],
    ))
    .await?;
    Ok(())
}
