//! The orders as staff see them: every buyer's, newest first, for the console's list, and
//! filtered by status, pay method, channel, date range and buyer.

use super::orders::ListQuery;
use super::query::{self, ValidQuery};
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use memberline_orders::OrderView;
use memberline_orders::store;
use memberline_orders::store::orders::OrderFilter;
use memberline_schema::ids::BuyerId;
use memberline_schema::states::{OrderStatus, PayChannel, PayMethod};
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

/// Filters of `GET /v1/admin/orders`, beside the page's `limit` and `cursor`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderSearch {
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
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

/// Every buyer's orders that match the filters, newest first, paginated by cursor (merchant or
/// admin).
#[utoipa::path(get, path = "/v1/admin/orders", tag = "admin", security(("bearer" = [])), params(OrderSearch),
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
    ValidQuery(q): ValidQuery<OrderSearch>,
) -> Result<Json<MerchantOrderPage>, ApiError> {
    caller.require_staff("the order search")?;
    // A range with `from` not before `to` holds nothing: an empty page, as any search that
    // finds nothing.
    let filter = OrderFilter {
        buyer_id: q.buyer_id,
        status: q.status,
        pay_method: q.pay_method,
        channel: q.channel,
        from: q.from,
        to: q.to,
    };
    staff_page(&state, &filter, q.cursor, q.limit).await
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

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/merchant/orders", get(orders))
        .route("/v1/admin/orders", get(search))
}
