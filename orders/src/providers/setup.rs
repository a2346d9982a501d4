//! Building the provider clients from `payments.*` settings: keys read from files (never
//! printed), identifiers checked, development keys refused outside `local`.

use crate::providers::PaymentProvider;
use crate::providers::alipay::Alipay;
use crate::providers::keys::{
    DEV_APIV3_KEY, DEV_APP_SECRETS, DevKeyError, KeyError, Signer, Verifying, is_dev_key,
};
use crate::providers::wechat::{WechatLogin, WechatPay};
use memberline_platform::settings::{AlipaySettings, PaymentSettings, Secret, WechatSettings};
use memberline_schema::ids::OrderId;
use memberline_schema::states::{PayChannel, PayMethod, Provider, WechatApp};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The enabled providers, the channels the shop takes, and WeChat sign-in.
#[derive(Clone, Default)]
pub struct Payments {
    wechat: Option<Arc<WechatPay>>,
    alipay: Option<Arc<Alipay>>,
    offers: Vec<Offer>,
    /// `payments.wechat.*_appid`.
    apps: AppIds,
    /// `payments.public_url`, without a trailing `/`.
    public_url: Option<String>,
    login: Option<Arc<WechatLogin>>,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments")
            .field("wechat", &self.wechat.is_some())
            .field("alipay", &self.alipay.is_some())
            .field("offers", &self.offers)
            .finish()
    }
}

/// The path of the endpoint Alipay's cashiers return the buyer to.
pub const ALIPAY_RETURN_PATH: &str = "/v1/payments/alipay/return";

/// A way to pay the shop takes: a provider's pay method, one of its channels, and for JSAPI the
/// WeChat app it is paid in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Offer {
    pub pay_method: PayMethod,
    pub channel: PayChannel,
    /// Only for `jsapi`: the app whose buyers pay this way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat_app: Option<WechatApp>,
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
            Some(Arc::new(alipay(
                &settings.alipay,
                http.clone(),
                attempts,
                local,
            )?))
        } else {
            None
        };
        let public_url = settings.public_url.trim_end_matches('/');
        let public_url = (!public_url.is_empty()).then(|| public_url.to_owned());
        if let Some(url) = &public_url
            && !local
            && !url.starts_with("https://")
        {
            return Err(invalid(
                "payments.public_url",
                "must be https:// outside local development",
            ));
        }
        let (apps, login) = wechat_apps(&settings.wechat, http, local)?;
        let mut offers = Vec::new();
        for (enabled, key, channels) in [
            (
                wechat.is_some(),
                "payments.wechat.channels",
                &settings.wechat.channels,
            ),
            (
                alipay.is_some(),
                "payments.alipay.channels",
                &settings.alipay.channels,
            ),
        ] {
            if !enabled {
                continue;
            }
            for &channel in channels {
                let pay_method = match channel.provider() {
                    Provider::Wechat => PayMethod::Wechat,
                    Provider::Alipay => PayMethod::Alipay,
                };
                let needs_return =
                    matches!(channel, PayChannel::H5 | PayChannel::Wap | PayChannel::Page);
                if needs_return && public_url.is_none() {
                    return Err(invalid(
                        key,
                        &format!("the {channel} channel needs payments.public_url"),
                    ));
                }
                if channel == PayChannel::Jsapi {
                    if apps.is_empty() {
                        return Err(invalid(
                            key,
                            "the jsapi channel needs payments.wechat.miniprogram_appid or \
                             payments.wechat.official_account_appid",
                        ));
                    }
                    offers.extend(apps.keys().map(|&app| Offer {
                        pay_method,
                        channel,
                        wechat_app: Some(app),
                    }));
                } else {
                    offers.push(Offer {
                        pay_method,
                        channel,
                        wechat_app: None,
                    });
                }
            }
        }
        // A channel listed twice is taken once, where it first appears.
        let mut seen = Vec::with_capacity(offers.len());
        offers.retain(|o| {
            let first = !seen.contains(o);
            seen.push(*o);
            first
        });
        Ok(Self {
            wechat,
            alipay,
            offers,
            apps,
            public_url,
            login,
        })
    }

    /// Every way to pay the shop takes, in the order of the settings.
    pub fn offers(&self) -> &[Offer] {
        &self.offers
    }

    /// Whether the shop takes `offer`.
    pub fn takes(&self, offer: Offer) -> bool {
        self.offers.contains(&offer)
    }

    /// The app id of the WeChat `app`, when the shop has one.
    pub fn app_id(&self, app: WechatApp) -> Option<&str> {
        self.apps.get(&app).map(String::as_str)
    }

    /// `payments.public_url`, without a trailing `/`.
    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }

    /// Where a buyer back from a cashier lands: `/vip` following `order` (under `public_url`;
    /// relative without one).
    pub fn order_page(&self, order: Option<OrderId>) -> String {
        let base = self.public_url().unwrap_or_default();
        match order {
            Some(id) => format!("{base}/vip?order={id}"),
            None => format!("{base}/vip"),
        }
    }

    /// Where Alipay's cashiers send the buyer back with the signed return.
    pub fn alipay_return_url(&self) -> Option<String> {
        Some(format!("{}{ALIPAY_RETURN_PATH}", self.public_url()?))
    }

    /// WeChat sign-in, when an app has its app id and secret.
    pub fn login(&self) -> Option<&WechatLogin> {
        self.login.as_deref()
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

/// The app id of each WeChat app the shop has.
type AppIds = BTreeMap<WechatApp, String>;

/// The WeChat apps the shop has (an app id each) and, for those with a secret too, sign-in.
/// A development secret is refused outside the development environments.
fn wechat_apps(
    s: &WechatSettings,
    http: reqwest::Client,
    local: bool,
) -> Result<(AppIds, Option<Arc<WechatLogin>>), SetupError> {
    let mut apps = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (app, id_key, appid, secret_key, secret) in [
        (
            WechatApp::Miniprogram,
            "payments.wechat.miniprogram_appid",
            &s.miniprogram_appid,
            "payments.wechat.miniprogram_secret",
            &s.miniprogram_secret,
        ),
        (
            WechatApp::OfficialAccount,
            "payments.wechat.official_account_appid",
            &s.official_account_appid,
            "payments.wechat.official_account_secret",
            &s.official_account_secret,
        ),
    ] {
        let secret: &Secret = secret;
        if appid.trim().is_empty() {
            if !secret.expose().is_empty() {
                return Err(invalid(secret_key, &format!("needs {id_key}")));
            }
            continue;
        }
        apps.insert(app, appid.trim().to_owned());
        if secret.expose().is_empty() {
            continue;
        }
        if !local && DEV_APP_SECRETS.contains(&secret.expose()) {
            return Err(DevKeyError(secret_key).into());
        }
        secrets.insert(app, (appid.trim().to_owned(), secret.clone()));
    }
    let login = (!secrets.is_empty())
        .then(|| {
            let base = required("payments.wechat.login_base_url", &s.login_base_url)?;
            Ok::<_, SetupError>(Arc::new(WechatLogin::new(
                http,
                base.trim_end_matches('/').to_owned(),
                secrets,
            )))
        })
        .transpose()?;
    Ok((apps, login))
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
