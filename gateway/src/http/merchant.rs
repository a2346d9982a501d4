//! The merchant's side of the orders: every buyer's recent orders, for the console's list.

use super::orders::ListQuery;
use super::query::{self, ValidQuery};
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use memberline_orders::OrderView;
use memberline_orders::store;
use memberline_schema::ids::BuyerId;
use serde::Serialize;

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
    let limit = query::limit(q.limit, 20, 100)?;
    let (rows, next_cursor) = store::orders::page(&state.db, None, q.cursor, limit).await?;
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
    Router::new().route("/v1/merchant/orders", get(orders))
}
