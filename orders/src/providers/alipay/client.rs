//! The Alipay client: signed form requests to the gateway, verified `*_response` objects.

use super::{signing_string, yuan_to_fen};
use crate::providers::beijing;
use crate::providers::keys::{Signer, Verifying};
use crate::providers::{
    CloseOutcome, MerchantIds, Mismatch, Payment, PaymentError, PaymentProvider, PaymentRequest,
    RefundRequest, RefundState, Started, TradeState, Via, check_payment, retry,
};
use chrono::{NaiveDateTime, TimeZone, Utc};
use memberline_schema::money::fen_to_yuan;
use memberline_schema::states::Provider;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A configured Alipay application.
#[derive(Clone, Debug)]
pub struct Alipay {
    pub(crate) http: reqwest::Client,
    pub(crate) gateway_url: String,
    pub(crate) app_id: String,
    pub(crate) seller_id: String,
    pub(crate) signer: Signer,
    pub(crate) alipay_key: Verifying,
    pub(crate) notify_url: String,
    pub(crate) attempts: usize,
}

/// The fields of a `*_response` this client reads.
#[derive(Debug, Deserialize)]
struct Response {
    code: String,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    sub_code: Option<String>,
    #[serde(default)]
    sub_msg: Option<String>,
    #[serde(default)]
    qr_code: Option<String>,
    #[serde(default)]
    trade_no: Option<String>,
    #[serde(default)]
    out_trade_no: Option<String>,
    #[serde(default)]
    trade_status: Option<String>,
    #[serde(default)]
    total_amount: Option<String>,
    #[serde(default)]
    send_pay_date: Option<String>,
    #[serde(default)]
    refund_status: Option<String>,
    #[serde(default)]
    fund_change: Option<String>,
}

impl Response {
    fn sub_code(&self) -> &str {
        self.sub_code.as_deref().unwrap_or_default()
    }

    fn refused(&self) -> PaymentError {
        if self.code == "20000" {
            return PaymentError::Unavailable {
                status: 200,
                message: format!("{} {}", self.code, self.msg),
            };
        }
        PaymentError::Refused {
            code: self.sub_code.clone().unwrap_or_else(|| self.code.clone()),
            message: self.sub_msg.clone().unwrap_or_else(|| self.msg.clone()),
        }
    }
}

/// Alipay's local time format (Beijing time).
pub(crate) const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Parses one of Alipay's `yyyy-MM-dd HH:mm:ss` Beijing times.
pub(crate) fn parse_time(text: &str) -> Option<chrono::DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text, TIME_FORMAT).ok()?;
    beijing()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

impl Alipay {
    /// Our `app_id`.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The request parameters of `method` with `biz_content` (and `extra` ones, such as
    /// `notify_url` and `return_url`), signed, URL-encoded.
    fn signed_request(
        &self,
        method: &str,
        biz_content: &serde_json::Value,
        extra: &[(&str, &str)],
    ) -> Result<String, PaymentError> {
        let timestamp = Utc::now()
            .with_timezone(&beijing())
            .format(TIME_FORMAT)
            .to_string();
        let biz_content = biz_content.to_string();
        let mut params: BTreeMap<&str, &str> = BTreeMap::from([
            ("app_id", self.app_id.as_str()),
            ("method", method),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("timestamp", timestamp.as_str()),
            ("version", "1.0"),
            ("biz_content", biz_content.as_str()),
        ]);
        params.extend(extra.iter().filter(|(_, v)| !v.is_empty()).copied());
        let signature = self
            .signer
            .sign(signing_string(params.iter().map(|(k, v)| (*k, *v))).as_bytes());
        params.insert("sign", signature.as_str());
        serde_urlencoded::to_string(&params).map_err(|e| PaymentError::Malformed(e.to_string()))
    }

    /// Calls `method` with `biz_content` and returns its verified `*_response`.
    async fn call(
        &self,
        method: &str,
        biz_content: serde_json::Value,
        with_notify: bool,
    ) -> Result<Response, PaymentError> {
        let notify: &[(&str, &str)] = if with_notify {
            &[("notify_url", self.notify_url.as_str())]
        } else {
            &[]
        };
        let form = self.signed_request(method, &biz_content, notify)?;
        let response = self
            .http
            .post(&self.gateway_url)
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(form)
            .send()
            .await
            .map_err(PaymentError::from_reqwest)?;
        let status = response.status();
        let text = response.text().await.map_err(PaymentError::from_reqwest)?;
        if status.is_server_error() {
            return Err(PaymentError::Unavailable {
                status: status.as_u16(),
                message: text.chars().take(200).collect(),
            });
        }
        self.verified(method, &text)
    }

    /// Finds `<method>_response` in the body, checks `sign` over its exact bytes, parses it.
    fn verified(&self, method: &str, text: &str) -> Result<Response, PaymentError> {
        let outer: BTreeMap<String, &RawValue> = serde_json::from_str(text)
            .map_err(|e| PaymentError::Unverified(format!("not a JSON object: {e}")))?;
        let name = format!("{}_response", method.replace('.', "_"));
        let raw = outer
            .get(&name)
            .or_else(|| outer.get("error_response"))
            .ok_or_else(|| PaymentError::Unverified(format!("no {name}")))?;
        let sign: String = outer
            .get("sign")
            .and_then(|s| serde_json::from_str(s.get()).ok())
            .ok_or_else(|| PaymentError::Unverified("no sign".to_owned()))?;
        if !self.alipay_key.verify(raw.get().as_bytes(), &sign) {
            return Err(PaymentError::Unverified("bad sign".to_owned()));
        }
        serde_json::from_str(raw.get()).map_err(|e| PaymentError::Malformed(e.to_string()))
    }

    fn payment(&self, r: &Response) -> Result<Payment, PaymentError> {
        let total = r.total_amount.as_deref().unwrap_or_default();
        Ok(Payment {
            out_trade_no: r.out_trade_no.clone().unwrap_or_default(),
            transaction_id: r
                .trade_no
                .clone()
                .ok_or_else(|| PaymentError::Malformed("a paid trade without trade_no".into()))?,
            amount_fen: yuan_to_fen(total)
                .ok_or_else(|| PaymentError::Malformed(format!("total_amount {total:?}")))?,
            currency: "CNY".to_owned(),
            paid_at: r.send_pay_date.as_deref().and_then(parse_time),
            // A query answer is about our app's trade by construction (it is signed for our
            // request); the seller is not in it.
            merchant: MerchantIds {
                merchant_id: Some(self.seller_id.clone()),
                app_id: Some(self.app_id.clone()),
            },
            trade_type: None,
        })
    }

    async fn query_once(&self, out_trade_no: &str) -> Result<TradeState, PaymentError> {
        let r = self
            .call(
                "alipay.trade.query",
                json!({ "out_trade_no": out_trade_no }),
                false,
            )
            .await?;
        if r.code != "10000" {
            return match r.sub_code() {
                "ACQ.TRADE_NOT_EXIST" => Ok(TradeState::NotFound),
                _ => Err(r.refused()),
            };
        }
        Ok(match r.trade_status.as_deref() {
            Some("TRADE_SUCCESS" | "TRADE_FINISHED") => TradeState::Paid(self.payment(&r)?),
            Some("WAIT_BUYER_PAY") => TradeState::NotPaid,
            Some("TRADE_CLOSED") => TradeState::Closed,
            other => {
                return Err(PaymentError::Malformed(format!("trade_status {other:?}")));
            }
        })
    }

    async fn close_once(&self, out_trade_no: &str) -> Result<CloseOutcome, PaymentError> {
        let r = self
            .call(
                "alipay.trade.close",
                json!({ "out_trade_no": out_trade_no }),
                false,
            )
            .await?;
        if r.code == "10000" {
            return Ok(CloseOutcome::Closed);
        }
        match r.sub_code() {
            // Never scanned: it does not exist, so it counts as closed.
            "ACQ.TRADE_NOT_EXIST" => Ok(CloseOutcome::Closed),
            // Paid (or already closed): the caller's query tells which.
            "ACQ.TRADE_STATUS_ERROR" => Ok(CloseOutcome::AlreadyPaid),
            _ => Err(r.refused()),
        }
    }

    async fn refund_once(&self, request: &RefundRequest) -> Result<RefundState, PaymentError> {
        let r = self
            .call(
                "alipay.trade.refund",
                json!({
                    "out_trade_no": request.out_trade_no,
                    "refund_amount": fen_to_yuan(request.refund_fen),
                    "out_request_no": request.out_refund_no,
                    "refund_reason": request.reason,
                }),
                false,
            )
            .await?;
        if r.code == "10000" {
            // Alipay answers a refund synchronously; `fund_change: N` on a repeat means the
            // money already moved under this number.
            tracing::debug!(fund_change = ?r.fund_change, "alipay refund accepted");
            Ok(RefundState::Succeeded {
                refund_id: r.trade_no.clone(),
            })
        } else {
            Err(r.refused())
        }
    }

    async fn query_refund_once(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundState, PaymentError> {
        let r = self
            .call(
                "alipay.trade.fastpay.refund.query",
                json!({ "out_trade_no": out_trade_no, "out_request_no": out_refund_no }),
                false,
            )
            .await?;
        if r.code != "10000" {
            return match r.sub_code() {
                "ACQ.TRADE_NOT_EXIST" => Ok(RefundState::NotFound),
                _ => Err(r.refused()),
            };
        }
        Ok(match r.refund_status.as_deref() {
            Some("REFUND_SUCCESS") => RefundState::Succeeded {
                refund_id: r.trade_no.clone(),
            },
            // Alipay answers 10000 without a status for a refund it does not know.
            _ => RefundState::NotFound,
        })
    }
}

#[async_trait::async_trait]
impl PaymentProvider for Alipay {
    fn provider(&self) -> Provider {
        Provider::Alipay
    }

    async fn create(&self, request: &PaymentRequest) -> Result<Started, PaymentError> {
        let subject: String = request.description.chars().take(256).collect();
        // An absolute end, not a span: a cashier's trade begins only when the buyer opens the
        // URL, which must not stay payable past the order's expiry (nor a QR code once scanned).
        let time_expire = request
            .expires_at
            .with_timezone(&beijing())
            .format(TIME_FORMAT)
            .to_string();
        let mut biz = json!({
            "out_trade_no": request.out_trade_no,
            "total_amount": fen_to_yuan(request.amount_fen),
            "subject": subject,
            "time_expire": time_expire,
        });
        // The cashiers are not server calls: the buyer's browser takes the signed request to
        // Alipay's gateway, and the trade exists there once the buyer opens it.
        let (method, return_url) = match &request.via {
            Via::Qr => {
                let r = self.call("alipay.trade.precreate", biz, true).await?;
                if r.code != "10000" {
                    return Err(r.refused());
                }
                let code_url = r
                    .qr_code
                    .ok_or_else(|| PaymentError::Malformed("precreate without qr_code".into()))?;
                return Ok(Started {
                    code_url: Some(code_url),
                    ..Started::default()
                });
            }
            Via::Wap {
                return_url,
                quit_url,
            } => {
                biz["product_code"] = json!("QUICK_WAP_WAY");
                biz["quit_url"] = json!(quit_url);
                ("alipay.trade.wap.pay", return_url)
            }
            Via::Page { return_url } => {
                biz["product_code"] = json!("FAST_INSTANT_TRADE_PAY");
                ("alipay.trade.page.pay", return_url)
            }
            Via::Jsapi { .. } | Via::H5 { .. } => {
                return Err(PaymentError::Malformed(
                    "Alipay has no WeChat channel".into(),
                ));
            }
        };
        let query = self.signed_request(
            method,
            &biz,
            &[
                ("notify_url", self.notify_url.as_str()),
                ("return_url", return_url.as_str()),
            ],
        )?;
        Ok(Started {
            pay_url: Some(format!("{}?{query}", self.gateway_url)),
            ..Started::default()
        })
    }

    async fn query(&self, out_trade_no: &str) -> Result<TradeState, PaymentError> {
        retry::idempotent(self.attempts, || self.query_once(out_trade_no)).await
    }

    async fn close(&self, out_trade_no: &str) -> Result<CloseOutcome, PaymentError> {
        retry::idempotent(self.attempts, || self.close_once(out_trade_no)).await
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundState, PaymentError> {
        retry::idempotent(self.attempts, || self.refund_once(request)).await
    }

    async fn query_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundState, PaymentError> {
        retry::idempotent(self.attempts, || {
            self.query_refund_once(out_trade_no, out_refund_no)
        })
        .await
    }

    /// Every Alipay channel pays to our one `app_id`, whatever the order says.
    fn check(
        &self,
        payment: &Payment,
        _app_id: Option<&str>,
        amount_fen: i64,
    ) -> Result<(), Mismatch> {
        check_payment(payment, &self.seller_id, &self.app_id, amount_fen)
    }
}
