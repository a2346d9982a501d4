//! The payment provider emulator as a library: the command line, the HTTP application that
//! combines WeChat Pay v3 (Native, JSAPI, H5 and its cashier), WeChat login (`/sns/…`), the
//! Alipay gateway (QR codes and the wap / page cashiers) and the `/emulator` control API, and
//! the server loop. `main.rs` only calls [`run`].

// Handlers bail out early with a ready (signed) `Response` as the error value; boxing it would
// only add noise.
#![allow(clippy::result_large_err)]

pub mod alipay;
pub mod cashier;
pub mod control;
pub mod html;
pub mod keys;
pub mod login;
pub mod notify;
pub mod state;
pub mod wechat;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use serde_json::json;

pub use state::{Config, Emulator, Shared};

/// Emulates WeChat Pay API v3 (Native, JSAPI, H5), WeChat login and the Alipay open API (QR
/// codes, wap and page cashiers) for local runs and tests.
#[derive(Parser, Debug, Clone)]
#[command(name = "provider-emulator", version, about)]
pub struct Cli {
    /// Address to listen on; port 0 binds a free port.
    #[arg(long, env = "EMULATOR_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Directory holding wechat/ and alipay/ key files.
    #[arg(long, env = "EMULATOR_KEYS", default_value = "deploy/dev-keys")]
    pub keys: PathBuf,
    /// Multiplies the emulator's own delays (refund completion, notification retries).
    #[arg(long, env = "EMULATOR_TIME_SCALE", default_value_t = 1.0, value_parser = parse_time_scale)]
    pub time_scale: f64,
    #[arg(long, env = "EMULATOR_WECHAT_MCHID", default_value = "1900000109")]
    pub wechat_mchid: String,
    #[arg(
        long,
        env = "EMULATOR_WECHAT_APPID",
        default_value = "wxd0e1c2b3a4958677"
    )]
    pub wechat_appid: String,
    /// The mini-program bound to the merchant (JSAPI orders, `/sns/jscode2session`).
    #[arg(
        long,
        env = "EMULATOR_WECHAT_MINIPROGRAM_APPID",
        default_value = "wx8f1e2d3c4b5a6978"
    )]
    pub wechat_miniprogram_appid: String,
    #[arg(
        long,
        env = "EMULATOR_WECHAT_MINIPROGRAM_SECRET",
        default_value = "memberline-dev-miniprogram-secret"
    )]
    pub wechat_miniprogram_secret: String,
    /// The official account bound to the merchant (JSAPI orders, `/sns/oauth2/access_token`).
    #[arg(
        long,
        env = "EMULATOR_WECHAT_OFFICIAL_ACCOUNT_APPID",
        default_value = "wx1a2b3c4d5e6f7081"
    )]
    pub wechat_official_account_appid: String,
    #[arg(
        long,
        env = "EMULATOR_WECHAT_OFFICIAL_ACCOUNT_SECRET",
        default_value = "memberline-dev-official-account-secret"
    )]
    pub wechat_official_account_secret: String,
    /// Serial of the merchant API certificate expected in requests' serial_no.
    #[arg(
        long,
        env = "EMULATOR_WECHAT_MERCHANT_SERIAL",
        default_value = "4A7C2ABF7ABB4EA58C06FF6161AFF456880096EC"
    )]
    pub wechat_merchant_serial: String,
    /// Sent as Wechatpay-Serial (public-key mode).
    #[arg(
        long,
        env = "EMULATOR_WECHAT_PUBLIC_KEY_ID",
        default_value = "PUB_KEY_ID_0119000001092026112400000001"
    )]
    pub wechat_public_key_id: String,
    /// The 32-byte APIv3 key that encrypts notification resources.
    #[arg(
        long,
        env = "EMULATOR_WECHAT_APIV3_KEY",
        default_value = "w20rERqvyXUYJfRcGdayYGsFga5MZsn8"
    )]
    pub wechat_apiv3_key: String,
    #[arg(
        long,
        env = "EMULATOR_ALIPAY_APP_ID",
        default_value = "2021000148600001"
    )]
    pub alipay_app_id: String,
    #[arg(
        long,
        env = "EMULATOR_ALIPAY_SELLER_ID",
        default_value = "2088100000000001"
    )]
    pub alipay_seller_id: String,
}

fn parse_time_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err("must be a finite number ≥ 0".into())
    }
}

impl Cli {
    pub fn config(&self) -> Config {
        Config {
            time_scale: self.time_scale,
            wechat: state::WechatConfig {
                mchid: self.wechat_mchid.clone(),
                appid: self.wechat_appid.clone(),
                miniprogram_appid: self.wechat_miniprogram_appid.clone(),
                miniprogram_secret: self.wechat_miniprogram_secret.clone(),
                official_account_appid: self.wechat_official_account_appid.clone(),
                official_account_secret: self.wechat_official_account_secret.clone(),
                merchant_serial: self.wechat_merchant_serial.clone(),
                public_key_id: self.wechat_public_key_id.clone(),
                apiv3_key: self.wechat_apiv3_key.clone(),
            },
            alipay: state::AlipayConfig {
                app_id: self.alipay_app_id.clone(),
                seller_id: self.alipay_seller_id.clone(),
            },
        }
    }
}

/// The whole HTTP surface.
pub fn app(emu: Shared) -> Router {
    Router::new()
        .merge(wechat::routes())
        .merge(login::routes())
        .merge(alipay::routes())
        .merge(cashier::routes())
        .merge(control::routes())
        .fallback(fallback)
        .layer(middleware::from_fn(log_request))
        .with_state(emu)
}

/// Unknown paths: a signed WeChat-style 404 under `/v3/`, a plain 404 elsewhere.
async fn fallback(
    axum::extract::State(emu): axum::extract::State<Shared>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_string();
    if path.starts_with("/v3/") {
        wechat::error(
            &emu,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no API at {path}"),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": format!("no route for {path}") })),
        )
            .into_response()
    }
}

async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    tracing::debug!(%method, %uri, status = response.status().as_u16(), "request");
    response
}

/// Loads the keys, binds, prints `provider-emulator listening on http://<addr>` and serves until
/// SIGTERM or Ctrl-C.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let keys = keys::Keys::load(&cli.keys)
        .with_context(|| format!("loading keys from {}", cli.keys.display()))?;
    let emu = Emulator::new(cli.config(), keys)?;
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "provider-emulator listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, time_scale = cli.time_scale, "provider emulator started");
    axum::serve(listener, app(emu))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("provider emulator stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
