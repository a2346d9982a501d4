//! Buying plans and reading orders.

use super::query::{self, ValidQuery};
use super::{CorrelationId, JsonValue, typed};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::orders::{self, ExpectedPrice, OrderView, PlaceOrder, Placed, Timing, checkout};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use memberline_schema::entities::order;
use memberline_schema::events::PayMethod;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Body of `POST /v1/orders`. Prices are never taken from the client: a body that carries an
/// amount or price field is refused with 422 `client_price_rejected`, and any other unknown field
/// with 422 `invalid_body`. The optional `expected_price_fen` / `expected_price_points` are what
/// the buyer's page showed (after the level discount): never used as the price, but a difference
/// from the server's price is 409 `price_changed` with the current price in `details`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"plan_id": 1, "pay_method": "points"}))]
pub struct PlaceOrderRequest {
    pub plan_id: i64,
    #[schema(value_type = OrderPayMethod)]
    pub pay_method: PayMethod,
    /// The price in fen the buyer was shown (`buyer_price_fen` of `GET /v1/plans`).
    #[schema(minimum = 0)]
    pub expected_price_fen: Option<i64>,
    /// The price in points the buyer was shown (`buyer_price_points` of `GET /v1/plans`).
    #[schema(minimum = 0)]
    pub expected_price_points: Option<i64>,
}

/// The pay methods an order can be placed with. A provider method that is not enabled on this
/// shop (`payments.<provider>.enabled`) is refused with 422 `pay_method_unavailable`.
pub struct OrderPayMethod;

impl utoipa::PartialSchema for OrderPayMethod {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "How the order is paid: store balance, points, a free plan, or a WeChat Pay / \
                 Alipay QR code (the order is then `pending_payment` until the provider confirms).",
            ))
            .enum_values(Some(
                PayMethod::ALL
                    .iter()
                    .filter(|m| **m != PayMethod::AdminGrant)
                    .map(|m| m.as_str()),
            ))
            .into()
    }
}

impl utoipa::ToSchema for OrderPayMethod {}

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
/// the order, which also writes the `order.paid.v1` event to the outbox. WeChat and Alipay
/// orders are created `pending_payment` with a QR code; the provider's verified notification
/// (or our query) pays them.
#[utoipa::path(post, path = "/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header,
        min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$",
        description = "Required: 1-255 visible ASCII characters (inner spaces allowed). The same key with the same body replays the first response; with another body it is 422.")),
    request_body = PlaceOrderRequest,
    responses(
        (status = 201, description = "Order created and paid, or (wechat, alipay) created `pending_payment` with `payment.code_url` to scan; or the replay of the first response", body = OrderView),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`, `malformed_json`", body = crate::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`, `unknown_user`", body = crate::error::ErrorBody),
        (status = 404, description = "`plan_not_found`", body = crate::error::ErrorBody),
        (status = 409, description = "`free_plan_already_claimed`, `already_permanent`, `price_changed` (the current price in `details`)", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = crate::error::ErrorBody),
        (status = 422, description = "`insufficient_balance`, `insufficient_points`, `pay_method_unavailable`, `pay_method_not_allowed`, `plan_not_free`, `idempotency_key_reused`, `client_price_rejected`, `invalid_body`, `invalid_field`", body = crate::error::ErrorBody),
        (status = 502, description = "`provider_unavailable`: the payment provider failed or timed out; the order was closed, nothing was charged", body = crate::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy; retry with the same key", body = crate::error::ErrorBody),
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
    if [req.expected_price_fen, req.expected_price_points]
        .iter()
        .flatten()
        .any(|p| *p < 0)
    {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "expected_price_fen and expected_price_points must not be negative",
        ));
    }
    let cmd = PlaceOrder {
        buyer_id: caller.user_id,
        plan_id: req.plan_id,
        pay_method: req.pay_method,
        expected: ExpectedPrice {
            fen: req.expected_price_fen,
            points: req.expected_price_points,
        },
        idempotency_key: key,
        request_hash,
        correlation_id,
    };
    let result = if req.pay_method.provider().is_some() {
        let timing = Timing::from(&state.settings.payments);
        checkout(&state.db, &state.payments, timing, &cmd).await
    } else {
        state.purchases.place(cmd).await
    };
    let outcome = match &result {
        Ok(Placed::Created(_)) if req.pay_method.provider().is_some() => "pending_payment",
        Ok(Placed::Created(_)) => "paid",
        Ok(Placed::Replayed { .. }) => "replayed",
        Err(e) => e.code(),
    };
    state.metrics.order(req.pay_method.as_str(), outcome);
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

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::bad_request(
            "idempotency_key_required",
            "send an Idempotency-Key header (1-255 characters) with every order",
        )
    })?;
    // The schema's pattern: visible ASCII, inner spaces allowed. HTTP already drops the spaces
    // and tabs around a header value; `to_str` would also let a tab inside through.
    let key = value
        .to_str()
        .ok()
        .map(|k| k.trim_matches([' ', '\t']))
        .filter(|k| k.bytes().all(|b| (0x20..=0x7e).contains(&b)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "the Idempotency-Key must be visible ASCII",
            )
        })?;
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
    hash_request_for("POST /v1/orders", body)
}

/// [`hash_request`] for the request `route` (method and path): the same key sent to another
/// endpoint, or with another body, is another request.
pub(crate) fn hash_request_for(route: &str, body: &serde_json::Value) -> String {
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
    let mut text = format!("{route}\n");
    canonical(body, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One of the caller's orders. Another buyer's order is 404, exactly like a missing one.
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, body = OrderView),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::error::ErrorBody),
        (status = 404, description = "`order_not_found` (also for an id that is not a number)", body = crate::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::error::ErrorBody),
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

/// Cancels one of the caller's WeChat / Alipay orders while it is `pending_payment`. The trade is
/// closed at the provider first (so the code can no longer be paid), then here, with
/// `order.closed.v1`. If the provider reports that the buyer already paid, the payment is applied
/// instead and the answer is 409. Cancelling an order that is already closed returns it unchanged.
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order, `closed`", body = OrderView),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::error::ErrorBody),
        (status = 404, description = "`order_not_found` (also for an id that is not a number, and for another buyer's order)", body = crate::error::ErrorBody),
        (status = 409, description = "`order_not_pending`: the order is paid (or refunded)", body = crate::error::ErrorBody),
        (status = 502, description = "`provider_unavailable`: the provider could not be reached; the order is still pending, try again", body = crate::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::error::ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::not_found("order_not_found", "no such order"))?;
    let closed = orders::cancel(&state.db, &state.payments, caller.user_id, id).await?;
    Ok(Json(closed.into()))
}

/// A reminder sent to the shop.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Reminded {
    pub order_id: i64,
    pub reminded_at: chrono::DateTime<chrono::Utc>,
}

/// Seconds between two reminders of one order.
const REMIND_EVERY_SECS: i64 = 60;

/// Asks the shop to hurry with one of the caller's paid orders: the merchant consoles get a
/// "customer reminder" (`order.reminded.v1`). At most one a minute per order.
#[utoipa::path(post, path = "/v1/orders/{id}/remind", tag = "orders", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 202, description = "The shop is reminded", body = Reminded),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::error::ErrorBody),
        (status = 404, description = "`order_not_found` (also another buyer's order)", body = crate::error::ErrorBody),
        (status = 409, description = "`order_not_paid`: only a paid order can be reminded about", body = crate::error::ErrorBody),
        (status = 429, description = "`remind_too_soon`: one reminder a minute; `Retry-After` says when", body = crate::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::error::ErrorBody),
    ))]
pub async fn remind(
    State(state): State<AppState>,
    caller: Caller,
    CorrelationId(correlation_id): CorrelationId,
    path: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    use memberline_schema::events::{Envelope, OrderReminded};
    use memberline_schema::states::OrderStatus;
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
    let not_found = || ApiError::not_found("order_not_found", "no such order");
    let Path(id) = path.map_err(|_| not_found())?;
    let txn = state.db.begin().await?;
    let found = order::Entity::find_by_id(id)
        .filter(order::Column::BuyerId.eq(caller.user_id))
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(not_found)?;
    if found.status != OrderStatus::Paid {
        return Err(ApiError::conflict(
            "order_not_paid",
            format!(
                "the order is {}; only a paid order can be reminded about",
                found.status
            ),
        ));
    }
    // The database's clock, not this instance's: instances may disagree by a few seconds.
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT now() AS now, \
             ceil(extract(epoch FROM reminded_at + make_interval(secs => $2) - now()))::bigint \
                 AS wait \
             FROM orders WHERE id = $1",
            [id.into(), (REMIND_EVERY_SECS as f64).into()],
        ))
        .await?
        .ok_or_else(not_found)?;
    let now: chrono::DateTime<chrono::Utc> = row.try_get("", "now")?;
    let wait: Option<i64> = row.try_get("", "wait")?;
    if let Some(wait) = wait.filter(|w| *w > 0) {
        let mut res = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "remind_too_soon",
            format!("one reminder a minute: try again in {wait} s"),
        )
        .into_response();
        res.headers_mut()
            .insert("retry-after", HeaderValue::from(wait as u64));
        return Ok(res);
    }
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET reminded_at = $2 WHERE id = $1",
        [id.into(), now.into()],
    ))
    .await?;
    let event = OrderReminded {
        order_id: found.id,
        order_no: found.order_no.clone(),
        buyer_id: found.buyer_id,
        plan_name: found.plan_name.clone(),
        reminded_at: now,
    };
    memberline_platform::outbox::enqueue(&txn, &Envelope::new(event, correlation_id, None)).await?;
    txn.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Reminded {
            order_id: id,
            reminded_at: now,
        }),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
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
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::error::ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    let limit = query::limit(q.limit, 20, 100)?;
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
        .route("/v1/orders/{id}/cancel", post(cancel))
        .route("/v1/orders/{id}/remind", post(remind))
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
