//! The Alipay open API gateway (`/gateway.do`) for one application: parameter parsing (query
//! string ∪ form body), RSA2 request verification, signed `*_response` answers, the trade
//! methods (precreate, query, close, refund, refund query), the browser-facing cashier methods
//! (`alipay.trade.wap.pay`, `alipay.trade.page.pay`, answered with an HTML cashier, see
//! `cashier.rs`), and the buyer's scan and payment that the control API and the cashier trigger.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{Map, Value, json};

use crate::notify::{self, AlipayRefundInfo, PayloadOverrides};
use crate::state::{
    AlipayChannel, AlipayRefund, AlipayScan, AlipayStatus, AlipayTrade, CodeRef, Emulator,
    Provider, Shared, Store, alipay_time, beijing, beijing_date, format_yuan, parse_yuan,
};
use crate::{cashier, html, keys};

/// Validity of a precreated code (or an opened cashier) without `timeout_express` /
/// `time_expire`.
pub const DEFAULT_TIMEOUT: TimeDelta = TimeDelta::hours(2);
const MAX_TOTAL_FEN: i64 = 100_000_000 * 100;
/// Server-to-server methods, answered with signed JSON.
const API_METHODS: [&str; 5] = [
    "alipay.trade.precreate",
    "alipay.trade.query",
    "alipay.trade.close",
    "alipay.trade.refund",
    "alipay.trade.fastpay.refund.query",
];
/// Methods the merchant hands to the buyer's browser, answered with an HTML cashier.
const CASHIER_METHODS: [&str; 2] = ["alipay.trade.wap.pay", "alipay.trade.page.pay"];

pub fn routes() -> Router<Shared> {
    Router::new().route("/gateway.do", get(gateway).post(gateway))
}

/// A trade number like Alipay's: `yyyyMMdd22001` + 15 digits.
pub fn new_trade_no() -> String {
    format!(
        "{}22001{}",
        beijing_date(Utc::now()),
        keys::random_digits(15)
    )
}

/// A buyer's user id: `2088` + 12 digits.
pub fn new_buyer_id() -> String {
    format!("2088{}", keys::random_digits(12))
}

/// A masked buyer logon id as Alipay shows it.
pub fn new_logon_id() -> String {
    format!("13{}****{}", keys::random_digits(1), keys::random_digits(4))
}

/// The signing content of a request: every parameter except `sign`, empty values dropped,
/// sorted by key (ASCII), `k=v` joined with `&`, raw values.
pub fn request_sign_content(params: &[(String, String)]) -> String {
    let mut pairs: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, v)| k != "sign" && !v.is_empty())
        .collect();
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Replaces `{` and `}` in every string so that clients that find the signed object by counting
/// braces are not misled.
fn strip_braces(v: &mut Value) {
    match v {
        Value::String(s) if s.contains(['{', '}']) => *s = s.replace('{', "(").replace('}', ")"),
        Value::Array(a) => a.iter_mut().for_each(strip_braces),
        Value::Object(o) => o.values_mut().for_each(strip_braces),
        _ => {}
    }
}

/// `{"<key>":<fields>,"sign":"…"}` where the signature covers exactly the bytes of `<fields>`.
fn respond(emu: &Emulator, key: &str, fields: Map<String, Value>) -> Response {
    let mut inner = Value::Object(fields);
    strip_braces(&mut inner);
    let inner = serde_json::to_string(&inner).unwrap_or_else(|_| "{}".into());
    let sign = keys::sign_sha256_rsa(&emu.keys.alipay_private, inner.as_bytes());
    let body = format!("{{\"{key}\":{inner},\"sign\":\"{sign}\"}}");
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        "Content-Type",
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}

fn success() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("code".into(), json!("10000"));
    m.insert("msg".into(), json!("Success"));
    m
}

fn failure(code: &str, msg: &str, sub_code: &str, sub_msg: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("code".into(), json!(code));
    m.insert("msg".into(), json!(msg));
    m.insert("sub_code".into(), json!(sub_code));
    m.insert("sub_msg".into(), json!(sub_msg));
    m
}

/// A business failure (`40004 Business Failed`).
fn business(sub_code: &str, sub_msg: &str) -> Map<String, Value> {
    failure("40004", "Business Failed", sub_code, sub_msg)
}

fn invalid_arguments(sub_code: &str, sub_msg: &str) -> Map<String, Value> {
    failure("40002", "Invalid Arguments", sub_code, sub_msg)
}

fn missing_arguments(sub_code: &str, sub_msg: &str) -> Map<String, Value> {
    failure("40001", "Missing Required Arguments", sub_code, sub_msg)
}

/// The union of the query string and a form body, percent-decoded as UTF-8 (the first occurrence
/// of a name wins).
fn parse_params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, String> {
    let mut params: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| format!("bad query string: {e}"))?;
    let content_type = headers
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !body.is_empty() {
        if content_type.is_empty() || content_type.starts_with("application/x-www-form-urlencoded")
        {
            let form: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).map_err(|e| format!("bad form body: {e}"))?;
            params.extend(form);
        } else {
            return Err(format!("unsupported Content-Type {content_type}"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    params.retain(|(k, _)| seen.insert(k.clone()));
    Ok(params)
}

/// The value of one request parameter, empty when absent.
fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The common parameters every method carries, and the RSA2 signature over all of them but
/// `sign`.
fn verify_request(emu: &Emulator, params: &[(String, String)]) -> Result<(), Map<String, Value>> {
    let get = |name: &str| param(params, name);
    let app_id = get("app_id");
    if app_id.is_empty() {
        return Err(missing_arguments("isv.missing-app-id", "app_id is missing"));
    }
    if app_id != emu.config.alipay.app_id {
        return Err(invalid_arguments(
            "isv.invalid-app-id",
            "app_id is not an application here",
        ));
    }
    let charset = get("charset");
    if !charset.is_empty() && !charset.eq_ignore_ascii_case("utf-8") {
        return Err(invalid_arguments(
            "isv.invalid-charset",
            "only utf-8 is supported here",
        ));
    }
    if !matches!(get("format"), "" | "json" | "JSON") {
        return Err(invalid_arguments(
            "isv.invalid-format",
            "format must be json",
        ));
    }
    match get("sign_type") {
        "RSA2" => {}
        "" => {
            return Err(missing_arguments(
                "isv.missing-signature-type",
                "sign_type is missing",
            ));
        }
        _ => {
            return Err(invalid_arguments(
                "isv.invalid-signature-type",
                "only RSA2 is supported here",
            ));
        }
    }
    let sign = get("sign");
    if sign.is_empty() {
        return Err(missing_arguments(
            "isv.missing-signature",
            "sign is missing",
        ));
    }
    let content = request_sign_content(params);
    if !keys::verify_sha256_rsa(&emu.keys.alipay_app_public, content.as_bytes(), sign) {
        tracing::info!(
            method = get("method"),
            "alipay request with a bad signature"
        );
        return Err(invalid_arguments(
            "isv.invalid-signature",
            "the signature does not verify with the application public key",
        ));
    }
    Ok(())
}

fn biz_content(params: &[(String, String)]) -> Result<Map<String, Value>, Map<String, Value>> {
    match serde_json::from_str::<Value>(param(params, "biz_content")) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(business(
            "ACQ.INVALID_PARAMETER",
            "biz_content is missing or not a JSON object",
        )),
    }
}

async fn gateway(
    State(emu): State<Shared>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: &[u8] = if method == Method::GET { &[] } else { &body };
    let params = match parse_params(query.as_deref(), &headers, body) {
        Ok(p) => p,
        Err(e) => {
            return respond(
                &emu,
                "error_response",
                invalid_arguments("isv.invalid-parameter", &e),
            );
        }
    };
    let api_method = param(&params, "method");
    if api_method.is_empty() {
        return respond(
            &emu,
            "error_response",
            missing_arguments("isv.missing-method", "method is missing"),
        );
    }
    let outcome = verify_request(&emu, &params).and_then(|()| biz_content(&params));
    if CASHIER_METHODS.contains(&api_method) {
        // The browser gets a page either way: the cashier, or Alipay's error page.
        return match outcome.and_then(|biz| open_cashier(&emu, api_method, &biz, &params)) {
            Ok(trade) => cashier::alipay_cashier_page(&trade),
            Err(e) => cashier::alipay_error_page(&e),
        };
    }
    if !API_METHODS.contains(&api_method) {
        return respond(
            &emu,
            "error_response",
            invalid_arguments("isv.invalid-method", "no such method"),
        );
    }
    let key = format!("{}_response", api_method.replace('.', "_"));
    let biz = match outcome {
        Ok(biz) => biz,
        Err(e) => return respond(&emu, &key, e),
    };
    let notify_url = Some(param(&params, "notify_url").to_string()).filter(|u| !u.is_empty());
    let answer = match api_method {
        "alipay.trade.precreate" => precreate(&emu, &biz, notify_url),
        "alipay.trade.query" => query_trade(&emu, &biz),
        "alipay.trade.close" => close(&emu, &biz),
        "alipay.trade.refund" => refund(&emu, &biz),
        _ => refund_query(&emu, &biz),
    };
    respond(&emu, &key, answer)
}

/// A biz_content field as text (Alipay accepts amounts as JSON numbers too).
fn text(biz: &Map<String, Value>, name: &str) -> String {
    match biz.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// `timeout_express`: `<n>m`, `<n>h`, `<n>d` (1 minute to 15 days) or `1c` (end of today).
fn parse_timeout(s: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if s == "1c" {
        let today = now.with_timezone(&beijing()).date_naive();
        let end = today.and_hms_opt(23, 59, 59)?;
        return beijing()
            .from_local_datetime(&end)
            .single()
            .map(|t| t.with_timezone(&Utc));
    }
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - 1].parse().ok()?;
    let span = match unit {
        'm' => TimeDelta::try_minutes(n)?,
        'h' => TimeDelta::try_hours(n)?,
        'd' => TimeDelta::try_days(n)?,
        _ => return None,
    };
    (span >= TimeDelta::minutes(1) && span <= TimeDelta::days(15)).then(|| now + span)
}

fn new_qr_code(ids: &mut std::collections::HashSet<String>) -> String {
    loop {
        let code = format!("https://qr.alipay.com/bax0{}", keys::random_lower_alnum(20));
        if ids.insert(code.clone()) {
            return code;
        }
    }
}

/// What every trade-creating method says about the trade (`biz_content`), validated alike.
struct Terms {
    out_trade_no: String,
    /// In fen.
    total: i64,
    subject: String,
    body: Option<String>,
    passback_params: Option<String>,
    timeout_express: Option<String>,
    expires_at: DateTime<Utc>,
}

fn order_terms(biz: &Map<String, Value>, now: DateTime<Utc>) -> Result<Terms, Map<String, Value>> {
    let out_trade_no = text(biz, "out_trade_no");
    if out_trade_no.is_empty() || out_trade_no.len() > 64 {
        return Err(business(
            "ACQ.INVALID_PARAMETER",
            "out_trade_no must be 1 to 64 characters",
        ));
    }
    let Some(total) =
        parse_yuan(&text(biz, "total_amount")).filter(|t| (1..=MAX_TOTAL_FEN).contains(t))
    else {
        return Err(business(
            "ACQ.INVALID_PARAMETER",
            "total_amount must be 0.01 to 100000000 with at most 2 decimals",
        ));
    };
    let subject = text(biz, "subject");
    if subject.is_empty() || subject.chars().count() > 256 {
        return Err(business(
            "ACQ.INVALID_PARAMETER",
            "subject must be 1 to 256 characters",
        ));
    }
    let timeout_express = Some(text(biz, "timeout_express")).filter(|t| !t.is_empty());
    let time_expire = Some(text(biz, "time_expire")).filter(|t| !t.is_empty());
    // An absolute time_expire wins over a relative timeout_express, as at Alipay.
    let expires_at = match (&time_expire, &timeout_express) {
        (Some(t), _) => parse_time_expire(t).filter(|e| *e > now).ok_or_else(|| {
            business(
                "ACQ.INVALID_PARAMETER",
                "time_expire must be a future yyyy-MM-dd HH:mm:ss",
            )
        })?,
        (None, Some(t)) => parse_timeout(t, now).ok_or_else(|| {
            business("ACQ.INVALID_PARAMETER", "timeout_express must be 1m to 15d")
        })?,
        (None, None) => now + DEFAULT_TIMEOUT,
    };
    Ok(Terms {
        out_trade_no,
        total,
        subject,
        body: Some(text(biz, "body")).filter(|b| !b.is_empty()),
        passback_params: Some(text(biz, "passback_params")).filter(|b| !b.is_empty()),
        timeout_express,
        expires_at,
    })
}

/// `time_expire`: `yyyy-MM-dd HH:mm:ss` in Beijing time.
fn parse_time_expire(s: &str) -> Option<DateTime<Utc>> {
    let local = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok()?;
    beijing()
        .from_local_datetime(&local)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// A new trade on the merchant's side of Alipay: not yet scanned or opened.
fn new_trade(terms: Terms, notify_url: Option<String>, channel: AlipayChannel) -> AlipayTrade {
    AlipayTrade {
        out_trade_no: terms.out_trade_no,
        total: terms.total,
        subject: terms.subject,
        body: terms.body,
        passback_params: terms.passback_params,
        notify_url,
        channel,
        created_at: Utc::now(),
        timeout_express: terms.timeout_express,
        expires_at: terms.expires_at,
        close_requested_before_scan: false,
        scan: None,
        status: AlipayStatus::WaitBuyerPay,
        gmt_payment: None,
        gmt_close: None,
        refunded: 0,
        refunds: vec![],
    }
}

/// Whether the same out_trade_no may be asked for again by `method` with `total`: only while
/// unpaid and open, for the same amount, by the same method.
fn check_again(trade: &AlipayTrade, total: i64, method: &str) -> Result<(), Map<String, Value>> {
    if trade.is_paid() {
        return Err(business("ACQ.TRADE_HAS_SUCCESS", "the trade has been paid"));
    }
    if trade.status == AlipayStatus::TradeClosed {
        return Err(business("ACQ.TRADE_HAS_CLOSE", "the trade has been closed"));
    }
    if trade.total != total {
        return Err(business(
            "ACQ.CONTEXT_INCONSISTENT",
            "the trade exists with a different total_amount",
        ));
    }
    if trade.channel.method() != method {
        return Err(business(
            "ACQ.CONTEXT_INCONSISTENT",
            "the trade exists, created by another method",
        ));
    }
    Ok(())
}

fn precreate(
    emu: &Shared,
    biz: &Map<String, Value>,
    notify_url: Option<String>,
) -> Map<String, Value> {
    let now = Utc::now();
    let terms = match order_terms(biz, now) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let out_trade_no = terms.out_trade_no.clone();
    let mut guard = emu.store();
    let store = &mut *guard;
    let qr_code = if let Some(trade) = store.alipay.get_mut(&out_trade_no) {
        if let Err(e) = check_again(trade, terms.total, "alipay.trade.precreate") {
            return e;
        }
        if trade.expires_at <= now && trade.scan.is_none() {
            // The old code ran out before anyone scanned it: a fresh code.
            let qr_code = new_qr_code(&mut store.ids);
            trade.channel = AlipayChannel::Qr {
                qr_code: qr_code.clone(),
            };
            trade.expires_at = terms.expires_at;
            trade.timeout_express = terms.timeout_express;
            store.codes.insert(
                qr_code.clone(),
                CodeRef {
                    provider: Provider::Alipay,
                    out_trade_no: out_trade_no.clone(),
                    expires_at: trade.expires_at,
                },
            );
        }
        trade.channel.qr_code().unwrap_or_default().to_string()
    } else {
        let qr_code = new_qr_code(&mut store.ids);
        store.codes.insert(
            qr_code.clone(),
            CodeRef {
                provider: Provider::Alipay,
                out_trade_no: out_trade_no.clone(),
                expires_at: terms.expires_at,
            },
        );
        let total = terms.total;
        let channel = AlipayChannel::Qr {
            qr_code: qr_code.clone(),
        };
        store
            .alipay
            .insert(out_trade_no.clone(), new_trade(terms, notify_url, channel));
        tracing::info!(%out_trade_no, total, "alipay code precreated");
        qr_code
    };
    let mut m = success();
    m.insert("out_trade_no".into(), json!(out_trade_no));
    m.insert("qr_code".into(), json!(qr_code));
    m
}

/// `alipay.trade.wap.pay` / `alipay.trade.page.pay`: the buyer's browser arrives at the cashier.
/// Opening it makes the trade exist at Alipay (WAIT_BUYER_PAY, like a scanned code); opening
/// the same request again shows the same trade.
fn open_cashier(
    emu: &Shared,
    method: &str,
    biz: &Map<String, Value>,
    params: &[(String, String)],
) -> Result<AlipayTrade, Map<String, Value>> {
    let now = Utc::now();
    let terms = order_terms(biz, now)?;
    let wap = method == "alipay.trade.wap.pay";
    let product_code = text(biz, "product_code");
    // The official wap code is QUICK_WAP_WAY; python-alipay-sdk sends QUICK_WAP_PAY and
    // yansongda none, and Alipay accepts all three.
    let product_ok = if wap {
        matches!(
            product_code.as_str(),
            "" | "QUICK_WAP_WAY" | "QUICK_WAP_PAY"
        )
    } else {
        product_code == "FAST_INSTANT_TRADE_PAY"
    };
    if !product_ok {
        return Err(business(
            "ACQ.INVALID_PARAMETER",
            if wap {
                "product_code must be QUICK_WAP_WAY"
            } else {
                "product_code must be FAST_INSTANT_TRADE_PAY"
            },
        ));
    }
    let url = |value: String, name: &str| -> Result<Option<String>, Map<String, Value>> {
        if value.is_empty() {
            Ok(None)
        } else if html::is_web_url(&value) {
            Ok(Some(value))
        } else {
            Err(invalid_arguments(
                "isv.invalid-parameter",
                &format!("{name} must be an absolute http(s) URL"),
            ))
        }
    };
    let return_url = url(param(params, "return_url").to_string(), "return_url")?;
    let quit_url = if wap {
        url(text(biz, "quit_url"), "quit_url")?
    } else {
        None
    };
    let channel = if wap {
        AlipayChannel::Wap {
            return_url,
            quit_url,
        }
    } else {
        AlipayChannel::Page { return_url }
    };
    let notify_url = Some(param(params, "notify_url").to_string()).filter(|u| !u.is_empty());
    let out_trade_no = terms.out_trade_no.clone();
    let mut store = emu.store();
    if let Some(trade) = store.alipay.get_mut(&out_trade_no) {
        check_again(trade, terms.total, method)?;
        if trade.expires_at <= now {
            return Err(business("ACQ.TRADE_HAS_CLOSE", "the trade has timed out"));
        }
        // The browser brings the latest way back with it.
        trade.channel = channel;
        return Ok(trade.clone());
    }
    let total = terms.total;
    store
        .alipay
        .insert(out_trade_no.clone(), new_trade(terms, notify_url, channel));
    scan_locked(&mut store, &out_trade_no, None, false).map_err(|e| {
        business(
            "ACQ.SYSTEM_ERROR",
            &format!("the cashier could not open: {e:?}"),
        )
    })?;
    tracing::info!(%out_trade_no, total, method, "alipay cashier opened");
    Ok(store.alipay[&out_trade_no].clone())
}

/// The `out_trade_no` of the trade named by `out_trade_no` or `trade_no`, if it exists on
/// Alipay's side (i.e. was scanned).
fn find_scanned(store: &Store, biz: &Map<String, Value>) -> Option<String> {
    let out_trade_no = text(biz, "out_trade_no");
    let trade_no = text(biz, "trade_no");
    if !out_trade_no.is_empty() {
        store
            .alipay
            .get(&out_trade_no)
            .filter(|t| t.scan.is_some())
            .map(|t| t.out_trade_no.clone())
    } else if !trade_no.is_empty() {
        store
            .alipay
            .values()
            .find(|t| t.scan.as_ref().is_some_and(|s| s.trade_no == trade_no))
            .map(|t| t.out_trade_no.clone())
    } else {
        None
    }
}

fn not_exist() -> Map<String, Value> {
    business("ACQ.TRADE_NOT_EXIST", "the trade does not exist")
}

fn query_trade(emu: &Shared, biz: &Map<String, Value>) -> Map<String, Value> {
    let store = emu.store();
    let Some(trade) = find_scanned(&store, biz).and_then(|no| store.alipay.get(&no)) else {
        return not_exist();
    };
    let scan = trade.scan.as_ref().expect("scanned");
    let mut m = success();
    m.insert("trade_no".into(), json!(scan.trade_no));
    m.insert("out_trade_no".into(), json!(trade.out_trade_no));
    m.insert("buyer_logon_id".into(), json!(scan.buyer_logon_id));
    m.insert("buyer_user_id".into(), json!(scan.buyer_id));
    m.insert("trade_status".into(), json!(trade.status.code()));
    m.insert("total_amount".into(), json!(format_yuan(trade.total)));
    let paid = if trade.is_paid() { trade.total } else { 0 };
    m.insert("buyer_pay_amount".into(), json!(format_yuan(paid)));
    m.insert("receipt_amount".into(), json!(format_yuan(paid)));
    m.insert("invoice_amount".into(), json!(format_yuan(paid)));
    m.insert("point_amount".into(), json!("0.00"));
    if let Some(t) = trade.gmt_payment {
        m.insert("send_pay_date".into(), json!(alipay_time(t)));
    }
    m
}

pub(crate) fn close(emu: &Shared, biz: &Map<String, Value>) -> Map<String, Value> {
    let (answer, notification) = {
        let mut store = emu.store();
        let Some(no) = find_scanned(&store, biz) else {
            // Not scanned yet: nothing exists to close, and the code stays payable.
            if let Some(t) = store.alipay.get_mut(&text(biz, "out_trade_no")) {
                t.close_requested_before_scan = true;
            }
            return not_exist();
        };
        let trade = store.alipay.get_mut(&no).expect("found");
        if trade.status != AlipayStatus::WaitBuyerPay {
            return business(
                "ACQ.TRADE_STATUS_ERROR",
                "only a trade waiting for payment can be closed",
            );
        }
        trade.status = AlipayStatus::TradeClosed;
        trade.gmt_close = Some(Utc::now());
        let trade = trade.clone();
        let mut m = success();
        m.insert(
            "trade_no".into(),
            json!(trade.scan.as_ref().map(|s| s.trade_no.clone())),
        );
        m.insert("out_trade_no".into(), json!(trade.out_trade_no));
        let n = notify::alipay_trade_status(
            emu,
            &trade,
            AlipayStatus::TradeClosed,
            None,
            &PayloadOverrides::default(),
        );
        (m, n)
    };
    tracing::info!(out_trade_no = %notification.out_trade_no, "alipay trade closed");
    notify::dispatch(emu, notification);
    answer
}

fn refund_answer(
    trade: &AlipayTrade,
    refund: &AlipayRefund,
    fund_change: bool,
) -> Map<String, Value> {
    let scan = trade.scan.as_ref();
    let mut m = success();
    m.insert("trade_no".into(), json!(scan.map(|s| s.trade_no.clone())));
    m.insert("out_trade_no".into(), json!(trade.out_trade_no));
    m.insert(
        "buyer_logon_id".into(),
        json!(scan.map(|s| s.buyer_logon_id.clone())),
    );
    m.insert(
        "buyer_user_id".into(),
        json!(scan.map(|s| s.buyer_id.clone())),
    );
    m.insert(
        "fund_change".into(),
        json!(if fund_change { "Y" } else { "N" }),
    );
    m.insert("refund_fee".into(), json!(format_yuan(refund.refund_fee)));
    m.insert(
        "gmt_refund_pay".into(),
        json!(alipay_time(refund.gmt_refund_pay)),
    );
    m
}

fn refund(emu: &Shared, biz: &Map<String, Value>) -> Map<String, Value> {
    let Some(amount) = parse_yuan(&text(biz, "refund_amount")).filter(|a| *a >= 1) else {
        return business(
            "ACQ.INVALID_PARAMETER",
            "refund_amount must be at least 0.01 with at most 2 decimals",
        );
    };
    let (answer, notification) = {
        let mut store = emu.store();
        let Some(no) = find_scanned(&store, biz) else {
            return not_exist();
        };
        let trade = store.alipay.get_mut(&no).expect("found");
        let out_request_no = Some(text(biz, "out_request_no"))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| trade.out_trade_no.clone());
        if let Some(done) = trade
            .refunds
            .iter()
            .find(|r| r.out_request_no == out_request_no)
        {
            // The same request number again: the same answer, nothing refunded twice.
            return refund_answer(trade, done, false);
        }
        if !trade.is_paid() {
            return business("ACQ.TRADE_STATUS_ERROR", "the trade has not been paid");
        }
        if trade.status == AlipayStatus::TradeFinished {
            return business(
                "ACQ.TRADE_HAS_FINISHED",
                "the trade is finished and can no longer be refunded",
            );
        }
        if trade.refunded + amount > trade.total {
            return business(
                "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                "the refund amount exceeds the refundable amount",
            );
        }
        let now = Utc::now();
        trade.refunded += amount;
        let record = AlipayRefund {
            out_request_no: out_request_no.clone(),
            refund_amount: amount,
            reason: Some(text(biz, "refund_reason")).filter(|r| !r.is_empty()),
            gmt_refund_pay: now,
            refund_fee: trade.refunded,
        };
        trade.refunds.push(record.clone());
        let status = if trade.refunded == trade.total {
            trade.status = AlipayStatus::TradeClosed;
            trade.gmt_close = Some(now);
            AlipayStatus::TradeClosed
        } else {
            AlipayStatus::TradeSuccess
        };
        let trade = trade.clone();
        let info = AlipayRefundInfo {
            out_biz_no: out_request_no,
            refund_fee: trade.refunded,
            gmt_refund: now,
        };
        let n = notify::alipay_trade_status(
            emu,
            &trade,
            status,
            Some(&info),
            &PayloadOverrides::default(),
        );
        (refund_answer(&trade, &record, true), n)
    };
    tracing::info!(out_trade_no = %notification.out_trade_no, amount, "alipay refund done");
    notify::dispatch(emu, notification);
    answer
}

fn refund_query(emu: &Shared, biz: &Map<String, Value>) -> Map<String, Value> {
    let store = emu.store();
    let Some(trade) = find_scanned(&store, biz).and_then(|no| store.alipay.get(&no)) else {
        return not_exist();
    };
    let out_request_no = Some(text(biz, "out_request_no"))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| trade.out_trade_no.clone());
    let mut m = success();
    if let Some(r) = trade
        .refunds
        .iter()
        .find(|r| r.out_request_no == out_request_no)
    {
        m.insert(
            "trade_no".into(),
            json!(trade.scan.as_ref().map(|s| s.trade_no.clone())),
        );
        m.insert("out_trade_no".into(), json!(trade.out_trade_no));
        m.insert("out_request_no".into(), json!(r.out_request_no));
        m.insert("refund_amount".into(), json!(format_yuan(r.refund_amount)));
        m.insert("total_amount".into(), json!(format_yuan(trade.total)));
        m.insert("refund_status".into(), json!("REFUND_SUCCESS"));
        m.insert(
            "gmt_refund_pay".into(),
            json!(alipay_time(r.gmt_refund_pay)),
        );
        if let Some(reason) = &r.reason {
            m.insert("refund_reason".into(), json!(reason));
        }
    }
    m
}

/// Why a buyer's scan or payment did not happen.
#[derive(Debug)]
pub enum PayError {
    NotFound,
    Conflict(String),
}

/// The buyer scans the code: the trade comes to exist on Alipay's side (WAIT_BUYER_PAY).
fn scan_locked(
    store: &mut Store,
    out_trade_no: &str,
    code: Option<&str>,
    force: bool,
) -> Result<(), PayError> {
    let now = Utc::now();
    let code_expiry = code.and_then(|c| store.codes.get(c)).map(|c| c.expires_at);
    let Some(trade) = store.alipay.get(out_trade_no) else {
        return Err(PayError::NotFound);
    };
    if trade.scan.is_some() {
        return Ok(());
    }
    if code_expiry.unwrap_or(trade.expires_at) <= now && !force {
        return Err(PayError::Conflict("the code has expired".into()));
    }
    let trade_no = store.unique_id(new_trade_no);
    let trade = store.alipay.get_mut(out_trade_no).expect("present");
    trade.scan = Some(AlipayScan {
        trade_no,
        buyer_id: new_buyer_id(),
        buyer_logon_id: new_logon_id(),
        gmt_create: now,
    });
    Ok(())
}

/// Scan only (the trade then exists and waits for payment).
pub fn scan(emu: &Shared, out_trade_no: &str, force: bool) -> Result<String, PayError> {
    let mut store = emu.store();
    scan_locked(&mut store, out_trade_no, None, force)?;
    Ok(store.alipay[out_trade_no]
        .scan
        .as_ref()
        .map(|s| s.trade_no.clone())
        .unwrap_or_default())
}

/// The buyer scans (if not yet) and pays: TRADE_SUCCESS, then the notification is delivered.
/// `force` pays even a closed or expired trade: a payment that raced the merchant's close.
pub fn pay(
    emu: &Shared,
    out_trade_no: &str,
    code: Option<&str>,
    force: bool,
) -> Result<String, PayError> {
    let trade = {
        let mut store = emu.store();
        let Some(trade) = store.alipay.get(out_trade_no) else {
            return Err(PayError::NotFound);
        };
        if trade.is_paid() {
            return Err(PayError::Conflict("the trade has already been paid".into()));
        }
        if trade.status == AlipayStatus::TradeClosed && !force {
            return Err(PayError::Conflict("the trade has been closed".into()));
        }
        let expiry = code
            .and_then(|c| store.codes.get(c))
            .map(|c| c.expires_at)
            .unwrap_or(trade.expires_at);
        if expiry <= Utc::now() && !force {
            return Err(PayError::Conflict("the code has expired".into()));
        }
        scan_locked(&mut store, out_trade_no, code, force)?;
        let trade = store.alipay.get_mut(out_trade_no).expect("present");
        trade.status = AlipayStatus::TradeSuccess;
        trade.gmt_payment = Some(Utc::now());
        trade.gmt_close = None;
        trade.clone()
    };
    tracing::info!(%out_trade_no, force, "alipay trade paid");
    let trade_no = trade
        .scan
        .as_ref()
        .map(|s| s.trade_no.clone())
        .unwrap_or_default();
    let n = notify::alipay_trade_status(
        emu,
        &trade,
        AlipayStatus::TradeSuccess,
        None,
        &PayloadOverrides::default(),
    );
    notify::dispatch(emu, n);
    Ok(trade_no)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_sign_content_keeps_sign_type_and_drops_sign_and_empty_values() {
        let params = vec![
            ("sign".to_string(), "S".to_string()),
            ("sign_type".to_string(), "RSA2".to_string()),
            ("method".to_string(), "alipay.trade.query".to_string()),
            ("app_auth_token".to_string(), String::new()),
            (
                "biz_content".to_string(),
                "{\"out_trade_no\":\"a b\"}".to_string(),
            ),
        ];
        assert_eq!(
            request_sign_content(&params),
            "biz_content={\"out_trade_no\":\"a b\"}&method=alipay.trade.query&sign_type=RSA2"
        );
    }

    #[test]
    fn timeout_express_accepts_minutes_hours_days_and_today() {
        let now = Utc::now();
        assert_eq!(
            parse_timeout("90m", now),
            Some(now + TimeDelta::minutes(90))
        );
        assert_eq!(parse_timeout("2h", now), Some(now + TimeDelta::hours(2)));
        assert_eq!(parse_timeout("15d", now), Some(now + TimeDelta::days(15)));
        assert!(parse_timeout("1c", now).is_some_and(|t| t >= now));
        assert_eq!(parse_timeout("16d", now), None);
        assert_eq!(parse_timeout("0m", now), None);
        assert_eq!(parse_timeout("m", now), None);
        assert_eq!(parse_timeout("5s", now), None);
    }

    #[test]
    fn braces_are_kept_out_of_signed_string_values() {
        let mut v = json!({"sub_msg": "bad {x}", "n": ["{"]});
        strip_braces(&mut v);
        assert_eq!(v, json!({"sub_msg": "bad (x)", "n": ["("]}));
    }
}
