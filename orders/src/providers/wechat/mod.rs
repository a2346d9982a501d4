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
#[doc(hidden)]
pub use notify::fuzzing;
pub use notify::{NotifyHeaders, WechatEvent, WechatNotification};

/// How far a signed timestamp may be from our clock, in seconds (the docs' five minutes).
pub const MAX_SKEW_SECS: i64 = 300;

/// How far `Wechatpay-Timestamp` (`header`, Unix seconds) is from `now`, in seconds; `None` when
/// it is not a number. A number too far to subtract (`-9223372036854775808`) is as far as can
/// be, never an overflow.
pub fn skew_secs(now: i64, header: &str) -> Option<i64> {
    let at: i64 = header.parse().ok()?;
    Some(
        now.checked_sub(at)
            .and_then(i64::checked_abs)
            .unwrap_or(i64::MAX),
    )
}

/// The signature type of every signed header set.
pub const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_at_either_end_of_the_range_is_far_from_now_and_never_overflows() {
        assert_eq!(skew_secs(1_000, "990"), Some(10));
        assert_eq!(skew_secs(1_000, "1010"), Some(10));
        assert_eq!(skew_secs(1_000, "-9223372036854775808"), Some(i64::MAX));
        assert_eq!(skew_secs(-1_000, "9223372036854775807"), Some(i64::MAX));
        assert_eq!(skew_secs(1_000, "soon"), None);
    }
}
