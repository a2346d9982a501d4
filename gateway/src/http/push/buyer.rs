//! `GET /v1/orders/{id}/stream`: a buyer's WebSocket on one of their orders.
//!
//! The first message is the order as it is; then one message per change:
//! `{type: "order.status", order_id, status, at, membership?}` — `pending_payment → paid`, then
//! the same status again with `membership: {status, expires_at, permanent}` once the membership
//! worker extended it, or `closed`, `refund_pending`, `refunded`. What drives it is real: the
//! buyer's pushes from the notifier (after each effect commits) make the socket read the order
//! again, and so does a check every `push.feed_poll_ms` for a push that never came. A message
//! is sent only when something the buyer sees changed. Closing the socket changes nothing.

use super::socket::{IDLE, TOO_SLOW, sized};
use super::tickets;
use crate::account;
use crate::http::auth::{MaybeCaller, Role};
use crate::http::error::ApiError;
use crate::membership::{MembershipView, membership_at};
use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::Utc;
use futures::{SinkExt, StreamExt};
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::push::Route;
use memberline_schema::states::OrderStatus;
use sea_orm::{DatabaseConnection, DbErr};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderStreamQuery {
    /// A single-use ticket (`POST /v1/me/stream-ticket`), for browsers.
    pub ticket: Option<String>,
}

/// Live status of one of the caller's orders (WebSocket): the current state first, then every
/// change. Refusals are plain HTTP before the upgrade.
#[utoipa::path(get, path = "/v1/orders/{id}/stream", tag = "push", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id"), OrderStreamQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`, `invalid_ticket`", body = crate::http::error::ErrorBody),
        (status = 404, description = "`order_not_found` (also another buyer's order)", body = crate::http::error::ErrorBody),
        (status = 426, description = "`upgrade_required`: not a WebSocket request", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    MaybeCaller(header): MaybeCaller,
    path: Result<Path<OrderId>, axum::extract::rejection::PathRejection>,
    query: Result<Query<OrderStreamQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("order_not_found", "no such order");
    let Path(id) = path.map_err(|_| not_found())?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let caller = tickets::stream_caller(
        &state.db,
        header,
        q.ticket.as_deref(),
        ws.is_ok(),
        "/v1/me/stream-ticket",
    )
    .await?;
    // The buyer's own order; an admin may follow any.
    let found = memberline_orders::store::orders::find(&state.db, id).await?;
    let order = found
        .filter(|o| caller.role == Role::Admin || caller.buyer_id().ok() == Some(o.buyer_id))
        .ok_or_else(not_found)?;
    let ws = sized(ws.map_err(|_| tickets::upgrade_required())?);
    let live = state.push_hub.subscribe();
    let sessions = state.push_hub.sessions.clone();
    Ok(ws.on_upgrade(move |socket| {
        sessions.track_future(session(socket, state, live, order.id, order.buyer_id))
    }))
}

/// What the buyer sees of the order now.
async fn view(db: &DatabaseConnection, order_id: OrderId) -> Result<Option<Value>, DbErr> {
    let Some((order, periods)) = account::order_progress(db, order_id).await? else {
        return Ok(None);
    };
    let mut message = json!({
        "type": "order.status",
        "order_id": order.id,
        "order_no": order.order_no,
        "status": order.status,
        "at": order.updated_at,
    });
    if let Some(periods) = periods {
        let MembershipView {
            status,
            expires_at,
            permanent,
            ..
        } = membership_at(&periods, Utc::now());
        message["membership"] = json!({
            "status": status,
            "expires_at": expires_at,
            "permanent": permanent,
        });
    }
    Ok(Some(message))
}

/// What makes two views different for the buyer (not the time stamp).
fn seen(view: &Value) -> (Value, Value) {
    (view["status"].clone(), view["membership"].clone())
}

async fn session(
    socket: WebSocket,
    state: AppState,
    mut live: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::hub::Pushed>>,
    order_id: OrderId,
    buyer_id: BuyerId,
) {
    let push = state.settings.push.clone();
    let (mut sink, mut incoming) = socket.split();
    let write_timeout = Duration::from_secs(push.ping_interval_secs.max(1));
    let mut last_seen: Option<(Value, Value)> = None;
    let mut ping = tokio::time::interval(Duration::from_secs(push.ping_interval_secs));
    ping.tick().await;
    let mut poll = tokio::time::interval(Duration::from_millis(push.feed_poll_ms));
    let idle = Duration::from_secs(push.idle_timeout_secs);
    let mut heard = Instant::now();
    let buyer_key = Route::Buyer(buyer_id).routing_key();
    let close = loop {
        // Read again when woken by a push about this buyer or by the poll.
        let refresh = tokio::select! {
            _ = state.push_hub.closing.cancelled() => break Some((1001, "going away")),
            // A closed or refunded order changes no more: no need to keep reading it.
            _ = poll.tick() => !last_seen.as_ref().is_some_and(|(status, _)| {
                status.as_str().and_then(OrderStatus::parse).is_some_and(OrderStatus::is_final)
            }),
            pushed = live.recv() => match pushed {
                Ok(p) => p.routing_key == buyer_key,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break Some((1011, "restarting")),
            },
            frame = incoming.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                Some(Ok(_)) => {
                    heard = Instant::now();
                    false
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > idle {
                    break Some((IDLE, "idle"));
                }
                let sent = tokio::time::timeout(write_timeout, sink.send(Message::Ping(Vec::new().into()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break None;
                }
                false
            }
        };
        if !refresh {
            continue;
        }
        let Ok(Some(view)) = view(&state.db, order_id).await else {
            continue;
        };
        let now = seen(&view);
        if last_seen.as_ref() == Some(&now) {
            continue;
        }
        let sent = tokio::time::timeout(
            write_timeout,
            sink.send(Message::Text(view.to_string().into())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            break Some((TOO_SLOW, "too slow"));
        }
        last_seen = Some(now);
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}
