//! The order domain: every change of an order's state, for the gateway (placing, checkout,
//! cancel, refunds, grants, provider notifications) and the workers (expiry, reconciliation,
//! late refunds). Provider clients are a layer it calls ([`providers`]); its SQL lives in
//! [`store`]. It never talks to RabbitMQ: events go to the outbox.
//!
//! This layer speaks in [`OrderError`]s, never in HTTP: the gateway maps them to responses once.

pub mod adjust;
pub mod admin_refund;
pub mod cancel;
pub mod checkout;
mod error;
pub mod grant;
pub mod lifecycle;
pub mod notifications;
pub mod place;
pub mod providers;
pub mod purchases;
pub mod refunds;
pub mod remind;
pub mod rules;
pub mod settle;
pub mod stats;
pub mod store;
pub mod view;

pub use cancel::cancel;
pub use checkout::{ChannelChoice, Timing, checkout};
pub use error::OrderError;
pub use memberline_platform::idempotency::Answer;
pub use notifications::Notifications;
pub use place::PlaceOrder;
pub use purchases::Purchases;
pub use rules::ExpectedPrice;
pub use view::OrderView;
