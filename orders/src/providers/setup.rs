//! Building the provider clients from `payments.*` settings: keys read from files (never
//! printed), identifiers checked, development keys refused outside `local`.

use crate::providers::PaymentProvider;
use crate::providers::alipay::Alipay;
use crate::providers::keys::{DEV_APIV3_KEY, DevKeyError, KeyError, Signer, Verifying, is_dev_key};
use crate::providers::wechat::WechatPay;
use memberline_platform::settings::{AlipaySettings, PaymentSettings, WechatSettings};
use memberline_schema::states::Provider;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The enabled providers.
#[derive(Clone, Default)]
pub struct Payments {
    wechat: Option<Arc<WechatPay>>,
    alipay: Option<Arc<Alipay>>,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments")
            .field("wechat", &self.wechat.is_some())
            .field("alipay", &self.alipay.is_some())
            .finish()
    }
}

/// Why the payment settings cannot be used; names the key.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("configuration error: {0}")]
    Key(#[from] KeyError),
    #[error("configuration error: {0}")]
    DevKey(#[from] DevKeyError),
    #[error("configuration error: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: &str) -> SetupError {
    SetupError::Invalid {
        key,
        reason: reason.to_owned(),
    }
}

impl Payments {
    /// Builds the enabled clients. Outside the development environments (`local` for
    /// `make run`, `test` for the test suites) a development key, the development APIv3 key or
    /// a non-HTTPS notify URL is refused.
    pub fn from_settings(
        settings: &PaymentSettings,
        environment: &str,
    ) -> Result<Self, SetupError> {
        let local = matches!(environment, "local" | "test");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .connect_timeout(Duration::from_millis(settings.request_timeout_ms))
            .user_agent(concat!("memberline/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid("payments.request_timeout_ms", &e.to_string()))?;
        let attempts = settings.retry_attempts.max(1) as usize;
        let wechat = if settings.wechat.enabled {
            Some(Arc::new(wechat(
                &settings.wechat,
                http.clone(),
                attempts,
                local,
            )?))
        } else {
            None
        };
        let alipay = if settings.alipay.enabled {
            Some(Arc::new(alipay(&settings.alipay, http, attempts, local)?))
        } else {
            None
        };
        Ok(Self { wechat, alipay })
    }

    /// The client of `provider`, when it is enabled.
    pub fn get(&self, provider: Provider) -> Option<Arc<dyn PaymentProvider>> {
        match provider {
            Provider::Wechat => self.wechat.clone().map(|c| c as Arc<dyn PaymentProvider>),
            Provider::Alipay => self.alipay.clone().map(|c| c as Arc<dyn PaymentProvider>),
        }
    }

    pub fn wechat(&self) -> Option<&WechatPay> {
        self.wechat.as_deref()
    }

    pub fn alipay(&self) -> Option<&Alipay> {
        self.alipay.as_deref()
    }

    /// Whether any provider is enabled.
    pub fn any(&self) -> bool {
        self.wechat.is_some() || self.alipay.is_some()
    }
}

fn required(key: &'static str, value: &str) -> Result<String, SetupError> {
    if value.trim().is_empty() {
        return Err(invalid(key, "is required when the provider is enabled"));
    }
    Ok(value.to_owned())
}

fn notify_url(key: &'static str, value: &str, local: bool) -> Result<String, SetupError> {
    let url = required(key, value)?;
    if url.contains('?') {
        return Err(invalid(key, "must not carry a query string"));
    }
    if !local && !url.starts_with("https://") {
        return Err(invalid(
            key,
            "must be a public https:// URL outside local development",
        ));
    }
    Ok(url)
}

fn wechat(
    s: &WechatSettings,
    http: reqwest::Client,
    attempts: usize,
    local: bool,
) -> Result<WechatPay, SetupError> {
    let signer = Signer::from_pem_file(
        "payments.wechat.merchant_private_key_path",
        Path::new(&s.merchant_private_key_path),
    )?;
    let platform_key = Verifying::from_pem_file(
        "payments.wechat.platform_public_key_path",
        Path::new(&s.platform_public_key_path),
    )?;
    let apiv3: [u8; 32] = s.apiv3_key.expose().as_bytes().try_into().map_err(|_| {
        invalid(
            "payments.wechat.apiv3_key",
            "must be exactly 32 ASCII bytes",
        )
    })?;
    if !local {
        if is_dev_key(&signer.public_der()) {
            return Err(DevKeyError("payments.wechat.merchant_private_key_path").into());
        }
        if is_dev_key(&platform_key.public_der()) {
            return Err(DevKeyError("payments.wechat.platform_public_key_path").into());
        }
        if s.apiv3_key.expose() == DEV_APIV3_KEY {
            return Err(DevKeyError("payments.wechat.apiv3_key").into());
        }
    }
    let key_id = required(
        "payments.wechat.platform_public_key_id",
        &s.platform_public_key_id,
    )?;
    if !key_id.starts_with("PUB_KEY_ID_") {
        return Err(invalid(
            "payments.wechat.platform_public_key_id",
            "must be the PUB_KEY_ID_… of the WeChat Pay public key (public-key mode)",
        ));
    }
    Ok(WechatPay {
        http,
        base_url: required("payments.wechat.base_url", &s.base_url)?
            .trim_end_matches('/')
            .to_owned(),
        mchid: required("payments.wechat.mchid", &s.mchid)?,
        appid: required("payments.wechat.appid", &s.appid)?,
        merchant_serial_no: required("payments.wechat.merchant_serial_no", &s.merchant_serial_no)?,
        signer,
        apiv3_key: apiv3,
        platform_key_id: key_id,
        platform_key,
        notify_url: notify_url("payments.wechat.notify_url", &s.notify_url, local)?,
        attempts,
    })
}

fn alipay(
    s: &AlipaySettings,
    http: reqwest::Client,
    attempts: usize,
    local: bool,
) -> Result<Alipay, SetupError> {
    let signer = Signer::from_pem_file(
        "payments.alipay.app_private_key_path",
        Path::new(&s.app_private_key_path),
    )?;
    let alipay_key = Verifying::from_pem_file(
        "payments.alipay.alipay_public_key_path",
        Path::new(&s.alipay_public_key_path),
    )?;
    if !local {
        if is_dev_key(&signer.public_der()) {
            return Err(DevKeyError("payments.alipay.app_private_key_path").into());
        }
        if is_dev_key(&alipay_key.public_der()) {
            return Err(DevKeyError("payments.alipay.alipay_public_key_path").into());
        }
    }
    Ok(Alipay {
        http,
        gateway_url: required("payments.alipay.gateway_url", &s.gateway_url)?,
        app_id: required("payments.alipay.app_id", &s.app_id)?,
        seller_id: required("payments.alipay.seller_id", &s.seller_id)?,
        signer,
        alipay_key,
        notify_url: notify_url("payments.alipay.notify_url", &s.notify_url, local)?,
        attempts,
    })
}
