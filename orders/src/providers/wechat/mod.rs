//! WeChat Pay API v3 (Native, JSAPI, H5) in public-key mode: requests signed
//! `WECHATPAY2-SHA256-RSA2048` with the merchant key, every answer's `Wechatpay-Signature`
//! verified with the platform public key named by `Wechatpay-Serial` (`PUB_KEY_ID_…`) before
//! its body is read, notifications verified then decrypted (AES-256-GCM, the APIv3 key). Beside
//! it, WeChat sign-in (`login`), which exchanges a buyer's login code for their OpenID.

mod client;
mod login;
mod notify;

pub use client::WechatPay;
pub use login::{LoginError, WechatIdentity, WechatLogin};
pub use notify::{NotifyHeaders, WechatEvent, WechatNotification};

/// How far a signed timestamp may be from our clock, in seconds (the docs' five minutes).
pub const MAX_SKEW_SECS: i64 = 300;

/// The signature type of every signed header set.
pub const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";
