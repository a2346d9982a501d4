//! Everything HTTP: one module per resource, each ending in `router()`, assembled here with the
//! cross-cutting layers (request id, correlation id, tracing, metrics, body limit, timeout).
//! Handlers parse, call the domain (`memberline_orders`) and map its answer; bearer tokens
//! ([`auth`]) and the error body ([`error`]) live here too.

pub mod admin;
pub mod admin_actions;
pub mod auth;
pub mod catalogue;
pub mod docs;
pub mod error;
pub mod exports;
pub mod health;
pub mod idempotency;
pub mod me;
pub mod members;
pub mod merchant;
pub mod orders;
pub mod outbox;
pub mod pages;
pub mod payments;
pub mod plans;
pub mod push;
pub mod query;
pub mod sign_in;
pub mod stats;

use crate::http::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::extract::{FromRequest, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use std::time::{Duration, Instant};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// The correlation id of the current request: taken from `X-Correlation-Id` when it is a UUID,
/// otherwise a new UUID v7. It is echoed in the response and carried into every event envelope.
#[derive(Clone, Copy, Debug)]
pub struct CorrelationId(pub Uuid);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CorrelationId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<CorrelationId>()
            .copied()
            .unwrap_or_else(|| CorrelationId(Uuid::now_v7())))
    }
}

/// The buyer's address: from `http.client_ip_header` when the gateway sits behind a proxy that
/// sets it (of `X-Forwarded-For`, the last address: the one our proxy saw; the ones before it
/// are whatever the client claimed), otherwise the connection's.
#[derive(Clone, Debug)]
pub struct ClientIp(pub String);

impl axum::extract::FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = state.settings.http.client_ip_header.trim();
        let from_header = (!header.is_empty())
            .then(|| parts.headers.get(header))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok());
        let from_connection = || {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip())
        };
        let ip = from_header.or_else(from_connection).map_or_else(
            || std::net::Ipv4Addr::LOCALHOST.to_string(),
            |ip| ip.to_canonical().to_string(),
        );
        Ok(ClientIp(ip))
    }
}

/// Every route the gateway serves, without the layers: every route is added here, so that the
/// test that compares them with the OpenAPI document sees each one.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(plans::router())
        .merge(me::router())
        .merge(sign_in::router())
        .merge(orders::router())
        .merge(payments::router())
        .merge(admin::router())
        .merge(admin_actions::router())
        .merge(catalogue::router())
        .merge(members::router())
        .merge(exports::router())
        .merge(stats::router())
        .merge(merchant::router())
        .merge(crate::http::push::router())
        .merge(crate::http::pages::router())
        .merge(outbox::router())
        .merge(health::router())
        .merge(docs::router())
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.http.body_limit_bytes;
    let timeout = Duration::from_secs(state.settings.http.request_timeout_secs);
    routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let request_id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let correlation_id = req
                .extensions()
                .get::<CorrelationId>()
                .map(|c| c.0.to_string())
                .unwrap_or_default();
            tracing::info_span!(
                "request",
                method = %req.method(),
                uri = %req.uri().path(),
                request_id,
                correlation_id,
            )
        }))
        .layer(middleware::from_fn(correlation))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn_with_state(state.clone(), shed))
        .with_state(state)
}

/// Paths answered whatever the load: how an orchestrator and a scraper see the gateway.
const NEVER_SHED: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Load shedding: at most `http.max_in_flight` requests are worked on at once; past it a
/// request is answered at once with 503 `overloaded` and `Retry-After`, having done nothing,
/// rather than queued while the gateway's memory grows.
async fn shed(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if NEVER_SHED.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    match state.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            use axum::response::IntoResponse;
            overloaded().into_response()
        }
    }
}

/// 503 `overloaded`: try again in a second.
pub fn overloaded() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "the gateway is at its limit of requests at once; nothing was done, try again",
    )
    .retry_after(1)
}

async fn correlation(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        .unwrap_or_else(Uuid::now_v7);
    req.extensions_mut().insert(CorrelationId(id));
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        res.headers_mut().insert(CORRELATION_ID, v);
    }
    res
}

async fn record_metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // Only route templates and known methods become labels: a path or method a client made up
    // is recorded as `other`, so nobody can grow the label set.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "other".to_owned());
    let method = req.method().clone();
    let res = next.run(req).await;
    state.metrics.http_request(
        method.as_str(),
        &route,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

/// A JSON body extractor whose rejections come back in our error format: malformed JSON is 400
/// `malformed_json`, a body over the limit is 413 `payload_too_large`, a wrong content type is
/// 415 `unsupported_media_type`. It yields a `serde_json::Value` so that handlers can inspect
/// fields before deserializing the typed request.
///
/// Numbers with no fractional part (`924.0`, `1e3`) are turned into integers first: JSON Schema,
/// and so the OpenAPI document, counts them as integers, so a field documented as `integer`
/// accepts them, and the idempotency hash sees `924.0` and `924` as the same request.
pub struct JsonValue(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonValue {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(mut v)) => {
                integral_numbers_as_integers(&mut v);
                Ok(JsonValue(v))
            }
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as application/json",
                ),
                r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than the limit",
                ),
                r => ApiError::bad_request("malformed_json", r.body_text()),
            }),
        }
    }
}

/// Rewrites every float without a fractional part that fits an `i64` or a `u64` as that integer,
/// everywhere in `value`. Other floats (`1.5`, `1e30`) stay floats, so an integer field still
/// refuses them.
fn integral_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    // 2^63 and 2^64 are exact in an f64; the casts below are exact inside these bounds.
    const I64_END: f64 = 9_223_372_036_854_775_808.0;
    const U64_END: f64 = 18_446_744_073_709_551_616.0;
    match value {
        Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64() else { return };
            if f.fract() != 0.0 {
                return;
            }
            if (-I64_END..I64_END).contains(&f) {
                *value = Value::from(f as i64);
            } else if (0.0..U64_END).contains(&f) {
                *value = Value::from(f as u64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers_as_integers),
        _ => {}
    }
}

/// For `#[serde(default, deserialize_with = "present")]` on an `Option<Option<T>>` field of a
/// change: absent is `None` (unchanged), `null` is `Some(None)` (cleared), a value is
/// `Some(Some(value))`.
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Deserializes a typed request from a JSON value; a wrong shape is 422 `invalid_body` naming
/// the field.
pub fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    // serde would also take a struct as an array of its fields, in order: not our format.
    if !value.is_object() {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "invalid request body: a JSON object is expected",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable("invalid_body", format!("invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_become_integers_and_other_numbers_stay() {
        let mut body = json!({
            "plan_id": 924.0,
            "negative": -3502896089371.0,
            "big": 1e19,
            "nested": [{"n": 2.0}],
            "half": 1.5,
            "huge": 1e30,
            "int": 7,
        });
        integral_numbers_as_integers(&mut body);
        assert_eq!(
            body,
            json!({
                "plan_id": 924,
                "negative": -3502896089371_i64,
                "big": 10_000_000_000_000_000_000_u64,
                "nested": [{"n": 2}],
                "half": 1.5,
                "huge": 1e30,
                "int": 7,
            })
        );
        assert!(body["plan_id"].is_i64());
    }
}
