//! Alipay's synchronous return from its cashiers (`GET /v1/payments/alipay/return?…`) through
//! everything the gateway does before the database: the query string as the server hands it
//! over (one that is not a valid URI never reaches the handler), `verify_return` (parsed,
//! repeated parameters refused, SHA256withRSA, our `app_id`), then the order number it names,
//! read from the unverified query string when the signature does not hold.
//!
//! The start line chooses what the harness does first, as Alipay would:
//! - `as-sent`: nothing; the body is the query string as written;
//! - `sign`: parses it and signs it again with Alipay's key, so a mutated return verifies.
#![no_main]

use axum::http::Uri;
use libfuzzer_sys::fuzz_target;
use memberline_fuzz::{Input, alipay_resign, payments};
use memberline_gateway::http::payments::returned_order_no;

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let query = match input.start {
        b"sign" => {
            alipay_resign(input.body).map_or_else(|| input.body.to_vec(), String::into_bytes)
        }
        _ => input.body.to_vec(),
    };
    let mut target = b"/v1/payments/alipay/return?".to_vec();
    target.extend_from_slice(&query);
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let query = uri.query().unwrap_or_default();
    let client = payments().alipay().expect("Alipay is enabled");
    let verified = client.verify_return(query.as_bytes());
    let _ = returned_order_no(verified.as_ref().ok(), query);
});
