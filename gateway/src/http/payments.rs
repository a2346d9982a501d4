//! The providers' notification endpoints, Alipay's cashier return, and the QR image of a pending
//! order.
//!
//! Notifications are verified before anything reads them (WeChat: the signature over the raw
//! body with the platform key named by `Wechatpay-Serial`, the timestamp within five minutes,
//! then decryption; Alipay: the signature over every parameter but `sign` and `sign_type`), then
//! stored raw and applied in one transaction (`memberline_orders::settle`).
//!
//! Replies follow the providers' rules, so they retry exactly when we failed to verify or store:
//! WeChat gets 204 for every notification we stored (copies and flagged ones included) and
//! 4xx/5xx with `{"code": "FAIL", "message": …}` otherwise, never 200 with FAIL; Alipay gets
//! exactly `success` for every genuine notification we stored and `fail` otherwise.
//!
//! The notification endpoints speak the providers' protocols, not our error format; the OpenAPI
//! document describes them as they are, so that the contract test holds them to it.

use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use memberline_orders::providers::Payment;
use memberline_orders::providers::alipay::AlipayNotification;
use memberline_orders::providers::wechat::{NotifyHeaders, WechatEvent};
use memberline_orders::refunds;
use memberline_orders::settle::{Applied, Notification, Stored};
use memberline_schema::ids::OrderId;
use memberline_schema::states::{NotificationOutcome, Provider};
use serde_json::json;

/// The answer WeChat Pay expects to a notification we did not take (it sends it again).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WechatFail {
    /// Always `FAIL`.
    #[schema(pattern = "^FAIL$", example = "FAIL")]
    pub code: String,
    /// Why, for WeChat's records.
    pub message: String,
}

fn wechat_fail(status: StatusCode, message: impl Into<String>) -> Response {
    let body = WechatFail {
        code: "FAIL".to_owned(),
        message: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

/// A WeChat Pay notification as WeChat posts it (for the document: the handler verifies the raw
/// bytes before it reads any of them).
#[derive(utoipa::ToSchema)]
pub struct WechatNotifyBody {
    /// The notification id: the same in every retry of it.
    pub id: String,
    /// When WeChat created it (RFC 3339).
    #[schema(required = false)]
    pub create_time: String,
    /// `TRANSACTION.SUCCESS`, `REFUND.SUCCESS`, `REFUND.ABNORMAL`, `REFUND.CLOSED`.
    pub event_type: String,
    /// `encrypt-resource`.
    #[schema(required = false)]
    pub resource_type: String,
    #[schema(required = false)]
    pub summary: String,
    pub resource: WechatNotifyResource,
}

/// The encrypted transaction or refund of a WeChat Pay notification.
#[derive(utoipa::ToSchema)]
pub struct WechatNotifyResource {
    /// `transaction` or `refund`.
    #[schema(required = false)]
    pub original_type: String,
    /// `AEAD_AES_256_GCM` (with the APIv3 key); any other is refused.
    pub algorithm: String,
    /// Base64 of the ciphertext and its tag.
    pub ciphertext: String,
    #[schema(required = false)]
    pub associated_data: String,
    pub nonce: String,
}

/// An Alipay notification as Alipay posts it, a form (for the document: the handler verifies
/// `sign` over every other parameter but `sign_type` before it reads any of them).
#[derive(utoipa::ToSchema)]
pub struct AlipayNotifyForm {
    /// The notification id: the same in every retry of it.
    pub notify_id: String,
    /// RSA2 signature (SHA256withRSA, base64) over every other parameter but `sign_type`, sorted
    /// by name, as `k=v` joined with `&`.
    pub sign: String,
    #[schema(required = false, example = "RSA2")]
    pub sign_type: String,
    #[schema(required = false, example = "trade_status_sync")]
    pub notify_type: String,
    /// `yyyy-MM-dd HH:mm:ss`, Beijing time.
    #[schema(required = false)]
    pub notify_time: String,
    #[schema(required = false)]
    pub app_id: String,
    #[schema(required = false)]
    pub charset: String,
    #[schema(required = false)]
    pub version: String,
    /// Alipay's trade number.
    #[schema(required = false)]
    pub trade_no: String,
    /// Our order number.
    #[schema(required = false)]
    pub out_trade_no: String,
    #[schema(required = false)]
    pub seller_id: String,
    #[schema(required = false)]
    pub buyer_id: String,
    /// `WAIT_BUYER_PAY`, `TRADE_SUCCESS`, `TRADE_FINISHED`, `TRADE_CLOSED`.
    #[schema(required = false)]
    pub trade_status: String,
    /// Yuan, two decimals.
    #[schema(required = false, example = "19.90")]
    pub total_amount: String,
    #[schema(required = false)]
    pub receipt_amount: String,
    #[schema(required = false)]
    pub gmt_create: String,
    #[schema(required = false)]
    pub gmt_payment: String,
    #[schema(required = false)]
    pub gmt_close: String,
}

/// The plain-text answer Alipay expects to a notification: `success` or `fail`.
pub struct AlipayReply;

impl utoipa::PartialSchema for AlipayReply {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["success", "fail"]))
            .into()
    }
}

impl utoipa::ToSchema for AlipayReply {}

fn alipay_reply(ok: bool) -> Response {
    let body = if ok { "success" } else { "fail" };
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Stores a verified notification and applies its payment; logs and counts what happened.
/// `Err` only when it could not be stored.
async fn store(
    state: &AppState,
    provider: Provider,
    notification: Notification<'_>,
    payment: Option<Payment>,
) -> Result<(), ()> {
    state.payments.get(provider).ok_or(())?;
    let verified = memberline_orders::notifications::Verified {
        provider,
        event_id: notification.event_id.to_owned(),
        out_trade_no: notification.out_trade_no.map(str::to_owned),
        headers: notification.headers.clone(),
        raw_body: notification.raw_body.to_owned(),
        payment,
    };
    match state.notifications.store(verified).await {
        Ok(Stored::Duplicate) => {
            state
                .metrics
                .payment_notification(provider, NotificationOutcome::Duplicate);
            tracing::info!(%provider, event_id = notification.event_id, "Notification already stored");
            Ok(())
        }
        Ok(Stored::New(applied)) => {
            let outcome = applied
                .as_ref()
                .map_or(NotificationOutcome::Ignored, Applied::outcome);
            state.metrics.payment_notification(provider, outcome);
            match &applied {
                Some(Applied::Flagged { order_id, flag }) => tracing::error!(
                    %provider, event_id = notification.event_id, order_id = ?order_id, flag = flag.text,
                    "Genuine payment notification NOT applied; an operator must look at it"
                ),
                Some(Applied::LatePayment { order_id }) => tracing::warn!(
                    %provider, %order_id, "Payment for a closed order; it will be refunded"
                ),
                _ => {
                    tracing::info!(%provider, event_id = notification.event_id, outcome = outcome.as_str(), "Notification stored")
                }
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(%provider, error = %e, "Could not store a verified notification; the provider will retry");
            Err(())
        }
    }
}

/// The signature headers of a WeChat notification, as sent (a value that is not visible ASCII
/// counts as missing).
pub fn notify_headers(headers: &HeaderMap) -> NotifyHeaders<'_> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    NotifyHeaders {
        timestamp: get("wechatpay-timestamp"),
        nonce: get("wechatpay-nonce"),
        signature: get("wechatpay-signature"),
        serial: get("wechatpay-serial"),
    }
}

/// WeChat Pay's notification of a transaction or a refund: verified (signature, timestamp,
/// decryption), stored and applied exactly once. 204 when stored (a copy of one already stored
/// and one an operator must look at included); otherwise WeChat sends it again.
#[utoipa::path(post, path = "/v1/payments/wechat/notify", tag = "provider notifications",
    params(
        ("Wechatpay-Serial" = String, Header, description = "Id of the WeChat Pay public key that signed it (`PUB_KEY_ID_…`)"),
        ("Wechatpay-Timestamp" = String, Header, description = "Unix seconds; refused more than 5 minutes from our clock"),
        ("Wechatpay-Nonce" = String, Header, description = "Random string of the signature"),
        ("Wechatpay-Signature" = String, Header, description = "SHA256withRSA (base64) over `timestamp\\nnonce\\nbody\\n`"),
    ),
    request_body = WechatNotifyBody,
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "Verified, but the payment it reports cannot be read", body = WechatFail),
        (status = 401, description = "A signature header is missing, the key is not ours, the timestamp is stale, the signature does not verify, or the resource does not decrypt or read", body = WechatFail),
        (status = 404, description = "WeChat Pay is not enabled", body = WechatFail),
        (status = 413, description = "The body is over `http.body_limit_bytes`", content_type = "text/plain", body = String),
        (status = 500, description = "Verified but could not be stored or applied", body = WechatFail),
    ))]
pub async fn wechat_notify(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(client) = state.payments.wechat() else {
        return wechat_fail(StatusCode::NOT_FOUND, "WeChat Pay is not enabled");
    };
    let signed = notify_headers(&headers);
    let notification = match client.verify_notification(signed, &body, Utc::now()) {
        Ok(n) => n,
        Err(e) => {
            state
                .metrics
                .payment_notification(Provider::Wechat, e.outcome());
            tracing::warn!(error = %e, "Rejected a WeChat notification that does not verify");
            return wechat_fail(StatusCode::UNAUTHORIZED, e.to_string());
        }
    };
    let payment = match notification.event.payment().transpose() {
        Ok(p) => p,
        Err(e) => {
            state
                .metrics
                .payment_notification(Provider::Wechat, NotificationOutcome::RejectedMalformed);
            return wechat_fail(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    // A refund's outcome is applied before the notification is stored: applying is idempotent
    // (a refund that is not pending any more is left alone), so a crash in between only means
    // WeChat's next copy stores it.
    if let WechatEvent::Refund {
        out_refund_no,
        refund_status,
        refund_id,
        ..
    } = &notification.event
    {
        let applied = match refund_status.as_str() {
            "SUCCESS" => refunds::complete(&state.db, out_refund_no, refund_id.clone()).await,
            "ABNORMAL" | "CLOSED" => {
                let why = format!("WeChat REFUND.{refund_status}");
                refunds::fail(&state.db, out_refund_no, &why).await
            }
            _ => Ok(false),
        };
        match applied {
            Ok(true) => state
                .metrics
                .payment_notification(Provider::Wechat, NotificationOutcome::RefundApplied),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, out_refund_no, "Could not apply a refund notification; WeChat will retry");
                return wechat_fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not apply the refund",
                );
            }
        }
    }
    let raw = String::from_utf8_lossy(&body);
    let stored = store(
        &state,
        Provider::Wechat,
        Notification {
            provider: Provider::Wechat,
            event_id: &notification.id,
            out_trade_no: Some(notification.event.out_trade_no()),
            headers: json!({
                "Wechatpay-Timestamp": signed.timestamp,
                "Wechatpay-Nonce": signed.nonce,
                "Wechatpay-Serial": signed.serial,
                "Wechatpay-Signature": signed.signature,
                "event_type": notification.event_type,
            }),
            raw_body: &raw,
        },
        payment,
    )
    .await;
    match stored {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(()) => wechat_fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not store the notification",
        ),
    }
}

/// Alipay's notification of a trade's status: verified (`sign`), stored and applied exactly once.
/// Answered 200 whatever happened, as Alipay's protocol asks: the body is `success` when stored (a
/// copy of one already stored and one an operator must look at included) and `fail` otherwise
/// (it does not verify, has no `notify_id`, its payment cannot be read, or it could not be
/// stored), and Alipay sends it again.
#[utoipa::path(post, path = "/v1/payments/alipay/notify", tag = "provider notifications",
    request_body(content = AlipayNotifyForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`success` when stored, `fail` otherwise", content_type = "text/plain", body = AlipayReply),
        (status = 404, description = "`fail`: Alipay is not enabled", content_type = "text/plain", body = AlipayReply),
        (status = 413, description = "The body is over `http.body_limit_bytes`", content_type = "text/plain", body = String),
    ))]
pub async fn alipay_notify(State(state): State<AppState>, body: Bytes) -> Response {
    let Some(client) = state.payments.alipay() else {
        return (StatusCode::NOT_FOUND, "fail").into_response();
    };
    let notification = match client.verify_notification(&body) {
        Ok(n) => n,
        Err(e) => {
            state
                .metrics
                .payment_notification(Provider::Alipay, e.outcome());
            tracing::warn!(error = %e, "Rejected an Alipay notification that does not verify");
            return alipay_reply(false);
        }
    };
    let payment = match notification.payment().transpose() {
        Ok(p) => p,
        Err(e) => {
            state
                .metrics
                .payment_notification(Provider::Alipay, NotificationOutcome::RejectedMalformed);
            tracing::warn!(error = %e, "Rejected an Alipay notification it cannot read");
            return alipay_reply(false);
        }
    };
    let raw = String::from_utf8_lossy(&body);
    let stored = store(
        &state,
        Provider::Alipay,
        Notification {
            provider: Provider::Alipay,
            event_id: notification.notify_id().unwrap_or_default(),
            out_trade_no: notification.out_trade_no(),
            headers: json!({ "trade_status": notification.trade_status() }),
            raw_body: &raw,
        },
        payment,
    )
    .await;
    alipay_reply(stored.is_ok())
}

/// Where a buyer back from a cashier goes: `/vip` following the order.
fn back_to_vip(state: &AppState, order_id: Option<OrderId>) -> Response {
    let location = state.payments.order_page(order_id);
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// The order number an Alipay return names: the verified one's, else what the query string
/// says; `None` when that is not an order number of ours.
pub fn returned_order_no(verified: Option<&AlipayNotification>, query: &str) -> Option<String> {
    let out_trade_no = match verified {
        Some(ret) => ret.out_trade_no().map(str::to_owned),
        None => serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "out_trade_no"))
            .map(|(_, v)| v),
    };
    // An out_trade_no is short ASCII (WeChat takes 6 to 32 of these characters, Alipay up to
    // 64): anything else names no order of ours, and is not worth a query.
    let ours = |no: &String| {
        (1..=64).contains(&no.len())
            && no
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_|*-".contains(&b))
    };
    out_trade_no.filter(ours)
}

/// Alipay's synchronous return from its mobile or desktop cashier: the buyer's browser, back from
/// paying (or not), lands on `/vip` following the order live. The return's signature is verified,
/// but even a genuine return is not proof of payment: it never marks an order paid. It only
/// brings the order's next query forward, and the query or the notification pays it. A return
/// that does not verify redirects the same way and changes nothing.
#[utoipa::path(get, path = "/v1/payments/alipay/return", tag = "orders",
    params(
        ("out_trade_no" = Option<String>, Query, description = "Our order number, as Alipay sends it back"),
        ("sign" = Option<String>, Query, description = "Alipay's RSA2 signature over every other parameter but `sign_type`"),
    ),
    responses(
        (status = 303, description = "To `/vip?order=<id>` (or `/vip` for an order it does not know)",
            headers(("Location" = String, description = "Where the buyer goes"))),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn alipay_return(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let query = query.unwrap_or_default();
    let verified = match state.payments.alipay() {
        Some(client) => client.verify_return(query.as_bytes()).map_err(|e| {
            tracing::warn!(error = %e, "An Alipay return that does not verify; nothing changes");
        }),
        None => Err(()),
    };
    let Some(out_trade_no) = returned_order_no(verified.as_ref().ok(), &query) else {
        return Ok(back_to_vip(&state, None));
    };
    if verified.is_ok() {
        memberline_orders::store::payment_checks::check_now(&state.db, &out_trade_no).await?;
    }
    let order_id = memberline_orders::store::orders::id_of(&state.db, &out_trade_no).await?;
    Ok(back_to_vip(&state, order_id))
}

/// The caller's pending WeChat / Alipay order's code (`payment.code_url`) as a PNG QR image, to
/// show the buyer; rendered on the server.
#[utoipa::path(get, path = "/v1/orders/{id}/qr.png", tag = "orders", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, description = "The QR code", content_type = "image/png", body = PngImage),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired`", body = crate::http::error::ErrorBody),
        (status = 403, description = "`forbidden`: a staff token, which acts for no buyer", body = crate::http::error::ErrorBody),
        (status = 404, description = "`qr_not_available`: no such order of yours, or it is not a pending provider order paid by a QR code (`native`, `qr`)", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn qr_png(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<OrderId>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let not_available =
        || ApiError::not_found("qr_not_available", "no pending payment code for this order");
    let Path(id) = path.map_err(|_| not_available())?;
    let found =
        memberline_orders::store::orders::of_buyer(&state.db, id, caller.buyer_id()?, false)
            .await?
            .ok_or_else(not_available)?;
    let payment = memberline_orders::view::PaymentView::of(&found).ok_or_else(not_available)?;
    let code_url = payment.started.code_url.ok_or_else(not_available)?;
    let png = qr::png(&code_url).map_err(ApiError::internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=60"),
        ],
        png,
    )
        .into_response())
}

/// A PNG image (binary), for the OpenAPI document.
pub struct PngImage;

impl utoipa::PartialSchema for PngImage {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for PngImage {}

pub mod qr {
    //! A QR code as a PNG image: the `qrcode` crate encodes, the `png` crate writes; we only
    //! scale the modules to pixels and add the quiet zone.

    /// Pixels per module, and the quiet zone in modules (the standard asks for four).
    const SCALE: usize = 8;
    const QUIET: usize = 4;

    pub fn png(text: &str) -> anyhow::Result<Vec<u8>> {
        let code = qrcode::QrCode::new(text.as_bytes())?;
        let modules = code.width();
        let colors = code.to_colors();
        let side = (modules + 2 * QUIET) * SCALE;
        let mut pixels = vec![255u8; side * side];
        for (i, color) in colors.iter().enumerate() {
            if *color == qrcode::Color::Dark {
                let (x, y) = ((i % modules + QUIET) * SCALE, (i / modules + QUIET) * SCALE);
                for row in y..y + SCALE {
                    pixels[row * side + x..row * side + x + SCALE].fill(0);
                }
            }
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header()?.write_image_data(&pixels)?;
        Ok(out)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/payments/wechat/notify", post(wechat_notify))
        .route("/v1/payments/alipay/notify", post(alipay_notify))
        .route(
            memberline_orders::providers::ALIPAY_RETURN_PATH,
            get(alipay_return),
        )
        .route("/v1/orders/{id}/qr.png", get(qr_png))
}
