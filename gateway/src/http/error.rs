//! The one error type of the HTTP boundary, mapped to a response once.
//!
//! Client errors carry a stable machine `code` and a human `message`:
//! `{"error": {"code": "insufficient_points", "message": "..."}}`. Unexpected errors become an
//! opaque 500 and are logged with their cause chain inside the request span (which carries the
//! request id).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Machine-readable facts about the refusal (e.g. the current price), sent as `details`.
    pub details: Option<serde_json::Value>,
    /// Seconds after which a retry may succeed, sent as `Retry-After` (429s).
    pub retry_after: Option<u64>,
    /// Only for 500s: what actually went wrong (logged, never sent).
    source: Option<anyhow::Error>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `insufficient_points`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Facts a client can act on, for some codes (`price_changed`: the current price).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            source: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no usable credentials.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: does not exist, or is not the caller's.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409: conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 422: well-formed, but breaks a business rule.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 500: our fault; the cause is logged, the client sees an opaque message.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error; it has been logged".to_owned(),
            details: None,
            retry_after: None,
            source: Some(source.into()),
        }
    }

    /// The same answer with `Retry-After: secs`.
    pub fn retry_after(self, secs: u64) -> Self {
        Self {
            retry_after: Some(secs),
            ..self
        }
    }

    /// 503: a dependency is unavailable right now; retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<sea_orm::DbErr> for ApiError {
    /// Errors a retry can cure (no pooled connection in time, a lost connection, a
    /// serialization failure or deadlock, a lock or statement timeout) are 503 `unavailable`:
    /// with the Idempotency-Key, retrying is safe. Anything else is an opaque 500.
    fn from(e: sea_orm::DbErr) -> Self {
        if memberline_platform::db::is_retryable(&e) {
            tracing::warn!(error = %e, "database temporarily unavailable");
            return Self::unavailable("the database is busy or unavailable; retry shortly");
        }
        Self::internal(e)
    }
}

impl From<sea_orm::TransactionError<ApiError>> for ApiError {
    fn from(e: sea_orm::TransactionError<ApiError>) -> Self {
        match e {
            sea_orm::TransactionError::Connection(db) => Self::internal(db),
            sea_orm::TransactionError::Transaction(api) => api,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(source) = &self.source {
            tracing::error!(error = ?source, "request failed with an internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        res
    }
}

impl From<memberline_orders::OrderError> for ApiError {
    /// The one place order errors become HTTP answers.
    fn from(e: memberline_orders::OrderError) -> Self {
        use memberline_orders::OrderError as E;
        let code = e.code();
        let message = e.to_string();
        match e {
            E::UnknownBuyer => Self::unauthorized(code, message),
            E::PlanNotFound(_) | E::OrderNotFound(_) | E::UserNotFound(_) => {
                Self::not_found(code, message)
            }
            E::AlreadyPermanent
            | E::FreePlanAlreadyClaimed
            | E::NotPending(_)
            | E::NotPaid(_)
            | E::NotRefundable(_)
            | E::BelowZero { .. }
            | E::WechatIdentityRequired => Self::conflict(code, message),
            E::RemindTooSoon { wait_secs } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
                    .retry_after(wait_secs.max(1) as u64)
            }
            E::ProviderUnavailable(_) => Self::new(StatusCode::BAD_GATEWAY, code, message),
            E::PriceChanged { fen, points } => Self {
                details: Some(serde_json::json!({
                    "current_price_fen": fen,
                    "current_price_points": points,
                })),
                ..Self::conflict(code, message)
            },
            E::PlanNotFree
            | E::PayMethodNotAllowed(_)
            | E::PayMethodUnavailable(_)
            | E::ChannelUnavailable(_)
            | E::InvalidChannel(_)
            | E::InsufficientBalance { .. }
            | E::InsufficientPoints { .. }
            | E::IdempotencyKeyReused => Self::unprocessable(code, message),
            E::Overloaded => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
            }
            E::Database(db) => db.into(),
            E::Internal(source) => Self::internal(source),
        }
    }
}
