//! Operator endpoints (role `admin`).

use super::{JsonValue, typed};
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use memberline_schema::entities::{balance_ledger, point_ledger, user};
use sea_orm::{ActiveModelTrait, Set, TransactionTrait};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1-64 characters.
    pub name: String,
    /// Opening store balance in fen, >= 0.
    #[serde(default)]
    pub balance_fen: i64,
    /// Opening points, >= 0.
    #[serde(default)]
    pub points: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: i64,
    pub name: String,
    pub balance_fen: i64,
    pub points: i64,
    pub growth: i64,
    pub level_id: i16,
    pub created_at: DateTime<Utc>,
}

/// Creates a buyer with an opening balance and points. Opening amounts are written to the
/// ledgers too, so every balance equals the sum of its ledger.
#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", security(("bearer" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, body = UserView),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, description = "Not an admin", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`", body = crate::error::ErrorBody),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    JsonValue(body): JsonValue,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    caller.require(Role::Admin)?;
    let req: CreateUser = typed(body)?;
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "name must be 1-64 characters",
        ));
    }
    if req.balance_fen < 0 || req.points < 0 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "balance_fen and points must not be negative",
        ));
    }
    let txn = state.db.begin().await?;
    let now = Utc::now();
    let created = user::ActiveModel {
        name: Set(name),
        points: Set(req.points),
        balance_fen: Set(req.balance_fen),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    if req.balance_fen > 0 {
        balance_ledger::ActiveModel {
            user_id: Set(created.id),
            order_id: Set(None),
            reason: Set("opening_balance".to_owned()),
            delta: Set(req.balance_fen),
            balance_after: Set(req.balance_fen),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
    }
    if req.points > 0 {
        point_ledger::ActiveModel {
            user_id: Set(created.id),
            order_id: Set(None),
            reason: Set("opening_balance".to_owned()),
            delta: Set(req.points),
            balance_after: Set(req.points),
            flagged_excess: Set(0),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            id: created.id,
            name: created.name,
            balance_fen: created.balance_fen,
            points: created.points,
            growth: created.growth,
            level_id: created.level_id,
            created_at: created.created_at,
        }),
    ))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/users", post(create_user))
        .route("/v1/admin/dead-letters", axum::routing::get(dead_letters))
        .route("/v1/admin/dead-letters/replay", post(replay_dead_letters))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct DeadLetterQuery {
    /// `membership | ledger | notifier | savings`
    pub worker: String,
    /// At most this many (1-500, default 50).
    pub limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    pub worker: String,
    pub dead_letters: Vec<crate::dead_letters::DeadLetter>,
}

fn parse_worker(name: &str) -> Result<memberline_schema::topology::Worker, ApiError> {
    memberline_schema::topology::Worker::parse(name).ok_or_else(|| {
        ApiError::unprocessable(
            "unknown_worker",
            format!("worker must be membership, ledger, notifier or savings, not `{name}`"),
        )
    })
}

fn broker_unavailable(e: anyhow::Error) -> ApiError {
    tracing::warn!(error = %e, "dead-letter operation failed");
    ApiError::unavailable("the broker is unavailable; try again")
}

/// A worker's dead letters, oldest first, with the reason, attempts, last error and original
/// routing key. Listing leaves them in place.
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin", security(("bearer" = [])),
    params(DeadLetterQuery),
    responses(
        (status = 200, body = DeadLetterList),
        (status = 403, body = crate::error::ErrorBody),
        (status = 422, description = "`unknown_worker`", body = crate::error::ErrorBody),
        (status = 503, description = "Broker unavailable", body = crate::error::ErrorBody),
    ))]
pub async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<axum::extract::Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    caller.require(Role::Admin)?;
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let worker = parse_worker(&q.worker)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be 1-500",
        ));
    }
    let dead_letters = crate::dead_letters::list(
        state.settings.amqp.url.expose(),
        &state.topology,
        worker,
        limit,
    )
    .await
    .map_err(broker_unavailable)?;
    Ok(Json(DeadLetterList {
        worker: worker.as_str().to_owned(),
        dead_letters,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// `membership | ledger | notifier | savings`
    pub worker: String,
    /// Replay only this event; all dead letters when absent.
    pub event_id: Option<String>,
    /// Replay at most this many.
    pub limit: Option<u64>,
}

/// Moves dead letters back to the worker's queue. Replaying an event whose effect was already
/// applied changes nothing.
#[utoipa::path(post, path = "/v1/admin/dead-letters/replay", tag = "admin", security(("bearer" = [])),
    request_body = ReplayRequest,
    responses(
        (status = 200, body = crate::dead_letters::ReplayReport),
        (status = 403, body = crate::error::ErrorBody),
        (status = 422, description = "`unknown_worker`, `invalid_body`", body = crate::error::ErrorBody),
        (status = 503, description = "Broker unavailable", body = crate::error::ErrorBody),
    ))]
pub async fn replay_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    JsonValue(body): JsonValue,
) -> Result<Json<crate::dead_letters::ReplayReport>, ApiError> {
    caller.require(Role::Admin)?;
    let req: ReplayRequest = typed(body)?;
    let worker = parse_worker(&req.worker)?;
    let report = crate::dead_letters::replay(
        state.settings.amqp.url.expose(),
        &state.topology,
        worker,
        req.event_id.as_deref(),
        req.limit,
        |_, _| {},
    )
    .await
    .map_err(broker_unavailable)?;
    tracing::info!(
        worker = worker.as_str(),
        replayed = report.replayed,
        "Dead letters replayed"
    );
    Ok(Json(report))
}
