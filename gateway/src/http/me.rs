//! The caller's own account: profile, membership, passes, savings and ledgers.

use super::query::{self, ValidQuery};
use crate::account;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::membership::{MembershipView, membership_at};
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use memberline_schema::entities::notification;
use memberline_schema::ids::{BuyerId, OrderId, PlanId};
use memberline_schema::states::{LedgerKind, LedgerReason, NotificationKind};
use serde::{Deserialize, Serialize};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Me {
    pub user_id: BuyerId,
    pub name: String,
    pub level: LevelView,
    pub growth: i64,
    pub points: i64,
    pub balance_fen: i64,
    pub membership: MembershipView,
    pub passes: Vec<PassView>,
    pub purchase_count: i32,
    pub total_saved_fen: i64,
    pub total_saved_points: i64,
    pub is_promoter: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LevelView {
    pub id: i16,
    pub name: String,
    /// Percentage of the catalogue price this level pays (100 = no discount).
    pub discount_percent: i16,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PassView {
    pub id: i64,
    pub plan_id: PlanId,
    pub plan_name: String,
    pub uses_total: i32,
    pub uses_left: i32,
}

/// The caller's profile.
#[utoipa::path(get, path = "/v1/me", tag = "me", security(("bearer" = [])),
    responses(
        (status = 200, body = Me),
        (status = 401, description = "Missing, malformed or expired token (`missing_token`, `invalid_token`, `token_expired`), or `unknown_user`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Me>, ApiError> {
    let profile = account::profile(&state.db, caller.buyer_id()?)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown_user", "the token's user does not exist"))?;
    Ok(Json(Me::from(profile)))
}

impl From<account::Profile> for Me {
    fn from(profile: account::Profile) -> Self {
        let account::Profile {
            buyer: u,
            level: lvl,
            periods,
            passes,
        } = profile;
        Me {
            user_id: u.id,
            name: u.name,
            level: LevelView {
                id: lvl.id,
                name: lvl.name,
                discount_percent: lvl.discount_percent,
            },
            growth: u.growth,
            points: u.points,
            balance_fen: u.balance_fen,
            membership: membership_at(&periods, Utc::now()),
            passes: passes
                .into_iter()
                .map(|p| PassView {
                    id: p.id,
                    plan_id: p.plan_id,
                    plan_name: p.plan_name,
                    uses_total: p.uses_total,
                    uses_left: p.uses_left,
                })
                .collect(),
            purchase_count: u.purchase_count,
            total_saved_fen: u.total_saved_fen,
            total_saved_points: u.total_saved_points,
            is_promoter: u.is_promoter,
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Which ledger; both when absent.
    pub kind: Option<LedgerKind>,
    /// At most this many entries of each kind (1–200, default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
}

/// One signed ledger movement.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    /// `points` (amounts in points) or `balance` (amounts in fen).
    pub kind: LedgerKind,
    pub reason: LedgerReason,
    pub delta: i64,
    pub balance_after: i64,
    /// For a `reward_reversal`: reward points the buyer had already spent, which could not be
    /// taken back (the balance never goes below zero). 0 otherwise.
    pub shortfall: i64,
    pub order_id: Option<OrderId>,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Ledger {
    /// Newest first.
    pub entries: Vec<LedgerEntry>,
}

/// The caller's point and balance ledgers, newest first.
#[utoipa::path(get, path = "/v1/me/ledger", tag = "me", security(("bearer" = [])), params(LedgerQuery),
    responses(
        (status = 200, body = Ledger),
        (status = 400, description = "`invalid_query`: a bad query parameter", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn ledger(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<LedgerQuery>,
) -> Result<Json<Ledger>, ApiError> {
    let limit = query::limit(q.limit, 50, 200)?;
    let points = q.kind.is_none_or(|k| k == LedgerKind::Points);
    let balance = q.kind.is_none_or(|k| k == LedgerKind::Balance);
    let (points, balance) =
        account::ledgers(&state.db, caller.buyer_id()?, points, balance, limit).await?;
    let mut entries = ledger_entries(points, balance);
    entries.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(Json(Ledger { entries }))
}

/// Ledger rows as entries: the point ledger's, then the balance ledger's, each in its order.
pub fn ledger_entries(
    points: Vec<memberline_schema::entities::point_ledger::Model>,
    balance: Vec<memberline_schema::entities::balance_ledger::Model>,
) -> Vec<LedgerEntry> {
    let mut entries = Vec::with_capacity(points.len() + balance.len());
    entries.extend(points.into_iter().map(|r| LedgerEntry {
        id: r.id,
        kind: LedgerKind::Points,
        reason: r.reason,
        delta: r.delta,
        balance_after: r.balance_after,
        shortfall: r.shortfall,
        order_id: r.order_id,
        created_at: r.created_at,
    }));
    entries.extend(balance.into_iter().map(|r| LedgerEntry {
        id: r.id,
        kind: LedgerKind::Balance,
        reason: r.reason,
        delta: r.delta,
        balance_after: r.balance_after,
        shortfall: 0,
        order_id: r.order_id,
        created_at: r.created_at,
    }));
    entries
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only unread messages.
    pub unread: Option<bool>,
    /// At most this many (1-200, default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    pub id: i64,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    pub order_id: Option<OrderId>,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<notification::Model> for NotificationView {
    fn from(n: notification::Model) -> Self {
        Self {
            id: n.id,
            kind: n.kind,
            title: n.title,
            body: n.body,
            order_id: n.order_id,
            read_at: n.read_at,
            created_at: n.created_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Inbox {
    /// Newest first.
    pub notifications: Vec<NotificationView>,
    pub unread: u64,
}

/// The caller's inbox, newest first.
#[utoipa::path(get, path = "/v1/me/notifications", tag = "me", security(("bearer" = [])),
    params(NotificationQuery),
    responses(
        (status = 200, body = Inbox),
        (status = 400, description = "`invalid_query`: a bad query parameter", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn notifications(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<NotificationQuery>,
) -> Result<Json<Inbox>, ApiError> {
    let limit = query::limit(q.limit, 50, 200)?;
    let (rows, unread) =
        account::inbox(&state.db, caller.buyer_id()?, q.unread == Some(true), limit).await?;
    Ok(Json(Inbox {
        notifications: rows.into_iter().map(NotificationView::from).collect(),
        unread,
    }))
}

/// Marks one of the caller's messages read (idempotent). Someone else's is 404.
#[utoipa::path(post, path = "/v1/me/notifications/{id}/read", tag = "me", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Notification id")),
    responses(
        (status = 200, body = NotificationView),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 404, description = "`notification_not_found` (also for an id that is not a number)", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<axum::extract::Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<NotificationView>, ApiError> {
    let not_found = || ApiError::not_found("notification_not_found", "no such notification");
    let axum::extract::Path(id) = path.map_err(|_| not_found())?;
    let n = account::mark_read(&state.db, caller.buyer_id()?, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(n.into()))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/me/ledger", get(ledger))
        .route("/v1/me/notifications", get(notifications))
        .route(
            "/v1/me/notifications/{id}/read",
            axum::routing::post(mark_read),
        )
}
