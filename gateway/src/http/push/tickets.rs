//! Single-use stream tickets: a browser cannot set headers on a WebSocket, so it trades its
//! bearer token for a ticket (`POST /v1/merchant/stream-ticket`) and opens the socket with
//! `?ticket=…`. A ticket lives `push.ticket_ttl_secs` (30 s), opens one socket, and only its
//! SHA-256 is stored, so a leaked log line or URL is worth nothing a moment later.

use crate::http::auth::{Caller, Role};
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use serde::Serialize;
use sha2::{Digest, Sha256};

fn hash(ticket: &str) -> String {
    Sha256::digest(ticket.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn role_text(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Merchant => "merchant",
        Role::Admin => "admin",
    }
}

/// Issues a ticket for `caller`, valid for `ttl_secs`.
pub async fn issue(
    db: &DatabaseConnection,
    caller: Caller,
    ttl_secs: u64,
) -> Result<(String, DateTime<Utc>), DbErr> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let ticket: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let expires_at = Utc::now() + chrono::Duration::seconds(ttl_secs as i64);
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO stream_tickets (hash, user_id, role, expires_at) VALUES ($1, $2, $3, $4)",
        [
            hash(&ticket).into(),
            caller.user_id.into(),
            role_text(caller.role).into(),
            expires_at.into(),
        ],
    ))
    .await?;
    Ok((ticket, expires_at))
}

/// Uses `ticket` up: the caller it was issued to, or `None` when it is unknown, expired or was
/// used before (one socket per ticket, even when two race).
pub async fn redeem(db: &DatabaseConnection, ticket: &str) -> Result<Option<Caller>, DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE stream_tickets SET used_at = now() \
             WHERE hash = $1 AND used_at IS NULL AND expires_at > now() \
             RETURNING user_id, role",
            [hash(ticket).into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let role: String = row.try_get("", "role")?;
    Ok(Role::parse(&role).map(|role| Caller {
        user_id: row.try_get("", "user_id").unwrap_or_default(),
        role,
    }))
}

/// 426 for a stream URL requested without a WebSocket upgrade.
pub fn upgrade_required() -> ApiError {
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "upgrade_required",
        "open this URL as a WebSocket",
    )
}

/// 401 for a ticket that opens nothing.
pub fn invalid_ticket() -> ApiError {
    ApiError::unauthorized("invalid_ticket", "the ticket is unknown, expired or used")
}

/// Who opens a stream: the bearer header's caller, or the one `ticket` was issued to. A ticket
/// is spent only on a request that can become a socket (`can_upgrade`); without either, 401
/// names `ticket_endpoint`.
pub async fn stream_caller(
    db: &DatabaseConnection,
    header: Option<Caller>,
    ticket: Option<&str>,
    can_upgrade: bool,
    ticket_endpoint: &str,
) -> Result<Caller, ApiError> {
    match (header, ticket) {
        (Some(caller), _) => Ok(caller),
        (None, Some(_)) if !can_upgrade => Err(upgrade_required()),
        (None, Some(ticket)) => redeem(db, ticket).await?.ok_or_else(invalid_ticket),
        (None, None) => Err(ApiError::unauthorized(
            "missing_token",
            format!("send a bearer token, or a ticket from POST {ticket_endpoint}"),
        )),
    }
}

/// A ticket and where to use it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Ticket {
    /// Pass as `?ticket=` when opening the WebSocket; single-use.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
    /// The stream this ticket opens, with the ticket in it.
    pub stream_url: String,
}

/// A single-use ticket that opens the merchant stream (`GET /v1/merchant/stream?ticket=…`)
/// from a browser, which cannot send an `Authorization` header with a WebSocket.
#[utoipa::path(post, path = "/v1/merchant/stream-ticket", tag = "push", security(("bearer" = [])),
    responses(
        (status = 201, body = Ticket),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: not a merchant or admin", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn merchant_ticket(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<Ticket>), ApiError> {
    caller.require_staff("the merchant stream")?;
    let (ticket, expires_at) =
        issue(&state.db, caller, state.settings.push.ticket_ttl_secs).await?;
    Ok((
        StatusCode::CREATED,
        Json(Ticket {
            stream_url: format!("/v1/merchant/stream?ticket={ticket}"),
            ticket,
            expires_at,
        }),
    ))
}

/// A single-use ticket that opens one of the caller's own streams from a browser
/// (`GET /v1/orders/{id}/stream?ticket=…`).
#[utoipa::path(post, path = "/v1/me/stream-ticket", tag = "push", security(("bearer" = [])),
    responses(
        (status = 201, body = Ticket),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn my_ticket(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<Ticket>), ApiError> {
    let (ticket, expires_at) =
        issue(&state.db, caller, state.settings.push.ticket_ttl_secs).await?;
    Ok((
        StatusCode::CREATED,
        Json(Ticket {
            stream_url: format!("/v1/orders/{{id}}/stream?ticket={ticket}"),
            ticket,
            expires_at,
        }),
    ))
}
