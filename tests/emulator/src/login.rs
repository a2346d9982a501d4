//! WeChat login, the `sns` API: a mini-program exchanges its `wx.login` code at
//! `/sns/jscode2session`, an official-account page exchanges its OAuth code at
//! `/sns/oauth2/access_token`. Plain unsigned JSON, HTTP 200 even on errors, errors as
//! `{errcode, errmsg}` with WeChat's numbers. Codes are minted by the control API (standing in
//! for the buyer's WeChat client) and every OpenID handed out is remembered, because JSAPI
//! orders may only name a buyer who logged in to the order's app.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::keys;
use crate::state::{LoginApp, LoginCode, Shared, Store, WechatConfig};

/// How long a login code can be exchanged.
pub const CODE_VALIDITY: TimeDelta = TimeDelta::minutes(5);

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/sns/jscode2session",
            get(|s, q| exchange_endpoint(LoginApp::Miniprogram, s, q)),
        )
        .route(
            "/sns/oauth2/access_token",
            get(|s, q| exchange_endpoint(LoginApp::OfficialAccount, s, q)),
        )
}

/// A refused exchange, as WeChat words it.
#[derive(Debug, PartialEq, Eq)]
pub struct LoginError {
    pub errcode: i64,
    pub errmsg: String,
}

fn refuse(errcode: i64, errmsg: &str) -> LoginError {
    LoginError {
        errcode,
        errmsg: errmsg.into(),
    }
}

/// The buyer a code names.
#[derive(Debug)]
pub struct Grant {
    pub openid: String,
    pub unionid: Option<String>,
    /// Seen in WeChat's snapshot mode (official account only).
    pub snapshot: bool,
}

/// The checks both endpoints make, in WeChat's order, and the exchange itself: the code is
/// spent only when everything else was right.
pub fn exchange(
    store: &mut Store,
    config: &WechatConfig,
    app: LoginApp,
    params: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<Grant, LoginError> {
    if let Some((errcode, errmsg)) = store.login_failure.take() {
        return Err(LoginError { errcode, errmsg });
    }
    let param = |name: &str| params.get(name).map(String::as_str).unwrap_or("");
    let (appid, secret) = config.login_app(app);
    let code_param = match app {
        LoginApp::Miniprogram => "js_code",
        LoginApp::OfficialAccount => "code",
    };
    if param("appid").is_empty() {
        return Err(refuse(41002, "appid missing"));
    }
    if param("appid") != appid {
        return Err(refuse(40013, "invalid appid"));
    }
    if param("secret").is_empty() {
        return Err(refuse(41004, "appsecret missing"));
    }
    if param("secret") != secret {
        return Err(refuse(
            40125,
            "invalid appsecret, view more at http://t.cn/RAEkdVq",
        ));
    }
    if param("grant_type") != "authorization_code" {
        return Err(refuse(40002, "invalid grant_type"));
    }
    let code = param(code_param);
    if code.is_empty() {
        return Err(refuse(41008, "missing code"));
    }
    let Some(minted) = store.login_codes.get_mut(code).filter(|c| c.appid == appid) else {
        return Err(refuse(40029, "invalid code"));
    };
    if minted.used {
        return Err(refuse(40163, "code been used"));
    }
    if minted.expires_at <= now {
        return Err(refuse(40029, "invalid code"));
    }
    minted.used = true;
    Ok(Grant {
        openid: minted.openid.clone(),
        unionid: minted.unionid.clone(),
        snapshot: minted.snapshot,
    })
}

/// `GET /sns/jscode2session` and `GET /sns/oauth2/access_token`.
async fn exchange_endpoint(
    app: LoginApp,
    State(emu): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let outcome = exchange(
        &mut emu.store(),
        &emu.config.wechat,
        app,
        &params,
        Utc::now(),
    );
    let body = match outcome {
        Ok(grant) => {
            let mut v = match app {
                LoginApp::Miniprogram => json!({
                    "session_key": B64.encode(rand::random::<[u8; 16]>()),
                    "openid": grant.openid,
                }),
                LoginApp::OfficialAccount => json!({
                    "access_token": keys::random_alnum(96),
                    "expires_in": 7200,
                    "refresh_token": keys::random_alnum(96),
                    "openid": grant.openid,
                    "scope": "snsapi_base",
                }),
            };
            if let Some(unionid) = grant.unionid {
                v["unionid"] = json!(unionid);
            }
            if grant.snapshot && app == LoginApp::OfficialAccount {
                v["is_snapshotuser"] = json!(1);
            }
            v
        }
        Err(e) => {
            tracing::info!(errcode = e.errcode, errmsg = %e.errmsg, "wechat login refused");
            json!({ "errcode": e.errcode, "errmsg": format!("{}, rid: {}", e.errmsg, rid()) })
        }
    };
    json_answer(&body)
}

/// WeChat's API servers answer 200 with this content type, errors included.
fn json_answer(body: &Value) -> Response {
    let mut response = body.to_string().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; encoding=utf-8"),
    );
    response
}

/// The request id WeChat appends to every errmsg.
fn rid() -> String {
    format!(
        "{}-{}-{}",
        keys::random_hex(8),
        keys::random_hex(8),
        keys::random_hex(8)
    )
}

/// An OpenID or UnionID given to the control API: what WeChat's ids are made of.
fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A login code for a buyer of `app`, as `wx.login` or the OAuth redirect would hand it to the
/// merchant's front end; a new buyer unless `openid` names a returning one. Returns
/// `(code, openid, appid)`.
pub fn mint(
    emu: &Shared,
    app: LoginApp,
    openid: Option<String>,
    unionid: Option<String>,
    snapshot: bool,
) -> Result<(String, String, String), String> {
    if openid.as_deref().is_some_and(|o| !valid_id(o)) {
        return Err("openid must be 1 to 64 characters of [A-Za-z0-9_-]".into());
    }
    if unionid.as_deref().is_some_and(|u| !valid_id(u)) {
        return Err("unionid must be 1 to 64 characters of [A-Za-z0-9_-]".into());
    }
    let appid = emu.config.wechat.login_app(app).0.to_string();
    let openid = openid.unwrap_or_else(keys::random_openid);
    let mut store = emu.store();
    let code = store.unique_id(|| keys::random_alnum(32));
    store.login_codes.insert(
        code.clone(),
        LoginCode {
            appid: appid.clone(),
            openid: openid.clone(),
            unionid,
            snapshot,
            expires_at: Utc::now() + CODE_VALIDITY,
            used: false,
        },
    );
    store.openids.insert((appid.clone(), openid.clone()));
    Ok((code, openid, appid))
}

/// Makes the next exchange, of either endpoint, answer this error once (the code it carries
/// stays unspent). Returns the error as it will be answered.
pub fn fail_next(
    emu: &Shared,
    errcode: i64,
    errmsg: Option<String>,
) -> Result<(i64, String), String> {
    if errcode == 0 {
        return Err("errcode 0 is success, not an error".into());
    }
    let errmsg = errmsg.unwrap_or_else(|| {
        match errcode {
            45011 => "api minute-quota reach limit  mustslower  retry next minute",
            40226 => "invalid user: high risk user, login blocked",
            -1 => "system error",
            _ => "error",
        }
        .into()
    });
    emu.store().login_failure = Some((errcode, errmsg.clone()));
    Ok((errcode, errmsg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Config;

    #[test]
    fn a_login_code_is_invalid_after_five_minutes_and_for_another_app() {
        let config = Config::development().wechat;
        let mut store = Store::default();
        let now = Utc::now();
        store.login_codes.insert(
            "C1".into(),
            LoginCode {
                appid: config.miniprogram_appid.clone(),
                openid: "oBuyer".into(),
                unionid: None,
                snapshot: false,
                expires_at: now + CODE_VALIDITY,
                used: false,
            },
        );
        let params = |appid: &str, secret: &str, code_name: &str| -> HashMap<String, String> {
            [
                ("appid", appid),
                ("secret", secret),
                (code_name, "C1"),
                ("grant_type", "authorization_code"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let mini = params(
            &config.miniprogram_appid,
            &config.miniprogram_secret,
            "js_code",
        );
        let late = now + CODE_VALIDITY + TimeDelta::seconds(1);
        let err = exchange(&mut store, &config, LoginApp::Miniprogram, &mini, late).unwrap_err();
        assert_eq!(err.errcode, 40029);
        // The official account's endpoint does not know the mini-program's code.
        let oa = params(
            &config.official_account_appid,
            &config.official_account_secret,
            "code",
        );
        let err = exchange(&mut store, &config, LoginApp::OfficialAccount, &oa, now).unwrap_err();
        assert_eq!(err.errcode, 40029);
        let grant = exchange(&mut store, &config, LoginApp::Miniprogram, &mini, now).unwrap();
        assert_eq!(grant.openid, "oBuyer");
    }
}
