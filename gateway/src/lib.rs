//! The Memberline gateway: the HTTP surface ([`http`]: the REST API, provider callbacks, the
//! WebSocket endpoints and the pages) over the order domain (`memberline-orders`), this
//! instance's push fan-out ([`hub`]) and order watcher ([`order_watch`]), the buyer's membership
//! as read ([`membership`]), and the process that runs them ([`app`]). Consumers of the events
//! live in `memberline-workers`.

pub mod account;
pub mod app;
pub mod console_tail;
pub mod http;
pub mod hub;
pub mod identity;
pub mod membership;
pub mod order_watch;
pub mod seed;
pub mod staff;
pub mod state;

pub use app::Application;
