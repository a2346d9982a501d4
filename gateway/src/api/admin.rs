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
    Router::new().route("/v1/admin/users", post(create_user))
}
