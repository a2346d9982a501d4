//! The AES-256-GCM decryption of a WeChat notification's resource on its own (what
//! `verify_notification` runs once the signature holds), with any ciphertext, nonce and
//! associated data: headers `Nonce` and `Associated-Data` (UTF-8 or not: the envelope's fields
//! are JSON strings, so invalid bytes become U+FFFD), the body as the ciphertext.
//!
//! The start line says what the body is:
//! - `text`: the `ciphertext` field as sent (Base64 or not);
//! - `bytes`: raw ciphertext ‖ tag, Base64-encoded by the harness, so the tag check sees every
//!   length, none too short included;
//! - `seal`: a plaintext the harness seals with the APIv3 key under that nonce and associated
//!   data; with a 12-byte nonce it must decrypt to exactly the plaintext.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use memberline_fuzz::{Input, payments, wechat_seal};
use memberline_orders::providers::wechat::fuzzing::decrypt;

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let text = |name: &str| String::from_utf8_lossy(input.header(name).unwrap_or_default());
    let (nonce, aad) = (text("Nonce"), text("Associated-Data"));
    let client = payments().wechat().expect("WeChat Pay is enabled");
    match input.start {
        b"seal" => {
            let Ok(nonce_bytes) = <[u8; 12]>::try_from(nonce.as_bytes()) else {
                let _ = decrypt(client, &STANDARD.encode(input.body), &nonce, &aad);
                return;
            };
            let sealed = wechat_seal(&nonce_bytes, aad.as_bytes(), input.body);
            let opened = decrypt(client, &sealed, &nonce, &aad);
            assert_eq!(
                opened.ok().as_deref(),
                Some(input.body),
                "a sealed resource opens"
            );
        }
        b"bytes" => {
            let _ = decrypt(client, &STANDARD.encode(input.body), &nonce, &aad);
        }
        _ => {
            let _ = decrypt(client, &String::from_utf8_lossy(input.body), &nonce, &aad);
        }
    }
});
