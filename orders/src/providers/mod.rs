//! The payment providers, a layer the order domain calls: WeChat Pay API v3 (Native, JSAPI, H5)
//! and the Alipay open API (precreate, mobile and desktop cashiers) behind one trait,
//! [`PaymentProvider`], with the login of WeChat buyers ([`wechat::login`]).
//!
//! Every request is signed with the merchant's key and every answer is verified with the
//! provider's public key before its body is read; a notification is verified (and, for WeChat,
//! decrypted) by [`wechat::WechatPay::verify_notification`] and
//! [`alipay::Alipay::verify_notification`] before anything reads it. Nothing here touches the
//! database: what a provider says is applied to orders by the domain (its `settle` module).
//!
//! Timeouts bound every call; only idempotent calls (query, close, refund with the same refund
//! number, refund query) are retried, and only after network errors and 5xx answers.

pub mod alipay;
mod keys;
mod retry;
mod setup;
pub mod wechat;

use chrono::{DateTime, Utc};
use memberline_schema::states::{NotificationOutcome, Provider};
use serde::{Deserialize, Serialize};

pub use keys::DevKeyError;
pub use setup::{ALIPAY_RETURN_PATH, Offer, Payments, SetupError};

/// A provider payment to create.
#[derive(Clone, Debug)]
pub struct PaymentRequest {
    /// Our order number (`out_trade_no`), unique per merchant.
    pub out_trade_no: String,
    /// What the buyer sees on the payment page (WeChat `description`, Alipay `subject`).
    pub description: String,
    /// The amount, in fen.
    pub amount_fen: i64,
    /// When the trade stops being payable.
    pub expires_at: DateTime<Utc>,
    /// Which of the provider's products the buyer pays with.
    pub via: Via,
}

/// The provider product a payment is made with, and what that product needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// WeChat Native or Alipay precreate: a code to scan.
    Qr,
    /// WeChat JSAPI, in the app `app_id` (a mini-program or an official account), for the buyer
    /// whose OpenID there is `openid`.
    Jsapi { app_id: String, openid: String },
    /// WeChat H5: the cashier from a mobile browser at `client_ip`, which sends the buyer back
    /// to `redirect_url`.
    H5 {
        client_ip: String,
        redirect_url: String,
    },
    /// Alipay's mobile cashier: back to `return_url` once paid, to `quit_url` when the buyer
    /// gives up.
    Wap {
        return_url: String,
        quit_url: String,
    },
    /// Alipay's desktop cashier: back to `return_url` once paid.
    Page { return_url: String },
}

/// What the buyer's front end needs to pay a created trade: exactly one field is set, the one
/// of its channel. Stored with the order (`provider_payload`) and shown in its `payment`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Started {
    /// A code to scan: WeChat `weixin://wxpay/bizpayurl?pr=…`, Alipay `https://qr.alipay.com/…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_url: Option<String>,
    /// WeChat JSAPI: the arguments of `wx.requestPayment` / `getBrandWCPayRequest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsapi_params: Option<JsapiParams>,
    /// WeChat H5: the cashier to open, our `redirect_url` appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h5_url: Option<String>,
    /// Alipay mobile or desktop cashier: a GET to Alipay's gateway carrying the signed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_url: Option<String>,
}

/// The arguments a WeChat front end pays a JSAPI trade with, signed with the merchant key over
/// `appId\ntimeStamp\nnonceStr\npackage\n` (`signType` is not signed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JsapiParams {
    #[serde(rename = "appId")]
    pub app_id: String,
    /// Unix seconds, as a string.
    #[serde(rename = "timeStamp")]
    pub time_stamp: String,
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    /// `prepay_id=<id>`.
    pub package: String,
    /// `RSA`.
    #[serde(rename = "signType")]
    pub sign_type: String,
    /// Base64 SHA256withRSA of the four lines above.
    #[serde(rename = "paySign")]
    pub pay_sign: String,
}

/// A payment the provider reports as made (by query or by notification).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    /// Our order number.
    pub out_trade_no: String,
    /// The provider's transaction id (WeChat `transaction_id`, Alipay `trade_no`).
    pub transaction_id: String,
    /// What the buyer paid for, in fen.
    pub amount_fen: i64,
    /// `CNY` (WeChat `amount.currency`; Alipay trades are always CNY).
    pub currency: String,
    /// When the provider says it was paid, if it said.
    pub paid_at: Option<DateTime<Utc>>,
    /// Merchant ids the provider put on the payment (WeChat mchid/appid, Alipay seller_id/app_id).
    pub merchant: MerchantIds,
    /// What the provider says the trade was (WeChat `trade_type`: `NATIVE`, `JSAPI`, `MWEB`);
    /// Alipay reports none.
    pub trade_type: Option<String>,
}

/// The merchant identifiers carried by a payment; compared with ours before it is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MerchantIds {
    /// WeChat `mchid` / Alipay `seller_id`.
    pub merchant_id: Option<String>,
    /// WeChat `appid` / Alipay `app_id`.
    pub app_id: Option<String>,
}

/// Where a trade is at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TradeState {
    /// Paid (WeChat `SUCCESS`, Alipay `TRADE_SUCCESS` / `TRADE_FINISHED`).
    Paid(Payment),
    /// Paid and then (partly or fully) refunded (WeChat `REFUND`; Alipay reports a fully refunded
    /// trade as `TRADE_CLOSED`, which this crate cannot tell from closed-unpaid, so it is `Closed`).
    Refunded(Payment),
    /// Created and waiting for the buyer (WeChat `NOTPAY`/`USERPAYING`, Alipay `WAIT_BUYER_PAY`).
    NotPaid,
    /// Closed without payment (WeChat `CLOSED`/`REVOKED`/`PAYERROR`, Alipay `TRADE_CLOSED`).
    Closed,
    /// The provider knows no such trade (WeChat `ORDER_NOT_EXIST`; Alipay before the buyer scanned).
    NotFound,
}

/// What closing a trade did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The trade is closed and can no longer be paid (or never existed, which for Alipay means
    /// the buyer never scanned: it counts as closed).
    Closed,
    /// The trade was paid before the close: query it and apply the payment.
    AlreadyPaid,
}

/// A refund to request. `out_refund_no` makes it idempotent: the same number refunds once.
#[derive(Clone, Debug)]
pub struct RefundRequest {
    pub out_trade_no: String,
    pub out_refund_no: String,
    /// The amount to give back, in fen.
    pub refund_fen: i64,
    /// The trade's total, in fen.
    pub total_fen: i64,
    pub reason: String,
}

/// Where a refund is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundState {
    /// Accepted, outcome pending (WeChat `PROCESSING`).
    Processing,
    /// The money is on its way back.
    Succeeded { refund_id: Option<String> },
    /// It failed and needs an operator (WeChat `ABNORMAL`).
    Abnormal,
    /// Closed without refunding (WeChat `CLOSED`).
    Closed,
    /// The provider knows no such refund.
    NotFound,
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// No answer within the configured time.
    #[error("the provider did not answer in time")]
    Timeout,
    /// The connection failed.
    #[error("network error talking to the provider: {0}")]
    Network(String),
    /// The provider answered 5xx (or Alipay code 20000, service unavailable).
    #[error("the provider is unavailable (status {status}): {message}")]
    Unavailable { status: u16, message: String },
    /// A verified business refusal (WeChat 4xx `code`, Alipay `sub_code`).
    #[error("the provider refused: {code}: {message}")]
    Refused { code: String, message: String },
    /// The answer's signature did not verify (or was missing): its body is not trusted.
    #[error("the provider's answer could not be verified: {0}")]
    Unverified(String),
    /// The answer verified but made no sense to us.
    #[error("unexpected answer from the provider: {0}")]
    Malformed(String),
}

impl PaymentError {
    /// Whether the same call may be repeated (network failures, time-outs and 5xx only).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PaymentError::Timeout | PaymentError::Network(_) | PaymentError::Unavailable { .. }
        )
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PaymentError::Timeout => "timeout",
            PaymentError::Network(_) => "network",
            PaymentError::Unavailable { .. } => "unavailable",
            PaymentError::Refused { .. } => "refused",
            PaymentError::Unverified(_) => "unverified",
            PaymentError::Malformed(_) => "malformed",
        }
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            PaymentError::Timeout
        } else {
            PaymentError::Network(e.without_url().to_string())
        }
    }
}

/// Why a notification was not accepted. Every variant means: changed nothing, answer failure.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("missing or unreadable header {0}")]
    MissingHeader(&'static str),
    #[error("unknown platform key {0}")]
    UnknownSerial(String),
    #[error("timestamp {skew_secs} s away from now (at most 300 s allowed)")]
    Stale { skew_secs: i64 },
    #[error("bad signature")]
    BadSignature,
    #[error("could not decrypt the resource")]
    Decrypt,
    #[error("malformed notification: {0}")]
    Malformed(String),
}

impl NotifyError {
    /// What the notification it refused counts as.
    pub fn outcome(&self) -> NotificationOutcome {
        match self {
            NotifyError::MissingHeader(_) => NotificationOutcome::RejectedMissingHeader,
            NotifyError::UnknownSerial(_) => NotificationOutcome::RejectedUnknownSerial,
            NotifyError::Stale { .. } => NotificationOutcome::RejectedStale,
            NotifyError::BadSignature => NotificationOutcome::RejectedBadSignature,
            NotifyError::Decrypt => NotificationOutcome::RejectedDecrypt,
            NotifyError::Malformed(_) => NotificationOutcome::RejectedMalformed,
        }
    }
}

/// Why a verified payment must not be applied to an order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("merchant {field} is {got:?}, ours is {ours:?}")]
    Merchant {
        field: &'static str,
        got: Option<String>,
        ours: String,
    },
    #[error("amount is {got} fen, the order's is {expected} fen")]
    Amount { got: i64, expected: i64 },
    #[error("currency is {0:?}, not CNY")]
    Currency(String),
}

/// One payment provider. Each method is one signed call whose answer is verified before it is
/// read; see the module docs for time-outs and retries.
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync {
    /// Which provider this is.
    fn provider(&self) -> Provider;
    /// Creates a trade (or, with identical parameters, fetches it again) and answers what the
    /// buyer's front end pays it with.
    async fn create(&self, request: &PaymentRequest) -> Result<Started, PaymentError>;
    /// Asks where a trade is.
    async fn query(&self, out_trade_no: &str) -> Result<TradeState, PaymentError>;
    /// Closes an unpaid trade so it can no longer be paid.
    async fn close(&self, out_trade_no: &str) -> Result<CloseOutcome, PaymentError>;
    /// Refunds (part of) a paid trade; the same `out_refund_no` refunds once.
    async fn refund(&self, request: &RefundRequest) -> Result<RefundState, PaymentError>;
    /// Asks where a refund is.
    async fn query_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundState, PaymentError>;
    /// Checks a verified payment against our merchant ids, the app id its trade was created
    /// under (`None`: our default app) and the order's amount in fen.
    fn check(
        &self,
        payment: &Payment,
        app_id: Option<&str>,
        amount_fen: i64,
    ) -> Result<(), Mismatch>;
}

/// Compares the merchant ids and amount of `payment` with ours (shared by both providers:
/// which id is which is the provider's business, the rule is the same).
pub(crate) fn check_payment(
    payment: &Payment,
    merchant_id: &str,
    app_id: &str,
    amount_fen: i64,
) -> Result<(), Mismatch> {
    for (field, got, ours) in [
        ("merchant_id", &payment.merchant.merchant_id, merchant_id),
        ("app_id", &payment.merchant.app_id, app_id),
    ] {
        if got.as_deref() != Some(ours) {
            return Err(Mismatch::Merchant {
                field,
                got: got.clone(),
                ours: ours.to_owned(),
            });
        }
    }
    if payment.currency != "CNY" {
        return Err(Mismatch::Currency(payment.currency.clone()));
    }
    if payment.amount_fen != amount_fen {
        return Err(Mismatch::Amount {
            got: payment.amount_fen,
            expected: amount_fen,
        });
    }
    Ok(())
}

/// A random string of `len` ASCII letters and digits (nonces).
pub(crate) fn nonce(len: usize) -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// China Standard Time (UTC+8), the zone both providers write their local times in.
pub fn beijing() -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}
