//! An Alipay asynchronous notification (`POST /v1/payments/alipay/notify`, a form body) through
//! everything the gateway does before the database: `verify_notification` (the form parsed,
//! repeated parameters refused, SHA256withRSA over every parameter but `sign` and `sign_type`,
//! a `notify_id` required), then the payment it reports (the amount in yuan, the payment time)
//! and the check of it against our merchant ids.
//!
//! The start line chooses what the harness does first, as Alipay would:
//! - `as-sent`: nothing; the body goes in as written (a real notification verifies);
//! - `sign`: parses the body and signs it again with Alipay's key, so a mutated notification
//!   still verifies and its parameters are read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memberline_fuzz::{Input, alipay_resign, payments};
use memberline_orders::providers::PaymentProvider;

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let body = match input.start {
        b"sign" => {
            alipay_resign(input.body).map_or_else(|| input.body.to_vec(), String::into_bytes)
        }
        _ => input.body.to_vec(),
    };
    let client = payments().alipay().expect("Alipay is enabled");
    let Ok(notification) = client.verify_notification(&body) else {
        return;
    };
    let _ = (
        notification.notify_id(),
        notification.out_trade_no(),
        notification.trade_status(),
    );
    if let Some(Ok(payment)) = notification.payment() {
        let _ = client.check(&payment, None, payment.amount_fen);
    }
    let _ = String::from_utf8_lossy(&body);
});
