//! Alipay asynchronous notifications: the form body parsed into parameters, `sign` checked over
//! EVERY parameter received except `sign` and `sign_type` (a fixed list would break the day
//! Alipay adds a field), and only then read.

use super::client::parse_time;
use super::{Alipay, yuan_to_fen};
use crate::providers::{MerchantIds, NotifyError, Payment};
use std::collections::BTreeMap;

/// A verified notification (or cashier return): every parameter as received (URL-decoded).
#[derive(Clone, Debug)]
pub struct AlipayNotification {
    pub params: BTreeMap<String, String>,
}

impl AlipayNotification {
    fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Unique per notification event; the same in every retry of it.
    pub fn notify_id(&self) -> Option<&str> {
        self.get("notify_id")
    }

    pub fn out_trade_no(&self) -> Option<&str> {
        self.get("out_trade_no")
    }

    /// `WAIT_BUYER_PAY`, `TRADE_CLOSED`, `TRADE_SUCCESS` or `TRADE_FINISHED`.
    pub fn trade_status(&self) -> Option<&str> {
        self.get("trade_status")
    }

    /// The payment, when the trade status means paid (`TRADE_SUCCESS` / `TRADE_FINISHED`);
    /// `Err` when it says paid but the amount cannot be read.
    pub fn payment(&self) -> Option<Result<Payment, NotifyError>> {
        if !matches!(
            self.trade_status(),
            Some("TRADE_SUCCESS" | "TRADE_FINISHED")
        ) {
            return None;
        }
        let total = self.get("total_amount").unwrap_or_default();
        let Some(amount_fen) = yuan_to_fen(total) else {
            return Some(Err(NotifyError::Malformed(format!(
                "total_amount {total:?}"
            ))));
        };
        Some(Ok(Payment {
            out_trade_no: self.out_trade_no().unwrap_or_default().to_owned(),
            transaction_id: self.get("trade_no").unwrap_or_default().to_owned(),
            amount_fen,
            currency: "CNY".to_owned(),
            paid_at: self.get("gmt_payment").and_then(parse_time),
            merchant: MerchantIds {
                merchant_id: self.get("seller_id").map(str::to_owned),
                app_id: self.get("app_id").map(str::to_owned),
            },
            trade_type: None,
        }))
    }
}

impl Alipay {
    /// Verifies a notification's form body (`application/x-www-form-urlencoded`).
    pub fn verify_notification(&self, body: &[u8]) -> Result<AlipayNotification, NotifyError> {
        let verified = self.verify_signed(body)?;
        if verified.notify_id().is_none_or(str::is_empty) {
            return Err(NotifyError::Malformed("no notify_id".to_owned()));
        }
        Ok(verified)
    }

    /// Verifies the synchronous return of a cashier page (the query string of the browser's GET
    /// to our `return_url`), signed like a notification. It says where the buyer came back
    /// from, never that anything was paid: only a notification or a query does.
    pub fn verify_return(&self, query: &[u8]) -> Result<AlipayNotification, NotifyError> {
        let verified = self.verify_signed(query)?;
        if verified.get("app_id") != Some(self.app_id.as_str()) {
            return Err(NotifyError::Malformed(
                "the return is not for our app_id".to_owned(),
            ));
        }
        Ok(verified)
    }

    /// Parses URL-encoded parameters and checks `sign` over every one of them but `sign` and
    /// `sign_type`.
    fn verify_signed(&self, body: &[u8]) -> Result<AlipayNotification, NotifyError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| NotifyError::Malformed(e.to_string()))?;
        let mut params = BTreeMap::new();
        for (k, v) in pairs {
            if params.insert(k.clone(), v).is_some() {
                return Err(NotifyError::Malformed(format!("parameter {k} repeated")));
            }
        }
        let sign = params
            .get("sign")
            .ok_or(NotifyError::MissingHeader("sign"))?
            .clone();
        // Every parameter but these two, empty ones included (Alipay sends none, and its SDKs
        // verify over whatever arrived); `params` is a BTreeMap, so already sorted by key.
        let signed = params
            .iter()
            .filter(|(k, _)| *k != "sign" && *k != "sign_type")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        if !self.alipay_key.verify(signed.as_bytes(), &sign) {
            return Err(NotifyError::BadSignature);
        }
        Ok(AlipayNotification { params })
    }
}
