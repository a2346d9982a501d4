//! The orders as staff see them: every buyer's, newest first, for the console's list, and
//! filtered by status, pay method, channel, date range and buyer.

use super::orders::ListQuery;
use super::query::{self, ValidQuery};
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use memberline_orders::OrderView;
use memberline_orders::store;
use memberline_orders::store::orders::OrderFilter;
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::{OrderStatus, PayChannel, PayMethod};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::{Deserialize, Serialize};

/// An order with who bought it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MerchantOrder {
    pub buyer_id: BuyerId,
    pub buyer_name: String,
    #[serde(flatten)]
    pub order: OrderView,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MerchantOrderPage {
    /// Newest first.
    pub orders: Vec<MerchantOrder>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<i64>,
}

/// Every buyer's orders, newest first, paginated by cursor (merchant or admin).
#[utoipa::path(get, path = "/v1/merchant/orders", tag = "push", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, body = MerchantOrderPage),
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not a merchant or admin", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn orders(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<MerchantOrderPage>, ApiError> {
    caller.require_staff("the merchant stream")?;
    staff_page(&state, &OrderFilter::default(), q.cursor, q.limit).await
}

/// Filters of `GET /v1/admin/orders` (beside the page's `limit` and `cursor`) and of its CSV
/// export.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderSearch {
    #[param(value_type = Option<OrderStatus>)]
    pub status: Option<OrderStatus>,
    #[param(value_type = Option<PayMethod>)]
    pub pay_method: Option<PayMethod>,
    #[param(value_type = Option<PayChannel>)]
    pub channel: Option<PayChannel>,
    /// Created at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Created before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// One buyer's orders.
    pub buyer_id: Option<BuyerId>,
}

impl From<OrderSearch> for OrderFilter {
    fn from(q: OrderSearch) -> Self {
        Self {
            buyer_id: q.buyer_id,
            status: q.status,
            pay_method: q.pay_method,
            channel: q.channel,
            from: q.from,
            to: q.to,
        }
    }
}

/// Every buyer's orders that match the filters, newest first, paginated by cursor (merchant or
/// admin).
#[utoipa::path(get, path = "/v1/admin/orders", tag = "admin", security(("bearer" = [])), params(ListQuery, OrderSearch),
    responses(
        (status = 200, body = MerchantOrderPage),
        (status = 400, description = "`invalid_query`: a malformed filter", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not a merchant or admin", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(page): ValidQuery<ListQuery>,
    ValidQuery(q): ValidQuery<OrderSearch>,
) -> Result<Json<MerchantOrderPage>, ApiError> {
    caller.require_staff("the order search")?;
    // A range with `from` not before `to` holds nothing: an empty page, as any search that
    // finds nothing.
    staff_page(&state, &q.into(), page.cursor, page.limit).await
}

/// A page of the orders `filter` lets through, with their buyers' names.
async fn staff_page(
    state: &AppState,
    filter: &OrderFilter,
    cursor: Option<i64>,
    limit: Option<u64>,
) -> Result<Json<MerchantOrderPage>, ApiError> {
    let limit = query::limit(limit, 20, 100)?;
    let (rows, next_cursor) = store::orders::page(&state.db, filter, cursor, limit).await?;
    let mut buyer_ids: Vec<BuyerId> = rows.iter().map(|o| o.buyer_id).collect();
    buyer_ids.sort_unstable();
    buyer_ids.dedup();
    let names = store::catalogue::buyer_names(&state.db, buyer_ids).await?;
    let orders = rows
        .into_iter()
        .map(|o| MerchantOrder {
            buyer_id: o.buyer_id,
            buyer_name: names.get(&o.buyer_id).cloned().unwrap_or_default(),
            order: OrderView::from(o),
        })
        .collect();
    Ok(Json(MerchantOrderPage {
        orders,
        next_cursor,
    }))
}

/// What refunding a paid order would reverse, as the workers will: the money or points given
/// back, the reward points taken back, the membership time or pass uses removed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Reversal {
    /// Given back, in fen (to the balance, or through the provider).
    pub refund_fen: i64,
    /// Given back, in points.
    pub refund_points: i64,
    /// Reward points the purchase credited that would be taken back now: at most what the buyer
    /// still has (what they spent is recorded as the reversal's shortfall).
    pub reward_points: i64,
    /// Membership time the order's period holds, removed (later periods move earlier).
    pub membership_secs: i64,
    /// The order made the membership permanent: refunding ends that.
    pub permanent: bool,
    /// Unused uses of the order's pass, removed.
    pub pass_uses: i32,
}

/// An order with its buyer, and what refunding it would reverse.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OrderDetail {
    #[serde(flatten)]
    pub order: MerchantOrder,
    /// `null` unless the order is paid (only a paid order can be refunded).
    pub reversal: Option<Reversal>,
}

/// One order, with what a refund would reverse (merchant or admin).
#[utoipa::path(get, path = "/v1/admin/orders/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, body = OrderDetail),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not a merchant or admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`order_not_found`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<OrderId>, axum::extract::rejection::PathRejection>,
) -> Result<Json<OrderDetail>, ApiError> {
    caller.require_staff("an order's page")?;
    let not_found = || ApiError::not_found("order_not_found", "no such order");
    let Path(id) = path.map_err(|_| not_found())?;
    let order = store::orders::find(&state.db, id)
        .await?
        .ok_or_else(not_found)?;
    let reversal = if order.status == OrderStatus::Paid {
        let row = state
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT \
                   least((SELECT coalesce(sum(delta), 0)::bigint FROM point_ledger \
                          WHERE order_id = $1 AND reason = 'purchase_reward'), \
                         (SELECT points FROM users WHERE id = $2)) AS reward, \
                   (SELECT coalesce(extract(epoch FROM ends_at - starts_at), 0)::bigint \
                    FROM membership_periods WHERE order_id = $1 AND removed_at IS NULL) AS secs, \
                   (SELECT permanent FROM membership_periods \
                    WHERE order_id = $1 AND removed_at IS NULL) AS permanent, \
                   (SELECT uses_left FROM user_passes \
                    WHERE order_id = $1 AND revoked_at IS NULL) AS uses",
                [id.into(), order.buyer_id.into()],
            ))
            .await?
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no row")))?;
        Some(Reversal {
            refund_fen: order.amount_fen,
            refund_points: order.amount_points,
            reward_points: row.try_get("", "reward")?,
            membership_secs: row.try_get::<Option<i64>>("", "secs")?.unwrap_or(0),
            permanent: row
                .try_get::<Option<bool>>("", "permanent")?
                .unwrap_or(false),
            pass_uses: row.try_get::<Option<i32>>("", "uses")?.unwrap_or(0),
        })
    } else {
        None
    };
    let names = store::catalogue::buyer_names(&state.db, vec![order.buyer_id]).await?;
    Ok(Json(OrderDetail {
        order: MerchantOrder {
            buyer_id: order.buyer_id,
            buyer_name: names.get(&order.buyer_id).cloned().unwrap_or_default(),
            order: OrderView::from(order),
        },
        reversal,
    }))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/merchant/orders", get(orders))
        .route("/v1/admin/orders", get(search))
        .route("/v1/admin/orders/{id}", get(detail))
}
