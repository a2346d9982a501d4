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
    let broker = async {
        match lapin::Connection::connect(
            state.settings.amqp.url.expose(),
            lapin::ConnectionProperties::default(),
        )
        .await
        {
            Ok(conn) => {
                let _ = conn.close(200, "readiness probe".into()).await;
                true
            }
            Err(_) => false,
        }
    };
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
        }),
    )
}

/// Prometheus text: request counts and latencies, orders by method and outcome, relay counters,
/// and the outbox lag (rows waiting and the age of the oldest), read at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let lag = state
        .db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*)::bigint AS waiting, \
             COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS oldest \
             FROM outbox WHERE published_at IS NULL",
        ))
        .await;
    let (waiting, oldest) = match lag {
        Ok(Some(row)) => (
            row.try_get::<i64>("", "waiting").unwrap_or(-1) as f64,
            row.try_get::<f64>("", "oldest").unwrap_or(-1.0),
        ),
        _ => (-1.0, -1.0),
    };
    let body = state.metrics.render(&[
        (
            "memberline_outbox_unpublished",
            "Outbox rows committed but not yet confirmed by the broker (-1: database unreachable).",
            waiting,
        ),
        (
            "memberline_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row, in seconds.",
            oldest,
        ),
    ]);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}
