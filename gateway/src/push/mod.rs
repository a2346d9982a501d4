//! Live push to WebSockets: every gateway instance consumes the push exchange through a queue
//! of its own ([`hub`]), so a console connected to any instance hears about an order paid
//! through any other; buyers follow their orders ([`buyer`]); merchant consoles ([`merchant`])
//! resume from the sequenced console feed,
//! the source of truth (pushes are best effort), with no gap and no duplicate. Browsers open
//! sockets with single-use [`tickets`], never with a long-lived token in a URL.

pub mod buyer;
pub mod hub;
pub mod merchant;
pub mod tickets;

pub use hub::{Hub, Pushed};

use crate::state::AppState;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::routing::{get, post};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/merchant/stream", get(merchant::stream))
        .route("/v1/merchant/stream-ticket", post(tickets::merchant_ticket))
        .route("/v1/orders/{id}/stream", get(buyer::stream))
        .route("/v1/me/stream-ticket", post(tickets::my_ticket))
}

/// A console or order stream carries small JSON messages out, and in only pongs, closes and
/// the occasional small message: a socket keeps an 8 KiB read buffer (the library's default is
/// 128 KiB), so that 10,000 open consoles fit in memory. A client message over 64 KiB is a
/// protocol error that drops the connection (the client reconnects and resumes).
pub fn sized(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
}
