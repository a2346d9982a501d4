//! The emulator's shared state: configuration, the in-memory record of every WeChat order,
//! WeChat refund and Alipay trade, the codes handed out (QR codes, H5 cashier packages, WeChat
//! login codes and the OpenIDs behind them), and the time and money helpers (Beijing time
//! formats, fen ↔ yuan) the two providers' wire formats need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::keys::Keys;
use crate::notify::Hub;

/// WeChat identifiers of the one merchant the emulator serves, and of the three apps bound to it.
#[derive(Clone, Debug)]
pub struct WechatConfig {
    pub mchid: String,
    /// The app of Native and H5 orders.
    pub appid: String,
    pub miniprogram_appid: String,
    /// The mini-program's AppSecret, which `jscode2session` requires.
    pub miniprogram_secret: String,
    pub official_account_appid: String,
    /// The official account's AppSecret, which `oauth2/access_token` requires.
    pub official_account_secret: String,
    /// Serial of the merchant API certificate, expected in `serial_no` of requests.
    pub merchant_serial: String,
    /// `PUB_KEY_ID_…`, sent as `Wechatpay-Serial` on every answer and notification.
    pub public_key_id: String,
    /// The 32-byte APIv3 key that encrypts notification resources.
    pub apiv3_key: String,
}

impl WechatConfig {
    /// Whether `appid` is one of the apps bound to the merchant (an order may name any of them).
    pub fn binds(&self, appid: &str) -> bool {
        [
            &self.appid,
            &self.miniprogram_appid,
            &self.official_account_appid,
        ]
        .iter()
        .any(|a| a.as_str() == appid)
    }

    /// The appid and AppSecret of a login app.
    pub fn login_app(&self, app: LoginApp) -> (&str, &str) {
        match app {
            LoginApp::Miniprogram => (&self.miniprogram_appid, &self.miniprogram_secret),
            LoginApp::OfficialAccount => {
                (&self.official_account_appid, &self.official_account_secret)
            }
        }
    }
}

/// The two apps whose buyers log in with WeChat (and then pay by JSAPI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginApp {
    Miniprogram,
    OfficialAccount,
}

/// Alipay identifiers of the one application the emulator serves.
#[derive(Clone, Debug)]
pub struct AlipayConfig {
    pub app_id: String,
    pub seller_id: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Multiplies every delay the emulator chooses itself (refund completion, notification
    /// retry schedule). Validity windows set by the protocol (`time_expire`, the 2-hour code
    /// validity, `timeout_express`) are real time and are not scaled.
    pub time_scale: f64,
    pub wechat: WechatConfig,
    pub alipay: AlipayConfig,
}

impl Config {
    /// The development identifiers of `deploy/dev-keys/README.md`.
    pub fn development() -> Self {
        Self {
            time_scale: 1.0,
            wechat: WechatConfig {
                mchid: "1900000109".into(),
                appid: "wxd0e1c2b3a4958677".into(),
                miniprogram_appid: "wx8f1e2d3c4b5a6978".into(),
                miniprogram_secret: "memberline-dev-miniprogram-secret".into(),
                official_account_appid: "wx1a2b3c4d5e6f7081".into(),
                official_account_secret: "memberline-dev-official-account-secret".into(),
                merchant_serial: "4A7C2ABF7ABB4EA58C06FF6161AFF456880096EC".into(),
                public_key_id: "PUB_KEY_ID_0119000001092026112400000001".into(),
                apiv3_key: "w20rERqvyXUYJfRcGdayYGsFga5MZsn8".into(),
            },
            alipay: AlipayConfig {
                app_id: "2021000148600001".into(),
                seller_id: "2088100000000001".into(),
            },
        }
    }

    /// `real` × time-scale.
    pub fn scaled(&self, real: Duration) -> Duration {
        Duration::try_from_secs_f64(real.as_secs_f64() * self.time_scale).unwrap_or(Duration::ZERO)
    }
}

/// Everything the HTTP handlers and background tasks share.
pub struct Emulator {
    pub config: Config,
    pub keys: Keys,
    store: Mutex<Store>,
    pub notify: Hub,
    pub http: reqwest::Client,
}

pub type Shared = Arc<Emulator>;

impl Emulator {
    pub fn new(config: Config, keys: Keys) -> anyhow::Result<Shared> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Arc::new(Self {
            config,
            keys,
            store: Mutex::new(Store::default()),
            notify: Hub::default(),
            http,
        }))
    }

    /// The store lock. Never held across an `.await`.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Wechat,
    Alipay,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Wechat => "wechat",
            Provider::Alipay => "alipay",
        }
    }
}

/// A code the emulator handed out (a QR code, or an H5 cashier `package`), valid until
/// `expires_at`.
#[derive(Clone, Debug)]
pub struct CodeRef {
    pub provider: Provider,
    pub out_trade_no: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct Store {
    pub wechat: HashMap<String, WechatTrade>,
    /// By `out_refund_no` (unique per merchant).
    pub wechat_refunds: HashMap<String, WechatRefund>,
    pub alipay: HashMap<String, AlipayTrade>,
    /// By `code_url` / `qr_code` / H5 `package`, including superseded codes.
    pub codes: HashMap<String, CodeRef>,
    /// WeChat login codes by code.
    pub login_codes: HashMap<String, LoginCode>,
    /// Every (appid, openid) a login handed out: JSAPI orders may only name these buyers.
    pub openids: std::collections::HashSet<(String, String)>,
    /// The error the next login exchange answers (`POST /emulator/wechat/login-failure`).
    pub login_failure: Option<(i64, String)>,
    /// Ids handed out, so that none is handed out twice.
    pub ids: std::collections::HashSet<String>,
    /// WeChat refunds accepted from now on end ABNORMAL instead of SUCCESS
    /// (`POST /emulator/refund-outcome`).
    pub wechat_refunds_end_abnormal: bool,
}

impl Store {
    /// A new id made by `make`, distinct from every id handed out before.
    pub fn unique_id(&mut self, make: impl Fn() -> String) -> String {
        loop {
            let id = make();
            if self.ids.insert(id.clone()) {
                return id;
            }
        }
    }
}

/// A WeChat login code (from `wx.login` or the official account's OAuth redirect): it names
/// one buyer of one app, lives 5 minutes and can be exchanged once.
#[derive(Clone, Debug)]
pub struct LoginCode {
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    /// The buyer looks at the page in WeChat's snapshot mode (official account only).
    pub snapshot: bool,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum WechatState {
    #[serde(rename = "NOTPAY")]
    NotPay,
    #[serde(rename = "SUCCESS")]
    Success,
    #[serde(rename = "CLOSED")]
    Closed,
    #[serde(rename = "REFUND")]
    Refund,
}

impl WechatState {
    pub fn code(self) -> &'static str {
        match self {
            WechatState::NotPay => "NOTPAY",
            WechatState::Success => "SUCCESS",
            WechatState::Closed => "CLOSED",
            WechatState::Refund => "REFUND",
        }
    }

    pub fn desc(self) -> &'static str {
        match self {
            WechatState::NotPay => "订单未支付",
            WechatState::Success => "支付成功",
            WechatState::Closed => "订单已关闭",
            WechatState::Refund => "订单发生过退款",
        }
    }
}

/// Who paid, and when.
#[derive(Clone, Debug, Serialize)]
pub struct WechatPayment {
    pub transaction_id: String,
    pub success_time: DateTime<Utc>,
    pub openid: String,
}

/// How the buyer pays a WeChat order: what the create call handed out for it.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "trade_type")]
pub enum WechatChannel {
    /// The buyer scans `code_url`.
    #[serde(rename = "NATIVE")]
    Native { code_url: String },
    /// The merchant's mini-program or official-account page pays `prepay_id` for `openid`.
    #[serde(rename = "JSAPI")]
    Jsapi { prepay_id: String, openid: String },
    /// The buyer's mobile browser opens WeChat's H5 cashier for `prepay_id`.
    #[serde(rename = "MWEB")]
    H5 { prepay_id: String },
}

impl WechatChannel {
    /// `trade_type` as WeChat writes it.
    pub fn trade_type(&self) -> &'static str {
        match self {
            WechatChannel::Native { .. } => "NATIVE",
            WechatChannel::Jsapi { .. } => "JSAPI",
            WechatChannel::H5 { .. } => "MWEB",
        }
    }

    pub fn prepay_id(&self) -> Option<&str> {
        match self {
            WechatChannel::Native { .. } => None,
            WechatChannel::Jsapi { prepay_id, .. } | WechatChannel::H5 { prepay_id } => {
                Some(prepay_id)
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WechatTrade {
    pub appid: String,
    pub mchid: String,
    pub description: String,
    pub out_trade_no: String,
    pub notify_url: String,
    pub total: i64,
    pub currency: String,
    /// As sent on the first call.
    pub time_expire: Option<String>,
    pub attach: Option<String>,
    pub channel: WechatChannel,
    pub created_at: DateTime<Utc>,
    /// When the current `code_url` / `prepay_id` stops being payable.
    pub expires_at: DateTime<Utc>,
    pub state: WechatState,
    pub payment: Option<WechatPayment>,
    /// Sum of every accepted refund (processing or done), in fen.
    pub refunded: i64,
    pub refunds: Vec<String>,
}

impl WechatTrade {
    pub fn is_paid(&self) -> bool {
        matches!(self.state, WechatState::Success | WechatState::Refund)
    }

    /// The transaction object of the query API and of `TRANSACTION.SUCCESS` notifications.
    pub fn transaction_json(&self) -> Value {
        let mut v = json!({
            "appid": self.appid,
            "mchid": self.mchid,
            "out_trade_no": self.out_trade_no,
            "trade_type": self.channel.trade_type(),
            "trade_state": self.state.code(),
            "trade_state_desc": self.state.desc(),
            "attach": self.attach.clone().unwrap_or_default(),
            "amount": { "total": self.total, "currency": self.currency },
        });
        if let Some(p) = &self.payment {
            v["transaction_id"] = json!(p.transaction_id);
            v["bank_type"] = json!("OTHERS");
            v["success_time"] = json!(rfc3339_beijing(p.success_time));
            v["payer"] = json!({ "openid": p.openid });
            v["amount"]["payer_total"] = json!(self.total);
            v["amount"]["payer_currency"] = json!(self.currency);
        }
        v
    }

    /// The OpenID a payment of this order is made by: the JSAPI payer, or for a code or an H5
    /// cashier whoever happens to pay (a fresh buyer each time).
    pub fn buyer_openid(&self) -> String {
        match &self.channel {
            WechatChannel::Jsapi { openid, .. } => openid.clone(),
            _ => crate::keys::random_openid(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RefundStatus {
    #[serde(rename = "PROCESSING")]
    Processing,
    #[serde(rename = "SUCCESS")]
    Success,
    /// The money could not reach the buyer (a closed card, say): the merchant must act.
    #[serde(rename = "ABNORMAL")]
    Abnormal,
}

impl RefundStatus {
    pub fn code(self) -> &'static str {
        match self {
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Success => "SUCCESS",
            RefundStatus::Abnormal => "ABNORMAL",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WechatRefund {
    pub refund_id: String,
    pub out_refund_no: String,
    pub transaction_id: String,
    pub out_trade_no: String,
    pub reason: Option<String>,
    pub notify_url: Option<String>,
    pub refund: i64,
    pub total: i64,
    pub currency: String,
    pub create_time: DateTime<Utc>,
    pub status: RefundStatus,
    pub success_time: Option<DateTime<Utc>>,
}

pub const USER_RECEIVED_ACCOUNT: &str = "支付用户零钱";

impl WechatRefund {
    /// The refund object of the refund APIs.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "refund_id": self.refund_id,
            "out_refund_no": self.out_refund_no,
            "transaction_id": self.transaction_id,
            "out_trade_no": self.out_trade_no,
            "channel": "ORIGINAL",
            "user_received_account": USER_RECEIVED_ACCOUNT,
            "create_time": rfc3339_beijing(self.create_time),
            "status": self.status.code(),
            "funds_account": "AVAILABLE",
            "amount": {
                "total": self.total,
                "refund": self.refund,
                "payer_total": self.total,
                "payer_refund": self.refund,
                "settlement_refund": self.refund,
                "settlement_total": self.total,
                "discount_refund": 0,
                "currency": self.currency,
            },
        });
        if let Some(t) = self.success_time {
            v["success_time"] = json!(rfc3339_beijing(t));
        }
        v
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AlipayStatus {
    #[serde(rename = "WAIT_BUYER_PAY")]
    WaitBuyerPay,
    #[serde(rename = "TRADE_SUCCESS")]
    TradeSuccess,
    #[serde(rename = "TRADE_CLOSED")]
    TradeClosed,
    #[serde(rename = "TRADE_FINISHED")]
    TradeFinished,
}

impl AlipayStatus {
    pub fn code(self) -> &'static str {
        match self {
            AlipayStatus::WaitBuyerPay => "WAIT_BUYER_PAY",
            AlipayStatus::TradeSuccess => "TRADE_SUCCESS",
            AlipayStatus::TradeClosed => "TRADE_CLOSED",
            AlipayStatus::TradeFinished => "TRADE_FINISHED",
        }
    }
}

/// Exists on Alipay's side once the buyer has scanned the code (or opened the cashier).
#[derive(Clone, Debug, Serialize)]
pub struct AlipayScan {
    pub trade_no: String,
    pub buyer_id: String,
    pub buyer_logon_id: String,
    pub gmt_create: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AlipayRefund {
    pub out_request_no: String,
    pub refund_amount: i64,
    pub reason: Option<String>,
    pub gmt_refund_pay: DateTime<Utc>,
    /// The cumulative refunded amount right after this refund, in fen.
    pub refund_fee: i64,
}

/// The Alipay method that created a trade, and what that method handed out.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "method")]
pub enum AlipayChannel {
    #[serde(rename = "alipay.trade.precreate")]
    Qr { qr_code: String },
    /// The mobile cashier; `quit_url` is where its quit link leads.
    #[serde(rename = "alipay.trade.wap.pay")]
    Wap {
        return_url: Option<String>,
        quit_url: Option<String>,
    },
    /// The desktop cashier.
    #[serde(rename = "alipay.trade.page.pay")]
    Page { return_url: Option<String> },
}

impl AlipayChannel {
    pub fn method(&self) -> &'static str {
        match self {
            AlipayChannel::Qr { .. } => "alipay.trade.precreate",
            AlipayChannel::Wap { .. } => "alipay.trade.wap.pay",
            AlipayChannel::Page { .. } => "alipay.trade.page.pay",
        }
    }

    pub fn qr_code(&self) -> Option<&str> {
        match self {
            AlipayChannel::Qr { qr_code } => Some(qr_code),
            _ => None,
        }
    }

    /// Where the cashier sends the buyer's browser after paying.
    pub fn return_url(&self) -> Option<&str> {
        match self {
            AlipayChannel::Qr { .. } => None,
            AlipayChannel::Wap { return_url, .. } | AlipayChannel::Page { return_url } => {
                return_url.as_deref()
            }
        }
    }

    pub fn quit_url(&self) -> Option<&str> {
        match self {
            AlipayChannel::Wap { quit_url, .. } => quit_url.as_deref(),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AlipayTrade {
    pub out_trade_no: String,
    /// In fen.
    pub total: i64,
    pub subject: String,
    pub body: Option<String>,
    pub passback_params: Option<String>,
    pub notify_url: Option<String>,
    pub channel: AlipayChannel,
    pub created_at: DateTime<Utc>,
    pub timeout_express: Option<String>,
    pub expires_at: DateTime<Utc>,
    /// A close was asked before the scan (answered `ACQ.TRADE_NOT_EXIST`, changes nothing).
    pub close_requested_before_scan: bool,
    pub scan: Option<AlipayScan>,
    pub status: AlipayStatus,
    pub gmt_payment: Option<DateTime<Utc>>,
    pub gmt_close: Option<DateTime<Utc>>,
    pub refunded: i64,
    pub refunds: Vec<AlipayRefund>,
}

impl AlipayTrade {
    pub fn is_paid(&self) -> bool {
        self.gmt_payment.is_some()
    }
}

/// Beijing time, UTC+8 (China has no daylight saving time).
pub fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("valid offset")
}

/// RFC 3339 in Beijing time with seconds, e.g. `2026-11-24T10:34:56+08:00`, as WeChat writes it.
pub fn rfc3339_beijing(t: DateTime<Utc>) -> String {
    t.with_timezone(&beijing())
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// `yyyy-MM-dd HH:mm:ss` in Beijing time, as Alipay writes it.
pub fn alipay_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&beijing())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// `yyyyMMdd` in Beijing time (the date inside transaction and trade numbers).
pub fn beijing_date(t: DateTime<Utc>) -> String {
    t.with_timezone(&beijing()).format("%Y%m%d").to_string()
}

/// Parses Alipay's yuan amounts: digits, optionally `.` and one or two digits. Returns fen.
pub fn parse_yuan(s: &str) -> Option<i64> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    if whole.is_empty() || whole.len() > 12 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.contains('.') && (frac.is_empty() || frac.len() > 2)
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    whole.checked_mul(100)?.checked_add(frac)
}

/// Fen as Alipay's yuan text, always two decimals: `1234` → `12.34`.
pub fn format_yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let fen = fen.unsigned_abs();
    format!("{sign}{}.{:02}", fen / 100, fen % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_amounts_parse_with_at_most_two_decimals() {
        assert_eq!(parse_yuan("12.34"), Some(1234));
        assert_eq!(parse_yuan("12.3"), Some(1230));
        assert_eq!(parse_yuan("12"), Some(1200));
        assert_eq!(parse_yuan("0.01"), Some(1));
        assert_eq!(parse_yuan("12.345"), None);
        assert_eq!(parse_yuan("12."), None);
        assert_eq!(parse_yuan(".5"), None);
        assert_eq!(parse_yuan("-1"), None);
        assert_eq!(parse_yuan("1e3"), None);
        assert_eq!(parse_yuan(""), None);
        assert_eq!(format_yuan(1234), "12.34");
        assert_eq!(format_yuan(5), "0.05");
    }

    #[test]
    fn beijing_times_are_written_with_the_plus_eight_offset() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T02:34:56Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rfc3339_beijing(t), "2026-11-24T10:34:56+08:00");
        assert_eq!(alipay_time(t), "2026-11-24 10:34:56");
        assert_eq!(beijing_date(t), "20261124");
    }
}
