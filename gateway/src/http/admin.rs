//! Operator endpoints (role `admin`).

use super::query::{self, ValidQuery};
use super::{JsonValue, typed};
use crate::http::auth::{Caller, Role};
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use memberline_schema::entities::{balance_ledger, point_ledger, user};
use memberline_schema::ids::BuyerId;
use memberline_schema::states::LedgerReason;
use memberline_schema::topology::Worker;
use sea_orm::{ActiveModelTrait, Set, TransactionTrait};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1-64 characters, not only whitespace, no control characters; stored without the
    /// whitespace around it.
    // The pattern is `valid_name` in JSON Schema: no control character (Unicode Cc), and one
    // character that is neither a control character nor whitespace (Unicode White_Space).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub name: String,
    /// Opening store balance in fen.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub balance_fen: i64,
    /// Opening points.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub points: i64,
}

/// The rule `CreateUser::name` documents. Control characters are refused because PostgreSQL
/// cannot store NUL in text and the others only garble a name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.chars().count())
        && !name.chars().any(char::is_control)
        && name.chars().any(|c| !c.is_whitespace())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: BuyerId,
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
        (status = 400, description = "`malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    JsonValue(body): JsonValue,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    caller.require(Role::Admin)?;
    let req: CreateUser = typed(body)?;
    if !valid_name(&req.name) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "name must be 1-64 characters, not only whitespace, without control characters",
        ));
    }
    let name = req.name.trim().to_owned();
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
            reason: Set(LedgerReason::OpeningBalance),
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
            reason: Set(LedgerReason::OpeningBalance),
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
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Whose dead letters to list; every worker's when absent.
    // Text, not `Worker`, so that a name that is not a worker is 422 `unknown_worker` (README)
    // rather than 400 `invalid_query`.
    #[param(value_type = Option<WorkerName>)]
    pub worker: Option<String>,
    /// At most this many (1-500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
}

/// A worker's name in the OpenAPI document: exactly the names `Worker::parse` accepts.
pub struct WorkerName;

impl utoipa::PartialSchema for WorkerName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("A worker, named by its queue."))
            .enum_values(Some(Worker::ALL.iter().map(|w| w.as_str())))
            .into()
    }
}

impl utoipa::ToSchema for WorkerName {
    fn name() -> std::borrow::Cow<'static, str> {
        "Worker".into()
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    /// The worker asked for; `null` when every worker's dead letters are listed.
    #[schema(value_type = Option<WorkerName>)]
    pub worker: Option<String>,
    pub dead_letters: Vec<memberline_platform::dead_letters::DeadLetter>,
}

/// The worker `name` names; 422 `unknown_worker` otherwise.
pub fn parse_worker(name: &str) -> Result<Worker, ApiError> {
    Worker::parse(name).ok_or_else(|| {
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

/// A worker's dead letters (or every worker's, worker by worker, when `worker` is absent), oldest
/// first, each naming its worker, with the reason, attempts, last error and original routing key.
/// Listing leaves them in place. `limit` bounds the whole list.
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin", security(("bearer" = [])),
    params(DeadLetterQuery),
    responses(
        (status = 200, body = DeadLetterList),
        (status = 400, description = "`invalid_query`: a bad query parameter", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 422, description = "`unknown_worker`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the broker is unavailable", body = crate::http::error::ErrorBody),
    ))]
pub async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<DeadLetterQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    caller.require(Role::Admin)?;
    let worker = q.worker.as_deref().map(parse_worker).transpose()?;
    let limit = query::limit(q.limit, 50, 500)? as usize;
    let workers = match worker {
        Some(w) => vec![w],
        None => Worker::ALL.to_vec(),
    };
    let mut dead_letters = Vec::new();
    for w in workers {
        let room = limit - dead_letters.len();
        if room == 0 {
            break;
        }
        dead_letters.extend(
            memberline_platform::dead_letters::list(
                state.settings.amqp.url.expose(),
                &state.topology,
                w,
                room,
            )
            .await
            .map_err(broker_unavailable)?,
        );
    }
    Ok(Json(DeadLetterList {
        worker: worker.map(|w| w.as_str().to_owned()),
        dead_letters,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Whose dead letters to replay.
    // Text, not `Worker`, so that a name that is not a worker is 422 `unknown_worker`.
    #[schema(value_type = WorkerName)]
    pub worker: String,
    /// Replay only this event; all dead letters when absent.
    pub event_id: Option<String>,
    /// Replay at most this many.
    // An i64 rather than a u64: the document's integers are int64, so the largest limit it
    // allows is i64::MAX; a negative one is refused by hand.
    #[schema(minimum = 0)]
    pub limit: Option<i64>,
}

/// Moves dead letters back to the worker's queue. Replaying an event whose effect was already
/// applied changes nothing.
#[utoipa::path(post, path = "/v1/admin/dead-letters/replay", tag = "admin", security(("bearer" = [])),
    request_body = ReplayRequest,
    responses(
        (status = 200, body = memberline_platform::dead_letters::ReplayReport),
        (status = 400, description = "`malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`unknown_worker`, `invalid_field`, `invalid_body`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the broker is unavailable", body = crate::http::error::ErrorBody),
    ))]
pub async fn replay_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    JsonValue(body): JsonValue,
) -> Result<Json<memberline_platform::dead_letters::ReplayReport>, ApiError> {
    caller.require(Role::Admin)?;
    let req: ReplayRequest = typed(body)?;
    let worker = parse_worker(&req.worker)?;
    let limit = req
        .limit
        .map(u64::try_from)
        .transpose()
        .map_err(|_| ApiError::unprocessable("invalid_field", "limit must not be negative"))?;
    let report = memberline_platform::dead_letters::replay(
        state.settings.amqp.url.expose(),
        &state.topology,
        worker,
        req.event_id.as_deref(),
        limit,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_to_64_characters_not_blank_and_without_control_characters() {
        assert!(valid_name("Ada"));
        assert!(valid_name(" Ada "));
        assert!(valid_name(&"é".repeat(64)));
        assert!(!valid_name(""));
        assert!(!valid_name(" \u{3000}"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name("Ada\0"));
        assert!(!valid_name("A\tda"));
    }
}
