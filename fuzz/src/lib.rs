//! What the fuzz targets share: the production clients, built from `deploy/config/local.toml`
//! with the development keys of `deploy/dev-keys/` exactly as `make run` builds them; the
//! providers' half of those keys, to sign and seal an input the way WeChat Pay and Alipay do
//! (a mutated body that is signed again still verifies, so the fuzzer reaches what runs after
//! the signature check); and the one input format of every target.
//!
//! An input reads like an HTTP message: a start line (a mode, or a route), `Name: value` header
//! lines, an empty line, then the body, byte for byte:
//!
//! ```text
//! sign
//! Wechatpay-Timestamp: 1780000000
//! Wechatpay-Nonce: 5K8264ILTKCH16CQ2502SI8ZNMTM67VS
//!
//! {"id": …}
//! ```
//!
//! Nothing here decides what production accepts: the targets call the production code and only
//! prepare its inputs.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use memberline_orders::providers::Payments;
use memberline_platform::Settings;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Our clock in every target: 2026-05-28T20:26:40Z. Seeds carry timestamps near it.
pub const NOW: i64 = 1_780_000_000;

pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("a valid timestamp")
}

/// The repository's root (the fuzz crate is `fuzz/` in it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/ is inside the repository")
        .to_path_buf()
}

fn dev_key(name: &str) -> PathBuf {
    root().join("deploy/dev-keys").join(name)
}

/// The settings of `make run` (`deploy/config/local.toml`), key files found from anywhere.
pub fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let path = |name: &str| dev_key(name).to_string_lossy().into_owned();
        let vars = [
            (
                "MEMBERLINE__PAYMENTS__WECHAT__MERCHANT_PRIVATE_KEY_PATH",
                path("wechat/merchant_private_key.pem"),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__PLATFORM_PUBLIC_KEY_PATH",
                path("wechat/platform_public_key.pem"),
            ),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__APP_PRIVATE_KEY_PATH",
                path("alipay/app_private_key.pem"),
            ),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__ALIPAY_PUBLIC_KEY_PATH",
                path("alipay/alipay_public_key.pem"),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        Settings::load_from(Some(&root().join("deploy/config")), "local", vars)
            .expect("deploy/config/local.toml loads")
    })
}

/// The provider clients of `make run`, built by the production constructor.
pub fn payments() -> &'static Payments {
    static PAYMENTS: OnceLock<Payments> = OnceLock::new();
    PAYMENTS.get_or_init(|| {
        let s = settings();
        let payments = Payments::from_settings(&s.payments, &s.environment)
            .expect("the development payment settings build");
        assert!(payments.wechat().is_some() && payments.alipay().is_some());
        payments
    })
}

/// An RSA private key of `deploy/dev-keys/` (PKCS#8 PEM).
fn key_pair(name: &str) -> RsaKeyPair {
    let pem = std::fs::read_to_string(dev_key(name)).expect("a development key");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(body).expect("PEM is Base64");
    RsaKeyPair::from_pkcs8(&der).expect("a PKCS#8 RSA key")
}

fn sign(key: &RsaKeyPair, message: &[u8]) -> String {
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        message,
        &mut signature,
    )
    .expect("RSA signing");
    STANDARD.encode(signature)
}

/// Base64 SHA256withRSA of `message` with WeChat Pay's platform key (what signs notifications).
pub fn wechat_sign(message: &[u8]) -> String {
    static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
    sign(
        KEY.get_or_init(|| key_pair("wechat/platform_private_key.pem")),
        message,
    )
}

/// Base64 SHA256withRSA of `message` with Alipay's key (what signs notifications and returns).
pub fn alipay_sign(message: &[u8]) -> String {
    static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
    sign(
        KEY.get_or_init(|| key_pair("alipay/alipay_private_key.pem")),
        message,
    )
}

/// `form` (URL-encoded parameters) signed again as Alipay signs a notification or a return:
/// SHA256withRSA over every parameter but `sign` and `sign_type`, sorted, `k=v` joined with
/// `&`, values decoded; the result re-encoded with the new `sign` last. `None` when `form` does
/// not parse.
pub fn alipay_resign(form: &[u8]) -> Option<String> {
    let mut params: Vec<(String, String)> = serde_urlencoded::from_bytes(form).ok()?;
    params.retain(|(k, _)| k != "sign");
    let mut signed: Vec<&(String, String)> =
        params.iter().filter(|(k, _)| k != "sign_type").collect();
    signed.sort();
    let text = signed
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let sign = alipay_sign(text.as_bytes());
    params.push(("sign".to_owned(), sign));
    serde_urlencoded::to_string(&params).ok()
}

/// Base64 of AES-256-GCM (ciphertext ‖ tag) under the development APIv3 key, as WeChat seals a
/// notification's resource.
pub fn wechat_seal(nonce: &[u8; 12], associated_data: &[u8], plaintext: &[u8]) -> String {
    let key = settings().payments.wechat.apiv3_key.expose();
    let cipher = Aes256Gcm::new_from_slice(key.as_bytes()).expect("a 32-byte key");
    let sealed = cipher
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad: associated_data,
            },
        )
        .expect("AES-GCM encryption");
    STANDARD.encode(sealed)
}

/// One input: start line, headers, body.
#[derive(Debug)]
pub struct Input<'a> {
    pub start: &'a [u8],
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    /// Splits `data` at its first empty line (no empty line: no body). A header line without
    /// `:` is skipped; the value is trimmed of spaces and tabs, as HTTP does.
    pub fn parse(data: &'a [u8]) -> Self {
        let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
            Some(at) => (&data[..at], &data[at + 2..]),
            None => (data, &data[data.len()..]),
        };
        let mut lines = head.split(|&b| b == b'\n');
        let start = lines.next().unwrap_or_default();
        let headers = lines
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], trim(&line[colon + 1..])))
            })
            .collect();
        Self {
            start,
            headers,
            body,
        }
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| *v)
    }

    /// The headers as a server hands them to a handler: a name or value HTTP refuses never
    /// reaches one, so it is left out.
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                map.append(n, v);
            }
        }
        map
    }
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}
