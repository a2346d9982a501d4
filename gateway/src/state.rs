//! What every handler shares.

use crate::http::auth::Keys;
use axum::extract::FromRef;
use memberline_platform::Settings;
use memberline_platform::broker::Probe;
use memberline_platform::metrics::Metrics;
use memberline_schema::topology::Topology;
use sea_orm::DatabaseConnection;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub settings: Arc<Settings>,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    pub topology: Topology,
    /// The enabled payment providers.
    pub payments: memberline_orders::providers::Payments,
    /// The readiness probe's kept broker connection.
    pub broker_probe: Arc<Probe>,
    /// This instance's fan-out of the push exchange to its WebSockets.
    pub push_hub: crate::hub::Hub,
    /// This instance's one reader of the orders its buyers' streams follow, and their count.
    pub order_watch: crate::order_watch::OrderWatch,
    /// How writers wake the relay after a commit: in-process when this gateway embeds it
    /// (`relay.embedded`), otherwise through PostgreSQL's NOTIFY.
    pub wake: memberline_platform::outbox::Wake,
    /// The purchase lanes: balance, points and free purchases, sharing transactions when they
    /// arrive together.
    pub purchases: memberline_orders::Purchases,
    /// The notification lanes: verified payment notifications, sharing transactions when they
    /// arrive together.
    pub notifications: memberline_orders::notifications::Notifications,
    /// Requests being worked on: at most `http.max_in_flight` (see `http::shed`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

impl FromRef<AppState> for DatabaseConnection {
    fn from_ref(state: &AppState) -> DatabaseConnection {
        state.db.clone()
    }
}

impl FromRef<AppState> for Keys {
    fn from_ref(state: &AppState) -> Keys {
        state.keys.clone()
    }
}
