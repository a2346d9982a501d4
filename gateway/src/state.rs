//! What every handler shares.

use crate::auth::Keys;
use crate::metrics::Metrics;
use crate::settings::Settings;
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
}
