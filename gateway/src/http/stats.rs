//! The dashboard (`GET /v1/admin/stats`): per day in the shop's time zone, sales by pay method,
//! refunds, new members, renewals, lapses and members active at the day's end, plus the
//! memberships expiring in the next 7 days. Read from the rollups the membership worker keeps
//! ([`memberline_orders::stats`]), never by scanning orders.

use super::query::ValidQuery;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{Days, NaiveDate, Utc};
use memberline_orders::stats::{self, Stats};
use serde::Deserialize;

/// The longest range one request may ask for, in days.
const MAX_DAYS: u64 = 366;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// First day (`YYYY-MM-DD`, the shop's calendar); 29 days before `to` when absent.
    #[param(value_type = Option<String>, format = Date)]
    pub from: Option<NaiveDate>,
    /// Last day, included; the shop's today when absent. At most 366 days after `from`.
    #[param(value_type = Option<String>, format = Date)]
    pub to: Option<NaiveDate>,
}

/// The dashboard from `from` to `to` (merchant or admin).
#[utoipa::path(get, path = "/v1/admin/stats", tag = "admin", security(("bearer" = [])), params(StatsQuery),
    responses(
        (status = 200, body = Stats),
        (status = 400, description = "`invalid_query`: a day that is not `YYYY-MM-DD`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not a merchant or admin", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_range`: `from` after `to`, or more than 366 days", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<StatsQuery>,
) -> Result<Json<Stats>, ApiError> {
    caller.require_staff("the dashboard")?;
    let tz = state.settings.shop.time_zone;
    let today = stats::day_of(Utc::now(), tz);
    let to = q.to.unwrap_or(today);
    let from = q
        .from
        .unwrap_or_else(|| to.checked_sub_days(Days::new(29)).unwrap_or(to));
    let invalid = || {
        ApiError::unprocessable(
            "invalid_range",
            format!("from is a day not after to, at most {MAX_DAYS} days before it"),
        )
    };
    if from > to
        || from
            .checked_add_days(Days::new(MAX_DAYS))
            .is_none_or(|end| end <= to)
    {
        return Err(invalid());
    }
    Ok(Json(stats::read(&state.db, tz, from, to, today).await?))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/stats", get(stats))
}
