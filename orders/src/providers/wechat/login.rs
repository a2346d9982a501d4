//! WeChat sign-in: a login code from the buyer's WeChat client exchanged for their OpenID under
//! one of the shop's apps. A mini-program's `wx.login` code goes to `jscode2session`; an official
//! account's web OAuth code to `sns/oauth2/access_token`. Both answer plain JSON (unsigned, over
//! HTTPS), `{openid, …}` or `{errcode, errmsg}`. A code works once, for five minutes, for the app
//! that asked for it, so an exchange is never repeated.
//!
//! What comes back beside the OpenID (`session_key`, the OAuth `access_token`) is a secret of
//! the buyer's session with WeChat that no feature of ours needs: it is dropped unread, never
//! stored or logged.

use crate::providers::PaymentError;
use memberline_platform::settings::Secret;
use memberline_schema::states::WechatApp;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Exchanges login codes for OpenIDs.
#[derive(Debug)]
pub struct WechatLogin {
    http: reqwest::Client,
    base_url: String,
    /// The app id and AppSecret of each app that signs buyers in.
    apps: BTreeMap<WechatApp, (String, Secret)>,
}

/// Who signed in: an OpenID under an app id, and the unionid when WeChat sent one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WechatIdentity {
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
}

/// Why a code was not exchanged.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("sign-in with the WeChat {0} is not set up on this shop")]
    AppUnavailable(WechatApp),
    #[error("the login code is not valid: expired, mistyped or from another app (WeChat 40029)")]
    InvalidCode,
    #[error("the login code was already used; get a new one from WeChat (WeChat 40163)")]
    CodeUsed,
    #[error("WeChat is limiting sign-ins right now; try again in a minute (WeChat 45011)")]
    RateLimited,
    #[error("WeChat refuses to sign this account in (WeChat 40226, a high-risk account)")]
    Blocked,
    #[error(
        "this page is seen in WeChat's snapshot mode, which has no real OpenID: open it in full \
         to sign in"
    )]
    SnapshotUser,
    #[error("WeChat could not be reached or failed: {0}")]
    Unavailable(String),
    #[error("WeChat refused the sign-in: {errcode} {errmsg}")]
    Refused { errcode: i64, errmsg: String },
}

/// WeChat's answer to either exchange: an OpenID, or an error code.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    openid: Option<String>,
    #[serde(default)]
    unionid: Option<String>,
    /// 1: the official account's page is seen in snapshot mode; the OpenID is a virtual one.
    #[serde(default)]
    is_snapshotuser: Option<i64>,
    #[serde(default)]
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: Option<String>,
}

impl WechatLogin {
    pub(crate) fn new(
        http: reqwest::Client,
        base_url: String,
        apps: BTreeMap<WechatApp, (String, Secret)>,
    ) -> Self {
        Self {
            http,
            base_url,
            apps,
        }
    }

    /// Whether buyers of `app` can sign in.
    pub fn has(&self, app: WechatApp) -> bool {
        self.apps.contains_key(&app)
    }

    /// Exchanges a login `code` of `app` for the buyer's identity there.
    pub async fn exchange(&self, app: WechatApp, code: &str) -> Result<WechatIdentity, LoginError> {
        let (appid, secret) = self.apps.get(&app).ok_or(LoginError::AppUnavailable(app))?;
        let (path, code_param) = match app {
            WechatApp::Miniprogram => ("/sns/jscode2session", "js_code"),
            WechatApp::OfficialAccount => ("/sns/oauth2/access_token", "code"),
        };
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .query(&[
                ("appid", appid.as_str()),
                ("secret", secret.expose()),
                (code_param, code),
                ("grant_type", "authorization_code"),
            ])
            .send()
            .await
            .map_err(|e| LoginError::Unavailable(PaymentError::from_reqwest(e).to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(LoginError::Unavailable(format!("HTTP {status}")));
        }
        let answer: Answer = response
            .json()
            .await
            .map_err(|e| LoginError::Unavailable(format!("unreadable answer: {e}")))?;
        // Current docs send `errcode` only on failure, older ones `errcode: 0` with the OpenID:
        // the OpenID decides.
        if answer.is_snapshotuser == Some(1) {
            return Err(LoginError::SnapshotUser);
        }
        match (answer.openid, answer.errcode) {
            (Some(openid), None | Some(0)) if !openid.is_empty() => Ok(WechatIdentity {
                appid: appid.clone(),
                openid,
                unionid: answer.unionid.filter(|u| !u.is_empty()),
            }),
            (_, errcode) => Err(match errcode.unwrap_or(-1) {
                40029 => LoginError::InvalidCode,
                40163 => LoginError::CodeUsed,
                45011 => LoginError::RateLimited,
                40226 => LoginError::Blocked,
                -1 => LoginError::Unavailable("WeChat answered a system error (-1)".into()),
                errcode => LoginError::Refused {
                    errcode,
                    errmsg: answer.errmsg.unwrap_or_default(),
                },
            }),
        }
    }
}
