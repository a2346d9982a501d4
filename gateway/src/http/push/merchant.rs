//! `GET /v1/merchant/stream`: a merchant console's WebSocket.
//!
//! The first message is `{type: "hello", seq, newest, heartbeat_secs}`: where the stream starts
//! (the `after` given, or the feed's last number for "live from now"), so a client can resume
//! exactly even if it drops before the first entry; the feed's newest number (lower than an
//! `after` only when the feed was reset); and how often a `{type: "heartbeat", seq}` comes, so
//! that a browser, which cannot see pings, can tell a dead connection from a quiet one. Every
//! other message is one console-feed entry, `{seq, type, kind, order_id, order_no, content,
//! order, at}` (`type`: `order.paid`, `order.reminded`, `order.refunded`; `kind`: 1, 2, 3 for
//! consoles written for the numeric kinds). `?after=<seq>` first sends every stored entry after
//! `seq`, then live ones; without it, live ones from now. The feed is the source of truth: a
//! push that continues the sequence is sent as it comes, anything else (a gap, a push this
//! instance missed while the broker was away, a lagging fan-out) is read from the feed. The
//! instance reads the feed's newest number every `push.feed_poll_ms` for all its sockets, and a
//! socket behind an entry committed an interval ago catches up; a catch-up that fails is tried
//! again an interval later. So there is no gap and no duplicate, across the switch from stored
//! to live and across reconnects.
//!
//! Each socket has a bounded queue of its own (`push.socket_queue`): a client that leaves it
//! full for a ping interval is sent close code 4008 "too slow" and resumes with `?after=`. The
//! server pings every `push.ping_interval_secs`; a client silent for `push.idle_timeout_secs`
//! is closed with 4000 "idle". A gateway shutting down closes with 1001.

use super::socket::{IDLE, TOO_SLOW, sized};
use super::tickets;
use crate::http::auth::MaybeCaller;
use crate::http::error::ApiError;
use crate::hub::Pushed;
use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use memberline_schema::push::ConsoleMessage;
use sea_orm::{DatabaseConnection, DbErr};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::debug;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Resume after this feed number (the last `seq` received); live from now without it.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// A single-use ticket (`POST /v1/merchant/stream-ticket`), for browsers.
    pub ticket: Option<String>,
}

/// The merchant console's live feed of paid orders, reminders and refunds (WebSocket). Refusals
/// are plain HTTP before the upgrade.
#[utoipa::path(get, path = "/v1/merchant/stream", tag = "push", security(("bearer" = [])),
    params(StreamQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`, `invalid_ticket` (unknown, expired or used)", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not a merchant or admin", body = crate::http::error::ErrorBody),
        (status = 426, description = "`upgrade_required`: not a WebSocket request", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    MaybeCaller(header): MaybeCaller,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "after must be 0 or more",
        ));
    }
    let caller = tickets::stream_caller(
        &state.db,
        header,
        q.ticket.as_deref(),
        ws.is_ok(),
        "/v1/merchant/stream-ticket",
    )
    .await?;
    caller.require_staff("the merchant stream")?;
    let ws = sized(ws.map_err(|_| tickets::upgrade_required())?);
    // Subscribed before the starting point is read: nothing falls between the two.
    let live = state.push_hub.subscribe();
    let newest = crate::hub::newest_feed_seq(&state.db).await?;
    let start = q.after.unwrap_or(newest);
    let sessions = state.push_hub.sessions.clone();
    Ok(ws.on_upgrade(move |socket| {
        sessions.track_future(session(socket, state, live, start, newest))
    }))
}

/// Why a session ended, and the close frame it sends (none when the client left).
enum End {
    Close(u16, &'static str),
    ClientLeft,
}

/// Shared between a session and its writer: the close frame to send now (dropping whatever is
/// still queued), and when a frame last went out (a client that reads is alive even while the
/// queue leaves no room for a ping).
struct Line {
    close: tokio::sync::watch::Sender<Option<(u16, &'static str)>>,
    wrote: std::sync::Mutex<Instant>,
}

/// One socket: a `hello` with the starting point, stored entries after `last`, then live ones,
/// until the client leaves, is too slow or idle, or the gateway stops.
async fn session(
    socket: WebSocket,
    state: AppState,
    mut live: broadcast::Receiver<Arc<Pushed>>,
    mut last: i64,
    newest: i64,
) {
    let push = state.settings.push.clone();
    let (sink, mut incoming) = socket.split();
    let (queue, pending) = mpsc::channel::<Message>(push.socket_queue);
    let patience = Duration::from_secs(push.ping_interval_secs);
    let line = Arc::new(Line {
        close: tokio::sync::watch::channel(None).0,
        wrote: std::sync::Mutex::new(Instant::now()),
    });
    let writer = tokio::spawn(write(sink, pending, line.clone(), patience));
    let send_text = |text: Utf8Bytes| {
        let queue = queue.clone();
        async move {
            // A full queue is waited on for at most a ping interval: a healthy client drains
            // it, a stuck one is closed. Only then is a timer set: a push to 10,000 consoles
            // would otherwise set and cancel 10,000 of them.
            match queue.try_send(Message::Text(text)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
                Err(mpsc::error::TrySendError::Full(message)) => {
                    tokio::time::timeout(patience, queue.send(message))
                        .await
                        .map_err(|_| ())?
                        .map_err(|_| ())
                }
            }
        }
    };
    let send = |m: Value| send_text(m.to_string().into());
    // Where this stream starts, so a client that connected "live from now" and drops before
    // the first entry can still resume exactly.
    let hello = json!({
        "type": "hello",
        "seq": last,
        "newest": newest,
        "heartbeat_secs": push.ping_interval_secs,
    });
    if send(hello).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(patience);
    ping.tick().await;
    let mut settled = state.push_hub.settled();
    let idle = Duration::from_secs(push.idle_timeout_secs);
    let mut heard = Instant::now();
    // More stored entries wait than one page: the next turn sends the next page (so closes,
    // shutdown and pings are noticed in between).
    let mut behind = true;
    // When a catch-up failed (the database busy or away), when to try it again: nothing else
    // may come to wake this socket.
    let retry_every = Duration::from_millis(push.feed_poll_ms);
    let mut retry: Option<Instant> = None;
    let end = loop {
        let catch_up_now = tokio::select! {
            _ = state.push_hub.closing.cancelled() => break End::Close(1001, "going away"),
            _ = std::future::ready(()), if behind => true,
            _ = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => true,
            // Entries committed a poll interval ago that never came as pushes.
            changed = settled.changed() => match changed {
                Ok(()) => *settled.borrow_and_update() > last,
                Err(_) => break End::Close(1011, "restarting"),
            },
            pushed = live.recv() => {
                let seq = match &pushed {
                    Ok(p) if p.is_console() => p.body["seq"].as_i64(),
                    Ok(_) => continue,
                    // Fell behind the fan-out: the feed has everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => break End::Close(1011, "restarting"),
                };
                match (seq, pushed) {
                    (Some(seq), _) if seq <= last => false,
                    (Some(seq), Ok(p)) if seq == last + 1 && !behind => {
                        match p.console_message.clone() {
                            Some(text) => {
                                if send_text(text).await.is_err() {
                                    break End::Close(TOO_SLOW, "too slow");
                                }
                                last = seq;
                                false
                            }
                            None => true,
                        }
                    }
                    _ => true,
                }
            }
            frame = incoming.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::ClientLeft,
                Some(Ok(_)) => {
                    heard = Instant::now();
                    false
                }
            },
            _ = ping.tick() => {
                let wrote = *line.wrote.lock().unwrap_or_else(|p| p.into_inner());
                if heard.elapsed() > idle && wrote.elapsed() > idle {
                    break End::Close(IDLE, "idle");
                }
                // A queue with messages waiting keeps the connection busy anyway; the ping
                // and the heartbeat (the ping a browser's script can see) go out once there is
                // room.
                let _ = queue.try_send(Message::Ping(Vec::new().into()));
                let heartbeat = json!({"type": "heartbeat", "seq": last});
                let _ = queue.try_send(Message::Text(heartbeat.to_string().into()));
                false
            }
        };
        if catch_up_now {
            match catch_up_page(&state.db, &mut last, &send).await {
                Ok(more) => {
                    behind = more;
                    retry = None;
                }
                Err(CatchUp::TooSlow) => break End::Close(TOO_SLOW, "too slow"),
                Err(CatchUp::Database(e)) => {
                    debug!(error = %e, "Feed catch-up failed; trying again in an interval");
                    behind = false;
                    retry = Some(Instant::now() + retry_every);
                }
            }
        }
    };
    if let End::Close(code, reason) = end {
        // The writer drops what is queued and sends this frame first.
        let _ = line.close.send(Some((code, reason)));
    }
    drop(queue);
    let _ = tokio::time::timeout(Duration::from_secs(12), writer).await;
}

enum CatchUp {
    TooSlow,
    Database(DbErr),
}

/// Sends the next page of stored entries after `last`, moving `last` along; `true` when more
/// wait.
async fn catch_up_page<F, Fut>(
    db: &DatabaseConnection,
    last: &mut i64,
    send: &F,
) -> Result<bool, CatchUp>
where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = Result<(), ()>>,
{
    const PAGE: i64 = 200;
    let entries = crate::hub::feed_after(db, *last, PAGE)
        .await
        .map_err(CatchUp::Database)?;
    let n = entries.len() as i64;
    for (seq, kind, payload, at) in entries {
        send(json!(ConsoleMessage::of(seq, &kind, &payload, json!(at))))
            .await
            .map_err(|()| CatchUp::TooSlow)?;
        *last = seq;
    }
    Ok(n == PAGE)
}

/// Writes queued frames to the socket. Told to close (even while a write is waiting on the
/// client), it drops what is queued and sends that close frame; a write the client leaves
/// stuck for a ping interval is "too slow" (4008). The frame reaches the client after what it
/// already has, once it reads again (or the socket goes after another 10 s).
async fn write(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut pending: mpsc::Receiver<Message>,
    line: Arc<Line>,
    patience: Duration,
) {
    let mut close = line.close.subscribe();
    let frame: Option<(u16, &'static str)> = loop {
        let message = tokio::select! {
            biased;
            _ = close.changed() => break *close.borrow(),
            next = pending.recv() => match next {
                Some(message) => message,
                None => break None,
            },
        };
        // Most writes complete at once; a timer is set only for one the client holds up.
        let mut send = std::pin::pin!(sink.send(message));
        let sent = match futures::poll!(send.as_mut()) {
            std::task::Poll::Ready(sent) => Ok(sent),
            std::task::Poll::Pending => tokio::select! {
                biased;
                _ = close.changed() => break *close.borrow(),
                sent = tokio::time::timeout(patience, send) => sent,
            },
        };
        match sent {
            Ok(Ok(())) => {
                *line.wrote.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            }
            Ok(Err(_)) => break None,
            Err(_) => break Some((TOO_SLOW, "too slow")),
        }
    };
    if let Some((code, reason)) = frame {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}
