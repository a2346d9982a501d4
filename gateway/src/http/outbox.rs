//! Operator endpoints for the outbox's quarantine (role `admin`): the rows the relay gave up on,
//! and releasing one for another round of attempts (`memberline_platform::outbox::quarantine`).

use super::query::{self, ValidQuery};
use crate::http::auth::{Caller, Role};
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use memberline_platform::outbox::quarantine;
use memberline_schema::ids::EventId;
use memberline_schema::states::EventType;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QuarantineQuery {
    /// At most this many (1-500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
}

/// An outbox row the relay gave up on.
#[derive(Serialize, utoipa::ToSchema)]
pub struct QuarantinedEvent {
    /// The event id.
    pub id: EventId,
    pub event_type: EventType,
    pub routing_key: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub quarantined_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Quarantine {
    /// Oldest first.
    pub events: Vec<QuarantinedEvent>,
}

/// Outbox rows quarantined after `relay.quarantine_after_attempts` failed publishes, oldest
/// first, with the last error.
#[utoipa::path(get, path = "/v1/admin/outbox/quarantined", tag = "admin", security(("bearer" = [])),
    params(QuarantineQuery),
    responses(
        (status = 200, body = Quarantine),
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn quarantined(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<QuarantineQuery>,
) -> Result<Json<Quarantine>, ApiError> {
    caller.require(Role::Admin)?;
    let limit = query::limit(q.limit, 50, 500)?;
    let rows = quarantine::list(&state.db, limit).await?;
    Ok(Json(Quarantine {
        events: rows
            .into_iter()
            .map(|r| QuarantinedEvent {
                id: r.id,
                event_type: r.event_type,
                routing_key: r.routing_key,
                attempts: r.attempts,
                last_error: r.last_error,
                created_at: r.created_at,
                quarantined_at: r.quarantined_at,
            })
            .collect(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Released {
    pub id: EventId,
}

/// Releases a quarantined row: its attempts start again from zero and the relay publishes it
/// at once (or quarantines it again if it still fails).
#[utoipa::path(post, path = "/v1/admin/outbox/{id}/release", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The event id")),
    responses(
        (status = 200, body = Released),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`quarantined_event_not_found` (also for an id that is not a UUID)", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn release(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<EventId>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Released>, ApiError> {
    caller.require(Role::Admin)?;
    let not_found = || {
        ApiError::not_found(
            "quarantined_event_not_found",
            "no quarantined outbox row with that id",
        )
    };
    let Path(id) = path.map_err(|_| not_found())?;
    if !quarantine::release(&state.db, id).await? {
        return Err(not_found());
    }
    tracing::info!(event_id = %id, "Quarantined outbox row released");
    Ok(Json(Released { id }))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/outbox/quarantined", get(quarantined))
        .route("/v1/admin/outbox/{id}/release", post(release))
}
