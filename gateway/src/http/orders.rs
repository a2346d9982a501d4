//! Buying plans and reading orders.

use super::idempotency::{Idempotent, KEY_DOC, respond};
use super::query::{self, ValidQuery};
use super::{ClientIp, CorrelationId, typed};
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use memberline_orders::store;
use memberline_orders::{
    self as orders, ChannelChoice, ExpectedPrice, OrderView, PlaceOrder, Timing, checkout,
};
use memberline_platform::metrics::OrderOutcome;
use memberline_schema::events::PayMethod;
use memberline_schema::ids::{OrderId, PlanId};
use memberline_schema::states::{PayChannel, WechatApp};
use serde::{Deserialize, Serialize};

/// Body of `POST /v1/orders`. Prices are never taken from the client: a body that carries an
/// amount or price field is refused with 422 `client_price_rejected`, and any other unknown field
/// with 422 `invalid_body`. The optional `expected_price_fen` / `expected_price_points` are what
/// the buyer's page showed (after the level discount): never used as the price, but a difference
/// from the server's price is 409 `price_changed` with the current price in `details`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"plan_id": 1, "pay_method": "points"}))]
pub struct PlaceOrderRequest {
    pub plan_id: PlanId,
    #[schema(value_type = OrderPayMethod)]
    pub pay_method: PayMethod,
    /// The price in fen the buyer was shown (`buyer_price_fen` of `GET /v1/plans`).
    #[schema(minimum = 0)]
    pub expected_price_fen: Option<i64>,
    /// The price in points the buyer was shown (`buyer_price_points` of `GET /v1/plans`).
    #[schema(minimum = 0)]
    pub expected_price_points: Option<i64>,
    /// How a `wechat` or `alipay` order is paid (one the shop takes: `channels` of
    /// `GET /v1/plans`). WeChat: `native` (the default, a QR code), `jsapi` (inside WeChat, with
    /// `wechat_app`), `h5` (a mobile browser). Alipay: `qr` (the default), `wap` (mobile cashier),
    /// `page` (desktop cashier). Not for other pay methods.
    pub channel: Option<PayChannel>,
    /// With `channel: jsapi` only: the app the buyer pays in, where they must have signed in with
    /// WeChat (their OpenID there).
    pub wechat_app: Option<WechatApp>,
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

impl PlaceOrderRequest {
    /// The request a body makes: 422 `client_price_rejected` when it carries a price field,
    /// `invalid_body` when it has another shape, `invalid_field` for a negative expected price.
    pub fn from_body(body: serde_json::Value) -> Result<Self, ApiError> {
        if let Some(field) = body
            .as_object()
            .and_then(|o| PRICE_FIELDS.iter().find(|f| o.contains_key(**f)))
        {
            return Err(ApiError::unprocessable(
                "client_price_rejected",
                format!("prices are computed by the server; remove `{field}` from the request"),
            ));
        }
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
        Ok(req)
    }
}

/// Buys a plan. Balance, points and free plans are paid in the same transaction that creates
/// the order, which also writes the `order.paid.v1` event to the outbox. WeChat and Alipay
/// orders are created `pending_payment` with what their channel pays with (`payment`: a QR
/// code, JSAPI's signed arguments, a cashier URL); the provider's verified notification (or our
/// query) pays them.
#[utoipa::path(post, path = "/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header,
        min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$",
        description = KEY_DOC)),
    // One example per way of paying that needs nothing but a buyer: the contract test sends
    // each, so every kind of `payment` answered 201 is checked against the document.
    request_body(content = PlaceOrderRequest, examples(
        ("points" = (summary = "Paid at once, in points", value = json!({"plan_id": 1, "pay_method": "points"}))),
        ("wechat" = (summary = "A WeChat Pay QR code to scan (native)", value = json!({"plan_id": 1, "pay_method": "wechat"}))),
        ("wechat_h5" = (summary = "WeChat Pay's cashier in a mobile browser", value = json!({"plan_id": 1, "pay_method": "wechat", "channel": "h5"}))),
        ("alipay" = (summary = "An Alipay QR code to scan", value = json!({"plan_id": 1, "pay_method": "alipay"}))),
        ("alipay_wap" = (summary = "Alipay's mobile cashier", value = json!({"plan_id": 1, "pay_method": "alipay", "channel": "wap"}))),
        ("alipay_page" = (summary = "Alipay's desktop cashier", value = json!({"plan_id": 1, "pay_method": "alipay", "channel": "page"}))),
    )),
    responses(
        (status = 201, description = "Order created and paid, or (wechat, alipay) created `pending_payment` with its `payment`: `code_url` to scan, `jsapi_params` for `wx.requestPayment`, `h5_url` or `pay_url` to open; or the replay of the first response", body = OrderView),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`, `malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`, `unknown_user`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 404, description = "`plan_not_found`", body = crate::http::error::ErrorBody),
        (status = 409, description = "`free_plan_already_claimed`, `already_permanent`, `price_changed` (the current price in `details`), `wechat_identity_required` (a `jsapi` order of a buyer without an OpenID under that app)", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`insufficient_balance`, `insufficient_points`, `pay_method_unavailable`, `channel_unavailable` (a channel or WeChat app the shop does not take), `channel_mismatch` (`channel` or `wechat_app` does not fit the pay method: each provider takes its own channels, `jsapi` needs `wechat_app`, nothing else takes it, and only `wechat` and `alipay` take a channel), `pay_method_not_allowed`, `plan_not_free`, `idempotency_key_reused`, `client_price_rejected`, `invalid_body`, `invalid_field`", body = crate::http::error::ErrorBody),
        (status = 502, description = "`provider_unavailable`: the payment provider failed or timed out; the order was closed, nothing was charged", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy; `overloaded`: the purchase lanes are full (`Retry-After`); nothing was written either way, retry with the same key", body = crate::http::error::ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    CorrelationId(correlation_id): CorrelationId,
    ClientIp(client_ip): ClientIp,
    request: Idempotent,
) -> Result<Response, ApiError> {
    let key = request.key?;
    let request_hash = request.request_hash;
    let req = PlaceOrderRequest::from_body(request.body)?;
    let cmd = PlaceOrder {
        buyer_id: caller.buyer_id()?,
        plan_id: req.plan_id,
        pay_method: req.pay_method,
        expected: ExpectedPrice {
            fen: req.expected_price_fen,
            points: req.expected_price_points,
        },
        idempotency_key: key,
        request_hash,
        correlation_id,
        channel: ChannelChoice {
            channel: req.channel,
            wechat_app: req.wechat_app,
            client_ip,
        },
    };
    let result = if req.pay_method.provider().is_some() {
        let timing = Timing::from(&state.settings.payments);
        checkout(&state.db, &state.payments, timing, &cmd).await
    } else {
        state.purchases.place(cmd).await
    };
    let outcome = match &result {
        Ok(answer) if answer.replayed => OrderOutcome::Replayed,
        Ok(_) if req.pay_method.provider().is_some() => OrderOutcome::PendingPayment,
        Ok(_) => OrderOutcome::Paid,
        Err(e) => OrderOutcome::Refused(e.code()),
    };
    state.metrics.order(req.pay_method, outcome);
    Ok(respond(result?))
}

/// One of the caller's orders. Another buyer's order is 404, exactly like a missing one.
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, body = OrderView),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 404, description = "`order_not_found` (also for an id that is not a number)", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<OrderId>, axum::extract::rejection::PathRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let not_found = || ApiError::not_found("order_not_found", "no such order");
    let Path(id) = path.map_err(|_| not_found())?;
    let found = store::orders::of_buyer(&state.db, id, caller.buyer_id()?, false)
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
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 404, description = "`order_not_found` (also for an id that is not a number, and for another buyer's order)", body = crate::http::error::ErrorBody),
        (status = 409, description = "`order_not_pending`: the order is paid (or refunded)", body = crate::http::error::ErrorBody),
        (status = 502, description = "`provider_unavailable`: the provider could not be reached; the order is still pending, try again", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<OrderId>, axum::extract::rejection::PathRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::not_found("order_not_found", "no such order"))?;
    let closed = orders::cancel(&state.db, &state.payments, caller.buyer_id()?, id).await?;
    Ok(Json(closed.into()))
}

/// A reminder sent to the shop.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Reminded {
    pub order_id: OrderId,
    pub reminded_at: chrono::DateTime<chrono::Utc>,
}

/// Asks the shop to hurry with one of the caller's paid orders: the merchant consoles get a
/// "customer reminder" (`order.reminded.v1`). At most one a minute per order.
#[utoipa::path(post, path = "/v1/orders/{id}/remind", tag = "orders", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 202, description = "The shop is reminded", body = Reminded),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 404, description = "`order_not_found` (also another buyer's order)", body = crate::http::error::ErrorBody),
        (status = 409, description = "`order_not_paid`: only a paid order can be reminded about", body = crate::http::error::ErrorBody),
        (status = 429, description = "`remind_too_soon`: one reminder a minute; `Retry-After` says when", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn remind(
    State(state): State<AppState>,
    caller: Caller,
    CorrelationId(correlation_id): CorrelationId,
    path: Result<Path<OrderId>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::not_found("order_not_found", "no such order"))?;
    let now = orders::remind::remind(&state.db, caller.buyer_id()?, id, correlation_id).await?;
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
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    let limit = query::limit(q.limit, 20, 100)?;
    let (rows, next_cursor) = store::orders::page(
        &state.db,
        &store::orders::OrderFilter::of_buyer(caller.buyer_id()?),
        q.cursor,
        limit,
    )
    .await?;
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
