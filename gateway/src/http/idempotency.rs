//! The HTTP side of idempotency: the [`Idempotent`] extractor gives a handler the request's
//! `Idempotency-Key` and hash with its JSON body, and [`respond`] turns the domain's answer
//! (fresh or replayed) into the response. The keys themselves are stored by
//! `memberline_platform::idempotency`, in the transaction that does the work.

use super::JsonValue;
use crate::http::error::ApiError;
use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use memberline_platform::idempotency::Answer;
use sha2::{Digest, Sha256};

/// What the `Idempotency-Key` header's documentation says, for every endpoint that takes one.
pub const KEY_DOC: &str = "Required: 1-255 visible ASCII characters (inner spaces allowed). The same key with the same body replays the first answer (header `Idempotent-Replayed: true`); with another body it is 422.";

/// A JSON request that takes an `Idempotency-Key`. A malformed body is refused like any JSON
/// body; the key's own 400 waits in [`Idempotent::key`] so each handler checks it where its
/// order of checks puts it (after the caller's role, say).
pub struct Idempotent {
    /// The key, or why it is missing or malformed.
    pub key: Result<String, ApiError>,
    /// The hash of the method, the path and the canonical body.
    pub request_hash: String,
    pub body: serde_json::Value,
}

impl<S: Send + Sync> FromRequest<S> for Idempotent {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let route = format!("{} {}", req.method(), req.uri().path());
        let key = key(req.headers());
        let JsonValue(body) = JsonValue::from_request(req, state).await?;
        Ok(Self {
            key,
            request_hash: hash_request(&route, &body),
            body,
        })
    }
}

/// The response of `answer`: its status and body, marked `Idempotent-Replayed: true` when it
/// replays the first request's answer.
pub fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut res = (status, Json(answer.body)).into_response();
    if answer.replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

fn key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::bad_request(
            "idempotency_key_required",
            "send an Idempotency-Key header (1-255 characters) with every order",
        )
    })?;
    // The schema's pattern: visible ASCII, inner spaces allowed. HTTP already drops the spaces
    // and tabs around a header value; `to_str` would also let a tab inside through.
    let key = value
        .to_str()
        .ok()
        .map(|k| k.trim_matches([' ', '\t']))
        .filter(|k| k.bytes().all(|b| (0x20..=0x7e).contains(&b)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "the Idempotency-Key must be visible ASCII",
            )
        })?;
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "the Idempotency-Key must be 1-255 characters",
        ));
    }
    Ok(key.to_owned())
}

/// SHA-256 of the request `route` (method and path) and its body in canonical form (object keys
/// sorted, no whitespace): the same body with keys in another order is the same request, and
/// the same key sent to another endpoint, or with another body, is another.
fn hash_request(route: &str, body: &serde_json::Value) -> String {
    fn canonical(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(&map[k], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = format!("{route}\n");
    canonical(body, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_ignores_key_order_but_not_values_or_the_route() {
        let a = hash_request(
            "POST /v1/orders",
            &serde_json::json!({"plan_id": 1, "pay_method": "points"}),
        );
        let b = hash_request(
            "POST /v1/orders",
            &serde_json::json!({"pay_method": "points", "plan_id": 1}),
        );
        let c = hash_request(
            "POST /v1/orders",
            &serde_json::json!({"pay_method": "balance", "plan_id": 1}),
        );
        let d = hash_request(
            "POST /v1/other",
            &serde_json::json!({"plan_id": 1, "pay_method": "points"}),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
