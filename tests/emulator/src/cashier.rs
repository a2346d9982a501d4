//! The cashiers a buyer's browser visits at the provider: WeChat's H5 cashier (the `h5_url` of an
//! H5 order, `checkmweb`) and Alipay's wap and page cashiers (what `alipay.trade.wap.pay` and
//! `alipay.trade.page.pay` answer), each with a Pay button that pays like the control API does
//! and then sends the browser back to the merchant: WeChat to the `redirect_url` the merchant
//! appended, Alipay to `return_url` with the signed synchronous return.

use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::html::{escape, is_web_url, message, page};
use crate::state::{AlipayChannel, AlipayTrade, Provider, Shared, WechatState, alipay_time};
use crate::wechat::H5_CASHIER_PATH;
use crate::{alipay, keys, notify, wechat};

pub const ALIPAY_PAY_PATH: &str = "/emulator/alipay/cashier/pay";

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(H5_CASHIER_PATH, get(wechat_cashier))
        .route(&format!("{H5_CASHIER_PATH}/pay"), post(wechat_cashier_pay))
        .route(ALIPAY_PAY_PATH, post(alipay_cashier_pay))
}

/// A 302 to `url` (WeChat and Alipay both send the browser back with a plain redirect). A header
/// carries only visible ASCII, so other bytes (a Chinese path, say) go percent-encoded, as a
/// browser would send them anyway.
fn found(url: &str) -> Response {
    let mut location = String::with_capacity(url.len());
    for b in url.bytes() {
        if b.is_ascii_graphic() {
            location.push(char::from(b));
        } else {
            location.push_str(&format!("%{b:02X}"));
        }
    }
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => message(
            StatusCode::BAD_REQUEST,
            "Cannot return",
            "err",
            "The way back to the merchant is not a valid URL.",
        ),
    }
}

fn paid_page(subject: &str, amount_fen: i64) -> Response {
    message(
        StatusCode::OK,
        "Payment successful",
        "ok",
        &format!(
            "¥{} paid for {subject}.",
            crate::state::format_yuan(amount_fen)
        ),
    )
}

#[derive(Deserialize)]
struct H5Link {
    prepay_id: Option<String>,
    package: Option<String>,
    redirect_url: Option<String>,
}

/// The order an H5 cashier link opens, while it can still be paid.
struct H5Order {
    out_trade_no: String,
    description: String,
    total: i64,
}

/// The text of the error page when the link cannot be paid.
fn h5_order(emu: &Shared, link: &H5Link) -> Result<H5Order, &'static str> {
    const EXPIRED: &str =
        "This payment link has expired or does not exist. Go back to the merchant to pay again.";
    let store = emu.store();
    let package = link.package.as_deref().unwrap_or("");
    let code = store
        .codes
        .get(package)
        .filter(|c| c.provider == Provider::Wechat)
        .ok_or(EXPIRED)?;
    let trade = store
        .wechat
        .get(&code.out_trade_no)
        .filter(|t| {
            t.channel.prepay_id().is_some() && t.channel.prepay_id() == link.prepay_id.as_deref()
        })
        .ok_or(EXPIRED)?;
    if trade.is_paid() {
        return Err("This order has already been paid.");
    }
    if trade.state == WechatState::Closed {
        return Err("This order has been closed and can no longer be paid.");
    }
    if code.expires_at <= Utc::now() {
        return Err(EXPIRED);
    }
    if link.redirect_url.as_deref().is_some_and(|u| !is_web_url(u)) {
        return Err("redirect_url is not an http(s) address.");
    }
    Ok(H5Order {
        out_trade_no: trade.out_trade_no.clone(),
        description: trade.description.clone(),
        total: trade.total,
    })
}

/// `GET /cgi-bin/mmpayweb-bin/checkmweb?prepay_id&package&redirect_url`: WeChat's H5 cashier.
async fn wechat_cashier(State(emu): State<Shared>, Query(link): Query<H5Link>) -> Response {
    let order = match h5_order(&emu, &link) {
        Ok(o) => o,
        Err(text) => return message(StatusCode::BAD_REQUEST, "Cannot pay", "err", text),
    };
    let hidden = |name: &str, value: &str| {
        format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            escape(value)
        )
    };
    let redirect = link.redirect_url.as_deref().unwrap_or("");
    let mut fields = hidden("prepay_id", link.prepay_id.as_deref().unwrap_or(""))
        + &hidden("package", link.package.as_deref().unwrap_or(""));
    let mut cancel = String::new();
    if !redirect.is_empty() {
        fields += &hidden("redirect_url", redirect);
        cancel = format!(
            "<p><a id=\"cancel\" href=\"{}\">Cancel payment</a></p>",
            escape(redirect)
        );
    }
    let amount = crate::state::format_yuan(order.total);
    let html = page(
        &format!("WeChat Pay — {}", order.description),
        &format!(
            "<div class=\"wechat\"><h1>WeChat Pay</h1><table>\
<tr><th>Item</th><td>{}</td></tr><tr><th>Amount</th><td>¥{amount}</td></tr></table>\
<form method=\"post\" action=\"{H5_CASHIER_PATH}/pay\">{fields}\
<button id=\"pay\" type=\"submit\">Pay ¥{amount}</button></form>{cancel}\
<p class=\"note\">Provider emulator: paying here simulates the buyer.</p></div>",
            escape(&order.description),
        ),
    );
    Html(html).into_response()
}

/// `POST /cgi-bin/mmpayweb-bin/checkmweb/pay` (form `prepay_id, package, redirect_url?`): pays,
/// then returns the browser to `redirect_url`.
async fn wechat_cashier_pay(
    State(emu): State<Shared>,
    form: Result<Form<H5Link>, FormRejection>,
) -> Response {
    let Ok(Form(link)) = form else {
        return message(
            StatusCode::BAD_REQUEST,
            "Cannot pay",
            "err",
            "The payment form is incomplete.",
        );
    };
    let order = match h5_order(&emu, &link) {
        Ok(o) => o,
        Err(text) => return message(StatusCode::BAD_REQUEST, "Cannot pay", "err", text),
    };
    if let Err(e) = wechat::pay(&emu, &order.out_trade_no, link.package.as_deref(), false) {
        let text = match e {
            wechat::PayError::Conflict(m) | wechat::PayError::Invalid(m) => m,
            wechat::PayError::NotFound => "the order does not exist".into(),
        };
        return message(StatusCode::BAD_REQUEST, "Not paid", "err", &text);
    }
    match link.redirect_url.as_deref() {
        Some(url) => found(url),
        None => paid_page(&order.description, order.total),
    }
}

/// The answer of `alipay.trade.wap.pay` / `alipay.trade.page.pay`: Alipay's cashier for a trade.
pub fn alipay_cashier_page(trade: &AlipayTrade) -> Response {
    let amount = crate::state::format_yuan(trade.total);
    let quit = trade
        .channel
        .quit_url()
        .map(|u| {
            format!(
                "<p><a id=\"quit\" href=\"{}\">Back to the merchant</a></p>",
                escape(u)
            )
        })
        .unwrap_or_default();
    let html = page(
        &format!("Alipay — {}", trade.subject),
        &format!(
            "<div class=\"alipay\"><h1>Alipay</h1><table>\
<tr><th>Merchant order</th><td>{}</td></tr><tr><th>Item</th><td>{}</td></tr>\
<tr><th>Amount</th><td>¥{amount}</td></tr></table>\
<form method=\"post\" action=\"{ALIPAY_PAY_PATH}\">\
<input type=\"hidden\" name=\"out_trade_no\" value=\"{}\">\
<button id=\"pay\" type=\"submit\">Pay ¥{amount}</button></form>{quit}\
<p class=\"note\">Provider emulator: paying here simulates the buyer.</p></div>",
            escape(&trade.out_trade_no),
            escape(&trade.subject),
            escape(&trade.out_trade_no),
        ),
    );
    Html(html).into_response()
}

/// How the cashier methods fail: Alipay's error page (the browser, not the merchant's server,
/// is the client), naming the sub_code.
pub fn alipay_error_page(e: &Map<String, Value>) -> Response {
    let field = |name: &str| e.get(name).and_then(Value::as_str).unwrap_or("");
    let html = page(
        "Alipay — error",
        &format!(
            "<div class=\"alipay\"><h1 class=\"err\">Payment cannot continue</h1><table>\
<tr><th>code</th><td>{}</td></tr><tr><th>msg</th><td>{}</td></tr>\
<tr><th>sub_code</th><td id=\"sub_code\">{}</td></tr><tr><th>sub_msg</th><td>{}</td></tr>\
</table></div>",
            escape(field("code")),
            escape(field("msg")),
            escape(field("sub_code")),
            escape(field("sub_msg")),
        ),
    );
    (StatusCode::BAD_REQUEST, Html(html)).into_response()
}

/// The synchronous return Alipay appends to `return_url`, signed like a notification (RSA2 over
/// every parameter but `sign` and `sign_type`). It carries no trade_status: only the
/// asynchronous notification or a query proves payment.
pub fn alipay_return_params(
    emu: &Shared,
    trade: &AlipayTrade,
    trade_no: &str,
) -> Vec<(String, String)> {
    let app_id = emu.config.alipay.app_id.clone();
    let mut p: Vec<(String, String)> = [
        ("charset", "utf-8".to_string()),
        ("out_trade_no", trade.out_trade_no.clone()),
        ("method", format!("{}.return", trade.channel.method())),
        ("total_amount", crate::state::format_yuan(trade.total)),
        ("trade_no", trade_no.to_string()),
        ("auth_app_id", app_id.clone()),
        ("app_id", app_id),
        ("version", "1.0".to_string()),
        ("sign_type", "RSA2".to_string()),
        ("seller_id", emu.config.alipay.seller_id.clone()),
        ("timestamp", alipay_time(Utc::now())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let content = notify::alipay_notify_content(&p);
    p.push((
        "sign".into(),
        keys::sign_sha256_rsa(&emu.keys.alipay_private, content.as_bytes()),
    ));
    p
}

/// `url` with `params` added to its query string (before any fragment).
fn with_query(url: &str, params: &[(String, String)]) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    let query = serde_urlencoded::to_string(params).unwrap_or_default();
    match fragment {
        Some(f) => format!("{base}{separator}{query}#{f}"),
        None => format!("{base}{separator}{query}"),
    }
}

#[derive(Deserialize)]
struct CashierForm {
    out_trade_no: String,
}

/// `POST /emulator/alipay/cashier/pay` (form `out_trade_no`): the cashier's Pay button. Pays
/// (the asynchronous TRADE_SUCCESS follows), then sends the browser to `return_url` with the
/// signed synchronous return.
async fn alipay_cashier_pay(
    State(emu): State<Shared>,
    form: Result<Form<CashierForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return message(
            StatusCode::BAD_REQUEST,
            "Cannot pay",
            "err",
            "out_trade_no is missing.",
        );
    };
    let opened = emu
        .store()
        .alipay
        .get(&form.out_trade_no)
        .filter(|t| !matches!(t.channel, AlipayChannel::Qr { .. }))
        .cloned();
    let Some(trade) = opened else {
        return message(
            StatusCode::BAD_REQUEST,
            "Cannot pay",
            "err",
            "No trade with this number was opened at the cashier.",
        );
    };
    let trade_no = match alipay::pay(&emu, &trade.out_trade_no, None, false) {
        Ok(no) => no,
        Err(alipay::PayError::Conflict(m)) => {
            return message(StatusCode::BAD_REQUEST, "Not paid", "err", &m);
        }
        Err(alipay::PayError::NotFound) => {
            return message(
                StatusCode::BAD_REQUEST,
                "Not paid",
                "err",
                "the trade does not exist",
            );
        }
    };
    match trade.channel.return_url() {
        Some(url) => found(&with_query(
            url,
            &alipay_return_params(&emu, &trade, &trade_no),
        )),
        None => paid_page(&trade.subject, trade.total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_return_is_appended_to_the_query_before_any_fragment() {
        let p = vec![("a".to_string(), "1 2".to_string())];
        assert_eq!(
            with_query("https://m.example/r", &p),
            "https://m.example/r?a=1+2"
        );
        assert_eq!(
            with_query("https://m.example/r?x=1#top", &p),
            "https://m.example/r?x=1&a=1+2#top"
        );
    }
}
