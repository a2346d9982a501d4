//! Members as staff see them: found by id, name, phone or OpenID; one member's page with
//! their membership periods, passes, orders, ledgers, inbox and audit entries; their name and
//! phone edited; their balance or points adjusted by an admin with a reason.

use super::idempotency::{Idempotent, KEY_DOC, respond};
use super::me::{LedgerEntry, Me, NotificationView, ledger_entries};
use super::query::{self, ValidQuery};
use super::{CorrelationId, JsonValue, typed};
use crate::account;
use crate::http::admin::valid_name;
use crate::http::admin_actions::AuditEntry;
use crate::http::auth::{Caller, Role};
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use memberline_orders::grant::AdminRequest;
use memberline_orders::store::orders::OrderFilter;
use memberline_orders::store::{self, audit};
use memberline_orders::{OrderView, adjust};
use memberline_schema::entities::{membership_period, user, user_pass, wechat_identity};
use memberline_schema::ids::{BuyerId, OrderId, PlanId};
use memberline_schema::states::LedgerKind;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, Statement,
};
use serde::{Deserialize, Serialize};

type PathId<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

/// A member in a list.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MemberSummary {
    pub id: BuyerId,
    pub name: String,
    pub phone: Option<String>,
    pub balance_fen: i64,
    pub points: i64,
    pub growth: i64,
    pub level_id: i16,
    /// The end of their latest membership period; `null` when none (or permanent).
    pub membership_ends_at: Option<DateTime<Utc>>,
    pub permanent: bool,
    pub created_at: DateTime<Utc>,
}

const SUMMARY: &str = "SELECT u.id, u.name, u.phone, u.balance_fen, u.points, u.growth, \
        u.level_id, u.created_at, m.ends_at, coalesce(m.permanent, false) AS permanent \
    FROM users u LEFT JOIN LATERAL (SELECT max(ends_at) AS ends_at, bool_or(permanent) AS permanent \
        FROM membership_periods WHERE user_id = u.id AND removed_at IS NULL) m ON true";

fn summary(row: &sea_orm::QueryResult) -> Result<MemberSummary, sea_orm::DbErr> {
    let permanent: bool = row.try_get("", "permanent")?;
    Ok(MemberSummary {
        id: BuyerId(row.try_get("", "id")?),
        name: row.try_get("", "name")?,
        phone: row.try_get("", "phone")?,
        balance_fen: row.try_get("", "balance_fen")?,
        points: row.try_get("", "points")?,
        growth: row.try_get("", "growth")?,
        level_id: row.try_get("", "level_id")?,
        membership_ends_at: if permanent {
            None
        } else {
            row.try_get("", "ends_at")?
        },
        permanent,
        created_at: row.try_get("", "created_at")?,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MemberQuery {
    /// A buyer id, a phone number, an OpenID, or the start of a name (any case); every member
    /// when absent or blank. At most 128 characters.
    #[param(max_length = 128)]
    pub q: Option<String>,
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MemberPage {
    /// Newest first.
    pub members: Vec<MemberSummary>,
    pub next_cursor: Option<i64>,
}

/// `name` as a LIKE prefix pattern, its wildcards taken literally.
fn prefix_pattern(name: &str) -> String {
    let mut pattern = String::with_capacity(name.len() + 1);
    for c in name.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Members matching `q` (merchant or admin), newest first: by id, phone or OpenID exactly, or
/// by the start of their name; each way of finding them is an index lookup.
#[utoipa::path(get, path = "/v1/admin/members", tag = "members", security(("bearer" = [])),
    params(MemberQuery),
    responses(
        (status = 200, body = MemberPage),
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not staff", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<MemberQuery>,
) -> Result<Json<MemberPage>, ApiError> {
    caller.require_staff("finding members")?;
    let limit = query::limit(q.limit, 20, 100)?;
    let text = q.q.as_deref().map(str::trim).unwrap_or("");
    if text.chars().count() > 128 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "q is at most 128 characters",
        ));
    }
    let cursor = q.cursor.unwrap_or(i64::MAX);
    let (filter, values): (&str, Vec<sea_orm::Value>) = if text.is_empty() {
        ("u.id < $1", vec![cursor.into()])
    } else {
        let id = text.parse::<i64>().unwrap_or(-1);
        (
            "u.id < $1 AND u.id IN (SELECT id FROM users WHERE id = $2 \
                 UNION SELECT id FROM users WHERE phone = $3 \
                 UNION SELECT buyer_id FROM wechat_identities WHERE openid = $3 \
                 UNION SELECT id FROM users WHERE lower(name) LIKE $4)",
            vec![
                cursor.into(),
                id.into(),
                text.into(),
                prefix_pattern(text).into(),
            ],
        )
    };
    let n = values.len() + 1;
    let mut values = values;
    values.push(((limit + 1) as i64).into());
    let rows = state
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("{SUMMARY} WHERE {filter} ORDER BY u.id DESC LIMIT ${n}"),
            values,
        ))
        .await?;
    let mut members = rows.iter().map(summary).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = (members.len() as u64 > limit).then(|| {
        members.truncate(limit as usize);
        members.last().map_or(0, |m| m.id.0)
    });
    Ok(Json(MemberPage {
        members,
        next_cursor,
    }))
}

/// One of the member's WeChat identities.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WechatIdentityView {
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
}

/// A membership period, as it was granted and what became of it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PeriodView {
    pub order_id: OrderId,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub permanent: bool,
    /// Taken back by a refund or a revocation.
    pub removed_at: Option<DateTime<Utc>>,
}

/// A pass, used up, revoked or not.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PassHistory {
    pub order_id: OrderId,
    pub plan_id: PlanId,
    pub plan_name: String,
    pub uses_total: i32,
    pub uses_left: i32,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One member's page.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MemberDetail {
    pub member: MemberSummary,
    /// Level, membership as it stands, passes with uses left, totals.
    pub profile: Me,
    pub wechat: Vec<WechatIdentityView>,
    /// Every period, newest first, removed ones too.
    pub periods: Vec<PeriodView>,
    pub passes: Vec<PassHistory>,
    /// The newest 20.
    pub orders: Vec<OrderView>,
    /// The newest 50 of each.
    pub balance_ledger: Vec<LedgerEntry>,
    pub point_ledger: Vec<LedgerEntry>,
    /// The newest 20 messages.
    pub inbox: Vec<NotificationView>,
    /// The newest 20 entries about them.
    pub audit: Vec<AuditEntry>,
}

fn member_not_found(id: BuyerId) -> ApiError {
    ApiError::not_found("user_not_found", format!("no member {id}"))
}

async fn one_summary<C: ConnectionTrait>(conn: &C, id: BuyerId) -> Result<MemberSummary, ApiError> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("{SUMMARY} WHERE u.id = $1"),
            [id.into()],
        ))
        .await?
        .ok_or_else(|| member_not_found(id))?;
    Ok(summary(&row)?)
}

/// One member's page (merchant or admin).
#[utoipa::path(get, path = "/v1/admin/members/{id}", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Buyer id")),
    responses(
        (status = 200, body = MemberDetail),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not staff", body = crate::http::error::ErrorBody),
        (status = 404, description = "`user_not_found`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    path: PathId<BuyerId>,
) -> Result<Json<MemberDetail>, ApiError> {
    caller.require_staff("a member's page")?;
    let Path(id) = path.map_err(|_| ApiError::not_found("user_not_found", "no such member"))?;
    let member = one_summary(&state.db, id).await?;
    let profile = account::profile(&state.db, id)
        .await?
        .ok_or_else(|| member_not_found(id))?;
    let wechat = wechat_identity::Entity::find()
        .filter(wechat_identity::Column::BuyerId.eq(id))
        .order_by_asc(wechat_identity::Column::Appid)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|w| WechatIdentityView {
            appid: w.appid,
            openid: w.openid,
            unionid: w.unionid,
        })
        .collect();
    let periods = membership_period::Entity::find()
        .filter(membership_period::Column::UserId.eq(id))
        .order_by_desc(membership_period::Column::StartsAt)
        .order_by_desc(membership_period::Column::Id)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|p| PeriodView {
            order_id: p.order_id,
            starts_at: p.starts_at,
            ends_at: p.ends_at,
            permanent: p.permanent,
            removed_at: p.removed_at,
        })
        .collect();
    let passes = user_pass::Entity::find()
        .filter(user_pass::Column::UserId.eq(id))
        .order_by_desc(user_pass::Column::Id)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|p| PassHistory {
            order_id: p.order_id,
            plan_id: p.plan_id,
            plan_name: p.plan_name,
            uses_total: p.uses_total,
            uses_left: p.uses_left,
            revoked_at: p.revoked_at,
        })
        .collect();
    let filter = OrderFilter {
        buyer_id: Some(id),
        ..OrderFilter::default()
    };
    let (orders, _) = store::orders::page(&state.db, &filter, None, 20).await?;
    let (points, balance) = account::ledgers(&state.db, id, true, true, 50).await?;
    let (inbox, _) = account::inbox(&state.db, id, false, 20).await?;
    let (audit, _) = audit::page(&state.db, Some(id), None, 20).await?;
    Ok(Json(MemberDetail {
        member,
        profile: Me::from(profile),
        wechat,
        periods,
        passes,
        orders: orders.into_iter().map(OrderView::from).collect(),
        point_ledger: ledger_entries(points, Vec::new()),
        balance_ledger: ledger_entries(Vec::new(), balance),
        inbox: inbox.into_iter().map(NotificationView::from).collect(),
        audit: audit.into_iter().map(AuditEntry::from).collect(),
    }))
}

/// What to change in a member: only the fields sent.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberChange {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub name: Option<String>,
    /// 5-20 digits with an optional leading `+`; `null` clears it.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>, pattern = r"^\+?[0-9]{5,20}$")]
    pub phone: Option<Option<String>>,
}

/// Changes a member's name or phone (admin).
#[utoipa::path(patch, path = "/v1/admin/members/{id}", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Buyer id")),
    request_body = MemberChange,
    responses(
        (status = 200, body = MemberSummary),
        (status = 400, description = "`malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`user_not_found`", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = crate::http::error::ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    path: PathId<BuyerId>,
    JsonValue(body): JsonValue,
) -> Result<Json<MemberSummary>, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = path.map_err(|_| ApiError::not_found("user_not_found", "no such member"))?;
    let change: MemberChange = typed(body)?;
    let mut update = user::Entity::update_many().filter(user::Column::Id.eq(id));
    if let Some(name) = change.name {
        if !valid_name(&name) {
            return Err(ApiError::unprocessable(
                "invalid_field",
                "name must be 1-64 characters, not only whitespace, without control characters",
            ));
        }
        update = update.col_expr(user::Column::Name, name.trim().to_owned().into());
    }
    if let Some(phone) = change.phone {
        if let Some(p) = &phone {
            let digits = p.strip_prefix('+').unwrap_or(p);
            if !(5..=20).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ApiError::unprocessable(
                    "invalid_field",
                    "phone is 5-20 digits with an optional leading +",
                ));
            }
        }
        update = update.col_expr(user::Column::Phone, phone.into());
    }
    update = update.col_expr(user::Column::UpdatedAt, Utc::now().into());
    if update.exec(&state.db).await?.rows_affected == 0 {
        return Err(member_not_found(id));
    }
    Ok(Json(one_summary(&state.db, id).await?))
}

/// A balance or points adjustment.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    pub ledger: LedgerKind,
    /// Fen for `balance`, points for `points`; negative takes. 0 is refused
    /// (`nothing_to_adjust`).
    pub delta: i64,
    /// Why (kept in the audit log and told to the buyer): 1-200 characters, not only
    /// whitespace, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub reason: String,
}

/// What an adjustment wrote.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Adjusted {
    pub user_id: BuyerId,
    pub ledger: LedgerKind,
    pub delta: i64,
    /// The ledger's balance after it.
    pub balance_after: i64,
    /// The ledger entry.
    pub entry_id: i64,
    pub audit_id: i64,
    pub created_at: DateTime<Utc>,
}

/// Adjusts a member's balance or points by hand (admin): a ledger entry, never below zero, an
/// audit entry and a message to the buyer, all at once; idempotent per Idempotency-Key.
#[utoipa::path(post, path = "/v1/admin/members/{id}/adjustments", tag = "members", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Buyer id"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255,
         pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$", description = KEY_DOC)),
    request_body = AdjustmentBody,
    responses(
        (status = 201, body = Adjusted),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`, `malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`user_not_found`", body = crate::http::error::ErrorBody),
        (status = 409, description = "`adjustment_below_zero`: it would take more than the member has", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`, `idempotency_key_reused`, `nothing_to_adjust`: a delta of 0", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: retry with the same key", body = crate::http::error::ErrorBody),
    ))]
pub async fn adjust(
    State(state): State<AppState>,
    caller: Caller,
    CorrelationId(correlation_id): CorrelationId,
    path: PathId<BuyerId>,
    request: Idempotent,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = path.map_err(|_| ApiError::not_found("user_not_found", "no such member"))?;
    let key = request.key?;
    let req: AdjustmentBody = typed(request.body)?;
    if req.delta == 0 {
        return Err(ApiError::unprocessable(
            "nothing_to_adjust",
            "delta is not 0: positive adds, negative takes",
        ));
    }
    let cmd = AdminRequest {
        actor_id: caller.user_id,
        user_id: id,
        reason: super::admin_actions::reason(&req.reason)?,
        idempotency_key: key,
        request_hash: request.request_hash,
        correlation_id,
    };
    Ok(respond(
        adjust::adjust(&state.db, &cmd, req.ledger, req.delta).await?,
    ))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/members", get(search))
        .route("/v1/admin/members/{id}", get(detail).patch(update))
        .route("/v1/admin/members/{id}/adjustments", post(adjust))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_prefix_takes_wildcards_literally_and_ignores_case() {
        assert_eq!(prefix_pattern("Ada"), "ada%");
        assert_eq!(prefix_pattern("5%_\\"), "5\\%\\_\\\\%");
    }
}
