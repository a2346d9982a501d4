//! The emulator's own control API under `/emulator/…` (never part of either provider's
//! protocol): the buyer's scan and payment (of any channel), the scan page a person can click,
//! WeChat login codes and login failures, trade inspection, code expiry, notification mode, the
//! notification log, and hand-crafted notifications.

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::html::{escape, page, urlencode};
use crate::notify::{self, Mode, NotifyMode, PayloadOverrides, Wire};
use crate::state::{
    AlipayStatus, LoginApp, Provider, Shared, WechatChannel, WechatPayment, WechatState,
    format_yuan, rfc3339_beijing,
};
use crate::{alipay, keys, login, wechat};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/emulator/healthz", get(healthz))
        .route("/emulator/pay", post(pay))
        .route("/emulator/scan", get(scan_page).post(scan_only))
        .route("/emulator/scan/pay", post(scan_pay))
        .route("/emulator/expire", post(expire))
        .route(
            "/emulator/trades/{provider}/{out_trade_no}",
            get(trade_view),
        )
        .route("/emulator/notify-mode", get(get_mode).post(set_mode))
        .route("/emulator/release", post(release))
        .route("/emulator/notifications", get(list_attempts))
        .route("/emulator/events", get(list_events))
        .route("/emulator/send", post(send))
        .route("/emulator/refund-outcome", post(refund_outcome))
        .route("/emulator/time-out", post(time_out))
        .route("/emulator/wechat/codes", post(mint_login_code))
        .route("/emulator/wechat/login-failure", post(login_failure))
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    payload
        .map(|Json(t)| t)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, e.body_text()))
}

async fn healthz() -> &'static str {
    "ok"
}

#[derive(Deserialize)]
struct PayRequest {
    provider: Provider,
    out_trade_no: String,
    #[serde(default)]
    force: bool,
    /// WeChat JSAPI: what the merchant handed its front end, checked as WeChat's client does.
    jsapi_params: Option<wechat::JsapiParams>,
}

/// The outcome of a payment attempt, shared by the JSON API and the scan page.
fn do_pay(
    emu: &Shared,
    provider: Provider,
    out_trade_no: &str,
    code: Option<&str>,
    force: bool,
) -> Result<String, (StatusCode, String)> {
    match provider {
        Provider::Wechat => wechat::pay(emu, out_trade_no, code, force).map_err(|e| match e {
            wechat::PayError::NotFound => (StatusCode::NOT_FOUND, "no such order".to_string()),
            wechat::PayError::Conflict(m) => (StatusCode::CONFLICT, m),
            wechat::PayError::Invalid(m) => (StatusCode::BAD_REQUEST, m),
        }),
        Provider::Alipay => alipay::pay(emu, out_trade_no, code, force).map_err(|e| match e {
            alipay::PayError::NotFound => (StatusCode::NOT_FOUND, "no such code".to_string()),
            alipay::PayError::Conflict(m) => (StatusCode::CONFLICT, m),
        }),
    }
}

/// `POST /emulator/pay {provider, out_trade_no, force?, jsapi_params?}`: the buyer pays, whatever
/// the channel (an Alipay cashier trade must have been opened first). `force: true` pays even a
/// closed (or expired) order, to simulate a payment that raced the merchant's close. With
/// `jsapi_params` a WeChat JSAPI order is paid only if WeChat's client would accept them.
async fn pay(
    State(emu): State<Shared>,
    payload: Result<Json<PayRequest>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(params) = &req.jsapi_params {
        if req.provider != Provider::Wechat {
            return json_error(
                StatusCode::BAD_REQUEST,
                "jsapi_params are WeChat's front-end parameters",
            );
        }
        match wechat::check_jsapi_params(&emu, &req.out_trade_no, params) {
            Ok(()) => {}
            Err(wechat::PayError::NotFound) => {
                return json_error(StatusCode::NOT_FOUND, "no such order");
            }
            Err(wechat::PayError::Conflict(m) | wechat::PayError::Invalid(m)) => {
                return json_error(StatusCode::BAD_REQUEST, m);
            }
        }
    }
    match do_pay(&emu, req.provider, &req.out_trade_no, None, req.force) {
        Ok(transaction_id) => Json(json!({
            "provider": req.provider,
            "out_trade_no": req.out_trade_no,
            "transaction_id": transaction_id,
        }))
        .into_response(),
        Err((status, message)) => json_error(status, message),
    }
}

/// `POST /emulator/scan {provider, out_trade_no, force?}`: the buyer scans without paying. For
/// Alipay the trade then exists (WAIT_BUYER_PAY), so query and close find it.
async fn scan_only(
    State(emu): State<Shared>,
    payload: Result<Json<PayRequest>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match req.provider {
        Provider::Alipay => match alipay::scan(&emu, &req.out_trade_no, req.force) {
            Ok(trade_no) => Json(json!({ "provider": req.provider, "out_trade_no": req.out_trade_no, "trade_no": trade_no }))
                .into_response(),
            Err(alipay::PayError::NotFound) => json_error(StatusCode::NOT_FOUND, "no such code"),
            Err(alipay::PayError::Conflict(m)) => json_error(StatusCode::CONFLICT, m),
        },
        Provider::Wechat => {
            if emu.store().wechat.contains_key(&req.out_trade_no) {
                Json(json!({ "provider": req.provider, "out_trade_no": req.out_trade_no })).into_response()
            } else {
                json_error(StatusCode::NOT_FOUND, "no such order")
            }
        }
    }
}

#[derive(Deserialize)]
struct TradeRef {
    provider: Provider,
    out_trade_no: String,
}

/// `POST /emulator/expire {provider, out_trade_no}`: every code of the trade expires now.
async fn expire(
    State(emu): State<Shared>,
    payload: Result<Json<TradeRef>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let now = Utc::now();
    let mut store = emu.store();
    let found = match req.provider {
        Provider::Wechat => store
            .wechat
            .get_mut(&req.out_trade_no)
            .map(|t| t.expires_at = now)
            .is_some(),
        Provider::Alipay => store
            .alipay
            .get_mut(&req.out_trade_no)
            .map(|t| t.expires_at = now)
            .is_some(),
    };
    if !found {
        return json_error(StatusCode::NOT_FOUND, "no such trade");
    }
    for code in store.codes.values_mut() {
        if code.provider == req.provider && code.out_trade_no == req.out_trade_no {
            code.expires_at = now;
        }
    }
    Json(json!({ "provider": req.provider, "out_trade_no": req.out_trade_no, "expired": true }))
        .into_response()
}

/// `GET /emulator/trades/{provider}/{out_trade_no}`: the emulator's view of a trade.
async fn trade_view(
    State(emu): State<Shared>,
    Path((provider, out_trade_no)): Path<(String, String)>,
) -> Response {
    let store = emu.store();
    let view = match provider.as_str() {
        "wechat" => store.wechat.get(&out_trade_no).map(|t| {
            let refunds: Vec<Value> = t
                .refunds
                .iter()
                .filter_map(|no| store.wechat_refunds.get(no))
                .map(|r| r.json())
                .collect();
            let (code_url, payer) = match &t.channel {
                WechatChannel::Native { code_url } => (Some(code_url.clone()), None),
                WechatChannel::Jsapi { openid, .. } => (None, Some(openid.clone())),
                WechatChannel::H5 { .. } => (None, None),
            };
            json!({
                "provider": "wechat",
                "out_trade_no": t.out_trade_no,
                "appid": t.appid,
                "trade_type": t.channel.trade_type(),
                "state": t.state,
                "total": t.total,
                "refunded": t.refunded,
                "code_url": code_url,
                "prepay_id": t.channel.prepay_id(),
                "payer_openid": payer,
                "notify_url": t.notify_url,
                "expires_at": rfc3339_beijing(t.expires_at),
                "transaction": t.transaction_json(),
                "refunds": refunds,
            })
        }),
        "alipay" => store.alipay.get(&out_trade_no).map(|t| {
            json!({
                "provider": "alipay",
                "out_trade_no": t.out_trade_no,
                "exists_at_alipay": t.scan.is_some(),
                "trade_status": t.status,
                "trade_no": t.scan.as_ref().map(|s| s.trade_no.clone()),
                "total_amount": format_yuan(t.total),
                "total": t.total,
                "refunded": t.refunded,
                "method": t.channel.method(),
                "qr_code": t.channel.qr_code(),
                "return_url": t.channel.return_url(),
                "quit_url": t.channel.quit_url(),
                "notify_url": t.notify_url,
                "expires_at": rfc3339_beijing(t.expires_at),
                "close_requested_before_scan": t.close_requested_before_scan,
                "gmt_payment": t.gmt_payment.map(rfc3339_beijing),
                "refunds": t.refunds.iter().map(|r| json!({
                    "out_request_no": r.out_request_no,
                    "refund_amount": format_yuan(r.refund_amount),
                    "refund_fee": format_yuan(r.refund_fee),
                    "gmt_refund_pay": rfc3339_beijing(r.gmt_refund_pay),
                })).collect::<Vec<_>>(),
            })
        }),
        _ => return json_error(StatusCode::BAD_REQUEST, "provider must be wechat or alipay"),
    };
    match view {
        Some(v) => Json(v).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "no such trade"),
    }
}

#[derive(Deserialize)]
struct ModeRequest {
    provider: Option<Provider>,
    #[serde(default)]
    mode: Mode,
    copies: Option<u32>,
    delay_ms: Option<u64>,
    probe_first: Option<bool>,
}

fn modes(emu: &Shared) -> Value {
    json!({ "wechat": emu.notify.mode(Provider::Wechat), "alipay": emu.notify.mode(Provider::Alipay) })
}

async fn get_mode(State(emu): State<Shared>) -> Response {
    Json(modes(&emu)).into_response()
}

/// `POST /emulator/notify-mode {provider?, mode, copies?, delay_ms?, probe_first?}`.
async fn set_mode(
    State(emu): State<Shared>,
    payload: Result<Json<ModeRequest>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let copies = req.copies.unwrap_or(1);
    if copies == 0 || copies > 100 {
        return json_error(StatusCode::BAD_REQUEST, "copies must be 1 to 100");
    }
    emu.notify.set_mode(
        req.provider,
        NotifyMode {
            mode: req.mode,
            copies,
            delay_ms: req.delay_ms.unwrap_or(0),
            probe_first: req.probe_first.unwrap_or(false),
        },
    );
    Json(modes(&emu)).into_response()
}

#[derive(Deserialize)]
struct ReleaseRequest {
    provider: Option<Provider>,
    concurrency: Option<usize>,
}

/// `POST /emulator/release {provider?, concurrency?}`: sends the notifications held by hold
/// mode, `concurrency` (1 to 1000, default 32) at a time; answers how many there were.
async fn release(
    State(emu): State<Shared>,
    payload: Result<Json<ReleaseRequest>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let concurrency = req.concurrency.unwrap_or(32);
    if !(1..=1000).contains(&concurrency) {
        return json_error(StatusCode::BAD_REQUEST, "concurrency must be 1 to 1000");
    }
    let released = notify::release(&emu, req.provider, concurrency);
    Json(json!({ "released": released })).into_response()
}

#[derive(Deserialize)]
struct LogFilter {
    provider: Option<String>,
    out_trade_no: Option<String>,
}

impl LogFilter {
    fn provider(&self) -> Result<Option<Provider>, Response> {
        match self.provider.as_deref() {
            None | Some("") => Ok(None),
            Some("wechat") => Ok(Some(Provider::Wechat)),
            Some("alipay") => Ok(Some(Provider::Alipay)),
            Some(_) => Err(json_error(
                StatusCode::BAD_REQUEST,
                "provider must be wechat or alipay",
            )),
        }
    }
}

/// `GET /emulator/notifications?provider=&out_trade_no=`: every send attempt, oldest first.
async fn list_attempts(State(emu): State<Shared>, Query(filter): Query<LogFilter>) -> Response {
    let provider = match filter.provider() {
        Ok(p) => p,
        Err(r) => return r,
    };
    let no = filter.out_trade_no.as_deref().filter(|n| !n.is_empty());
    Json(emu.notify.attempts(provider, no)).into_response()
}

/// `GET /emulator/events?provider=&out_trade_no=`: every notification event, sent or dropped.
async fn list_events(State(emu): State<Shared>, Query(filter): Query<LogFilter>) -> Response {
    let provider = match filter.provider() {
        Ok(p) => p,
        Err(r) => return r,
    };
    let no = filter.out_trade_no.as_deref().filter(|n| !n.is_empty());
    Json(emu.notify.events(provider, no)).into_response()
}

#[derive(Deserialize)]
struct SendRequest {
    provider: Provider,
    out_trade_no: String,
    event_id: Option<String>,
    trade_status: Option<String>,
    #[serde(default)]
    timestamp_offset_secs: i64,
    #[serde(default)]
    sign_with_other_key: bool,
    #[serde(default)]
    tamper_body: bool,
    serial: Option<String>,
    mchid: Option<String>,
    appid: Option<String>,
    app_id: Option<String>,
    seller_id: Option<String>,
    amount_fen: Option<i64>,
    url: Option<String>,
    #[serde(default)]
    force: bool,
}

/// `POST /emulator/send`: one crafted notification for an existing trade, sent now, once,
/// without retries; answers the merchant's reply `{status, body}` (502 when unreachable).
/// Everything not overridden is genuine. Describing an unpaid trade as paid needs `force`.
async fn send(
    State(emu): State<Shared>,
    payload: Result<Json<SendRequest>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let overrides = PayloadOverrides {
        event_id: req.event_id.clone(),
        mchid: req.mchid.clone(),
        appid: req.appid.clone(),
        app_id: req.app_id.clone(),
        seller_id: req.seller_id.clone(),
        amount_fen: req.amount_fen,
        url: req.url.clone(),
    };
    let notification = match req.provider {
        Provider::Wechat => {
            let Some(mut trade) = emu.store().wechat.get(&req.out_trade_no).cloned() else {
                return json_error(StatusCode::NOT_FOUND, "no such order");
            };
            if !trade.is_paid() {
                if !req.force {
                    return json_error(
                        StatusCode::CONFLICT,
                        "the order is not paid; give force: true to describe it as paid",
                    );
                }
                let now = Utc::now();
                trade.state = WechatState::Success;
                trade.payment = Some(WechatPayment {
                    transaction_id: format!(
                        "4200001234{}{}",
                        crate::state::beijing_date(now),
                        keys::random_digits(10)
                    ),
                    success_time: now,
                    openid: trade.buyer_openid(),
                });
            }
            match notify::wechat_transaction_success(&emu, &trade, &overrides) {
                Ok(n) => n,
                Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
            }
        }
        Provider::Alipay => {
            let Some(trade) = emu.store().alipay.get(&req.out_trade_no).cloned() else {
                return json_error(StatusCode::NOT_FOUND, "no such trade");
            };
            let status = match req.trade_status.as_deref() {
                Some("TRADE_SUCCESS") => AlipayStatus::TradeSuccess,
                Some("TRADE_FINISHED") => AlipayStatus::TradeFinished,
                Some("TRADE_CLOSED") => AlipayStatus::TradeClosed,
                Some("WAIT_BUYER_PAY") => AlipayStatus::WaitBuyerPay,
                Some(other) => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown trade_status {other}"),
                    );
                }
                None if trade.is_paid() && trade.status != AlipayStatus::TradeClosed => {
                    AlipayStatus::TradeSuccess
                }
                None if trade.scan.is_some() => trade.status,
                None => {
                    return json_error(
                        StatusCode::CONFLICT,
                        "the code was never scanned; give trade_status",
                    );
                }
            };
            let paid_like = matches!(
                status,
                AlipayStatus::TradeSuccess | AlipayStatus::TradeFinished
            );
            if paid_like && !trade.is_paid() && !req.force {
                return json_error(
                    StatusCode::CONFLICT,
                    "the trade is not paid; give force: true to describe it as paid",
                );
            }
            if req.url.is_none() && trade.notify_url.is_none() {
                return json_error(
                    StatusCode::CONFLICT,
                    "the trade has no notify_url; give url",
                );
            }
            notify::alipay_trade_status(&emu, &trade, status, None, &overrides)
        }
    };
    let wire = Wire {
        probe: false,
        timestamp_offset_secs: req.timestamp_offset_secs,
        other_key: req.sign_with_other_key,
        tamper_body: req.tamper_body,
        serial: req.serial.clone(),
    };
    let (_, reply) = notify::send_once(&emu, &notification, &wire, 1, 0, true).await;
    match reply.status {
        Some(status) => Json(json!({ "status": status, "body": reply.body.unwrap_or_default() }))
            .into_response(),
        None => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "error": reply.error.unwrap_or_else(|| "unreachable".into()) })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct CodeQuery {
    code: Option<String>,
}

/// What the scan page shows about the trade behind a code.
struct Scanned {
    provider: Provider,
    out_trade_no: String,
    subject: String,
    amount_fen: i64,
    state: String,
    expired: bool,
    payable: bool,
}

fn lookup_code(emu: &Shared, code: &str) -> Option<Scanned> {
    let store = emu.store();
    let code_ref = store.codes.get(code)?;
    let expired = code_ref.expires_at <= Utc::now();
    match code_ref.provider {
        Provider::Wechat => {
            let t = store.wechat.get(&code_ref.out_trade_no)?;
            Some(Scanned {
                provider: Provider::Wechat,
                out_trade_no: t.out_trade_no.clone(),
                subject: t.description.clone(),
                amount_fen: t.total,
                state: t.state.code().into(),
                expired,
                payable: t.state == WechatState::NotPay && !expired,
            })
        }
        Provider::Alipay => {
            let t = store.alipay.get(&code_ref.out_trade_no)?;
            Some(Scanned {
                provider: Provider::Alipay,
                out_trade_no: t.out_trade_no.clone(),
                subject: t.subject.clone(),
                amount_fen: t.total,
                state: if t.scan.is_some() {
                    t.status.code().into()
                } else {
                    "NOT_SCANNED".into()
                },
                expired,
                payable: !t.is_paid() && t.status != AlipayStatus::TradeClosed && !expired,
            })
        }
    }
}

/// `GET /emulator/scan?code=…`: what the buyer's phone shows after scanning, with a Pay button.
async fn scan_page(State(emu): State<Shared>, Query(q): Query<CodeQuery>) -> Response {
    let code = q.code.unwrap_or_default();
    let Some(s) = lookup_code(&emu, &code) else {
        let html = page(
            "Unknown code",
            &format!(
                "<h1>Unknown code</h1><p class=\"err\">No trade has the code <code>{}</code>.</p>",
                escape(&code)
            ),
        );
        return (StatusCode::NOT_FOUND, Html(html)).into_response();
    };
    let (brand, class) = match s.provider {
        Provider::Wechat => ("WeChat Pay", "wechat"),
        Provider::Alipay => ("Alipay", "alipay"),
    };
    let action = if s.payable {
        format!(
            "<form method=\"post\" action=\"/emulator/scan/pay\"><input type=\"hidden\" name=\"code\" value=\"{}\">\
<button type=\"submit\">Pay ¥{}</button></form>",
            escape(&code),
            format_yuan(s.amount_fen)
        )
    } else if s.expired {
        "<p class=\"err\">This code has expired and cannot be paid.</p>".to_string()
    } else {
        "<p class=\"err\">This trade cannot be paid.</p>".to_string()
    };
    let html = page(
        &format!("{brand} — {}", s.subject),
        &format!(
            "<div class=\"{class}\"><h1>{brand}</h1><table>\
<tr><th>Provider</th><td>{}</td></tr><tr><th>Merchant order</th><td>{}</td></tr>\
<tr><th>Item</th><td>{}</td></tr><tr><th>Amount</th><td>¥{}</td></tr><tr><th>State</th><td>{}</td></tr>\
</table>{action}<p class=\"note\">Provider emulator: paying here simulates the buyer.</p></div>",
            s.provider.name(),
            escape(&s.out_trade_no),
            escape(&s.subject),
            format_yuan(s.amount_fen),
            escape(&s.state),
        ),
    );
    Html(html).into_response()
}

#[derive(Deserialize)]
struct CodeForm {
    code: String,
}

/// `POST /emulator/scan/pay` (form `code`): the Pay button.
async fn scan_pay(
    State(emu): State<Shared>,
    form: Result<Form<CodeForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            Html(page(
                "Bad request",
                "<p class=\"err\">The code is missing.</p>",
            )),
        )
            .into_response();
    };
    let Some(s) = lookup_code(&emu, &form.code) else {
        return (
            StatusCode::NOT_FOUND,
            Html(page("Unknown code", "<p class=\"err\">Unknown code.</p>")),
        )
            .into_response();
    };
    let back = format!(
        "<p><a href=\"/emulator/scan?code={}\">Back to the trade</a></p>",
        escape(&urlencode(&form.code))
    );
    match do_pay(&emu, s.provider, &s.out_trade_no, Some(&form.code), false) {
        Ok(id) => Html(page(
            "Paid",
            &format!(
                "<h1 class=\"ok\">Payment successful</h1><p>¥{} paid for {}.</p><p>Transaction <code>{}</code></p>{back}",
                format_yuan(s.amount_fen),
                escape(&s.subject),
                escape(&id)
            ),
        ))
        .into_response(),
        Err((status, message)) => (
            status,
            Html(page("Not paid", &format!("<h1 class=\"err\">Not paid</h1><p>{}</p>{back}", escape(&message)))),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct RefundOutcomeRequest {
    provider: Provider,
    /// `success` (the default behaviour) or `abnormal`.
    outcome: String,
}

/// `POST /emulator/refund-outcome {provider: "wechat", outcome: "success" | "abnormal"}`: how
/// WeChat refunds accepted from now on end (Alipay refunds are synchronous and always succeed).
async fn refund_outcome(
    State(emu): State<Shared>,
    payload: Result<Json<RefundOutcomeRequest>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let abnormal = match (req.provider, req.outcome.as_str()) {
        (Provider::Wechat, "success") => false,
        (Provider::Wechat, "abnormal") => true,
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "only WeChat refunds can end otherwise: outcome is success or abnormal",
            );
        }
    };
    emu.store().wechat_refunds_end_abnormal = abnormal;
    Json(json!({ "provider": req.provider, "outcome": req.outcome })).into_response()
}

/// `POST /emulator/time-out {provider: "alipay", out_trade_no}`: Alipay closes a scanned, unpaid
/// trade on its own, as it does when `timeout_express` runs out (`TRADE_CLOSED`, notified).
async fn time_out(
    State(emu): State<Shared>,
    payload: Result<Json<TradeRef>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.provider != Provider::Alipay {
        return json_error(
            StatusCode::BAD_REQUEST,
            "only Alipay closes trades on its own here (WeChat: /emulator/expire)",
        );
    }
    let mut biz = serde_json::Map::new();
    biz.insert("out_trade_no".into(), json!(req.out_trade_no));
    let answer = alipay::close(&emu, &biz);
    if answer.get("code").and_then(Value::as_str) == Some("10000") {
        Json(json!({ "provider": req.provider, "out_trade_no": req.out_trade_no, "trade_status": "TRADE_CLOSED" }))
            .into_response()
    } else {
        json_error(
            StatusCode::CONFLICT,
            format!("not closed: {}", Value::Object(answer)),
        )
    }
}

#[derive(Deserialize)]
struct MintRequest {
    app: LoginApp,
    openid: Option<String>,
    unionid: Option<String>,
    #[serde(default)]
    snapshot_user: bool,
}

/// `POST /emulator/wechat/codes {app: "miniprogram" | "official_account", openid?, unionid?,
/// snapshot_user?}`: a login code as `wx.login` or the official account's OAuth redirect hands it
/// to the merchant's front end; answers `{code, openid, appid}`. Without `openid`, a new buyer.
/// `snapshot_user`: a buyer looking at the page in WeChat's snapshot mode, whose OAuth answer
/// says `is_snapshotuser: 1` (a virtual OpenID).
async fn mint_login_code(
    State(emu): State<Shared>,
    payload: Result<Json<MintRequest>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match login::mint(&emu, req.app, req.openid, req.unionid, req.snapshot_user) {
        Ok((code, openid, appid)) => {
            Json(json!({ "code": code, "openid": openid, "appid": appid })).into_response()
        }
        Err(m) => json_error(StatusCode::BAD_REQUEST, m),
    }
}

#[derive(Deserialize)]
struct LoginFailureRequest {
    errcode: i64,
    errmsg: Option<String>,
}

/// `POST /emulator/wechat/login-failure {errcode, errmsg?}`: the next login exchange (either
/// endpoint) answers this error once, e.g. 45011 rate limited, 40226 blocked, -1 system error.
async fn login_failure(
    State(emu): State<Shared>,
    payload: Result<Json<LoginFailureRequest>, JsonRejection>,
) -> Response {
    let req = match body(payload) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match login::fail_next(&emu, req.errcode, req.errmsg) {
        Ok((errcode, errmsg)) => {
            Json(json!({ "errcode": errcode, "errmsg": errmsg })).into_response()
        }
        Err(m) => json_error(StatusCode::BAD_REQUEST, m),
    }
}
