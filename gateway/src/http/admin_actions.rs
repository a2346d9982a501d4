//! Admin acts on orders and memberships, each audited and each idempotent per
//! Idempotency-Key: refunds, membership grants and revocations, and the audit log itself.

use super::idempotency::{Idempotent, KEY_DOC, respond};
use super::query::{self, ValidQuery};
use super::{CorrelationId, typed};
use crate::http::auth::{Caller, Role};
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use memberline_orders::store::audit;
use memberline_schema::ids::{BuyerId, OrderId, PlanId};

use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use memberline_orders::admin_refund::{self, RefundOrder};
use memberline_orders::grant::{self, AdminRequest};
use memberline_schema::states::AuditAction;
use serde::{Deserialize, Serialize};

type PathId<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

/// Body of a refund or a revocation.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why (kept in the audit log, shown to the buyer for a refund): 1-200 characters, not only
    /// whitespace, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub reason: String,
}

/// Body of a grant.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// The plan to grant (any catalogue plan but a free one, on shelf or not).
    pub plan_id: PlanId,
    /// Why (kept in the audit log): 1-200 characters, not only whitespace, no control
    /// characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub reason: String,
}

/// A reason as stored: trimmed, 1-200 characters, no control characters (the schema's pattern,
/// as for user names).
pub fn reason(raw: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    if (1..=200).contains(&trimmed.chars().count()) && !trimmed.chars().any(char::is_control) {
        Ok(trimmed.to_owned())
    } else {
        Err(ApiError::unprocessable(
            "invalid_field",
            "reason must be 1-200 characters without control characters",
        ))
    }
}

/// Refunds a paid order in full. Balance and points go back to the buyer with a ledger entry
/// (free and granted orders have nothing to give back); WeChat / Alipay orders are refunded
/// through the provider. The order becomes `refunded` and every effect of its purchase is
/// reversed by the workers (`order.refunded.v1`): membership time, pass uses, reward points and
/// growth, savings, with an inbox message for the buyer.
#[utoipa::path(post, path = "/v1/admin/orders/{id}/refund", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255,
         pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$", description = KEY_DOC)),
    request_body = ReasonBody,
    responses(
        (status = 200, description = "Refunded", body = memberline_orders::OrderView),
        (status = 202, description = "`refund_pending`: the provider has not confirmed yet; its notification or the payment lifecycle job finishes it (asking again with the same refund number)", body = memberline_orders::OrderView),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`, `malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`order_not_found`", body = crate::http::error::ErrorBody),
        (status = 409, description = "`order_not_refundable`: the order is not paid (pending, closed, being refunded or refunded)", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`, `idempotency_key_reused`", body = crate::http::error::ErrorBody),
        (status = 502, description = "`refund_failed`: the provider refused or abandoned the refund (the order is paid again, flagged for an operator); `provider_unavailable`: its provider is not enabled", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy; retry with the same key", body = crate::http::error::ErrorBody),
    ))]
pub async fn refund_order(
    State(state): State<AppState>,
    caller: Caller,
    path: PathId<OrderId>,
    request: Idempotent,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = path.map_err(|_| ApiError::not_found("order_not_found", "no such order"))?;
    let key = request.key?;
    let (request_hash, body) = (request.request_hash, request.body);
    let req: ReasonBody = typed(body)?;
    let cmd = RefundOrder {
        actor_id: caller.user_id,
        order_id: id,
        reason: reason(&req.reason)?,
        idempotency_key: key,
        request_hash,
    };
    let recheck_after =
        chrono::Duration::seconds(state.settings.payments.reconcile_after_secs as i64);
    Ok(respond(
        admin_refund::refund(&state.db, &state.payments, recheck_after, &cmd).await?,
    ))
}

/// Grants a plan to a buyer: a zero-amount order with `pay_method: admin_grant` that flows
/// through `order.paid.v1` like a purchase (a membership stacks after the current one, a pass
/// is added) but earns no reward points and counts as no purchase.
#[utoipa::path(put, path = "/v1/admin/users/{id}/membership", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255,
         pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$", description = KEY_DOC)),
    request_body = GrantBody,
    responses(
        (status = 201, description = "Granted: the paid `admin_grant` order", body = memberline_orders::OrderView),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`, `malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`user_not_found`, `plan_not_found`", body = crate::http::error::ErrorBody),
        (status = 409, description = "`already_permanent`", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`, `pay_method_not_allowed` (a free plan), `idempotency_key_reused`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy; retry with the same key", body = crate::http::error::ErrorBody),
    ))]
pub async fn grant_membership(
    State(state): State<AppState>,
    caller: Caller,
    CorrelationId(correlation_id): CorrelationId,
    path: PathId<BuyerId>,
    request: Idempotent,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = path.map_err(|_| ApiError::not_found("user_not_found", "no such user"))?;
    let key = request.key?;
    let (request_hash, body) = (request.request_hash, request.body);
    let req: GrantBody = typed(body)?;
    let cmd = AdminRequest {
        actor_id: caller.user_id,
        user_id: id,
        reason: reason(&req.reason)?,
        idempotency_key: key,
        request_hash,
        correlation_id,
    };
    Ok(respond(grant::grant(&state.db, &cmd, req.plan_id).await?))
}

/// Ends a buyer's membership now: the running period ends, later ones are removed, a permanent
/// membership stops (passes are kept). Applied by the membership worker
/// (`membership.revoked.v1`), so `GET /v1/me` shows it moments later.
#[utoipa::path(delete, path = "/v1/admin/users/{id}/membership", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255,
         pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$", description = KEY_DOC)),
    request_body = ReasonBody,
    responses(
        (status = 202, description = "Accepted: `{user_id, audit_id, revoked_at, status}`", body = RevokeAccepted),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`, `malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 404, description = "`user_not_found`", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_body`, `idempotency_key_reused`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy; retry with the same key", body = crate::http::error::ErrorBody),
    ))]
pub async fn revoke_membership(
    State(state): State<AppState>,
    caller: Caller,
    CorrelationId(correlation_id): CorrelationId,
    path: PathId<BuyerId>,
    request: Idempotent,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = path.map_err(|_| ApiError::not_found("user_not_found", "no such user"))?;
    let key = request.key?;
    let (request_hash, body) = (request.request_hash, request.body);
    let req: ReasonBody = typed(body)?;
    let cmd = AdminRequest {
        actor_id: caller.user_id,
        user_id: id,
        reason: reason(&req.reason)?,
        idempotency_key: key,
        request_hash,
        correlation_id,
    };
    Ok(respond(grant::revoke(&state.db, &cmd).await?))
}

/// The answer to a revocation.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RevokeAccepted {
    pub user_id: BuyerId,
    /// The audit-log entry.
    pub audit_id: i64,
    pub revoked_at: DateTime<Utc>,
    /// `accepted`
    pub status: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// Only entries about this user.
    pub user_id: Option<BuyerId>,
}

/// One audited act.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// The staff member.
    pub actor_id: i64,
    /// Their username when they acted; `null` for a token minted for no staff account.
    pub actor_name: Option<String>,
    pub action: AuditAction,
    pub user_id: Option<BuyerId>,
    pub order_id: Option<OrderId>,
    pub reason: String,
    /// What was done (refund number and amounts, the plan granted; for the catalogue and
    /// adjustments, `before` and `after`).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub at: DateTime<Utc>,
}

impl From<memberline_schema::entities::audit_log::Model> for AuditEntry {
    fn from(r: memberline_schema::entities::audit_log::Model) -> Self {
        Self {
            id: r.id,
            actor_id: r.actor_id,
            actor_name: r.actor_name,
            action: r.action,
            user_id: r.user_id,
            order_id: r.order_id,
            reason: r.reason,
            details: r.details,
            at: r.at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    pub next_cursor: Option<i64>,
}

/// The audit log: every refund, grant and revocation, who did it and why, newest first.
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, description = "`invalid_query`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(Role::Admin)?;
    let limit = query::limit(q.limit, 50, 200)?;
    let (rows, next_cursor) = audit::page(&state.db, q.user_id, q.cursor, limit).await?;
    Ok(Json(AuditPage {
        entries: rows.into_iter().map(AuditEntry::from).collect(),
        next_cursor,
    }))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/orders/{id}/refund", post(refund_order))
        .route(
            "/v1/admin/users/{id}/membership",
            put(grant_membership).delete(revoke_membership),
        )
        .route("/v1/admin/audit", get(audit))
}
