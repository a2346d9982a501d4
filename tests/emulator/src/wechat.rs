//! WeChat Pay API v3 for one merchant: request authentication (`WECHATPAY2-SHA256-RSA2048` over
//! the raw request), signed answers (the five `Wechatpay-*` headers on every response, 204 and
//! errors included), Native (QR), JSAPI and H5 orders, close, query, refunds, and the buyer's
//! payment that the control API and the H5 cashier trigger, with the JSAPI front-end parameters
//! checked as WeChat's client checks them.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::keys;
use crate::notify::{self, PayloadOverrides};
use crate::state::{
    CodeRef, Emulator, Provider, RefundStatus, Shared, Store, WechatChannel, WechatPayment,
    WechatRefund, WechatState, WechatTrade, beijing, beijing_date,
};

/// How long a `code_url` or `prepay_id` can be paid when no `time_expire` was given.
pub const CODE_VALIDITY: chrono::TimeDelta = chrono::TimeDelta::hours(2);
/// How long one H5 cashier URL (one `package`) can be opened.
pub const H5_URL_VALIDITY: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// Where WeChat's H5 cashier lives (on the host the order was created at).
pub const H5_CASHIER_PATH: &str = "/cgi-bin/mmpayweb-bin/checkmweb";
/// Largest accepted difference between a request's timestamp and now.
const TIMESTAMP_TOLERANCE_SECS: i64 = 300;
/// At most this many refunds per order.
const MAX_REFUNDS: usize = 50;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/v3/pay/transactions/native",
            post(|s, m, u, h, b| create(TradeType::Native, s, m, u, h, b)),
        )
        .route(
            "/v3/pay/transactions/jsapi",
            post(|s, m, u, h, b| create(TradeType::Jsapi, s, m, u, h, b)),
        )
        .route(
            "/v3/pay/transactions/h5",
            post(|s, m, u, h, b| create(TradeType::H5, s, m, u, h, b)),
        )
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

/// The create APIs, one per way of paying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TradeType {
    Native,
    Jsapi,
    H5,
}

impl TradeType {
    fn code(self) -> &'static str {
        match self {
            TradeType::Native => "NATIVE",
            TradeType::Jsapi => "JSAPI",
            TradeType::H5 => "MWEB",
        }
    }
}

#[derive(Deserialize)]
struct OrderAmount {
    total: i64,
    currency: Option<String>,
}

#[derive(Deserialize)]
struct Payer {
    openid: Option<String>,
}

#[derive(Deserialize)]
struct H5Info {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct SceneInfo {
    payer_client_ip: Option<String>,
    h5_info: Option<H5Info>,
}

/// The body of every create API: Native's fields, JSAPI's `payer`, H5's `scene_info`.
#[derive(Deserialize)]
struct OrderRequest {
    appid: String,
    mchid: String,
    description: String,
    out_trade_no: String,
    notify_url: String,
    amount: OrderAmount,
    time_expire: Option<String>,
    attach: Option<String>,
    payer: Option<Payer>,
    scene_info: Option<SceneInfo>,
}

/// H5 orders must say where the buyer's browser is: a client IP and the kind of page.
fn check_h5_scene(scene: Option<&SceneInfo>) -> Result<(), &'static str> {
    let scene = scene.ok_or("scene_info is required for H5 orders")?;
    scene
        .payer_client_ip
        .as_deref()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .ok_or("scene_info.payer_client_ip must be the buyer's IPv4 or IPv6 address")?;
    let kind = scene
        .h5_info
        .as_ref()
        .ok_or("scene_info.h5_info is required for H5 orders")?
        .kind
        .as_deref();
    match kind {
        Some("Wap" | "iOS" | "Android") => Ok(()),
        _ => Err("scene_info.h5_info.type must be Wap, iOS or Android"),
    }
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

/// The create APIs (`native`, `jsapi`, `h5`): the same authentication, body and rules, plus the
/// `payer` of JSAPI and the `scene_info` of H5. Calling again with the same parameters while the
/// order is unpaid answers its current code_url / prepay_id (an H5 order gets a new cashier URL).
async fn create(
    trade_type: TradeType,
    State(emu): State<Shared>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authenticate(&emu, &method, &uri, &headers, &body) {
        return r;
    }
    let req: OrderRequest = match parse_json(&emu, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let bad = |code: &str, message: &str| error(&emu, StatusCode::BAD_REQUEST, code, message);
    if req.mchid != emu.config.wechat.mchid {
        return bad("MCH_NOT_EXISTS", "mchid is not a merchant here");
    }
    if !emu.config.wechat.binds(&req.appid) {
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
    let payer = match trade_type {
        TradeType::Jsapi => match req.payer.as_ref().and_then(|p| p.openid.clone()) {
            Some(openid) if !openid.is_empty() => Some(openid),
            _ => return bad("PARAM_ERROR", "payer.openid is required for JSAPI orders"),
        },
        TradeType::Native | TradeType::H5 => None,
    };
    if trade_type == TradeType::H5
        && let Err(message) = check_h5_scene(req.scene_info.as_ref())
    {
        return bad("PARAM_ERROR", message);
    }
    // The H5 cashier URL points back at whichever address the merchant reached us by.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".into());
    let now = Utc::now();
    let mut guard = emu.store();
    let store = &mut *guard;
    // WeChat only accepts a buyer that logged in to the order's own app.
    if let Some(openid) = &payer
        && !store.openids.contains(&(req.appid.clone(), openid.clone()))
    {
        return bad("PARAM_ERROR", "openid and appid do not match");
    }
    if let Some(existing) = store.wechat.get_mut(&req.out_trade_no) {
        match existing.state {
            WechatState::Success | WechatState::Refund => {
                return bad("ORDERPAID", "the order has been paid");
            }
            WechatState::Closed => return bad("ORDER_CLOSED", "the order has been closed"),
            WechatState::NotPay => {}
        }
        let same_payer = match &existing.channel {
            WechatChannel::Jsapi { openid, .. } => payer.as_ref() == Some(openid),
            _ => true,
        };
        // `time_expire` can only be set on the first call: a different value later is ignored.
        let same = existing.appid == req.appid
            && existing.channel.trade_type() == trade_type.code()
            && same_payer
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
            // The 2-hour validity ran out: a new code_url / prepay_id for another 2 hours.
            let expires_at = now + CODE_VALIDITY;
            let channel = issue(store, trade_type, payer, &req.out_trade_no, expires_at, now);
            if let Some(renewed) = store.wechat.get_mut(&req.out_trade_no) {
                renewed.channel = channel;
                renewed.expires_at = expires_at;
            }
        }
        let answer = create_answer(store, &req.out_trade_no, &host, now);
        return signed_response(&emu, StatusCode::OK, Some(&answer));
    }
    let expires_at = time_expire.unwrap_or(now + CODE_VALIDITY);
    let channel = issue(store, trade_type, payer, &req.out_trade_no, expires_at, now);
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
            channel,
            created_at: now,
            expires_at,
            state: WechatState::NotPay,
            payment: None,
            refunded: 0,
            refunds: vec![],
        },
    );
    let answer = create_answer(store, &req.out_trade_no, &host, now);
    drop(guard);
    tracing::info!(out_trade_no = %req.out_trade_no, total = req.amount.total, trade_type = trade_type.code(), "wechat order created");
    signed_response(&emu, StatusCode::OK, Some(&answer))
}

/// A fresh credential of `trade_type` for an order: a code_url (registered as a code that
/// expires with the order) or a prepay_id.
fn issue(
    store: &mut Store,
    trade_type: TradeType,
    payer: Option<String>,
    out_trade_no: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> WechatChannel {
    match trade_type {
        TradeType::Native => {
            let code_url = new_code_url(&mut store.ids);
            store.codes.insert(
                code_url.clone(),
                CodeRef {
                    provider: Provider::Wechat,
                    out_trade_no: out_trade_no.into(),
                    expires_at,
                },
            );
            WechatChannel::Native { code_url }
        }
        // `create` refuses a JSAPI order without a payer before it gets here.
        TradeType::Jsapi => WechatChannel::Jsapi {
            prepay_id: new_prepay_id(store, now),
            openid: payer.unwrap_or_default(),
        },
        TradeType::H5 => WechatChannel::H5 {
            prepay_id: new_prepay_id(store, now),
        },
    }
}

/// A prepay_id like WeChat's: `wx`, the Beijing time `yyyyMMddHHmmss`, 20 random characters.
fn new_prepay_id(store: &mut Store, now: DateTime<Utc>) -> String {
    let stamp = now.with_timezone(&beijing()).format("%Y%m%d%H%M%S");
    store.unique_id(|| format!("wx{stamp}{}", keys::random_hex(20)))
}

/// The create API's answer for the order's current credential. Each H5 answer is a new cashier
/// URL (a new `package`, valid 5 minutes and never beyond the order's own validity).
fn create_answer(store: &mut Store, out_trade_no: &str, host: &str, now: DateTime<Utc>) -> Value {
    let Some(trade) = store.wechat.get(out_trade_no) else {
        return Value::Null;
    };
    match &trade.channel {
        WechatChannel::Native { code_url } => json!({ "code_url": code_url }),
        WechatChannel::Jsapi { prepay_id, .. } => json!({ "prepay_id": prepay_id }),
        WechatChannel::H5 { prepay_id } => {
            let prepay_id = prepay_id.clone();
            let expires_at = (now + H5_URL_VALIDITY).min(trade.expires_at);
            let package = store.unique_id(|| keys::random_digits(10));
            store.codes.insert(
                package.clone(),
                CodeRef {
                    provider: Provider::Wechat,
                    out_trade_no: out_trade_no.into(),
                    expires_at,
                },
            );
            json!({
                "h5_url": format!(
                    "http://{host}{H5_CASHIER_PATH}?prepay_id={prepay_id}&package={package}"
                )
            })
        }
    }
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
    /// The JSAPI front-end parameters are not what WeChat's client accepts.
    Invalid(String),
}

/// What a merchant hands its front end to pay a JSAPI order (`wx.requestPayment`,
/// `WeixinJSBridge.invoke('getBrandWCPayRequest', …)`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JsapiParams {
    pub app_id: String,
    pub time_stamp: String,
    pub nonce_str: String,
    pub package: String,
    pub sign_type: String,
    pub pay_sign: String,
}

/// Checks the front-end parameters as WeChat's client does before it shows the payment sheet:
/// they name the order's app and prepay_id, and `paySign` is the merchant's SHA256withRSA
/// signature over `appId\ntimeStamp\nnonceStr\npackage\n`.
pub fn check_jsapi_params(
    emu: &Emulator,
    out_trade_no: &str,
    p: &JsapiParams,
) -> Result<(), PayError> {
    let (appid, prepay_id) = {
        let store = emu.store();
        let trade = store.wechat.get(out_trade_no).ok_or(PayError::NotFound)?;
        match &trade.channel {
            WechatChannel::Jsapi { prepay_id, .. } => (trade.appid.clone(), prepay_id.clone()),
            _ => {
                return Err(PayError::Invalid(
                    "the order is not a JSAPI order: it has no prepay_id to pay".into(),
                ));
            }
        }
    };
    let invalid = |m: &str| Err(PayError::Invalid(m.into()));
    if p.app_id != appid {
        return invalid("appId is not the order's appid");
    }
    if p.package != format!("prepay_id={prepay_id}") {
        return invalid("package is not prepay_id=<the order's prepay_id>");
    }
    if p.sign_type != "RSA" {
        return invalid("signType must be RSA");
    }
    if p.time_stamp.is_empty() || !p.time_stamp.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("timeStamp must be a string of seconds");
    }
    if p.nonce_str.is_empty() || p.nonce_str.len() > 32 {
        return invalid("nonceStr must be 1 to 32 characters");
    }
    let message = format!(
        "{}\n{}\n{}\n{}\n",
        p.app_id, p.time_stamp, p.nonce_str, p.package
    );
    if !keys::verify_sha256_rsa(
        &emu.keys.wechat_merchant_public,
        message.as_bytes(),
        &p.pay_sign,
    ) {
        return invalid("paySign does not verify with the merchant public key");
    }
    Ok(())
}

/// The buyer pays: NOTPAY → SUCCESS, then `TRANSACTION.SUCCESS` is delivered. `code` is the
/// scanned code_url or the H5 cashier's package (its own validity applies); without it, the
/// order's current code_url / prepay_id validity applies.
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
            openid: trade.buyer_openid(),
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
