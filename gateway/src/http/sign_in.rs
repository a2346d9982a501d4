//! Signing in. Staff with a username and password ([`crate::staff`]); buyers with WeChat: a login code from the buyer's WeChat client (`wx.login` in a
//! mini-program, the web OAuth redirect in an official account) is exchanged with WeChat for the
//! buyer's OpenID under that app (`memberline_orders::providers::wechat::WechatLogin`), and the
//! buyer it belongs to gets a buyer token ([`crate::identity`]). A signed-in buyer can also link
//! an OpenID to their account, which JSAPI payments in that app need.

use super::{ClientIp, JsonValue, typed};
use crate::http::auth::{Caller, Role};
use crate::http::error::ApiError;
use crate::identity::{self, Linked};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use memberline_orders::providers::wechat::{LoginError, WechatIdentity};
use memberline_schema::ids::BuyerId;
use memberline_schema::states::WechatApp;
use serde::{Deserialize, Serialize};

/// A login code of one of the shop's WeChat apps.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"app": "miniprogram", "code": "0a3Xyz…"}))]
pub struct WechatCode {
    /// The app the code comes from: `miniprogram` (`wx.login`) or `official_account` (the web
    /// OAuth redirect's `code`).
    pub app: WechatApp,
    /// The login code; it works once, for five minutes.
    #[schema(min_length = 1, max_length = 128)]
    pub code: String,
}

/// A buyer token for the buyer who signed in.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SignedIn {
    /// A buyer bearer token, valid for `auth.buyer_token_ttl_secs`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: SignedInUser,
    /// Whether this sign-in created the buyer (a first sign-in).
    pub created: bool,
}

/// The buyer who signed in (`GET /v1/me` has the rest).
#[derive(Serialize, utoipa::ToSchema)]
pub struct SignedInUser {
    pub id: BuyerId,
    pub name: String,
}

/// The OpenID now linked to the caller.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LinkedIdentity {
    pub app: WechatApp,
    pub appid: String,
    pub openid: String,
}

/// The answers of a refused exchange: each of WeChat's refusals has a code of its own.
fn login_error(e: LoginError) -> ApiError {
    let message = e.to_string();
    match e {
        LoginError::AppUnavailable(_) => ApiError::unprocessable("wechat_app_unavailable", message),
        LoginError::InvalidCode => ApiError::bad_request("wechat_code_invalid", message),
        LoginError::CodeUsed => ApiError::bad_request("wechat_code_used", message),
        LoginError::RateLimited => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "wechat_rate_limited",
            message,
        )
        .retry_after(60),
        LoginError::Blocked => ApiError::new(StatusCode::FORBIDDEN, "wechat_user_blocked", message),
        LoginError::SnapshotUser => {
            ApiError::new(StatusCode::FORBIDDEN, "wechat_snapshot_user", message)
        }
        LoginError::Unavailable(_) => {
            tracing::warn!(error = %message, "WeChat sign-in failed");
            ApiError::new(StatusCode::BAD_GATEWAY, "wechat_unavailable", message)
        }
        // Our app id or secret is wrong, or WeChat refused for a reason of its own: the shop
        // must look, the buyer cannot fix it.
        LoginError::Refused { .. } => {
            tracing::error!(error = %message, "WeChat refused a sign-in; check the app's settings");
            ApiError::new(StatusCode::BAD_GATEWAY, "wechat_refused", message)
        }
    }
}

/// Exchanges `body`'s code with WeChat.
async fn exchange(state: &AppState, body: serde_json::Value) -> Result<WechatIdentity, ApiError> {
    let req: WechatCode = typed(body)?;
    if req.code.trim().is_empty() || req.code.len() > 128 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "code must be 1 to 128 characters",
        ));
    }
    let login = state
        .payments
        .login()
        .filter(|l| l.has(req.app))
        .ok_or_else(|| login_error(LoginError::AppUnavailable(req.app)))?;
    login
        .exchange(req.app, req.code.trim())
        .await
        .map_err(login_error)
}

const LOGIN_ERRORS: &str =
    "`wechat_code_invalid` (unknown, expired or another app's code), `wechat_code_used`";

/// Signs a buyer in with a WeChat login code: the buyer whose OpenID it is, or a new buyer on
/// their first sign-in.
#[utoipa::path(post, path = "/v1/auth/wechat", tag = "auth",
    request_body = WechatCode,
    responses(
        (status = 200, description = "Signed in; `created` says whether the buyer is new", body = SignedIn),
        (status = 400, description = LOGIN_ERRORS, body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`wechat_user_blocked`: WeChat refuses this account; `wechat_snapshot_user`: the official account's page is seen in WeChat's snapshot mode (no real OpenID)", body = crate::http::error::ErrorBody),
        (status = 422, description = "`wechat_app_unavailable` (the shop has no such app set up), `invalid_body`, `invalid_field`", body = crate::http::error::ErrorBody),
        (status = 429, description = "`wechat_rate_limited`: WeChat limits sign-ins; retry after `Retry-After` seconds", body = crate::http::error::ErrorBody),
        (status = 502, description = "`wechat_unavailable` (WeChat unreachable or failing), `wechat_refused` (WeChat refused the shop's app credentials)", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn wechat(
    State(state): State<AppState>,
    JsonValue(body): JsonValue,
) -> Result<Json<SignedIn>, ApiError> {
    let identity = exchange(&state, body).await?;
    let signed_in = identity::sign_in(&state.db, &identity).await?;
    let ttl = state.settings.auth.buyer_token_ttl_secs;
    let buyer = signed_in.buyer;
    tracing::info!(buyer_id = %buyer.id, created = signed_in.created, "Buyer signed in with WeChat");
    Ok(Json(SignedIn {
        token: state.keys.issue(buyer.id.0, Role::User, ttl),
        expires_at: Utc::now() + Duration::seconds(ttl),
        user: SignedInUser {
            id: buyer.id,
            name: buyer.name,
        },
        created: signed_in.created,
    }))
}

/// Links the OpenID of a WeChat login code to the signed-in buyer, so they can pay by JSAPI in
/// that app. Linking the same OpenID again answers the same.
#[utoipa::path(post, path = "/v1/me/wechat", tag = "me", security(("bearer" = [])),
    request_body = WechatCode,
    responses(
        (status = 200, description = "The OpenID is the caller's", body = LinkedIdentity),
        (status = 400, description = LOGIN_ERRORS, body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`, `unknown_user`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`wechat_user_blocked`, `wechat_snapshot_user`; `forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 409, description = "`wechat_identity_taken` (the OpenID belongs to another buyer), `wechat_app_already_linked` (the caller has another OpenID under this app)", body = crate::http::error::ErrorBody),
        (status = 422, description = "`wechat_app_unavailable`, `invalid_body`, `invalid_field`", body = crate::http::error::ErrorBody),
        (status = 429, description = "`wechat_rate_limited`", body = crate::http::error::ErrorBody),
        (status = 502, description = "`wechat_unavailable`, `wechat_refused`", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn link(
    State(state): State<AppState>,
    caller: Caller,
    JsonValue(body): JsonValue,
) -> Result<Json<LinkedIdentity>, ApiError> {
    let app = typed::<WechatCode>(body.clone())?.app;
    memberline_orders::store::catalogue::buyer(&state.db, caller.buyer_id()?)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown_user", "the token's user does not exist"))?;
    let identity = exchange(&state, body).await?;
    match identity::link(&state.db, caller.buyer_id()?, &identity).await? {
        Linked::Linked => Ok(Json(LinkedIdentity {
            app,
            appid: identity.appid,
            openid: identity.openid,
        })),
        Linked::TakenByAnother => Err(ApiError::conflict(
            "wechat_identity_taken",
            "this WeChat account is linked to another buyer",
        )),
        Linked::AppAlreadyLinked => Err(ApiError::conflict(
            "wechat_app_already_linked",
            format!("your account is already linked to another WeChat account in the {app}"),
        )),
    }
}

/// A staff member's username and password.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "admin", "password": "correct horse battery staple"}))]
pub struct StaffCredentials {
    #[schema(min_length = 1, max_length = 64)]
    pub username: String,
    #[schema(min_length = 1, max_length = 128)]
    pub password: String,
}

/// A staff token for the staff member who signed in.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StaffSignedIn {
    /// A staff bearer token, valid for `auth.token_ttl_secs`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub staff: StaffView,
}

/// A staff member.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StaffView {
    pub id: i64,
    pub username: String,
    /// `merchant` (the live console, orders and members, read-only) or `admin` (everything).
    #[schema(value_type = String, example = "admin")]
    pub role: Role,
}

/// Signs a staff member in with their username and password. An unknown username, a wrong
/// password and a disabled account get the same answer. Failures are counted per username and
/// per address (`auth.staff_sign_in`); past either limit the answer is 429 until the oldest
/// failure leaves the window, whatever the password.
#[utoipa::path(post, path = "/v1/auth/staff", tag = "auth",
    request_body = StaffCredentials,
    responses(
        (status = 200, description = "Signed in", body = StaffSignedIn),
        (status = 400, description = "`malformed_json`", body = crate::http::error::ErrorBody),
        (status = 401, description = "`invalid_credentials`: unknown username, wrong password or disabled account", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::error::ErrorBody),
        (status = 422, description = "`invalid_body`", body = crate::http::error::ErrorBody),
        (status = 429, description = "`too_many_sign_in_failures`: retry after `Retry-After` seconds", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn staff(
    State(state): State<AppState>,
    ClientIp(address): ClientIp,
    JsonValue(body): JsonValue,
) -> Result<Json<StaffSignedIn>, ApiError> {
    let req: StaffCredentials = typed(body)?;
    let limits = &state.settings.auth.staff_sign_in;
    let outcome =
        crate::staff::sign_in(&state.db, limits, &req.username, &req.password, &address).await?;
    match outcome {
        crate::staff::SignIn::Signed(member) => {
            let ttl = state.settings.auth.token_ttl_secs;
            tracing::info!(staff_id = member.id, "Staff signed in");
            Ok(Json(StaffSignedIn {
                token: state.keys.issue(member.id, member.role, ttl),
                expires_at: Utc::now() + Duration::seconds(ttl),
                staff: StaffView {
                    id: member.id,
                    username: member.username,
                    role: member.role,
                },
            }))
        }
        crate::staff::SignIn::Refused => Err(ApiError::unauthorized(
            "invalid_credentials",
            "the username or password is wrong, or the account is disabled",
        )),
        crate::staff::SignIn::Limited { retry_after_secs } => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sign_in_failures",
            format!("too many failed sign-ins; try again in {retry_after_secs} s"),
        )
        .retry_after(retry_after_secs.max(1) as u64)),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/staff", post(staff))
        .route("/v1/auth/wechat", post(wechat))
        .route("/v1/me/wechat", post(link))
}
