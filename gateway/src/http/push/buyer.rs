//! `GET /v1/orders/{id}/stream`: a buyer's WebSocket on one of their orders, opened with a
//! single-use ticket (`POST /v1/me/stream-ticket`) only.
//!
//! The first message is the order as it is; then one message per change:
//! `{type: "order.status", order_id, status, at, membership?}` — `pending_payment → paid`, then
//! the same status again with `membership: {status, expires_at, permanent}` once the membership
//! worker extended it, or `closed`, `refund_pending`, `refunded`. The socket reads nothing
//! itself: the instance's [`crate::order_watch`] reads the order for all its sockets (on the
//! buyer's pushes, and on a poll while something is awaited) and wakes them when something the
//! buyer sees changed. A buyer holds at most `push.buyer_streams_per_buyer` streams on an
//! instance (429 `too_many_streams`), and an instance at most `push.buyer_streams_max` (503
//! `overloaded`). Closing the socket changes nothing.

use super::socket::{IDLE, TOO_SLOW, sized};
use super::tickets;
use crate::http::auth::Role;
use crate::http::error::ApiError;
use crate::order_watch::{Full, Watcher};
use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use memberline_schema::ids::OrderId;
use serde::Deserialize;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderStreamQuery {
    /// A single-use ticket (`POST /v1/me/stream-ticket`): the only way in.
    pub ticket: Option<String>,
}

/// Live status of one of the caller's orders (WebSocket): the current state first, then every
/// change. Refusals are plain HTTP before the upgrade.
#[utoipa::path(get, path = "/v1/orders/{id}/stream", tag = "push",
    params(("id" = i64, Path, description = "Order id"), OrderStreamQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`ticket_required` (a bearer header is not enough: trade it for a ticket), `invalid_ticket` (unknown, expired or used)", body = crate::http::error::ErrorBody),
        (status = 404, description = "`order_not_found` (also another buyer's order)", body = crate::http::error::ErrorBody),
        (status = 426, description = "`upgrade_required`: not a WebSocket request", body = crate::http::error::ErrorBody),
        (status = 429, description = "`too_many_streams`: the buyer holds `push.buyer_streams_per_buyer` order streams on this instance", body = crate::http::error::ErrorBody),
        (status = 503, description = "`overloaded`: the instance holds `push.buyer_streams_max` order streams (with `Retry-After`); `unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    path: Result<Path<OrderId>, axum::extract::rejection::PathRejection>,
    query: Result<Query<OrderStreamQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("order_not_found", "no such order");
    let Path(id) = path.map_err(|_| not_found())?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let Some(ticket) = q.ticket else {
        return Err(ApiError::unauthorized(
            "ticket_required",
            "open order streams with a ticket from POST /v1/me/stream-ticket",
        ));
    };
    let ws = ws.map_err(|_| tickets::upgrade_required())?;
    // Refused before a ticket is spent when the instance is full.
    if state.order_watch.sockets() >= state.settings.push.buyer_streams_max {
        return Err(full());
    }
    let caller = tickets::redeem(&state.db, &ticket)
        .await?
        .ok_or_else(tickets::invalid_ticket)?;
    // The buyer's own order; an admin may follow any.
    let found = memberline_orders::store::orders::find(&state.db, id).await?;
    let order = found
        .filter(|o| caller.role == Role::Admin || caller.buyer_id().ok() == Some(o.buyer_id))
        .ok_or_else(not_found)?;
    let watcher = match state.order_watch.join(order.id, order.buyer_id) {
        Ok(watcher) => watcher,
        Err(Full::Instance) => return Err(full()),
        Err(Full::Buyer) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "at most {} order streams at once: close one first",
                    state.settings.push.buyer_streams_per_buyer
                ),
            ));
        }
    };
    let sessions = state.push_hub.sessions.clone();
    Ok(sized(ws).on_upgrade(move |socket| sessions.track_future(session(socket, state, watcher))))
}

/// 503 for a stream past the instance's cap.
fn full() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "this gateway holds all the order streams it may; try again",
    )
    .retry_after(1)
}

/// One socket: each view the watcher publishes that differs from the last one sent, until the
/// client leaves, is too slow or idle, or the gateway stops.
async fn session(socket: WebSocket, state: AppState, mut watcher: Watcher) {
    let push = state.settings.push.clone();
    let (mut sink, mut incoming) = socket.split();
    let write_timeout = Duration::from_secs(push.ping_interval_secs.max(1));
    let mut last_seen = None;
    let mut ping = tokio::time::interval(Duration::from_secs(push.ping_interval_secs));
    ping.tick().await;
    let idle = Duration::from_secs(push.idle_timeout_secs);
    let mut heard = Instant::now();
    // The view already read for another socket on this order is sent at once.
    watcher.views.mark_changed();
    let close = loop {
        let view = tokio::select! {
            _ = state.push_hub.closing.cancelled() => break Some((1001, "going away")),
            changed = watcher.views.changed() => match changed {
                Ok(()) => watcher.views.borrow_and_update().clone(),
                Err(_) => break Some((1011, "restarting")),
            },
            frame = incoming.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                Some(Ok(_)) => {
                    heard = Instant::now();
                    None
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
                None
            }
        };
        let Some(view) = view else {
            continue;
        };
        if last_seen.as_ref() == Some(&view.seen) {
            continue;
        }
        let sent =
            tokio::time::timeout(write_timeout, sink.send(Message::Text(view.message))).await;
        if !matches!(sent, Ok(Ok(()))) {
            break Some((TOO_SLOW, "too slow"));
        }
        last_seen = Some(view.seen);
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
