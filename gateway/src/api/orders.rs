//! Buying plans and reading orders.

use super::{CorrelationId, JsonValue, typed};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::orders::{OrderView, PlaceOrder, Placed, place};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use memberline_schema::entities::order;
use memberline_schema::events::PayMethod;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Body of `POST /v1/orders`. Prices are never accepted from the client: a body that carries
/// an amount or price field is refused with 422 `client_price_rejected`, and any other unknown
/// field with 422 `invalid_body`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    pub plan_id: i64,
    /// `balance | points | free | wechat | alipay`
    pub pay_method: PayMethod,
}

/// Fields a client might send to set a price. They are refused, never used.
const PRICE_FIELDS: [&str; 8] = [
    "amount",
    "amount_fen",
    "amount_points",
    "price",
    "price_fen",
    "price_points",
    "total",
    "total_fen",
];

/// Buys a plan. Balance, points and free plans are paid in the same transaction that creates
/// the order, which also writes the `order.paid.v1` event to the outbox.
#[utoipa::path(post, path = "/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "Required, 1-255 characters. The same key with the same body replays the first response; with another body it is 422.")),
    request_body = PlaceOrderRequest,
    responses(
        (status = 201, description = "Order created and paid (or the replay of the first response)", body = OrderView),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`, `malformed_json`", body = crate::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::error::ErrorBody),
        (status = 404, description = "`plan_not_found`", body = crate::error::ErrorBody),
        (status = 409, description = "`free_plan_already_claimed`, `already_permanent`", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::error::ErrorBody),
        (status = 422, description = "`insufficient_balance`, `insufficient_points`, `pay_method_unavailable`, `pay_method_not_allowed`, `plan_not_free`, `idempotency_key_reused`, `client_price_rejected`, `invalid_body`", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    CorrelationId(correlation_id): CorrelationId,
    headers: HeaderMap,
    JsonValue(body): JsonValue,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    if let Some(field) = body
        .as_object()
        .and_then(|o| PRICE_FIELDS.iter().find(|f| o.contains_key(**f)))
    {
        return Err(ApiError::unprocessable(
            "client_price_rejected",
            format!("prices are computed by the server; remove `{field}` from the request"),
        ));
    }
    let request_hash = hash_request(&body);
    let req: PlaceOrderRequest = typed(body)?;
    let cmd = PlaceOrder {
        buyer_id: caller.user_id,
        plan_id: req.plan_id,
        pay_method: req.pay_method,
        idempotency_key: key,
        request_hash,
        correlation_id,
    };
    let method = req.pay_method.as_str();
    let result = place(&state.db, &cmd).await;
    let outcome = match &result {
        Ok(Placed::Created(_)) => "paid",
        Ok(Placed::Replayed { .. }) => "replayed",
        Err(e) => e.code,
    };
    state.metrics.inc(
        "memberline_orders_total",
        &[("pay_method", method), ("outcome", outcome)],
    );
    match result? {
        Placed::Created(body) => Ok((StatusCode::CREATED, Json(body)).into_response()),
        Placed::Replayed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            let mut res = (status, Json(body)).into_response();
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(res)
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::bad_request(
            "idempotency_key_required",
            "send an Idempotency-Key header (1-255 characters) with every order",
        )
    })?;
    let key = value
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid_idempotency_key", "must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "the Idempotency-Key must be 1-255 characters",
        ));
    }
    Ok(key.to_owned())
}

/// SHA-256 of the body in canonical form (object keys sorted, no whitespace), so that the same
/// request with keys in another order still counts as the same.
fn hash_request(body: &serde_json::Value) -> String {
    fn canonical(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(&map[k], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::from("POST /v1/orders\n");
    canonical(body, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One of the caller's orders. Another buyer's order is 404, exactly like a missing one.
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, body = OrderView),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "`order_not_found`", body = crate::error::ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let not_found = || ApiError::not_found("order_not_found", "no such order");
    let Path(id) = path.map_err(|_| not_found())?;
    let found = order::Entity::find_by_id(id)
        .filter(order::Column::BuyerId.eq(caller.user_id))
        .one(&state.db)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(found.into()))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Page size, 1-100 (default 20).
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OrderPage {
    /// Newest first.
    pub orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<i64>,
}

/// The caller's orders, newest first, paginated by cursor.
#[utoipa::path(get, path = "/v1/orders", tag = "orders", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, body = OrderPage),
        (status = 400, description = "`invalid_query`", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be 1-100",
        ));
    }
    let mut select = order::Entity::find()
        .filter(order::Column::BuyerId.eq(caller.user_id))
        .order_by_desc(order::Column::Id)
        .limit(limit + 1);
    if let Some(cursor) = q.cursor {
        select = select.filter(order::Column::Id.lt(cursor));
    }
    let mut rows = select.all(&state.db).await?;
    let next_cursor = if rows.len() as u64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|o| o.id)
    } else {
        None
    };
    Ok(Json(OrderPage {
        orders: rows.into_iter().map(OrderView::from).collect(),
        next_cursor,
    }))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orders", get(list).post(create))
        .route("/v1/orders/{id}", get(get_one))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_ignores_key_order_but_not_values() {
        let a = hash_request(&serde_json::json!({"plan_id": 1, "pay_method": "points"}));
        let b = hash_request(&serde_json::json!({"pay_method": "points", "plan_id": 1}));
        let c = hash_request(&serde_json::json!({"pay_method": "balance", "plan_id": 1}));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
