//! The payment provider emulator (`tests/emulator`, binary `provider-emulator`) as a real
//! process on a free port, and a gateway configured to pay through it.
//!
//! This module only starts the emulator and talks to its `/emulator/…` controls over HTTP; it
//! shares no code with the product's provider clients, so a signing bug cannot pass on both
//! sides.

use crate::app::{Options, TestApp, spawn_app_with};
use crate::process::{Process, binary, free_port};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The development keys and identifiers of `deploy/dev-keys/` (its README).
pub const DEV_KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/dev-keys");
pub const WECHAT_MCHID: &str = "1900000109";
pub const WECHAT_APPID: &str = "wxd0e1c2b3a4958677";
pub const WECHAT_SERIAL: &str = "4A7C2ABF7ABB4EA58C06FF6161AFF456880096EC";
pub const WECHAT_KEY_ID: &str = "PUB_KEY_ID_0119000001092026112400000001";
pub const WECHAT_APIV3_KEY: &str = "w20rERqvyXUYJfRcGdayYGsFga5MZsn8";
pub const WECHAT_MINIPROGRAM_APPID: &str = "wx8f1e2d3c4b5a6978";
pub const WECHAT_MINIPROGRAM_SECRET: &str = "memberline-dev-miniprogram-secret";
pub const WECHAT_OFFICIAL_ACCOUNT_APPID: &str = "wx1a2b3c4d5e6f7081";
pub const WECHAT_OFFICIAL_ACCOUNT_SECRET: &str = "memberline-dev-official-account-secret";
pub const ALIPAY_APP_ID: &str = "2021000148600001";
pub const ALIPAY_SELLER_ID: &str = "2088100000000001";

/// A running emulator, killed when dropped.
pub struct Emulator {
    pub base: String,
    client: reqwest::Client,
    _process: Process,
}

impl Emulator {
    /// Starts the emulator with the provider's retry schedules scaled by `time_scale`
    /// (0.01 turns WeChat's first 15 s retry into 150 ms).
    pub fn start(time_scale: f64) -> Self {
        Self::start_binary(&binary("provider-emulator"), time_scale)
    }

    /// [`Emulator::start`] from the binary at `path` (the bench runs release builds).
    pub fn start_binary(path: &std::path::Path, time_scale: f64) -> Self {
        let mut child = Command::new(path)
            .args(["--listen", "127.0.0.1:0", "--keys", DEV_KEYS])
            .args(["--time-scale", &time_scale.to_string()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the provider emulator starts");
        let stdout = child.stdout.take().expect("its stdout");
        let process = Process::from(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the emulator prints its address");
        let base = line
            .trim()
            .strip_prefix("provider-emulator listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            base,
            client: reqwest::Client::new(),
            _process: process,
        }
    }

    /// The `MEMBERLINE__PAYMENTS__…` settings of a gateway on `gateway_port` paying through
    /// this emulator with the development keys.
    pub fn settings(&self, gateway_port: u16) -> Vec<(&'static str, String)> {
        Self::settings_for(&self.base, gateway_port)
    }

    /// The same settings for providers at `base` (an address where nothing listens, say).
    pub fn settings_for(base: &str, gateway_port: u16) -> Vec<(&'static str, String)> {
        let gateway = format!("http://127.0.0.1:{gateway_port}");
        vec![
            ("MEMBERLINE__HTTP__PORT", gateway_port.to_string()),
            ("MEMBERLINE__PAYMENTS__RETRY_ATTEMPTS", "2".to_owned()),
            (
                "MEMBERLINE__PAYMENTS__REQUEST_TIMEOUT_MS",
                "3000".to_owned(),
            ),
            ("MEMBERLINE__PAYMENTS__WECHAT__ENABLED", "true".to_owned()),
            ("MEMBERLINE__PAYMENTS__WECHAT__BASE_URL", base.to_owned()),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__MCHID",
                WECHAT_MCHID.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__APPID",
                WECHAT_APPID.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__MERCHANT_SERIAL_NO",
                WECHAT_SERIAL.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__MERCHANT_PRIVATE_KEY_PATH",
                format!("{DEV_KEYS}/wechat/merchant_private_key.pem"),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__APIV3_KEY",
                WECHAT_APIV3_KEY.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__PLATFORM_PUBLIC_KEY_ID",
                WECHAT_KEY_ID.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__PLATFORM_PUBLIC_KEY_PATH",
                format!("{DEV_KEYS}/wechat/platform_public_key.pem"),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__NOTIFY_URL",
                format!("{gateway}/v1/payments/wechat/notify"),
            ),
            ("MEMBERLINE__PAYMENTS__PUBLIC_URL", gateway.clone()),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__CHANNELS",
                "native,jsapi,h5".to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__MINIPROGRAM_APPID",
                WECHAT_MINIPROGRAM_APPID.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__MINIPROGRAM_SECRET",
                WECHAT_MINIPROGRAM_SECRET.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__OFFICIAL_ACCOUNT_APPID",
                WECHAT_OFFICIAL_ACCOUNT_APPID.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__OFFICIAL_ACCOUNT_SECRET",
                WECHAT_OFFICIAL_ACCOUNT_SECRET.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__LOGIN_BASE_URL",
                base.to_owned(),
            ),
            ("MEMBERLINE__PAYMENTS__ALIPAY__ENABLED", "true".to_owned()),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__GATEWAY_URL",
                format!("{base}/gateway.do"),
            ),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__APP_ID",
                ALIPAY_APP_ID.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__SELLER_ID",
                ALIPAY_SELLER_ID.to_owned(),
            ),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__APP_PRIVATE_KEY_PATH",
                format!("{DEV_KEYS}/alipay/app_private_key.pem"),
            ),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__ALIPAY_PUBLIC_KEY_PATH",
                format!("{DEV_KEYS}/alipay/alipay_public_key.pem"),
            ),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__NOTIFY_URL",
                format!("{gateway}/v1/payments/alipay/notify"),
            ),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__CHANNELS",
                "qr,wap,page".to_owned(),
            ),
        ]
    }

    /// Any `/emulator/…` control: its status and JSON answer.
    pub async fn post_control(&self, path: &str, body: Value) -> (u16, Value) {
        self.post(path, body).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("emulator request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Pays a trade as the buyer would by scanning its code.
    pub async fn pay(&self, provider: &str, out_trade_no: &str) -> (u16, Value) {
        self.post(
            "/emulator/pay",
            json!({ "provider": provider, "out_trade_no": out_trade_no }),
        )
        .await
    }

    /// Pays a trade even though it was closed: a payment that raced the merchant's close.
    pub async fn pay_after_close(&self, provider: &str, out_trade_no: &str) -> (u16, Value) {
        self.post(
            "/emulator/pay",
            json!({ "provider": provider, "out_trade_no": out_trade_no, "force": true }),
        )
        .await
    }

    /// Sets the notification mode (`/emulator/notify-mode`).
    pub async fn notify_mode(&self, mode: Value) {
        let (status, body) = self.post("/emulator/notify-mode", mode).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Crafts and sends one notification now; our reply's `{status, body}`.
    pub async fn send(&self, request: Value) -> (u16, Value) {
        self.post("/emulator/send", request).await
    }

    /// Every notification attempt the emulator made for `out_trade_no`.
    pub async fn notifications(&self, out_trade_no: &str) -> Vec<Value> {
        let res = self
            .client
            .get(format!("{}/emulator/notifications", self.base))
            .query(&[("out_trade_no", out_trade_no)])
            .send()
            .await
            .expect("emulator request");
        res.json().await.unwrap_or_default()
    }

    /// The emulator's view of a trade.
    pub async fn trade(&self, provider: &str, out_trade_no: &str) -> Value {
        let res = self
            .client
            .get(format!(
                "{}/emulator/trades/{provider}/{out_trade_no}",
                self.base
            ))
            .send()
            .await
            .expect("emulator request");
        res.json().await.unwrap_or(Value::Null)
    }
}

/// A gateway (with in-process workers when `options.workers`) that pays through a fresh
/// emulator; the emulator lives as long as the returned guard.
pub async fn spawn_app_with_provider(mut options: Options) -> (TestApp, Emulator) {
    let emulator = Emulator::start(0.01);
    options.env.extend(emulator.settings(free_port()));
    (spawn_app_with(options).await, emulator)
}
