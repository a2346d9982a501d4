//! Bearer tokens: HS256 JWTs whose `sub` is the subject's id, `role` is `user | merchant | admin`
//! and `kind` says whose id it is: a buyer's (`user`) or a staff member's (`merchant`, `admin`).
//! Buyers and staff are numbered apart, so a staff token acts for no buyer
//! ([`Caller::buyer_id`]).
//!
//! A missing, malformed or expired token is 401 with a distinct code; a valid token for the
//! wrong role is 403. Ownership (another user's order is 404) is checked by the handlers.

use crate::http::error::ApiError;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use memberline_schema::ids::BuyerId;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Merchant,
    Admin,
}

/// Whose id a token's `sub` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    Buyer,
    Staff,
}

impl Role {
    /// The kind of subject that holds this role.
    pub fn subject_kind(self) -> SubjectKind {
        match self {
            Role::User => SubjectKind::Buyer,
            Role::Merchant | Role::Admin => SubjectKind::Staff,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Role::User),
            "merchant" => Some(Role::Merchant),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a decimal string.
    pub sub: String,
    pub role: Role,
    /// Absent in tokens minted before it existed; the role says the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SubjectKind>,
    pub iat: i64,
    pub exp: i64,
}

/// Signing and verifying keys derived from the configured secret.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    pub fn new(secret: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// Mints a token for `user_id` with `role`, valid for `ttl_secs` from now.
    pub fn issue(&self, user_id: i64, role: Role, ttl_secs: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            kind: Some(role.subject_kind()),
            iat: now,
            exp: now + ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with a byte secret cannot fail")
    }

    /// Verifies a token and returns the caller it names.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("token_expired", "the bearer token has expired")
                }
                _ => ApiError::unauthorized("invalid_token", "the bearer token is not valid"),
            },
        )?;
        let user_id = data.claims.sub.parse::<i64>().map_err(|_| {
            ApiError::unauthorized("invalid_token", "the token subject is not a user id")
        })?;
        if data
            .claims
            .kind
            .is_some_and(|k| k != data.claims.role.subject_kind())
        {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "the token's role does not fit the kind of its subject",
            ));
        }
        Ok(Caller {
            user_id,
            role: data.claims.role,
        })
    }
}

/// An authenticated caller. As an extractor it answers 401 when the token is missing or bad.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub user_id: i64,
    pub role: Role,
}

impl Caller {
    /// The caller as a buyer, the subject of a buyer's own requests; 403 for a staff token,
    /// whose subject is a staff account, never a buyer (whatever its number).
    pub fn buyer_id(&self) -> Result<BuyerId, ApiError> {
        match self.role {
            Role::User => Ok(BuyerId(self.user_id)),
            Role::Merchant | Role::Admin => Err(ApiError::forbidden(
                "this endpoint is a buyer's: a staff token acts for no buyer",
            )),
        }
    }

    /// 403 unless the caller has `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role == role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this endpoint needs the {role:?} role"
            )))
        }
    }

    /// 403 unless the caller is a merchant or an admin; `what` names what needs it.
    pub fn require_staff(&self, what: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Merchant | Role::Admin => Ok(()),
            Role::User => Err(ApiError::forbidden(format!(
                "{what} needs the merchant or admin role"
            ))),
        }
    }
}

/// An optional caller: no `Authorization` header is `None`, a bad one is still 401.
#[derive(Clone, Copy, Debug)]
pub struct MaybeCaller(pub Option<Caller>);

fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("invalid_token", "malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::unauthorized(
            "invalid_token",
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

// The extractors need only the keys and the database, taken from any state that provides them,
// so this module does not depend on the application state (which holds them).
impl<S> FromRequestParts<S> for MaybeCaller
where
    Keys: FromRef<S>,
    sea_orm::DatabaseConnection: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = bearer(parts)?
            .map(|token| Keys::from_ref(state).verify(token))
            .transpose()?;
        // A staff member disabled after signing in is refused at once, not when the token
        // expires.
        if let Some(c) = caller
            && c.role != Role::User
            && crate::staff::is_disabled(&sea_orm::DatabaseConnection::from_ref(state), c.user_id)
                .await?
        {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "this staff account is disabled",
            ));
        }
        Ok(MaybeCaller(caller))
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Keys: FromRef<S>,
    sea_orm::DatabaseConnection: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        MaybeCaller::from_request_parts(parts, state)
            .await?
            .0
            .ok_or_else(|| {
                ApiError::unauthorized("missing_token", "this endpoint needs a bearer token")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_verifies_to_its_user_and_role() {
        let keys = Keys::new(SECRET);
        let caller = keys.verify(&keys.issue(42, Role::Merchant, 60)).unwrap();
        assert_eq!(caller.user_id, 42);
        assert_eq!(caller.role, Role::Merchant);
    }

    #[test]
    fn a_token_says_whose_id_its_subject_is_and_a_role_that_does_not_fit_is_refused() {
        let keys = Keys::new(SECRET);
        for (role, kind) in [
            (Role::User, "buyer"),
            (Role::Merchant, "staff"),
            (Role::Admin, "staff"),
        ] {
            let token = keys.issue(7, role, 60);
            let claims = jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &DecodingKey::from_secret(SECRET.as_bytes()),
                &Validation::new(Algorithm::HS256),
            )
            .unwrap()
            .claims;
            assert_eq!(claims["kind"], kind, "{role:?}");
        }
        let now = chrono::Utc::now().timestamp();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "7", "role": "admin", "kind": "buyer", "iat": now, "exp": now + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(keys.verify(&forged).unwrap_err().code, "invalid_token");
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let keys = Keys::new(SECRET);
        let err = keys.verify(&keys.issue(1, Role::User, -120)).unwrap_err();
        assert_eq!(err.code, "token_expired");
    }

    #[test]
    fn a_token_signed_with_another_secret_is_invalid() {
        let other = Keys::new("another-secret-another-secret-xx");
        let err = Keys::new(SECRET)
            .verify(&other.issue(1, Role::Admin, 60))
            .unwrap_err();
        assert_eq!(err.code, "invalid_token");
    }
}
