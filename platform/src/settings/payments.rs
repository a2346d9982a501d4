//! `payments.*`: the provider clients (built by `memberline-orders`) and the pending-order
//! lifecycle run by the workers; split from `settings.rs` only to keep each file readable.

use super::{Secret, SettingsError};
use memberline_schema::states::{PayChannel, Provider};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    pub order_ttl_secs: u64,
    pub reconcile_after_secs: u64,
    pub request_timeout_ms: u64,
    pub retry_attempts: u32,
    pub lifecycle_interval_secs: u64,
    pub lifecycle_batch_size: u32,
    pub public_url: String,
    pub wechat: WechatSettings,
    pub alipay: AlipaySettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatSettings {
    pub enabled: bool,
    pub base_url: String,
    pub mchid: String,
    pub appid: String,
    pub merchant_serial_no: String,
    pub merchant_private_key_path: String,
    pub apiv3_key: Secret,
    pub platform_public_key_id: String,
    pub platform_public_key_path: String,
    pub notify_url: String,
    pub channels: Vec<PayChannel>,
    pub miniprogram_appid: String,
    pub miniprogram_secret: Secret,
    pub official_account_appid: String,
    pub official_account_secret: Secret,
    pub login_base_url: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlipaySettings {
    pub enabled: bool,
    pub gateway_url: String,
    pub app_id: String,
    pub seller_id: String,
    pub app_private_key_path: String,
    pub alipay_public_key_path: String,
    pub notify_url: String,
    pub channels: Vec<PayChannel>,
}

impl PaymentSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key, reason: &str| {
            Err(SettingsError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        let p = self;
        if p.order_ttl_secs < 60 || p.order_ttl_secs > 2 * 3600 {
            // WeChat codes live two hours; Alipay's timeout_express starts at one minute.
            return invalid(
                "payments.order_ttl_secs",
                "must be between 60 and 7200 seconds",
            );
        }
        if p.reconcile_after_secs == 0 {
            return invalid("payments.reconcile_after_secs", "must be positive");
        }
        if p.request_timeout_ms == 0 {
            return invalid("payments.request_timeout_ms", "must be positive");
        }
        if p.retry_attempts == 0 || p.retry_attempts > 10 {
            return invalid("payments.retry_attempts", "must be between 1 and 10");
        }
        if p.lifecycle_interval_secs == 0 {
            return invalid("payments.lifecycle_interval_secs", "must be positive");
        }
        if p.lifecycle_batch_size == 0 || p.lifecycle_batch_size > 1000 {
            return invalid(
                "payments.lifecycle_batch_size",
                "must be between 1 and 1000",
            );
        }
        for (key, provider, channels) in [
            (
                "payments.wechat.channels",
                Provider::Wechat,
                &p.wechat.channels,
            ),
            (
                "payments.alipay.channels",
                Provider::Alipay,
                &p.alipay.channels,
            ),
        ] {
            if channels.iter().any(|c| c.provider() != provider) {
                return invalid(key, &format!("lists only {provider} channels"));
            }
        }
        let public_url = p.public_url.trim_end_matches('/');
        let absolute = public_url.starts_with("https://") || public_url.starts_with("http://");
        if !public_url.is_empty() && !absolute {
            return invalid(
                "payments.public_url",
                "must be an absolute http(s) URL (the address buyers open /vip at)",
            );
        }
        Ok(())
    }
}
