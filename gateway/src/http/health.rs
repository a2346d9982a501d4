//! Liveness, readiness and metrics.

use crate::state::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Serialize;
use std::time::Duration;

/// Always 200 while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`
    pub status: &'static str,
    pub database: bool,
    pub broker: bool,
    /// Whether this instance is bound to the push exchange (live WebSocket pushes). Not part
    /// of readiness: sockets catch up from the console feed while it is not.
    pub push: bool,
}

/// 200 when both PostgreSQL and RabbitMQ answer within 3 seconds, 503 otherwise. Purchases
/// keep working without the broker (events wait in the outbox); this tells the operator.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let limit = Duration::from_secs(3);
    let db = async {
        state
            .db
            .execute_raw(Statement::from_string(DbBackend::Postgres, "SELECT 1"))
            .await
            .is_ok()
    };
    // One kept connection, reopened only when lost: a probe every few seconds must not open
    // and close an AMQP connection each time.
    let broker = state.broker_probe.reachable();
    let (database, broker) = tokio::join!(
        async { tokio::time::timeout(limit, db).await.unwrap_or(false) },
        async { tokio::time::timeout(limit, broker).await.unwrap_or(false) },
    );
    let ready = database && broker;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            database,
            broker,
            push: state.push_hub.consuming(),
        }),
    )
}

/// Prometheus text: request counts and latencies, orders by method and outcome, relay counters,
/// and the outbox lag (rows waiting and the age of the oldest), read at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "OpenMetrics text format", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .set_outbox_lag(memberline_platform::outbox::lag(&state.db).await);
    (
        [(
            header::CONTENT_TYPE,
            memberline_platform::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}
