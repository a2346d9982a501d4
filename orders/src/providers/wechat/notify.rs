//! WeChat Pay notifications: verified over the raw body bytes with the platform key named by
//! `Wechatpay-Serial`, the timestamp within five minutes, then the resource decrypted with the
//! APIv3 key. Nothing in the body is read before the signature holds.

use super::client::Transaction;
use super::{MAX_SKEW_SECS, WechatPay};
use crate::providers::{NotifyError, Payment, PaymentError};
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The signature headers of a notification, as received.
#[derive(Clone, Copy, Debug)]
pub struct NotifyHeaders<'a> {
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub serial: Option<&'a str>,
}

/// A verified, decrypted notification.
#[derive(Clone, Debug)]
pub struct WechatNotification {
    /// The notification id: unique per event, the same in every retry of it.
    pub id: String,
    /// `TRANSACTION.SUCCESS`, `REFUND.SUCCESS`, …
    pub event_type: String,
    pub event: WechatEvent,
    /// The decrypted resource, kept for the record.
    pub plaintext: serde_json::Value,
}

/// What a notification says happened.
#[derive(Clone, Debug)]
pub enum WechatEvent {
    /// A transaction changed (`TRANSACTION.*`); paid when `trade_state` is `SUCCESS`.
    Transaction(Transaction),
    /// A refund changed (`REFUND.*`).
    Refund {
        out_trade_no: String,
        out_refund_no: String,
        /// `SUCCESS`, `CLOSED`, `ABNORMAL` (`PROCESSING` is never notified).
        refund_status: String,
        refund_id: Option<String>,
    },
}

impl WechatEvent {
    /// Our order number.
    pub fn out_trade_no(&self) -> &str {
        match self {
            WechatEvent::Transaction(t) => &t.out_trade_no,
            WechatEvent::Refund { out_trade_no, .. } => out_trade_no,
        }
    }

    /// The payment, when the event says the trade is paid.
    pub fn payment(&self) -> Option<Result<Payment, PaymentError>> {
        match self {
            WechatEvent::Transaction(t) if t.trade_state == "SUCCESS" => Some(t.payment()),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    event_type: String,
    resource: Resource,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(default)]
    original_type: String,
    algorithm: String,
    ciphertext: String,
    #[serde(default)]
    associated_data: String,
    nonce: String,
}

#[derive(Deserialize)]
struct RefundResource {
    out_trade_no: String,
    out_refund_no: String,
    refund_status: String,
    refund_id: Option<String>,
}

impl WechatPay {
    /// Verifies and decrypts a notification. `now` is our clock (a parameter, so the ±300 s
    /// window can be tested exactly).
    pub fn verify_notification(
        &self,
        headers: NotifyHeaders<'_>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<WechatNotification, NotifyError> {
        let serial = headers
            .serial
            .ok_or(NotifyError::MissingHeader("Wechatpay-Serial"))?;
        if serial != self.platform_key_id {
            return Err(NotifyError::UnknownSerial(serial.to_owned()));
        }
        let timestamp = headers
            .timestamp
            .ok_or(NotifyError::MissingHeader("Wechatpay-Timestamp"))?;
        let skew = super::skew_secs(now.timestamp(), timestamp)
            .ok_or(NotifyError::MissingHeader("Wechatpay-Timestamp"))?;
        if skew > MAX_SKEW_SECS {
            return Err(NotifyError::Stale { skew_secs: skew });
        }
        let nonce = headers
            .nonce
            .ok_or(NotifyError::MissingHeader("Wechatpay-Nonce"))?;
        let signature = headers
            .signature
            .ok_or(NotifyError::MissingHeader("Wechatpay-Signature"))?;
        let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
        message.extend_from_slice(body);
        message.push(b'\n');
        if !self.platform_key.verify(&message, signature) {
            return Err(NotifyError::BadSignature);
        }

        let envelope: Envelope =
            serde_json::from_slice(body).map_err(|e| NotifyError::Malformed(e.to_string()))?;
        if envelope.resource.algorithm != "AEAD_AES_256_GCM" {
            return Err(NotifyError::Malformed(format!(
                "unsupported algorithm {}",
                envelope.resource.algorithm
            )));
        }
        let plaintext = self.decrypt(&envelope.resource)?;
        let value: serde_json::Value = serde_json::from_slice(&plaintext)
            .map_err(|e| NotifyError::Malformed(format!("resource: {e}")))?;
        let is_refund = envelope.event_type.starts_with("REFUND.")
            || envelope.resource.original_type == "refund";
        let event = if is_refund {
            let r: RefundResource = serde_json::from_value(value.clone())
                .map_err(|e| NotifyError::Malformed(format!("refund resource: {e}")))?;
            WechatEvent::Refund {
                out_trade_no: r.out_trade_no,
                out_refund_no: r.out_refund_no,
                refund_status: r.refund_status,
                refund_id: r.refund_id,
            }
        } else {
            WechatEvent::Transaction(
                serde_json::from_value(value.clone())
                    .map_err(|e| NotifyError::Malformed(format!("transaction resource: {e}")))?,
            )
        };
        Ok(WechatNotification {
            id: envelope.id,
            event_type: envelope.event_type,
            event,
            plaintext: value,
        })
    }

    /// AES-256-GCM: key = the 32 ASCII bytes of the APIv3 key, nonce = the 12 ASCII bytes of
    /// `resource.nonce`, AAD = `associated_data`; the ciphertext ends in the 16-byte tag.
    fn decrypt(&self, resource: &Resource) -> Result<Vec<u8>, NotifyError> {
        let ciphertext = STANDARD
            .decode(&resource.ciphertext)
            .map_err(|_| NotifyError::Decrypt)?;
        let nonce: [u8; 12] = resource
            .nonce
            .as_bytes()
            .try_into()
            .map_err(|_| NotifyError::Decrypt)?;
        let cipher =
            Aes256Gcm::new_from_slice(&self.apiv3_key).map_err(|_| NotifyError::Decrypt)?;
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: resource.associated_data.as_bytes(),
                },
            )
            .map_err(|_| NotifyError::Decrypt)
    }
}

/// Ways into what production reaches only through [`WechatPay::verify_notification`], for the
/// fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::{NotifyError, Resource, WechatPay};

    /// Decrypts a resource of these fields, as a verified notification's is decrypted.
    pub fn decrypt(
        client: &WechatPay,
        ciphertext: &str,
        nonce: &str,
        associated_data: &str,
    ) -> Result<Vec<u8>, NotifyError> {
        client.decrypt(&Resource {
            original_type: String::new(),
            algorithm: "AEAD_AES_256_GCM".to_owned(),
            ciphertext: ciphertext.to_owned(),
            associated_data: associated_data.to_owned(),
            nonce: nonce.to_owned(),
        })
    }
}
