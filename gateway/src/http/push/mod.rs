//! Live push to WebSockets: every gateway instance consumes the push exchange through a queue
//! of its own ([`hub`]), so a console connected to any instance hears about an order paid
//! through any other; buyers follow their orders ([`buyer`]); merchant consoles ([`merchant`])
//! resume from the sequenced console feed,
//! the source of truth (pushes are best effort), with no gap and no duplicate. Browsers open
//! sockets with single-use [`tickets`], never with a long-lived token in a URL.

pub mod buyer;
pub mod merchant;
mod socket;
pub mod tickets;

use crate::state::AppState;
use axum::Router;
use axum::routing::{get, post};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/merchant/stream", get(merchant::stream))
        .route("/v1/merchant/stream-ticket", post(tickets::merchant_ticket))
        .route("/v1/orders/{id}/stream", get(buyer::stream))
        .route("/v1/me/stream-ticket", post(tickets::my_ticket))
}
