//! CSV exports for staff: the orders (`GET /v1/admin/orders.csv`, the filters of
//! `GET /v1/admin/orders`) and the ledgers (`GET /v1/admin/ledger.csv`). Excel opens them as
//! they are: UTF-8 with a byte-order mark, money in yuan with two decimals, times in the shop's
//! time zone. They stream page by page from the database, so the gateway's memory stays flat
//! whatever their size.

use super::merchant::OrderSearch;
use super::query::ValidQuery;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use memberline_orders::store::orders::{ExportRow, OrderFilter, export_page};
use memberline_schema::ids::BuyerId;
use memberline_schema::money::fen_to_yuan;
use memberline_schema::states::LedgerKind;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use serde::Deserialize;

/// Rows read from the database per page.
const PAGE: u64 = 5000;
/// What Excel needs to read the file as UTF-8.
const BOM: &[u8] = "\u{feff}".as_bytes();

fn at(t: Option<DateTime<Utc>>, tz: Tz) -> String {
    t.map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Writes `records` as CSV lines.
fn lines<I: IntoIterator<Item = Vec<String>>>(records: I) -> Result<Vec<u8>, ApiError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in records {
        w.write_record(&r).map_err(ApiError::internal)?;
    }
    w.into_inner()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("{e}")))
}

/// A CSV download of `pages`: the BOM and `header`, then each page as it is read. A failure
/// part way ends the stream with an error, so the client sees a cut download, not a short file.
fn download<S>(name: &str, header: &[&str], pages: S) -> Result<Response, ApiError>
where
    S: futures::Stream<Item = Result<Vec<u8>, ApiError>> + Send + 'static,
{
    use futures::StreamExt;
    let mut head = BOM.to_vec();
    head.extend(lines([header.iter().map(|h| (*h).to_owned()).collect()])?);
    let body = futures::stream::once(async move { Ok::<_, ApiError>(head) })
        .chain(pages)
        .map(|page| {
            page.map_err(|e| {
                tracing::warn!(code = e.code, "CSV export cut off");
                std::io::Error::other(e.code)
            })
        });
    let mut res = Body::from_stream(body).into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let disposition = format!("attachment; filename=\"{name}\"");
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(ApiError::internal)?,
    );
    Ok(res)
}

const ORDER_HEADER: &[&str] = &[
    "order_no",
    "order_id",
    "created_at",
    "paid_at",
    "refunded_at",
    "status",
    "buyer_id",
    "buyer_name",
    "plan_code",
    "plan_name",
    "pay_method",
    "channel",
    "amount_yuan",
    "amount_points",
    "original_price_yuan",
];

fn order_record(o: ExportRow, tz: Tz) -> Vec<String> {
    vec![
        o.order_no,
        o.id.to_string(),
        at(Some(o.created_at), tz),
        at(o.paid_at, tz),
        at(o.refunded_at, tz),
        o.status,
        o.buyer_id.to_string(),
        o.buyer_name.unwrap_or_default(),
        o.plan_code,
        o.plan_name,
        o.pay_method,
        o.channel.unwrap_or_default(),
        fen_to_yuan(o.amount_fen),
        o.amount_points.to_string(),
        fen_to_yuan(o.original_price_fen),
    ]
}

/// The orders `GET /v1/admin/orders` would list with the same filters, all of them, newest
/// first, as CSV (merchant or admin).
#[utoipa::path(get, path = "/v1/admin/orders.csv", tag = "admin", security(("bearer" = [])), params(OrderSearch),
    responses(
        (status = 200, description = "UTF-8 CSV with a byte-order mark: one line per order; money in yuan, times in the shop's time zone", content_type = "text/csv", body = String),
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not a merchant or admin", body = crate::http::error::ErrorBody),
    ))]
pub async fn orders_csv(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<OrderSearch>,
) -> Result<Response, ApiError> {
    caller.require_staff("the orders export")?;
    let filter = OrderFilter::from(q);
    let tz = state.settings.shop.time_zone;
    let db = state.db.clone();
    let pages = futures::stream::try_unfold(Some(i64::MAX), move |cursor| {
        let (db, filter) = (db.clone(), filter.clone());
        async move {
            let Some(cursor) = cursor else {
                return Ok(None);
            };
            let rows = export_page(&db, &filter, Some(cursor), PAGE).await?;
            let next = (rows.len() as u64 == PAGE).then(|| rows.last().map_or(0, |r| r.id));
            if rows.is_empty() {
                return Ok(None);
            }
            let page = lines(rows.into_iter().map(|r| order_record(r, tz)))?;
            Ok(Some((page, next)))
        }
    });
    download("orders.csv", ORDER_HEADER, pages)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerExport {
    /// One ledger; both when absent (the balance ledger first).
    pub ledger: Option<LedgerKind>,
    /// One buyer's entries.
    pub buyer_id: Option<BuyerId>,
    /// Written at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Written before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
}

const LEDGER_HEADER: &[&str] = &[
    "ledger",
    "entry_id",
    "created_at",
    "buyer_id",
    "buyer_name",
    "reason",
    "delta",
    "balance_after",
    "order_id",
];

/// A page of ledger `kind`'s entries that `q` lets through, newest first, before entry `cursor`.
async fn ledger_page(
    db: &DatabaseConnection,
    kind: LedgerKind,
    q: &LedgerExport,
    cursor: i64,
    tz: Tz,
) -> Result<(Vec<Vec<String>>, i64), DbErr> {
    let table = match kind {
        LedgerKind::Balance => "balance_ledger",
        LedgerKind::Points => "point_ledger",
    };
    let mut conditions = vec!["l.id < $1".to_owned()];
    let mut values: Vec<Value> = vec![cursor.into()];
    for (column, op, value) in [
        ("user_id", "=", q.buyer_id.map(Value::from)),
        ("created_at", ">=", q.from.map(Value::from)),
        ("created_at", "<", q.to.map(Value::from)),
    ] {
        if let Some(v) = value {
            values.push(v);
            conditions.push(format!("l.{column} {op} ${}", values.len()));
        }
    }
    let sql = format!(
        "SELECT l.id, l.user_id, (SELECT name FROM users u WHERE u.id = l.user_id) AS name, \
             l.reason, l.delta, l.balance_after, l.order_id, l.created_at \
         FROM {table} l WHERE {} ORDER BY l.id DESC LIMIT {PAGE}",
        conditions.join(" AND ")
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    let mut last = 0;
    let mut records = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("", "id")?;
        last = id;
        let delta: i64 = row.try_get("", "delta")?;
        let after: i64 = row.try_get("", "balance_after")?;
        let amount = |n: i64| match kind {
            LedgerKind::Balance => fen_to_yuan(n),
            LedgerKind::Points => n.to_string(),
        };
        records.push(vec![
            kind.to_string(),
            id.to_string(),
            at(Some(row.try_get("", "created_at")?), tz),
            row.try_get::<i64>("", "user_id")?.to_string(),
            row.try_get::<Option<String>>("", "name")?
                .unwrap_or_default(),
            row.try_get::<String>("", "reason")?,
            amount(delta),
            amount(after),
            row.try_get::<Option<i64>>("", "order_id")?
                .map(|o| o.to_string())
                .unwrap_or_default(),
        ]);
    }
    Ok((records, last))
}

/// Balance and point ledger entries, newest first, as CSV (merchant or admin): balance amounts
/// in yuan, points as integers.
#[utoipa::path(get, path = "/v1/admin/ledger.csv", tag = "admin", security(("bearer" = [])), params(LedgerExport),
    responses(
        (status = 200, description = "UTF-8 CSV with a byte-order mark: one line per ledger entry; balance amounts in yuan, times in the shop's time zone", content_type = "text/csv", body = String),
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not a merchant or admin", body = crate::http::error::ErrorBody),
    ))]
pub async fn ledger_csv(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<LedgerExport>,
) -> Result<Response, ApiError> {
    caller.require_staff("the ledger export")?;
    let tz = state.settings.shop.time_zone;
    let kinds: Vec<LedgerKind> = match q.ledger {
        Some(k) => vec![k],
        None => vec![LedgerKind::Balance, LedgerKind::Points],
    };
    let db = state.db.clone();
    let q = std::sync::Arc::new(q);
    let pages =
        futures::stream::try_unfold((kinds, 0_usize, i64::MAX), move |(kinds, at, cursor)| {
            let (db, q) = (db.clone(), q.clone());
            async move {
                let Some(&kind) = kinds.get(at) else {
                    return Ok(None);
                };
                let (records, last) = ledger_page(&db, kind, &q, cursor, tz).await?;
                let next = if records.len() as u64 == PAGE {
                    (kinds.clone(), at, last)
                } else {
                    (kinds.clone(), at + 1, i64::MAX)
                };
                Ok(Some((lines(records)?, next)))
            }
        });
    download("ledger.csv", LEDGER_HEADER, pages)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/orders.csv", get(orders_csv))
        .route("/v1/admin/ledger.csv", get(ledger_csv))
}
