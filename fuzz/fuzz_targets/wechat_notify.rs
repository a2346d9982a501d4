//! A WeChat Pay notification from raw headers and body through everything the gateway does
//! before the database (`POST /v1/payments/wechat/notify`): the signature headers as the
//! handler reads them, `verify_notification` (serial, timestamp window, SHA256withRSA over the
//! raw body, the envelope, AES-256-GCM decryption, the transaction or refund resource), then
//! the payment it reports and the check of it against our merchant ids.
//!
//! The start line chooses what the harness does first, as WeChat Pay would:
//! - `as-sent`: nothing; headers and body go in as written (a real notification verifies);
//! - `sign`: signs `timestamp\nnonce\nbody\n` with the platform key into `Wechatpay-Signature`,
//!   so a mutated body still verifies and its JSON is read;
//! - `seal`: first encrypts the body's `resource.ciphertext`, written in clear, with the APIv3
//!   key (its `nonce`, `associated_data`), then signs, so a mutated resource is decrypted and
//!   parsed.
#![no_main]

use axum::http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use memberline_fuzz::{Input, now, payments, wechat_seal, wechat_sign};
use memberline_gateway::http::payments::notify_headers;
use memberline_orders::providers::PaymentProvider;

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let mut headers = input.header_map();
    let mut body = input.body.to_vec();
    if input.start == b"seal" {
        body = seal(&body).unwrap_or(body);
    }
    if matches!(input.start, b"sign" | b"seal") {
        let text = |name: &str| input.header(name).unwrap_or_default();
        let mut message = [
            text("Wechatpay-Timestamp"),
            b"\n",
            text("Wechatpay-Nonce"),
            b"\n",
        ]
        .concat();
        message.extend_from_slice(&body);
        message.push(b'\n');
        let signature =
            HeaderValue::from_str(&wechat_sign(&message)).expect("Base64 is a header value");
        headers.insert("wechatpay-signature", signature);
    }

    let client = payments().wechat().expect("WeChat Pay is enabled");
    let Ok(notification) = client.verify_notification(notify_headers(&headers), &body, now())
    else {
        return;
    };
    let _ = notification.event.out_trade_no();
    if let Some(Ok(payment)) = notification.event.payment() {
        let _ = client.check(&payment, None, payment.amount_fen);
    }
    let _ = String::from_utf8_lossy(&body);
});

/// The body with its `resource.ciphertext` (plaintext here) sealed; `None` when the body has no
/// such resource or its nonce is not 12 bytes.
fn seal(body: &[u8]) -> Option<Vec<u8>> {
    let mut envelope: serde_json::Value = serde_json::from_slice(body).ok()?;
    let resource = envelope.get_mut("resource")?.as_object_mut()?;
    let nonce: [u8; 12] = resource
        .get("nonce")?
        .as_str()?
        .as_bytes()
        .try_into()
        .ok()?;
    let aad = resource
        .get("associated_data")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let plaintext = resource.get("ciphertext")?.as_str()?;
    let sealed = wechat_seal(&nonce, aad.as_bytes(), plaintext.as_bytes());
    resource.insert("ciphertext".to_owned(), sealed.into());
    serde_json::to_vec(&envelope).ok()
}
