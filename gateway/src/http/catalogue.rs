//! The catalogue as admins edit it: plans and levels, each change written with its audit entry
//! (who, when, before and after) in one transaction. A plan that was ever sold is archived, never
//! deleted; a price change never touches an order already placed (orders keep their own copy),
//! and a buyer who sent the old `expected_price_*` gets `price_changed`. Buyers see a change at
//! their next `GET /v1/plans`. Merchants read; admins write.

use super::admin::valid_name;
use super::{JsonValue, typed};
use crate::http::auth::{Caller, Role};
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use memberline_orders::store::audit;
use memberline_schema::entities::{level, plan};
use memberline_schema::ids::PlanId;
use memberline_schema::states::{AuditAction, PayChannel, PayMethod, PlanKind};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

type PathId<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

/// A plan as admins see it: everything buyers see, plus the shelf, the archive and whether it
/// was ever sold.
#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct AdminPlan {
    pub id: PlanId,
    pub code: String,
    pub name: String,
    pub kind: PlanKind,
    pub duration_days: Option<i32>,
    pub uses: Option<i32>,
    pub original_price_fen: i64,
    pub price_fen: i64,
    pub price_points: Option<i64>,
    pub is_free: bool,
    pub on_shelf: bool,
    pub sort: i32,
    pub image_url: Option<String>,
    /// The pay methods that take it; `null`: every one the shop takes.
    #[schema(value_type = Option<Vec<super::orders::OrderPayMethod>>)]
    pub pay_methods: Option<Vec<String>>,
    /// The provider channels that take it; `null`: every one the shop takes.
    #[schema(value_type = Option<Vec<PayChannel>>)]
    pub channels: Option<Vec<String>>,
    /// Set once archived: off the shelf for good, kept for its orders.
    pub archived_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Whether any order names it (then it can only be archived).
    pub sold: bool,
}

impl AdminPlan {
    fn of(p: plan::Model, sold: bool) -> Self {
        Self {
            id: p.id,
            code: p.code,
            name: p.name,
            kind: p.kind,
            duration_days: p.duration_days,
            uses: p.uses,
            original_price_fen: p.original_price_fen,
            price_fen: p.price_fen,
            price_points: p.price_points,
            is_free: p.is_free,
            on_shelf: p.on_shelf,
            sort: p.sort,
            image_url: p.image_url,
            pay_methods: p.pay_methods,
            channels: p.channels,
            archived_at: p.archived_at,
            created_at: p.created_at,
            updated_at: p.updated_at,
            sold,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AdminPlanList {
    /// Shelf first, in display order, then off-shelf and archived plans.
    pub plans: Vec<AdminPlan>,
}

/// A new plan.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    /// 1-32 of `a-z`, `0-9`, `_`; unique; never changes.
    #[schema(pattern = "^[a-z0-9_]{1,32}$")]
    pub code: String,
    /// 1-64 characters, not only whitespace, no control characters.
    // The pattern is `valid_name` (admin.rs) in JSON Schema.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub name: String,
    pub kind: PlanKind,
    /// Membership plans only: days, 1 to 36,500 (a hundred years).
    #[schema(minimum = 1, maximum = 36500)]
    pub duration_days: Option<i32>,
    /// Passes only: uses, 1 to 100,000.
    #[schema(minimum = 1, maximum = 100000)]
    pub uses: Option<i32>,
    #[schema(minimum = 0)]
    pub original_price_fen: i64,
    /// At most `original_price_fen`; 0 for a free plan.
    #[schema(minimum = 0)]
    pub price_fen: i64,
    /// `null`: not sold for points.
    #[schema(minimum = 0)]
    pub price_points: Option<i64>,
    /// Taken with pay_method `free`, once per buyer; never changes.
    #[serde(default)]
    pub is_free: bool,
    /// On the shelf (default `true`).
    pub on_shelf: Option<bool>,
    #[serde(default)]
    pub sort: i32,
    /// `https://…`, `http://…` or a path on this site (`/…`), at most 500 characters, without
    /// whitespace.
    #[schema(
        max_length = 500,
        pattern = r"^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?|/([!-.0-~][!-~]*)?)$"
    )]
    pub image_url: Option<String>,
    /// The pay methods that take it (a copy counts once); `null` or absent: all the shop takes.
    #[schema(value_type = Option<Vec<super::orders::OrderPayMethod>>, min_items = 1)]
    pub pay_methods: Option<Vec<PayMethod>>,
    /// The provider channels that take it (a copy counts once); `null` or absent: all.
    #[schema(min_items = 1)]
    pub channels: Option<Vec<PayChannel>>,
}

/// What to change in a plan: only the fields sent change (`null` clears an optional one).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChange {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub name: Option<String>,
    /// A new kind, with the days or uses it needs (and `null` for the ones it does not have).
    /// Orders already placed keep the kind and terms they were sold with.
    pub kind: Option<PlanKind>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 36500)]
    pub duration_days: Option<Option<i32>>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 100000)]
    pub uses: Option<Option<i32>>,
    #[schema(minimum = 0)]
    pub original_price_fen: Option<i64>,
    #[schema(minimum = 0)]
    pub price_fen: Option<i64>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub price_points: Option<Option<i64>>,
    pub on_shelf: Option<bool>,
    pub sort: Option<i32>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>, max_length = 500, pattern = r"^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?|/([!-.0-~][!-~]*)?)$")]
    pub image_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<Vec<super::orders::OrderPayMethod>>, min_items = 1)]
    pub pay_methods: Option<Option<Vec<PayMethod>>>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<Vec<PayChannel>>, min_items = 1)]
    pub channels: Option<Option<Vec<PayChannel>>>,
}

impl NewPlan {
    /// The plan to add (id 0), created and updated `now`; 422 when it breaks a rule.
    pub fn plan(self, now: DateTime<Utc>) -> Result<plan::Model, ApiError> {
        let valid_code = (1..=32).contains(&self.code.len())
            && self
                .code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_code {
            return Err(invalid("code is 1-32 of a-z, 0-9 and _"));
        }
        let candidate = plan::Model {
            id: PlanId(0),
            code: self.code,
            name: named(&self.name)?,
            kind: self.kind,
            duration_days: self.duration_days,
            uses: self.uses,
            original_price_fen: self.original_price_fen,
            price_fen: self.price_fen,
            price_points: self.price_points,
            is_free: self.is_free,
            on_shelf: self.on_shelf.unwrap_or(true),
            sort: self.sort,
            image_url: self.image_url,
            created_at: now,
            pay_methods: names(self.pay_methods),
            channels: names(self.channels),
            archived_at: None,
            updated_at: now,
        };
        check_plan(&candidate)?;
        Ok(candidate)
    }
}

impl PlanChange {
    /// `before` with this change (its `updated_at` untouched); 422 when the result breaks a rule.
    pub fn apply(self, before: &plan::Model) -> Result<plan::Model, ApiError> {
        let mut after = before.clone();
        if let Some(name) = self.name {
            after.name = named(&name)?;
        }
        after.kind = self.kind.unwrap_or(after.kind);
        after.duration_days = self.duration_days.unwrap_or(after.duration_days);
        after.uses = self.uses.unwrap_or(after.uses);
        after.original_price_fen = self.original_price_fen.unwrap_or(after.original_price_fen);
        after.price_fen = self.price_fen.unwrap_or(after.price_fen);
        after.price_points = self.price_points.unwrap_or(after.price_points);
        after.on_shelf = self.on_shelf.unwrap_or(after.on_shelf);
        after.sort = self.sort.unwrap_or(after.sort);
        after.image_url = self.image_url.unwrap_or(after.image_url);
        if let Some(methods) = self.pay_methods {
            after.pay_methods = names(methods);
        }
        if let Some(channels) = self.channels {
            after.channels = names(channels);
        }
        check_plan(&after)?;
        Ok(after)
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_field", message)
}

/// The longest membership a plan sells, in days (a hundred years): the period's end stays a
/// date every worker can compute.
const MAX_DAYS: i32 = 36_500;
/// The most uses a pass has.
const MAX_USES: i32 = 100_000;

/// A plan's kind and its days or uses that do not go together.
fn terms(message: &str) -> ApiError {
    ApiError::unprocessable("plan_terms_invalid", message.to_owned())
}

/// A name as sent (the rule of `valid_name`, on what was sent), as stored: trimmed.
fn named(raw: &str) -> Result<String, ApiError> {
    if valid_name(raw) {
        Ok(raw.trim().to_owned())
    } else {
        Err(invalid(
            "name must be 1-64 characters, not only whitespace, without control characters",
        ))
    }
}

/// The rules the table's checks hold, said as a client can act on them.
fn check_plan(p: &plan::Model) -> Result<(), ApiError> {
    match (p.kind, p.duration_days, p.uses) {
        (PlanKind::Membership, Some(1..=MAX_DAYS), None) => {}
        (PlanKind::Membership, ..) => {
            return Err(terms(
                "a membership plan has duration_days (1 to 36,500) and no uses",
            ));
        }
        (PlanKind::Pass, None, Some(1..=MAX_USES)) => {}
        (PlanKind::Pass, ..) => {
            return Err(terms("a pass has uses (1 to 100,000) and no duration_days"));
        }
        (PlanKind::Permanent, None, None) => {}
        (PlanKind::Permanent, ..) => {
            return Err(terms("a permanent plan has neither duration_days nor uses"));
        }
    }
    if p.original_price_fen < 0 || p.price_fen < 0 {
        return Err(invalid("prices in fen are not negative"));
    }
    if p.price_fen > p.original_price_fen {
        return Err(ApiError::unprocessable(
            "plan_price_invalid",
            "price_fen is at most original_price_fen",
        ));
    }
    if p.price_points.is_some_and(|x| x < 0) {
        return Err(invalid("price_points must not be negative"));
    }
    if p.is_free && p.price_fen != 0 {
        return Err(ApiError::unprocessable(
            "plan_price_invalid",
            "a free plan's price_fen is 0",
        ));
    }
    if let Some(url) = &p.image_url
        && !(url.len() <= 500 && valid_image_url(url))
    {
        return Err(invalid(
            "image_url is an http(s) URL (a host name, a port, a path of printable ASCII) or a \
             path on this site, at most 500 characters",
        ));
    }
    for (name, list) in [("pay_methods", &p.pay_methods), ("channels", &p.channels)] {
        if list.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(format!(
                "{name} lists at least one, or is null for all"
            )));
        }
    }
    if p.pay_methods
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m == PayMethod::AdminGrant.as_str()))
    {
        return Err(invalid(
            "admin_grant is not a pay method a plan is sold for",
        ));
    }
    Ok(())
}

/// What the schema's `image_url` pattern says: `http(s)://host[:port][/path]` with a host of
/// letters, digits, dots and dashes, or a path on this site (`/…`, not `//…`); paths are
/// printable ASCII (anything else percent-encoded).
fn valid_image_url(url: &str) -> bool {
    let path = |p: &str| p.bytes().all(|b| (b'!'..=b'~').contains(&b));
    if let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        return !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && port.is_none_or(|p| {
                (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
            })
            && path(tail);
    }
    url.starts_with('/') && !url.starts_with("//") && path(url)
}

/// A list as stored: names, each once, in the order first given.
fn names<T: std::fmt::Display>(list: Option<Vec<T>>) -> Option<Vec<String>> {
    list.map(|l| {
        let mut names: Vec<String> = Vec::with_capacity(l.len());
        for name in l.into_iter().map(|x| x.to_string()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    })
}

async fn sold<C: ConnectionTrait>(conn: &C, plan_id: PlanId) -> Result<bool, ApiError> {
    Ok(memberline_schema::entities::order::Entity::find()
        .filter(memberline_schema::entities::order::Column::PlanId.eq(plan_id))
        .limit(1)
        .count(conn)
        .await?
        > 0)
}

/// Plan `id` locked for a change; 404 when there is none.
async fn lock_plan(txn: &DatabaseTransaction, id: PlanId) -> Result<plan::Model, ApiError> {
    plan::Entity::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| ApiError::not_found("plan_not_found", format!("no plan {id}")))
}

async fn record(
    txn: &DatabaseTransaction,
    caller: &Caller,
    action: AuditAction,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let reason = action.as_str().replace('_', " ");
    audit::record(
        txn,
        audit::Entry {
            actor_id: caller.user_id,
            action,
            user_id: None,
            order_id: None,
            reason: &reason,
            details,
        },
    )
    .await?;
    Ok(())
}

/// A unique-violation (a taken code or growth threshold) as 409 `code`.
fn taken(e: sea_orm::DbErr, code: &'static str, message: &str) -> ApiError {
    if matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    ) {
        ApiError::conflict(code, message.to_owned())
    } else {
        e.into()
    }
}

/// Every plan, archived ones too (merchant or admin).
#[utoipa::path(get, path = "/v1/admin/plans", tag = "catalogue", security(("bearer" = [])),
    responses(
        (status = 200, body = AdminPlanList),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not staff", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn list_plans(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AdminPlanList>, ApiError> {
    caller.require_staff("the catalogue")?;
    let plans = plan::Entity::find()
        .order_by_desc(plan::Column::OnShelf)
        .order_by_asc(plan::Column::ArchivedAt)
        .order_by_asc(plan::Column::Sort)
        .order_by_asc(plan::Column::Id)
        .all(&state.db)
        .await?;
    let sold: std::collections::HashSet<i64> = state
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT p.id FROM plans p WHERE EXISTS (SELECT 1 FROM orders o WHERE o.plan_id = p.id)",
        ))
        .await?
        .iter()
        .filter_map(|r| r.try_get::<i64>("", "id").ok())
        .collect();
    Ok(Json(AdminPlanList {
        plans: plans
            .into_iter()
            .map(|p| {
                let s = sold.contains(&p.id.0);
                AdminPlan::of(p, s)
            })
            .collect(),
    }))
}

/// Adds a plan (admin).
#[utoipa::path(post, path = "/v1/admin/plans", tag = "catalogue", security(("bearer" = [])),
    request_body = NewPlan,
    responses(
        (status = 201, body = AdminPlan),
        (status = 400, description = "`malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 409, description = "`plan_code_taken`", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`; `plan_terms_invalid`: the kind's days or uses missing or out of place; `plan_price_invalid`: a price above the original, or a priced free plan", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn create_plan(
    State(state): State<AppState>,
    caller: Caller,
    JsonValue(body): JsonValue,
) -> Result<(StatusCode, Json<AdminPlan>), ApiError> {
    caller.require(Role::Admin)?;
    let candidate = typed::<NewPlan>(body)?.plan(Utc::now())?;
    let mut active: plan::ActiveModel = candidate.into();
    active.id = sea_orm::NotSet;
    let txn = state.db.begin().await?;
    let created = active
        .insert(&txn)
        .await
        .map_err(|e| taken(e, "plan_code_taken", "another plan has this code"))?;
    let view = AdminPlan::of(created, false);
    record(
        &txn,
        &caller,
        AuditAction::PlanCreate,
        json!({"plan_id": view.id, "before": null, "after": &view}),
    )
    .await?;
    txn.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Changes a plan (admin): only the fields sent. Orders already placed keep what they were
/// sold at.
#[utoipa::path(patch, path = "/v1/admin/plans/{id}", tag = "catalogue", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Plan id")),
    request_body = PlanChange,
    responses(
        (status = 200, body = AdminPlan),
        (status = 400, description = "`malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`plan_not_found`", body = crate::http::error::ErrorBody),
        (status = 409, description = "`plan_archived`: an archived plan does not change", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`; `plan_terms_invalid`, `plan_price_invalid`: the plan as changed would break a rule of `POST /v1/admin/plans`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn update_plan(
    State(state): State<AppState>,
    caller: Caller,
    path: PathId<PlanId>,
    JsonValue(body): JsonValue,
) -> Result<Json<AdminPlan>, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = path.map_err(|_| ApiError::not_found("plan_not_found", "no such plan"))?;
    let change: PlanChange = typed(body)?;
    let txn = state.db.begin().await?;
    let before = lock_plan(&txn, id).await?;
    if before.archived_at.is_some() {
        return Err(ApiError::conflict(
            "plan_archived",
            "this plan is archived: add a new plan instead",
        ));
    }
    let mut after = change.apply(&before)?;
    if after == before {
        let was_sold = sold(&txn, id).await?;
        txn.commit().await?;
        return Ok(Json(AdminPlan::of(after, was_sold)));
    }
    after.updated_at = Utc::now();
    let mut active = plan::ActiveModel::from(after.clone()).reset_all();
    active.id = sea_orm::Unchanged(id);
    active.code = sea_orm::Unchanged(before.code.clone());
    active.created_at = sea_orm::Unchanged(before.created_at);
    let updated = active.update(&txn).await?;
    let was_sold = sold(&txn, id).await?;
    let before = AdminPlan::of(before, was_sold);
    let view = AdminPlan::of(updated, was_sold);
    record(
        &txn,
        &caller,
        AuditAction::PlanUpdate,
        json!({"plan_id": id, "before": before, "after": &view}),
    )
    .await?;
    txn.commit().await?;
    Ok(Json(view))
}

/// What became of a plan asked to be deleted.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PlanRemoved {
    /// `true`: deleted (it was never sold); `false`: archived.
    pub deleted: bool,
    /// The archived plan; `null` when deleted.
    pub plan: Option<AdminPlan>,
}

/// Takes a plan away (admin): deleted when it was never sold, archived otherwise (off the shelf
/// for good, kept for its orders). Asking again answers the same.
#[utoipa::path(delete, path = "/v1/admin/plans/{id}", tag = "catalogue", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Plan id")),
    responses(
        (status = 200, body = PlanRemoved),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`plan_not_found`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn remove_plan(
    State(state): State<AppState>,
    caller: Caller,
    path: PathId<PlanId>,
) -> Result<Json<PlanRemoved>, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = path.map_err(|_| ApiError::not_found("plan_not_found", "no such plan"))?;
    let txn = state.db.begin().await?;
    let before = lock_plan(&txn, id).await?;
    if before.archived_at.is_some() {
        txn.commit().await?;
        return Ok(Json(PlanRemoved {
            deleted: false,
            plan: Some(AdminPlan::of(before, true)),
        }));
    }
    if !sold(&txn, id).await? {
        plan::Entity::delete_by_id(id).exec(&txn).await?;
        record(
            &txn,
            &caller,
            AuditAction::PlanDelete,
            json!({"plan_id": id, "before": AdminPlan::of(before, false), "after": null}),
        )
        .await?;
        txn.commit().await?;
        return Ok(Json(PlanRemoved {
            deleted: true,
            plan: None,
        }));
    }
    let now = Utc::now();
    let mut active: plan::ActiveModel = before.clone().into();
    active.on_shelf = Set(false);
    active.archived_at = Set(Some(now));
    active.updated_at = Set(now);
    let archived = AdminPlan::of(active.update(&txn).await?, true);
    record(
        &txn,
        &caller,
        AuditAction::PlanArchive,
        json!({"plan_id": id, "before": AdminPlan::of(before, true), "after": &archived}),
    )
    .await?;
    txn.commit().await?;
    Ok(Json(PlanRemoved {
        deleted: false,
        plan: Some(archived),
    }))
}

/// A member level as admins see it.
#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct AdminLevel {
    pub id: i16,
    pub name: String,
    /// Growth from which a buyer is at this level.
    pub min_growth: i64,
    /// Percent of the catalogue price its members pay (100: no discount).
    pub discount_percent: i16,
    /// Percent of the reward points its members earn (100: as is).
    pub points_bonus_percent: i16,
    pub updated_at: DateTime<Utc>,
    /// Buyers at this level now.
    pub members: i64,
}

impl AdminLevel {
    fn of(l: level::Model, members: i64) -> Self {
        Self {
            id: l.id,
            name: l.name,
            min_growth: l.min_growth,
            discount_percent: l.discount_percent,
            points_bonus_percent: l.points_bonus_percent,
            updated_at: l.updated_at,
            members,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AdminLevelList {
    /// By growth threshold.
    pub levels: Vec<AdminLevel>,
}

/// A new level.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLevel {
    #[schema(minimum = 0, maximum = 32767)]
    pub id: i16,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub name: String,
    /// Unique among levels.
    #[schema(minimum = 0)]
    pub min_growth: i64,
    #[schema(minimum = 1, maximum = 100)]
    pub discount_percent: i16,
    /// Default 100.
    #[schema(minimum = 0, maximum = 1000)]
    pub points_bonus_percent: Option<i16>,
}

/// What to change in a level: only the fields sent change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LevelChange {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub name: Option<String>,
    #[schema(minimum = 0)]
    pub min_growth: Option<i64>,
    #[schema(minimum = 1, maximum = 100)]
    pub discount_percent: Option<i16>,
    #[schema(minimum = 0, maximum = 1000)]
    pub points_bonus_percent: Option<i16>,
}

impl NewLevel {
    /// The level to add, updated `now`; 422 when it breaks a rule.
    pub fn level(self, now: DateTime<Utc>) -> Result<level::Model, ApiError> {
        let candidate = level::Model {
            id: self.id,
            name: named(&self.name)?,
            min_growth: self.min_growth,
            discount_percent: self.discount_percent,
            points_bonus_percent: self.points_bonus_percent.unwrap_or(100),
            updated_at: now,
        };
        check_level(&candidate)?;
        Ok(candidate)
    }
}

impl LevelChange {
    /// `before` with this change (its `updated_at` untouched); 422 when the result breaks a rule.
    pub fn apply(self, before: &level::Model) -> Result<level::Model, ApiError> {
        let mut after = before.clone();
        if let Some(name) = self.name {
            after.name = named(&name)?;
        }
        after.min_growth = self.min_growth.unwrap_or(after.min_growth);
        after.discount_percent = self.discount_percent.unwrap_or(after.discount_percent);
        after.points_bonus_percent = self
            .points_bonus_percent
            .unwrap_or(after.points_bonus_percent);
        check_level(&after)?;
        Ok(after)
    }
}

fn check_level(l: &level::Model) -> Result<(), ApiError> {
    if l.id < 0 {
        return Err(invalid("id must not be negative"));
    }
    if l.min_growth < 0 {
        return Err(invalid("min_growth must not be negative"));
    }
    if l.id == 0 && l.min_growth != 0 {
        return Err(ApiError::unprocessable(
            "base_level_fixed",
            "level 0, where every buyer starts, has min_growth 0",
        ));
    }
    if !(1..=100).contains(&l.discount_percent) {
        return Err(invalid("discount_percent is 1-100 (100: no discount)"));
    }
    if !(0..=1000).contains(&l.points_bonus_percent) {
        return Err(invalid("points_bonus_percent is 0-1000"));
    }
    Ok(())
}

async fn members_at<C: ConnectionTrait>(conn: &C, level_id: i16) -> Result<i64, ApiError> {
    Ok(memberline_schema::entities::user::Entity::find()
        .filter(memberline_schema::entities::user::Column::LevelId.eq(level_id))
        .count(conn)
        .await? as i64)
}

/// Every level, by growth threshold, with how many buyers are at each (merchant or admin).
#[utoipa::path(get, path = "/v1/admin/levels", tag = "catalogue", security(("bearer" = [])),
    responses(
        (status = 200, body = AdminLevelList),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not staff", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn list_levels(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AdminLevelList>, ApiError> {
    caller.require_staff("the catalogue")?;
    let levels = level::Entity::find()
        .order_by_asc(level::Column::MinGrowth)
        .all(&state.db)
        .await?;
    let mut out = Vec::with_capacity(levels.len());
    for l in levels {
        let members = members_at(&state.db, l.id).await?;
        out.push(AdminLevel::of(l, members));
    }
    Ok(Json(AdminLevelList { levels: out }))
}

/// Adds a level (admin).
#[utoipa::path(post, path = "/v1/admin/levels", tag = "catalogue", security(("bearer" = [])),
    request_body = NewLevel,
    responses(
        (status = 201, body = AdminLevel),
        (status = 400, description = "`malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 409, description = "`level_taken`: another level has this id or growth threshold", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`; `base_level_fixed`: level 0 starts at growth 0", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn create_level(
    State(state): State<AppState>,
    caller: Caller,
    JsonValue(body): JsonValue,
) -> Result<(StatusCode, Json<AdminLevel>), ApiError> {
    caller.require(Role::Admin)?;
    let candidate = typed::<NewLevel>(body)?.level(Utc::now())?;
    let txn = state.db.begin().await?;
    let created = level::ActiveModel::from(candidate)
        .insert(&txn)
        .await
        .map_err(|e| {
            taken(
                e,
                "level_taken",
                "another level has this id or growth threshold",
            )
        })?;
    let view = AdminLevel::of(created, 0);
    record(
        &txn,
        &caller,
        AuditAction::LevelCreate,
        json!({"level_id": view.id, "before": null, "after": &view}),
    )
    .await?;
    txn.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Changes a level (admin): only the fields sent. Buyers move between levels as their growth
/// is next counted (a purchase's reward).
#[utoipa::path(patch, path = "/v1/admin/levels/{id}", tag = "catalogue", security(("bearer" = [])),
    params(("id" = i16, Path, description = "Level id")),
    request_body = LevelChange,
    responses(
        (status = 200, body = AdminLevel),
        (status = 400, description = "`malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`level_not_found`", body = crate::http::error::ErrorBody),
        (status = 409, description = "`level_taken`: another level has this growth threshold", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`; `base_level_fixed`: level 0 starts at growth 0", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn update_level(
    State(state): State<AppState>,
    caller: Caller,
    path: PathId<i16>,
    JsonValue(body): JsonValue,
) -> Result<Json<AdminLevel>, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = path.map_err(|_| ApiError::not_found("level_not_found", "no such level"))?;
    let change: LevelChange = typed(body)?;
    let txn = state.db.begin().await?;
    let before = level::Entity::find_by_id(id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("level_not_found", format!("no level {id}")))?;
    let mut after = change.apply(&before)?;
    let members = members_at(&txn, id).await?;
    if after == before {
        txn.commit().await?;
        return Ok(Json(AdminLevel::of(after, members)));
    }
    after.updated_at = Utc::now();
    let mut active = level::ActiveModel::from(after).reset_all();
    active.id = sea_orm::Unchanged(id);
    let updated = active
        .update(&txn)
        .await
        .map_err(|e| taken(e, "level_taken", "another level has this growth threshold"))?;
    let view = AdminLevel::of(updated, members);
    record(
        &txn,
        &caller,
        AuditAction::LevelUpdate,
        json!({"level_id": id, "before": AdminLevel::of(before, members), "after": &view}),
    )
    .await?;
    txn.commit().await?;
    Ok(Json(view))
}

/// Deletes a level no buyer is at (admin); level 0, where buyers start, stays.
#[utoipa::path(delete, path = "/v1/admin/levels/{id}", tag = "catalogue", security(("bearer" = [])),
    params(("id" = i16, Path, description = "Level id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`level_not_found`", body = crate::http::error::ErrorBody),
        (status = 409, description = "`level_in_use`: buyers are at it, or it is level 0", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn remove_level(
    State(state): State<AppState>,
    caller: Caller,
    path: PathId<i16>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = path.map_err(|_| ApiError::not_found("level_not_found", "no such level"))?;
    let txn = state.db.begin().await?;
    let before = level::Entity::find_by_id(id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("level_not_found", format!("no level {id}")))?;
    let members = members_at(&txn, id).await?;
    if id == 0 || members > 0 {
        return Err(ApiError::conflict(
            "level_in_use",
            if id == 0 {
                "level 0 is where every buyer starts".to_owned()
            } else {
                format!("{members} buyers are at this level")
            },
        ));
    }
    level::Entity::delete_by_id(id).exec(&txn).await?;
    record(
        &txn,
        &caller,
        AuditAction::LevelDelete,
        json!({"level_id": id, "before": AdminLevel::of(before, 0), "after": null}),
    )
    .await?;
    txn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/plans", get(list_plans).post(create_plan))
        .route(
            "/v1/admin/plans/{id}",
            patch(update_plan).delete(remove_plan),
        )
        .route("/v1/admin/levels", get(list_levels).post(create_level))
        .route(
            "/v1/admin/levels/{id}",
            patch(update_level).delete(remove_level),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_url_is_a_plain_http_url_or_a_path_on_this_site() {
        for ok in [
            "https://img.example.com/a.png",
            "http://cdn-1.example.com:8080/x/y?z=1",
            "https://example.com",
            "/static/vip.png",
            "/",
        ] {
            assert!(valid_image_url(ok), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "https://",
            "http://[::1]/x",
            "//evil.example.com/x",
            "https://a b.com/",
            "/a b.png",
            "/图片.png",
            "http://host:/x",
            "",
        ] {
            assert!(!valid_image_url(bad), "{bad}");
        }
    }
}
