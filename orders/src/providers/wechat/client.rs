//! The WeChat Pay v3 client: signs requests, verifies answers, maps them to the trait's types.

use super::{MAX_SKEW_SECS, SIGNATURE_TYPE};
use crate::providers::keys::{Signer, Verifying};
use crate::providers::{
    CloseOutcome, JsapiParams, MerchantIds, Mismatch, Payment, PaymentError, PaymentProvider,
    PaymentRequest, RefundRequest, RefundState, Started, TradeState, Via, beijing, check_payment,
    nonce, retry,
};
use chrono::{DateTime, Utc};
use memberline_schema::states::Provider;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

/// A configured WeChat Pay merchant.
#[derive(Clone, Debug)]
pub struct WechatPay {
    pub(crate) http: reqwest::Client,
    pub(crate) base_url: String,
    pub(crate) mchid: String,
    pub(crate) appid: String,
    pub(crate) merchant_serial_no: String,
    pub(crate) signer: Signer,
    pub(crate) apiv3_key: [u8; 32],
    pub(crate) platform_key_id: String,
    pub(crate) platform_key: Verifying,
    pub(crate) notify_url: String,
    pub(crate) attempts: usize,
}

/// A verified answer: status and body bytes.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

/// WeChat's error body.
#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// The transaction object of a query (and of a payment notification's plaintext).
#[derive(Clone, Debug, Deserialize)]
pub struct Transaction {
    #[serde(default)]
    pub appid: Option<String>,
    #[serde(default)]
    pub mchid: Option<String>,
    pub out_trade_no: String,
    #[serde(default)]
    pub transaction_id: Option<String>,
    pub trade_state: String,
    #[serde(default)]
    pub trade_type: Option<String>,
    #[serde(default)]
    pub success_time: Option<DateTime<chrono::FixedOffset>>,
    #[serde(default)]
    pub amount: Option<TransactionAmount>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TransactionAmount {
    pub total: i64,
    #[serde(default)]
    pub currency: Option<String>,
}

impl Transaction {
    /// The payment this transaction records (for `SUCCESS` or `REFUND` states).
    pub fn payment(&self) -> Result<Payment, PaymentError> {
        let amount = self
            .amount
            .as_ref()
            .ok_or_else(|| PaymentError::Malformed("a paid transaction without amount".into()))?;
        Ok(Payment {
            out_trade_no: self.out_trade_no.clone(),
            transaction_id: self.transaction_id.clone().ok_or_else(|| {
                PaymentError::Malformed("a paid transaction without transaction_id".into())
            })?,
            amount_fen: amount.total,
            currency: amount.currency.clone().unwrap_or_else(|| "CNY".to_owned()),
            paid_at: self.success_time.map(|t| t.with_timezone(&Utc)),
            merchant: MerchantIds {
                merchant_id: self.mchid.clone(),
                app_id: self.appid.clone(),
            },
            trade_type: self.trade_type.clone(),
        })
    }

    /// Where the trade is.
    pub fn state(&self) -> Result<TradeState, PaymentError> {
        Ok(match self.trade_state.as_str() {
            "SUCCESS" => TradeState::Paid(self.payment()?),
            "REFUND" => TradeState::Refunded(self.payment()?),
            "NOTPAY" | "USERPAYING" => TradeState::NotPaid,
            "CLOSED" | "REVOKED" | "PAYERROR" => TradeState::Closed,
            other => {
                return Err(PaymentError::Malformed(format!(
                    "unknown trade_state {other}"
                )));
            }
        })
    }
}

#[derive(Deserialize)]
struct RefundBody {
    #[serde(default)]
    refund_id: Option<String>,
    status: String,
}

impl RefundBody {
    fn state(&self) -> RefundState {
        match self.status.as_str() {
            "SUCCESS" => RefundState::Succeeded {
                refund_id: self.refund_id.clone(),
            },
            "CLOSED" => RefundState::Closed,
            "ABNORMAL" => RefundState::Abnormal,
            _ => RefundState::Processing,
        }
    }
}

impl WechatPay {
    /// Our `mchid`.
    pub fn mchid(&self) -> &str {
        &self.mchid
    }

    /// The app id of Native and H5 trades (`payments.wechat.appid`).
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// The arguments a front end in `app_id` pays the trade `prepay_id` with, signed now.
    pub fn jsapi_params(&self, app_id: &str, prepay_id: &str) -> JsapiParams {
        jsapi_params(
            &self.signer,
            app_id,
            &format!("prepay_id={prepay_id}"),
            Utc::now().timestamp().to_string(),
            nonce(32),
        )
    }

    /// The `Authorization` header of a request: `METHOD\nPATH\nTIMESTAMP\nNONCE\nBODY\n` signed
    /// with the merchant key.
    fn authorization(&self, method: &Method, path: &str, body: &str) -> String {
        let timestamp = Utc::now().timestamp();
        let nonce = nonce(32);
        let message = format!("{method}\n{path}\n{timestamp}\n{nonce}\n{body}\n");
        let signature = self.signer.sign(message.as_bytes());
        format!(
            "{SIGNATURE_TYPE} mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{signature}\",\
             timestamp=\"{timestamp}\",serial_no=\"{}\"",
            self.mchid, self.merchant_serial_no
        )
    }

    /// Sends one signed request and verifies the answer's signature before returning it.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, PaymentError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url))
            .header("Authorization", self.authorization(&method, path, &body))
            .header("Accept", "application/json");
        if method != Method::GET {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(PaymentError::from_reqwest)?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(PaymentError::from_reqwest)?;
        if let Err(why) = self.verify_answer(&headers, &bytes) {
            // A 5xx from a proxy in front of WeChat is unsigned: still worth a retry, never read.
            if status.is_server_error() {
                return Err(PaymentError::Unavailable {
                    status: status.as_u16(),
                    message: format!("unsigned answer ({why})"),
                });
            }
            return Err(PaymentError::Unverified(why));
        }
        if status.is_server_error() {
            return Err(PaymentError::Unavailable {
                status: status.as_u16(),
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
        }
        Ok(Answer {
            status,
            body: bytes.to_vec(),
        })
    }

    /// Checks the five `Wechatpay-*` headers of an answer against its exact body bytes.
    fn verify_answer(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<(), String> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("missing {name}"))
        };
        let serial = get("Wechatpay-Serial")?;
        if serial != self.platform_key_id {
            return Err(format!("unknown Wechatpay-Serial {serial}"));
        }
        let timestamp = get("Wechatpay-Timestamp")?;
        let skew = super::skew_secs(Utc::now().timestamp(), timestamp)
            .ok_or_else(|| "unreadable Wechatpay-Timestamp".to_owned())?;
        if skew > MAX_SKEW_SECS {
            return Err(format!("Wechatpay-Timestamp {skew} s away from now"));
        }
        let nonce = get("Wechatpay-Nonce")?;
        let signature = get("Wechatpay-Signature")?;
        let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
        message.extend_from_slice(body);
        message.push(b'\n');
        if !self.platform_key.verify(&message, signature) {
            return Err("bad Wechatpay-Signature".to_owned());
        }
        Ok(())
    }

    fn refused(answer: &Answer) -> PaymentError {
        match serde_json::from_slice::<ErrorBody>(&answer.body) {
            Ok(e) => PaymentError::Refused {
                code: e.code,
                message: e.message,
            },
            Err(_) => {
                PaymentError::Malformed(format!("status {} without an error body", answer.status))
            }
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(answer: &Answer) -> Result<T, PaymentError> {
        serde_json::from_slice(&answer.body).map_err(|e| PaymentError::Malformed(e.to_string()))
    }

    async fn query_once(&self, out_trade_no: &str) -> Result<TradeState, PaymentError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={}",
            self.mchid
        );
        let answer = self.call(Method::GET, &path, None).await?;
        match answer.status {
            StatusCode::OK => Self::parse::<Transaction>(&answer)?.state(),
            StatusCode::NOT_FOUND => Ok(TradeState::NotFound),
            _ => Err(Self::refused(&answer)),
        }
    }

    async fn close_once(&self, out_trade_no: &str) -> Result<CloseOutcome, PaymentError> {
        let path = format!("/v3/pay/transactions/out-trade-no/{out_trade_no}/close");
        let answer = self
            .call(Method::POST, &path, Some(&json!({ "mchid": self.mchid })))
            .await?;
        if answer.status.is_success() {
            return Ok(CloseOutcome::Closed);
        }
        match Self::refused(&answer) {
            PaymentError::Refused { code, .. } if code == "ORDERPAID" => {
                Ok(CloseOutcome::AlreadyPaid)
            }
            // Nothing to close: it can never be paid.
            PaymentError::Refused { code, .. }
                if code == "ORDER_CLOSED" || code == "ORDER_NOT_EXIST" =>
            {
                Ok(CloseOutcome::Closed)
            }
            other => Err(other),
        }
    }

    async fn refund_once(&self, request: &RefundRequest) -> Result<RefundState, PaymentError> {
        let mut body = json!({
            "out_trade_no": request.out_trade_no,
            "out_refund_no": request.out_refund_no,
            "reason": request.reason,
            "amount": {
                "refund": request.refund_fen,
                "total": request.total_fen,
                "currency": "CNY",
            },
        });
        if !self.notify_url.is_empty() {
            body["notify_url"] = json!(self.notify_url);
        }
        let answer = self
            .call(Method::POST, "/v3/refund/domestic/refunds", Some(&body))
            .await?;
        if answer.status.is_success() {
            Ok(Self::parse::<RefundBody>(&answer)?.state())
        } else {
            Err(Self::refused(&answer))
        }
    }

    async fn query_refund_once(&self, out_refund_no: &str) -> Result<RefundState, PaymentError> {
        let path = format!("/v3/refund/domestic/refunds/{out_refund_no}");
        let answer = self.call(Method::GET, &path, None).await?;
        match answer.status {
            StatusCode::OK => Ok(Self::parse::<RefundBody>(&answer)?.state()),
            StatusCode::NOT_FOUND => Ok(RefundState::NotFound),
            _ => Err(Self::refused(&answer)),
        }
    }
}

/// `paySign` over `appId\ntimeStamp\nnonceStr\npackage\n` (four lines, the last ended too)
/// with the merchant key, as WeChat's client checks it before it charges.
fn jsapi_params(
    signer: &Signer,
    app_id: &str,
    package: &str,
    time_stamp: String,
    nonce_str: String,
) -> JsapiParams {
    let message = format!("{app_id}\n{time_stamp}\n{nonce_str}\n{package}\n");
    JsapiParams {
        app_id: app_id.to_owned(),
        pay_sign: signer.sign(message.as_bytes()),
        time_stamp,
        nonce_str,
        package: package.to_owned(),
        sign_type: "RSA".to_owned(),
    }
}

#[async_trait::async_trait]
impl PaymentProvider for WechatPay {
    fn provider(&self) -> Provider {
        Provider::Wechat
    }

    async fn create(&self, request: &PaymentRequest) -> Result<Started, PaymentError> {
        let description: String = request.description.chars().take(127).collect();
        let mut body = json!({
            "appid": self.appid,
            "mchid": self.mchid,
            "description": description,
            "out_trade_no": request.out_trade_no,
            "time_expire": request.expires_at.with_timezone(&beijing()).to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            "notify_url": self.notify_url,
            "amount": { "total": request.amount_fen, "currency": "CNY" },
        });
        let path = match &request.via {
            Via::Qr => "/v3/pay/transactions/native",
            Via::Jsapi { app_id, openid } => {
                body["appid"] = json!(app_id);
                body["payer"] = json!({ "openid": openid });
                "/v3/pay/transactions/jsapi"
            }
            Via::H5 { client_ip, .. } => {
                body["scene_info"] = json!({
                    "payer_client_ip": client_ip,
                    "h5_info": { "type": "Wap" },
                });
                "/v3/pay/transactions/h5"
            }
            Via::Wap { .. } | Via::Page { .. } => {
                return Err(PaymentError::Malformed(
                    "WeChat Pay has no Alipay cashier channel".into(),
                ));
            }
        };
        let answer = self.call(Method::POST, path, Some(&body)).await?;
        if !answer.status.is_success() {
            return Err(Self::refused(&answer));
        }
        #[derive(Deserialize)]
        struct Created {
            code_url: Option<String>,
            prepay_id: Option<String>,
            h5_url: Option<String>,
        }
        let created: Created = Self::parse(&answer)?;
        let missing = |field: &str| PaymentError::Malformed(format!("{path} answered no {field}"));
        Ok(match &request.via {
            Via::Jsapi { app_id, .. } => {
                let prepay_id = created.prepay_id.ok_or_else(|| missing("prepay_id"))?;
                Started {
                    jsapi_params: Some(self.jsapi_params(app_id, &prepay_id)),
                    ..Started::default()
                }
            }
            Via::H5 { redirect_url, .. } => {
                let h5_url = created.h5_url.ok_or_else(|| missing("h5_url"))?;
                let redirect = serde_urlencoded::to_string([("redirect_url", redirect_url)])
                    .map_err(|e| PaymentError::Malformed(e.to_string()))?;
                Started {
                    h5_url: Some(format!("{h5_url}&{redirect}")),
                    ..Started::default()
                }
            }
            _ => Started {
                code_url: Some(created.code_url.ok_or_else(|| missing("code_url"))?),
                ..Started::default()
            },
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
        _out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundState, PaymentError> {
        retry::idempotent(self.attempts, || self.query_refund_once(out_refund_no)).await
    }

    fn check(
        &self,
        payment: &Payment,
        app_id: Option<&str>,
        amount_fen: i64,
    ) -> Result<(), Mismatch> {
        check_payment(
            payment,
            &self.mchid,
            app_id.unwrap_or(&self.appid),
            amount_fen,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector the SDK check also holds wechatpayv3 to (made by openssl): PKCS#1 v1.5 is
    /// deterministic, so the same key and lines give the same bytes.
    #[test]
    fn pay_sign_is_what_wechatpayv3_and_openssl_make_of_the_same_lines() {
        let vector: serde_json::Value = serde_json::from_str(include_str!(
            "../../../../tests/sdk/vectors/jsapi_pay_sign.json"
        ))
        .unwrap();
        let text = |k: &str| vector[k].as_str().unwrap().to_owned();
        let signer = Signer::from_pem_file(
            "test",
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/dev-keys/wechat/merchant_private_key.pem"
            )),
        )
        .unwrap();
        let params = jsapi_params(
            &signer,
            &text("appId"),
            &text("package"),
            text("timeStamp"),
            text("nonceStr"),
        );
        assert_eq!(params.pay_sign, text("paySign"));
        assert_eq!(params.sign_type, text("signType"));
        let json = serde_json::to_value(&params).unwrap();
        for key in [
            "appId",
            "timeStamp",
            "nonceStr",
            "package",
            "signType",
            "paySign",
        ] {
            assert_eq!(json[key], vector[key], "{key}");
        }
    }
}
