//! WeChat Pay API v3, Native (QR) payments, for one merchant: request authentication
//! (`WECHATPAY2-SHA256-RSA2048` over the raw request), signed answers (the five `Wechatpay-*`
//! headers on every response, 204 and errors included), orders, close, query, refunds, and the
//! buyer's payment that the control API triggers.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::keys;
use crate::notify::{self, PayloadOverrides};
use crate::state::{
    CodeRef, Emulator, Provider, RefundStatus, Shared, WechatPayment, WechatRefund, WechatState,
    WechatTrade, beijing_date,
};

/// How long a `code_url` can be paid when no `time_expire` was given.
pub const CODE_VALIDITY: chrono::TimeDelta = chrono::TimeDelta::hours(2);
/// Largest accepted difference between a request's timestamp and now.
const TIMESTAMP_TOLERANCE_SECS: i64 = 300;
/// At most this many refunds per order.
const MAX_REFUNDS: usize = 50;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v3/pay/transactions/native", post(create_native))
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}",
            get(query_by_out_trade_no),
        )
        .route(
            "/v3/pay/transactions/id/{transaction_id}",
            get(query_by_transaction_id),
        )
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}/close",
            post(close),
        )
        .route("/v3/refund/domestic/refunds", post(create_refund))
        .route(
            "/v3/refund/domestic/refunds/{out_refund_no}",
            get(query_refund),
        )
}

/// A `Request-ID` like WeChat's.
pub fn request_id() -> String {
    format!("08{}", keys::random_hex(40).to_uppercase())
}

/// A response signed as WeChat signs them: the body is serialized once and the signature covers
/// exactly those bytes (`TIMESTAMP\nNONCE\nBODY\n`, empty body for 204).
pub fn signed_response(emu: &Emulator, status: StatusCode, body: Option<&Value>) -> Response {
    let bytes = body
        .map(|v| serde_json::to_vec(v).unwrap_or_default())
        .unwrap_or_default();
    let timestamp = Utc::now().timestamp().to_string();
    let nonce = keys::random_alnum(32);
    let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(&bytes);
    message.push(b'\n');
    let signature = keys::sign_sha256_rsa(&emu.keys.wechat_platform_private, &message);
    let has_body = body.is_some();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("Wechatpay-Timestamp", timestamp);
    put("Wechatpay-Nonce", nonce);
    put("Wechatpay-Signature", signature);
    put("Wechatpay-Serial", emu.config.wechat.public_key_id.clone());
    put(
        "Wechatpay-Signature-Type",
        "WECHATPAY2-SHA256-RSA2048".into(),
    );
    put("Request-ID", request_id());
    if has_body {
        put("Content-Type", "application/json; charset=utf-8".into());
    }
    response
}

/// A signed error answer `{"code", "message"}`.
pub fn error(
    emu: &Emulator,
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> Response {
    let message = message.into();
    tracing::info!(status = status.as_u16(), code, %message, "wechat error answer");
    signed_response(
        emu,
        status,
        Some(&json!({ "code": code, "message": message })),
    )
}

/// Splits `WECHATPAY2-SHA256-RSA2048 k="v",k="v"` into its fields (any order, spaces allowed
/// after commas and around `=`).
pub fn parse_authorization(header: &str) -> Result<HashMap<String, String>, String> {
    let rest = header
        .trim()
        .strip_prefix("WECHATPAY2-SHA256-RSA2048")
        .ok_or("the Authorization scheme is not WECHATPAY2-SHA256-RSA2048")?;
    if !rest.starts_with([' ', '\t']) {
        return Err("the Authorization scheme is not WECHATPAY2-SHA256-RSA2048".into());
    }
    let mut fields = HashMap::new();
    let mut s = rest.trim_start();
    while !s.is_empty() {
        let eq = s.find('=').ok_or("malformed Authorization field")?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = s.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or("unterminated quoted value in Authorization")?;
            value = quoted[..end].to_string();
            s = quoted[end + 1..].trim_start();
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        if key.is_empty() {
            return Err("malformed Authorization field".into());
        }
        fields.insert(key, value);
        match s.strip_prefix(',') {
            Some(after) => s = after.trim_start(),
            None if s.is_empty() => {}
            None => return Err("malformed Authorization header".into()),
        }
    }
    Ok(fields)
}

/// Checks a request's `Authorization` over `METHOD\nPATH_AND_QUERY\nTIMESTAMP\nNONCE\nBODY\n`
/// with the raw body bytes and the URI as received.
fn authenticate(
    emu: &Emulator,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Response> {
    let refuse = |message: String| Err(error(emu, StatusCode::UNAUTHORIZED, "SIGN_ERROR", message));
    let Some(header) = headers.get("authorization").and_then(|h| h.to_str().ok()) else {
        return refuse("missing Authorization header".into());
    };
    let fields = match parse_authorization(header) {
        Ok(f) => f,
        Err(e) => return refuse(e),
    };
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");
    for name in ["mchid", "nonce_str", "timestamp", "serial_no", "signature"] {
        if field(name).is_empty() {
            return refuse(format!("Authorization lacks {name}"));
        }
    }
    if field("mchid") != emu.config.wechat.mchid {
        return refuse(format!("mchid {} is not a merchant here", field("mchid")));
    }
    if field("serial_no") != emu.config.wechat.merchant_serial {
        return refuse(format!(
            "serial_no {} is not the merchant certificate serial",
            field("serial_no")
        ));
    }
    let Ok(timestamp) = field("timestamp").parse::<i64>() else {
        return refuse("timestamp is not an integer number of seconds".into());
    };
    if (Utc::now().timestamp() - timestamp).abs() > TIMESTAMP_TOLERANCE_SECS {
        return refuse("timestamp is more than 5 minutes away from now".into());
    }
    let path_and_query = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let mut message = format!(
        "{}\n{}\n{}\n{}\n",
        method.as_str(),
        path_and_query,
        field("timestamp"),
        field("nonce_str")
    )
    .into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    if !keys::verify_sha256_rsa(
        &emu.keys.wechat_merchant_public,
        &message,
        field("signature"),
    ) {
        return refuse("signature verification failed".into());
    }
    Ok(())
}

#[derive(Deserialize)]
struct NativeAmount {
    total: i64,
    currency: Option<String>,
}

#[derive(Deserialize)]
struct NativeRequest {
    appid: String,
    mchid: String,
    description: String,
    out_trade_no: String,
    notify_url: String,
    amount: NativeAmount,
    time_expire: Option<String>,
    attach: Option<String>,
}

fn valid_out_trade_no(s: &str) -> bool {
    (6..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_|*-".contains(&b))
}

/// A notify URL: absolute http(s), no query string. Plain `http://` is accepted (the real
/// service requires HTTPS) because local gateways run without TLS.
fn valid_notify_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            !rest.is_empty()
                && !rest.starts_with('/')
                && !s.contains('?')
                && !s.contains('#')
                && s.len() <= 255
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(emu: &Emulator, body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            emu,
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            format!("invalid request body: {e}"),
        )
    })
}

async fn create_native(
    State(emu): State<Shared>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authenticate(&emu, &method, &uri, &headers, &body) {
        return r;
    }
    let req: NativeRequest = match parse_json(&emu, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let bad = |code: &str, message: &str| error(&emu, StatusCode::BAD_REQUEST, code, message);
    if req.mchid != emu.config.wechat.mchid {
        return bad("MCH_NOT_EXISTS", "mchid is not a merchant here");
    }
    if req.appid != emu.config.wechat.appid {
        return bad("APPID_MCHID_NOT_MATCH", "appid is not bound to this mchid");
    }
    let description_len = req.description.chars().count();
    if description_len == 0 || description_len > 127 {
        return bad("PARAM_ERROR", "description must be 1 to 127 characters");
    }
    if !valid_out_trade_no(&req.out_trade_no) {
        return bad(
            "PARAM_ERROR",
            "out_trade_no must be 6 to 32 characters of [0-9A-Za-z_|*-]",
        );
    }
    if !valid_notify_url(&req.notify_url) {
        return bad(
            "PARAM_ERROR",
            "notify_url must be an absolute http(s) URL without a query string",
        );
    }
    if req.amount.total < 1 {
        return bad("PARAM_ERROR", "amount.total must be at least 1");
    }
    let currency = req.amount.currency.clone().unwrap_or_else(|| "CNY".into());
    if currency != "CNY" {
        return bad("PARAM_ERROR", "amount.currency must be CNY");
    }
    if req.attach.as_ref().is_some_and(|a| a.chars().count() > 128) {
        return bad("PARAM_ERROR", "attach must be at most 128 characters");
    }
    let time_expire = match &req.time_expire {
        Some(t) => match DateTime::parse_from_rfc3339(t) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                return bad(
                    "PARAM_ERROR",
                    "time_expire must be RFC 3339, e.g. 2026-11-24T10:34:56+08:00",
                );
            }
        },
        None => None,
    };
    let now = Utc::now();
    let mut store = emu.store();
    let store = &mut *store;
    if let Some(existing) = store.wechat.get_mut(&req.out_trade_no) {
        match existing.state {
            WechatState::Success | WechatState::Refund => {
                return bad("ORDERPAID", "the order has been paid");
            }
            WechatState::Closed => return bad("ORDER_CLOSED", "the order has been closed"),
            WechatState::NotPay => {}
        }
        // `time_expire` can only be set on the first call: a different value later is ignored.
        let same = existing.appid == req.appid
            && existing.description == req.description
            && existing.notify_url == req.notify_url
            && existing.total == req.amount.total
            && existing.currency == currency
            && existing.attach.as_deref().unwrap_or("") == req.attach.as_deref().unwrap_or("");
        if !same {
            return bad(
                "INVALID_REQUEST",
                "out_trade_no was used before with different parameters",
            );
        }
        if existing.expires_at <= now {
            if existing.time_expire.is_some() {
                return bad(
                    "INVALID_REQUEST",
                    "the order has expired: its time_expire has passed",
                );
            }
            // The 2-hour code validity ran out: a new code_url for another 2 hours.
            let code_url = new_code_url(&mut store.ids);
            existing.code_url = code_url.clone();
            existing.expires_at = now + CODE_VALIDITY;
            let out_trade_no = existing.out_trade_no.clone();
            store.codes.insert(
                code_url.clone(),
                CodeRef {
                    provider: Provider::Wechat,
                    out_trade_no,
                    expires_at: now + CODE_VALIDITY,
                },
            );
            return signed_response(&emu, StatusCode::OK, Some(&json!({ "code_url": code_url })));
        }
        let code_url = existing.code_url.clone();
        return signed_response(&emu, StatusCode::OK, Some(&json!({ "code_url": code_url })));
    }
    let code_url = new_code_url(&mut store.ids);
    let expires_at = time_expire.unwrap_or(now + CODE_VALIDITY);
    store.codes.insert(
        code_url.clone(),
        CodeRef {
            provider: Provider::Wechat,
            out_trade_no: req.out_trade_no.clone(),
            expires_at,
        },
    );
    store.wechat.insert(
        req.out_trade_no.clone(),
        WechatTrade {
            appid: req.appid,
            mchid: req.mchid,
            description: req.description,
            out_trade_no: req.out_trade_no.clone(),
            notify_url: req.notify_url,
            total: req.amount.total,
            currency,
            time_expire: req.time_expire,
            attach: req.attach,
            code_url: code_url.clone(),
            created_at: now,
            expires_at,
            state: WechatState::NotPay,
            payment: None,
            refunded: 0,
            refunds: vec![],
        },
    );
    tracing::info!(out_trade_no = %req.out_trade_no, total = req.amount.total, "wechat native order created");
    signed_response(&emu, StatusCode::OK, Some(&json!({ "code_url": code_url })))
}

fn new_code_url(ids: &mut std::collections::HashSet<String>) -> String {
    loop {
        let code = format!("weixin://wxpay/bizpayurl?pr={}", keys::random_alnum(7));
        if ids.insert(code.clone()) {
            return code;
        }
    }
}

/// The `mchid` query parameter that query APIs require.
fn check_mchid_query(emu: &Emulator, query: Option<&str>) -> Result<(), Response> {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    match params.iter().find(|(k, _)| k == "mchid") {
        None => Err(error(
            emu,
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            "the mchid query parameter is required",
        )),
        Some((_, m)) if *m != emu.config.wechat.mchid => Err(error(
            emu,
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            "mchid does not match the Authorization mchid",
        )),
        Some(_) => Ok(()),
    }
}

async fn query_by_out_trade_no(
    State(emu): State<Shared>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    Path(out_trade_no): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authenticate(&emu, &method, &uri, &headers, &body) {
        return r;
    }
    if let Err(r) = check_mchid_query(&emu, query.as_deref()) {
        return r;
    }
    let found = emu
        .store()
        .wechat
        .get(&out_trade_no)
        .map(WechatTrade::transaction_json);
    match found {
        Some(t) => signed_response(&emu, StatusCode::OK, Some(&t)),
        None => error(
            &emu,
            StatusCode::NOT_FOUND,
            "ORDER_NOT_EXIST",
            "the order does not exist",
        ),
    }
}

async fn query_by_transaction_id(
    State(emu): State<Shared>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    Path(transaction_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authenticate(&emu, &method, &uri, &headers, &body) {
        return r;
    }
    if let Err(r) = check_mchid_query(&emu, query.as_deref()) {
        return r;
    }
    let found = emu
        .store()
        .wechat
        .values()
        .find(|t| {
            t.payment
                .as_ref()
                .is_some_and(|p| p.transaction_id == transaction_id)
        })
        .map(WechatTrade::transaction_json);
    match found {
        Some(t) => signed_response(&emu, StatusCode::OK, Some(&t)),
        None => error(
            &emu,
            StatusCode::NOT_FOUND,
            "ORDER_NOT_EXIST",
            "the order does not exist",
        ),
    }
}

#[derive(Deserialize)]
struct CloseRequest {
    mchid: String,
}

async fn close(
    State(emu): State<Shared>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    Path(out_trade_no): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authenticate(&emu, &method, &uri, &headers, &body) {
        return r;
    }
    let req: CloseRequest = match parse_json(&emu, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.mchid != emu.config.wechat.mchid {
        return error(
            &emu,
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            "mchid does not match the Authorization mchid",
        );
    }
    let mut store = emu.store();
    let Some(trade) = store.wechat.get_mut(&out_trade_no) else {
        drop(store);
        return error(
            &emu,
            StatusCode::NOT_FOUND,
            "ORDER_NOT_EXIST",
            "the order does not exist",
        );
    };
    match trade.state {
        WechatState::Success | WechatState::Refund => {
            drop(store);
            error(
                &emu,
                StatusCode::BAD_REQUEST,
                "ORDERPAID",
                "the order has been paid",
            )
        }
        WechatState::NotPay | WechatState::Closed => {
            trade.state = WechatState::Closed;
            drop(store);
            tracing::info!(%out_trade_no, "wechat order closed");
            signed_response(&emu, StatusCode::NO_CONTENT, None)
        }
    }
}

#[derive(Deserialize)]
struct RefundAmount {
    refund: i64,
    total: i64,
    currency: String,
}

#[derive(Deserialize)]
struct RefundRequest {
    out_trade_no: Option<String>,
    transaction_id: Option<String>,
    out_refund_no: String,
    reason: Option<String>,
    notify_url: Option<String>,
    amount: RefundAmount,
}

async fn create_refund(
    State(emu): State<Shared>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authenticate(&emu, &method, &uri, &headers, &body) {
        return r;
    }
    let req: RefundRequest = match parse_json(&emu, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let bad = |code: &str, message: &str| error(&emu, StatusCode::BAD_REQUEST, code, message);
    if req.out_trade_no.is_none() && req.transaction_id.is_none() {
        return bad("PARAM_ERROR", "out_trade_no or transaction_id is required");
    }
    if req.out_refund_no.is_empty()
        || req.out_refund_no.len() > 64
        || !req
            .out_refund_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
    {
        return bad(
            "PARAM_ERROR",
            "out_refund_no must be 1 to 64 characters of [0-9A-Za-z_-|*@]",
        );
    }
    if req.amount.refund < 1 || req.amount.total < 1 {
        return bad(
            "PARAM_ERROR",
            "amount.refund and amount.total must be at least 1",
        );
    }
    if req.amount.currency != "CNY" {
        return bad("PARAM_ERROR", "amount.currency must be CNY");
    }
    if req
        .notify_url
        .as_deref()
        .is_some_and(|u| !valid_notify_url(u))
    {
        return bad(
            "PARAM_ERROR",
            "notify_url must be an absolute http(s) URL without a query string",
        );
    }
    let now = Utc::now();
    let mut guard = emu.store();
    let store = &mut *guard;
    let trade_key = match &req.transaction_id {
        Some(tid) => store
            .wechat
            .values()
            .find(|t| t.payment.as_ref().is_some_and(|p| &p.transaction_id == tid))
            .map(|t| t.out_trade_no.clone()),
        None => req
            .out_trade_no
            .clone()
            .filter(|no| store.wechat.contains_key(no)),
    };
    if let Some(existing) = store.wechat_refunds.get(&req.out_refund_no) {
        // The same refund number again: the same refund, never a second one.
        if trade_key.as_deref() != Some(existing.out_trade_no.as_str()) {
            drop(guard);
            return bad(
                "INVALID_REQUEST",
                "out_refund_no was already used for another order",
            );
        }
        let answer = existing.json();
        drop(guard);
        return signed_response(&emu, StatusCode::OK, Some(&answer));
    }
    let Some(trade_key) = trade_key else {
        drop(guard);
        return error(
            &emu,
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_EXISTS",
            "the order does not exist",
        );
    };
    let trade = store
        .wechat
        .get_mut(&trade_key)
        .expect("trade looked up above");
    let refusal = if !trade.is_paid() {
        Some("the order has not been paid")
    } else if req.amount.total != trade.total {
        Some("amount.total does not equal the order total")
    } else if trade.refunds.len() >= MAX_REFUNDS {
        Some("an order can have at most 50 refunds")
    } else if trade.refunded + req.amount.refund > trade.total {
        Some("refund amount exceeds the refundable amount of the order")
    } else {
        None
    };
    if let Some(message) = refusal {
        drop(guard);
        return bad("INVALID_REQUEST", message);
    }
    let transaction_id = trade
        .payment
        .as_ref()
        .map(|p| p.transaction_id.clone())
        .unwrap_or_default();
    trade.refunded += req.amount.refund;
    trade.refunds.push(req.out_refund_no.clone());
    let refund_id = store.unique_id(|| format!("50{}", keys::random_digits(27)));
    let refund = WechatRefund {
        refund_id,
        out_refund_no: req.out_refund_no.clone(),
        transaction_id,
        out_trade_no: trade_key.clone(),
        reason: req.reason,
        notify_url: req.notify_url,
        refund: req.amount.refund,
        total: req.amount.total,
        currency: req.amount.currency,
        create_time: now,
        status: RefundStatus::Processing,
        success_time: None,
    };
    let answer = refund.json();
    store
        .wechat_refunds
        .insert(req.out_refund_no.clone(), refund);
    drop(guard);
    tracing::info!(out_trade_no = %trade_key, out_refund_no = %req.out_refund_no, amount = req.amount.refund, "wechat refund accepted");
    let background = emu.clone();
    let out_refund_no = req.out_refund_no;
    tokio::spawn(async move {
        tokio::time::sleep(background.config.scaled(Duration::from_secs(1))).await;
        complete_refund(&background, &out_refund_no);
    });
    signed_response(&emu, StatusCode::OK, Some(&answer))
}

/// The refund ends: normally SUCCESS (the order shows REFUND, `REFUND.SUCCESS` is sent); while
/// `/emulator/refund-outcome` says so, ABNORMAL (`REFUND.ABNORMAL`: the money did not reach
/// the buyer and stays counted against the order, as WeChat does until the merchant acts).
fn complete_refund(emu: &Shared, out_refund_no: &str) {
    let built = {
        let mut store = emu.store();
        let abnormal = store.wechat_refunds_end_abnormal;
        let Some(refund) = store.wechat_refunds.get_mut(out_refund_no) else {
            return;
        };
        if abnormal {
            refund.status = RefundStatus::Abnormal;
        } else {
            refund.status = RefundStatus::Success;
            refund.success_time = Some(Utc::now());
        }
        let refund = refund.clone();
        let Some(trade) = store.wechat.get_mut(&refund.out_trade_no) else {
            return;
        };
        if !abnormal {
            trade.state = WechatState::Refund;
        }
        let trade = trade.clone();
        notify::wechat_refund_outcome(emu, &trade, &refund)
    };
    match built {
        Ok(n) => notify::dispatch(emu, n),
        Err(e) => tracing::error!("cannot build the refund notification: {e:#}"),
    }
}

async fn query_refund(
    State(emu): State<Shared>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    Path(out_refund_no): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authenticate(&emu, &method, &uri, &headers, &body) {
        return r;
    }
    let found = emu
        .store()
        .wechat_refunds
        .get(&out_refund_no)
        .map(WechatRefund::json);
    match found {
        Some(r) => signed_response(&emu, StatusCode::OK, Some(&r)),
        None => error(
            &emu,
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_EXISTS",
            "the refund does not exist",
        ),
    }
}

/// Why a buyer's payment did not happen.
#[derive(Debug)]
pub enum PayError {
    NotFound,
    Conflict(String),
}

/// The buyer scans and pays: NOTPAY → SUCCESS, then `TRANSACTION.SUCCESS` is delivered.
/// `code` is the scanned code_url (its own validity applies); without it, the current one's.
/// `force` pays even a closed or expired order: a payment that raced the merchant's close.
pub fn pay(
    emu: &Shared,
    out_trade_no: &str,
    code: Option<&str>,
    force: bool,
) -> Result<String, PayError> {
    let now = Utc::now();
    let trade = {
        let mut guard = emu.store();
        let store = &mut *guard;
        let code_expiry = code.and_then(|c| store.codes.get(c)).map(|c| c.expires_at);
        let Some(trade) = store.wechat.get_mut(out_trade_no) else {
            return Err(PayError::NotFound);
        };
        if trade.is_paid() {
            return Err(PayError::Conflict("the order has already been paid".into()));
        }
        if trade.state == WechatState::Closed && !force {
            return Err(PayError::Conflict("the order has been closed".into()));
        }
        if code_expiry.unwrap_or(trade.expires_at) <= now && !force {
            return Err(PayError::Conflict("the code has expired".into()));
        }
        let date = beijing_date(now);
        let transaction_id = loop {
            let id = format!("4200001234{date}{}", keys::random_digits(10));
            if store.ids.insert(id.clone()) {
                break id;
            }
        };
        let trade = store.wechat.get_mut(out_trade_no).expect("present");
        trade.state = WechatState::Success;
        trade.payment = Some(WechatPayment {
            transaction_id,
            success_time: now,
            openid: format!("o{}", keys::random_alnum(27)),
        });
        trade.clone()
    };
    tracing::info!(%out_trade_no, force, "wechat order paid");
    let transaction_id = trade
        .payment
        .as_ref()
        .map(|p| p.transaction_id.clone())
        .unwrap_or_default();
    match notify::wechat_transaction_success(emu, &trade, &PayloadOverrides::default()) {
        Ok(n) => notify::dispatch(emu, n),
        Err(e) => tracing::error!("cannot build TRANSACTION.SUCCESS: {e:#}"),
    }
    Ok(transaction_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_fields_parse_in_any_order_with_spaces() {
        let f = parse_authorization(
            r#"WECHATPAY2-SHA256-RSA2048 signature="a/b+c==", mchid="1900000109",nonce_str="N", timestamp="1",serial_no="S""#,
        )
        .unwrap();
        assert_eq!(f["mchid"], "1900000109");
        assert_eq!(f["signature"], "a/b+c==");
        assert_eq!(f["serial_no"], "S");
        assert!(parse_authorization("Bearer x").is_err());
        assert!(parse_authorization(r#"WECHATPAY2-SHA256-RSA2048 mchid="1"#).is_err());
    }

    #[test]
    fn out_trade_numbers_and_notify_urls_are_checked_like_wechat_does() {
        assert!(valid_out_trade_no("ML_2026-11*24|x"));
        assert!(!valid_out_trade_no("short"));
        assert!(!valid_out_trade_no("has space 123"));
        assert!(valid_notify_url("https://pay.example.com/notify/wechat"));
        assert!(valid_notify_url("http://127.0.0.1:8080/notify"));
        assert!(!valid_notify_url("https://pay.example.com/notify?x=1"));
        assert!(!valid_notify_url("ftp://x/y"));
    }
}
