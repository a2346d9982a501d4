//! In-process tests of the whole HTTP surface: each test binds its own emulator on
//! 127.0.0.1:0, signs requests as a merchant would (with the MERCHANT / APP private keys from
//! `deploy/dev-keys`), checks answers and notifications with the platform / Alipay PUBLIC keys,
//! and receives notifications on a tiny local axum server. The signing, verification and
//! decryption helpers here are written separately from the emulator's own.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::rand_core::OsRng;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::state::{Config, Emulator};

const MCHID: &str = "1900000109";
const APPID: &str = "wxd0e1c2b3a4958677";
const MERCHANT_SERIAL: &str = "4A7C2ABF7ABB4EA58C06FF6161AFF456880096EC";
const PUB_KEY_ID: &str = "PUB_KEY_ID_0119000001092026112400000001";
const APIV3_KEY: &str = "w20rERqvyXUYJfRcGdayYGsFga5MZsn8";
const ALIPAY_APP_ID: &str = "2021000148600001";
const ALIPAY_SELLER_ID: &str = "2088100000000001";
const MINI_APPID: &str = "wx8f1e2d3c4b5a6978";
const MINI_SECRET: &str = "memberline-dev-miniprogram-secret";
const OA_APPID: &str = "wx1a2b3c4d5e6f7081";
const OA_SECRET: &str = "memberline-dev-official-account-secret";

fn dev_keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dev-keys")
}

fn private_key(rel: &str) -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(dev_keys().join(rel)).unwrap()).unwrap()
}

fn public_key(rel: &str) -> RsaPublicKey {
    RsaPublicKey::from_public_key_pem(&std::fs::read_to_string(dev_keys().join(rel)).unwrap())
        .unwrap()
}

fn sign(key: &RsaPrivateKey, message: &[u8]) -> String {
    B64.encode(
        SigningKey::<Sha256>::new(key.clone())
            .sign_with_rng(&mut OsRng, message)
            .to_bytes(),
    )
}

fn verifies(key: &RsaPublicKey, message: &[u8], signature: &str) -> bool {
    let Ok(raw) = B64.decode(signature) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(raw.as_slice()) else {
        return false;
    };
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(message, &sig)
        .is_ok()
}

fn nonce32() -> String {
    uuid::Uuid::new_v4().simple().to_string().to_uppercase()
}

/// One emulator on a free port plus the keys a merchant holds.
struct Harness {
    base: String,
    http: reqwest::Client,
    merchant_key: RsaPrivateKey,
    platform_public: RsaPublicKey,
    app_key: RsaPrivateKey,
    alipay_public: RsaPublicKey,
}

/// What one answer looked like.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn start() -> Harness {
    let mut config = Config::development();
    config.time_scale = 0.001;
    let keys = crate::keys::Keys::load(&dev_keys()).unwrap();
    let emu = Emulator::new(config, keys).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = crate::app(emu);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Harness {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        merchant_key: private_key("wechat/merchant_private_key.pem"),
        platform_public: public_key("wechat/platform_public_key.pem"),
        app_key: private_key("alipay/app_private_key.pem"),
        alipay_public: public_key("alipay/alipay_public_key.pem"),
    }
}

impl Harness {
    /// A WeChat API call signed with the merchant key; `body` is sent byte for byte.
    async fn wechat_raw(&self, method: &str, path_and_query: &str, body: &str) -> Answer {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let nonce = nonce32();
        let message = format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body}\n");
        let signature = sign(&self.merchant_key, message.as_bytes());
        // Fields deliberately out of the usual order, with a space after some commas.
        let authorization = format!(
            "WECHATPAY2-SHA256-RSA2048 signature=\"{signature}\", serial_no=\"{MERCHANT_SERIAL}\",timestamp=\"{timestamp}\", nonce_str=\"{nonce}\",mchid=\"{MCHID}\""
        );
        self.wechat_with_authorization(method, path_and_query, body, &authorization)
            .await
    }

    async fn wechat_with_authorization(
        &self,
        method: &str,
        path_and_query: &str,
        body: &str,
        authorization: &str,
    ) -> Answer {
        let url = format!("{}{path_and_query}", self.base);
        let mut request = self
            .http
            .request(method.parse().unwrap(), url)
            .header("Authorization", authorization)
            .header("Accept", "application/json");
        if !body.is_empty() {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap().to_vec();
        let answer = Answer {
            status,
            headers,
            body,
        };
        self.assert_wechat_signed(&answer);
        answer
    }

    async fn wechat(&self, method: &str, path_and_query: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.wechat_raw(method, path_and_query, &body).await
    }

    /// All five `Wechatpay-*` headers, the public key id as serial, and a signature over
    /// `TIMESTAMP\nNONCE\nBODY\n` that verifies with the platform public key.
    fn assert_wechat_signed(&self, a: &Answer) {
        let h = |name: &str| {
            a.headers
                .get(name)
                .unwrap_or_else(|| panic!("missing {name}"))
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(h("Wechatpay-Serial"), PUB_KEY_ID);
        assert_eq!(h("Wechatpay-Signature-Type"), "WECHATPAY2-SHA256-RSA2048");
        assert!(!h("Request-ID").is_empty());
        let mut message =
            format!("{}\n{}\n", h("Wechatpay-Timestamp"), h("Wechatpay-Nonce")).into_bytes();
        message.extend_from_slice(&a.body);
        message.push(b'\n');
        assert!(
            verifies(&self.platform_public, &message, &h("Wechatpay-Signature")),
            "bad WeChat answer signature"
        );
        if !a.body.is_empty() {
            assert_eq!(h("Content-Type"), "application/json; charset=utf-8");
        }
    }

    async fn create_wechat_order(
        &self,
        out_trade_no: &str,
        total: i64,
        notify_url: &str,
    ) -> Answer {
        self.wechat(
            "POST",
            "/v3/pay/transactions/native",
            Some(json!({
                "appid": APPID,
                "mchid": MCHID,
                "description": "Memberline 月度会员",
                "out_trade_no": out_trade_no,
                "notify_url": notify_url,
                "amount": { "total": total, "currency": "CNY" },
                "attach": "plan=monthly",
            })),
        )
        .await
    }

    async fn query_wechat(&self, out_trade_no: &str) -> Answer {
        self.wechat(
            "GET",
            &format!("/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={MCHID}"),
            None,
        )
        .await
    }

    async fn control(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn control_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn pay(&self, provider: &str, out_trade_no: &str) -> (u16, Value) {
        self.control(
            "/emulator/pay",
            json!({ "provider": provider, "out_trade_no": out_trade_no }),
        )
        .await
    }

    async fn attempts(&self, provider: &str, out_trade_no: &str) -> Vec<Value> {
        let v = self
            .control_get(&format!(
                "/emulator/notifications?provider={provider}&out_trade_no={out_trade_no}"
            ))
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Signed Alipay request parameters (everything but `sign` is signed, `sign_type` included).
    fn alipay_params(
        &self,
        method: &str,
        biz: Value,
        notify_url: Option<&str>,
    ) -> Vec<(String, String)> {
        let extra: Vec<(&str, &str)> = notify_url.map(|u| ("notify_url", u)).into_iter().collect();
        self.alipay_params_with(method, biz, &extra)
    }

    /// Signed Alipay request parameters with more common parameters (`return_url`, …); an
    /// empty value removes a default one (`format`).
    fn alipay_params_with(
        &self,
        method: &str,
        biz: Value,
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = vec![
            ("app_id".into(), ALIPAY_APP_ID.into()),
            ("method".into(), method.into()),
            ("format".into(), "JSON".into()),
            ("charset".into(), "utf-8".into()),
            ("sign_type".into(), "RSA2".into()),
            // Far in the past: the gateway must not enforce a window.
            ("timestamp".into(), "2014-07-24 03:07:50".into()),
            ("version".into(), "1.0".into()),
            ("app_auth_token".into(), String::new()),
            ("biz_content".into(), biz.to_string()),
        ];
        for (k, v) in extra {
            params.retain(|(name, _)| name != k);
            if !v.is_empty() {
                params.push((k.to_string(), v.to_string()));
            }
        }
        let mut signed: Vec<&(String, String)> = params
            .iter()
            .filter(|(k, v)| k != "sign" && !v.is_empty())
            .collect();
        signed.sort_by(|a, b| a.0.cmp(&b.0));
        let content = signed
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let sign = sign(&self.app_key, content.as_bytes());
        params.push(("sign".into(), sign));
        params
    }

    /// GET with every parameter in the query string.
    async fn alipay_get(&self, params: &[(String, String)]) -> Value {
        let query = serde_urlencoded::to_string(params).unwrap();
        let r = self
            .http
            .get(format!("{}/gateway.do?{query}", self.base))
            .send()
            .await
            .unwrap();
        self.alipay_answer(r).await
    }

    /// POST as the official SDKs do: system parameters in the query, `biz_content` in the form.
    async fn alipay_post(&self, params: &[(String, String)]) -> Value {
        let (form, query): (Vec<_>, Vec<_>) = params
            .iter()
            .cloned()
            .partition(|(k, _)| k == "biz_content");
        let r = self
            .http
            .post(format!(
                "{}/gateway.do?{}",
                self.base,
                serde_urlencoded::to_string(&query).unwrap()
            ))
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(serde_urlencoded::to_string(&form).unwrap())
            .send()
            .await
            .unwrap();
        self.alipay_answer(r).await
    }

    /// Checks the `sign` over the exact text of the `*_response` object; returns that object.
    async fn alipay_answer(&self, r: reqwest::Response) -> Value {
        assert_eq!(
            r.headers()["content-type"],
            "application/json;charset=utf-8"
        );
        let text = r.text().await.unwrap();
        let outer: Value = serde_json::from_str(&text).unwrap();
        let key = outer
            .as_object()
            .unwrap()
            .keys()
            .find(|k| k.ends_with("_response"))
            .unwrap()
            .clone();
        let start = text.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
        let mut depth = 0;
        let mut end = start;
        for (i, c) in text[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let signed = &text[start..end];
        let sign = outer["sign"].as_str().expect("every answer is signed");
        assert!(
            verifies(&self.alipay_public, signed.as_bytes(), sign),
            "bad Alipay answer signature: {text}"
        );
        let mut inner = outer[&key].clone();
        inner["_key"] = json!(key);
        inner
    }

    /// A browser's GET of a URL, without following redirects: (status, headers, text).
    async fn browse(&self, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let r = browser().get(url).send().await.unwrap();
        (
            r.status().as_u16(),
            r.headers().clone(),
            r.text().await.unwrap(),
        )
    }

    /// A browser's form submission, without following redirects.
    async fn submit(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let r = browser()
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.headers().clone(),
            r.text().await.unwrap(),
        )
    }

    /// A cashier method as the browser opens it: every parameter in the query string.
    async fn alipay_cashier_get(&self, params: &[(String, String)]) -> (u16, String) {
        let query = serde_urlencoded::to_string(params).unwrap();
        let (status, headers, text) = self
            .browse(&format!("{}/gateway.do?{query}", self.base))
            .await;
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        (status, text)
    }

    /// A cashier method as Alipay's official SDK submits it: a form whose action carries the
    /// common parameters and whose hidden input carries `biz_content`.
    async fn alipay_cashier_form(&self, params: &[(String, String)]) -> (u16, String) {
        let (form, query): (Vec<_>, Vec<_>) = params
            .iter()
            .cloned()
            .partition(|(k, _)| k == "biz_content");
        let path = format!(
            "/gateway.do?{}",
            serde_urlencoded::to_string(&query).unwrap()
        );
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, headers, text) = self.submit(&path, &form).await;
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        (status, text)
    }

    /// `POST /v3/pay/transactions/{kind}` with a signed body.
    async fn wechat_order(&self, kind: &str, body: Value) -> Answer {
        self.wechat("POST", &format!("/v3/pay/transactions/{kind}"), Some(body))
            .await
    }

    /// A login code minted by the control API: `{code, openid, appid}`.
    async fn login_code(&self, app: &str, openid: Option<&str>, unionid: Option<&str>) -> Value {
        let (status, minted) = self
            .control(
                "/emulator/wechat/codes",
                json!({ "app": app, "openid": openid, "unionid": unionid }),
            )
            .await;
        assert_eq!(status, 200, "{minted}");
        minted
    }

    /// A `/sns/…` exchange; WeChat answers 200 whatever happened.
    async fn sns(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!(
                "{}{path}?{}",
                self.base,
                serde_urlencoded::to_string(params).unwrap()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        r.json().await.unwrap()
    }

    async fn precreate(&self, out_trade_no: &str, amount: &str, notify_url: Option<&str>) -> Value {
        let params = self.alipay_params(
            "alipay.trade.precreate",
            json!({ "out_trade_no": out_trade_no, "total_amount": amount, "subject": "Memberline 年度会员" }),
            notify_url,
        );
        self.alipay_post(&params).await
    }
}

/// A client that, like a browser under test, shows each redirect instead of following it.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The body of a create call: Native's fields (JSAPI adds `payer`, H5 `scene_info`).
fn order_body(out_trade_no: &str, appid: &str, total: i64, notify_url: &str) -> Value {
    json!({
        "appid": appid,
        "mchid": MCHID,
        "description": "Memberline 月度会员",
        "out_trade_no": out_trade_no,
        "notify_url": notify_url,
        "amount": { "total": total, "currency": "CNY" },
    })
}

fn h5_scene() -> Value {
    json!({ "payer_client_ip": "203.0.113.7", "h5_info": { "type": "Wap", "app_name": "Memberline", "app_url": "https://m.memberline.example" } })
}

/// What a merchant hands its front end for a JSAPI prepay_id, paySign made with `key` over
/// `appId\ntimeStamp\nnonceStr\npackage\n`.
fn jsapi_params(key: &RsaPrivateKey, appid: &str, prepay_id: &str) -> Value {
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let nonce = nonce32();
    let package = format!("prepay_id={prepay_id}");
    let pay_sign = sign(
        key,
        format!("{appid}\n{timestamp}\n{nonce}\n{package}\n").as_bytes(),
    );
    json!({ "appId": appid, "timeStamp": timestamp, "nonceStr": nonce, "package": package, "signType": "RSA", "paySign": pay_sign })
}

/// The opening tag of the element with `id` in one of the emulator's pages.
fn element<'a>(html: &'a str, id: &str) -> Option<&'a str> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let start = html[..at].rfind('<')?;
    let end = html[at..].find('>')? + at;
    Some(&html[start..=end])
}

/// An attribute's value inside one tag (entities left as they are).
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[at..].find('"')? + at;
    Some(&tag[at..end])
}

/// The headers (lowercase names) and raw body of one received request.
type Received = (HashMap<String, String>, Vec<u8>);

/// A local merchant endpoint that records every request and answers from a script.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

#[derive(Clone)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<(u16, &'static str)>>>,
    otherwise: (u16, &'static str),
}

async fn receiver(script: Vec<(u16, &'static str)>, otherwise: (u16, &'static str)) -> Receiver {
    async fn handle(
        State(s): State<ReceiverState>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> impl IntoResponse {
        let headers: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        s.received.lock().unwrap().push((headers, body.to_vec()));
        let (status, text) = s.script.lock().unwrap().pop_front().unwrap_or(s.otherwise);
        (StatusCode::from_u16(status).unwrap(), text)
    }
    let state = ReceiverState {
        received: Arc::default(),
        script: Arc::new(Mutex::new(script.into())),
        otherwise,
    };
    let received = state.received.clone();
    let app = axum::Router::new()
        .route("/notify", axum::routing::post(handle))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{addr}/notify"),
        received,
    }
}

impl Receiver {
    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn get(&self, i: usize) -> Received {
        self.received.lock().unwrap()[i].clone()
    }
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Verifies a WeChat notification with the platform public key and decrypts its resource with
/// the APIv3 key; returns (envelope, plaintext).
fn open_wechat_notification(
    h: &Harness,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> (Value, Value) {
    assert_eq!(headers["wechatpay-serial"], PUB_KEY_ID);
    assert_eq!(
        headers["wechatpay-signature-type"],
        "WECHATPAY2-SHA256-RSA2048"
    );
    assert!(headers["content-type"].starts_with("application/json"));
    let timestamp: i64 = headers["wechatpay-timestamp"].parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 300);
    let mut message = format!(
        "{}\n{}\n",
        headers["wechatpay-timestamp"], headers["wechatpay-nonce"]
    )
    .into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    assert!(
        verifies(
            &h.platform_public,
            &message,
            &headers["wechatpay-signature"]
        ),
        "notification signature"
    );
    let envelope: Value = serde_json::from_slice(body).unwrap();
    let resource = &envelope["resource"];
    assert_eq!(resource["algorithm"], "AEAD_AES_256_GCM");
    let cipher = Aes256Gcm::new_from_slice(APIV3_KEY.as_bytes()).unwrap();
    let nonce = resource["nonce"].as_str().unwrap();
    assert_eq!(nonce.len(), 12);
    let sealed = B64
        .decode(resource["ciphertext"].as_str().unwrap())
        .unwrap();
    let plain = cipher
        .decrypt(
            &Nonce::from(<[u8; 12]>::try_from(nonce.as_bytes()).unwrap()),
            Payload {
                msg: &sealed,
                aad: resource["associated_data"].as_str().unwrap().as_bytes(),
            },
        )
        .expect("decrypts with the APIv3 key");
    (envelope, serde_json::from_slice(&plain).unwrap())
}

/// Verifies an Alipay notification (every parameter but `sign` and `sign_type`).
fn open_alipay_notification(h: &Harness, body: &[u8]) -> HashMap<String, String> {
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap();
    for (k, v) in &params {
        assert!(!v.is_empty(), "empty parameter {k}");
    }
    let mut signed: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "sign" && k != "sign_type")
        .collect();
    signed.sort_by(|a, b| a.0.cmp(&b.0));
    let content = signed
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let map: HashMap<String, String> = params.into_iter().collect();
    assert!(
        verifies(&h.alipay_public, content.as_bytes(), &map["sign"]),
        "alipay notification signature"
    );
    map
}

#[tokio::test]
async fn wechat_native_order_goes_from_notpay_to_success_when_paid() {
    let h = start().await;
    let created = h
        .create_wechat_order("ML20261124000001", 2990, "http://127.0.0.1:9/notify")
        .await;
    assert_eq!(created.status, 200);
    let code_url = created.json()["code_url"].as_str().unwrap().to_string();
    assert!(code_url.starts_with("weixin://wxpay/bizpayurl?pr="));

    let q = h.query_wechat("ML20261124000001").await;
    assert_eq!(q.status, 200);
    let t = q.json();
    assert_eq!(t["trade_state"], "NOTPAY");
    assert_eq!(t["trade_type"], "NATIVE");
    assert_eq!(t["amount"]["total"], 2990);
    assert_eq!(t["attach"], "plan=monthly");
    assert!(t.get("transaction_id").is_none());

    let (status, paid) = h.pay("wechat", "ML20261124000001").await;
    assert_eq!(status, 200);
    let transaction_id = paid["transaction_id"].as_str().unwrap().to_string();
    assert_eq!(transaction_id.len(), 28);
    assert!(transaction_id.starts_with("4200001234"));

    let t = h.query_wechat("ML20261124000001").await.json();
    assert_eq!(t["trade_state"], "SUCCESS");
    assert_eq!(t["transaction_id"], transaction_id.as_str());
    assert_eq!(t["amount"]["payer_total"], 2990);
    assert!(t["success_time"].as_str().unwrap().ends_with("+08:00"));
    assert!(t["payer"]["openid"].as_str().unwrap().starts_with('o'));

    let (status, again) = h.pay("wechat", "ML20261124000001").await;
    assert_eq!(status, 409, "{again}");
    let unknown = h.query_wechat("ML20261124999999").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["code"], "ORDER_NOT_EXIST");
    let (status, _) = h.pay("wechat", "ML20261124999999").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn wechat_request_with_a_bad_signature_is_refused_with_sign_error() {
    let h = start().await;
    let body = json!({"mchid": MCHID}).to_string();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let nonce = nonce32();
    let path = "/v3/pay/transactions/out-trade-no/ML20261124000002/close";
    // Signed over a different body than the one sent.
    let signature = sign(
        &h.merchant_key,
        format!("POST\n{path}\n{timestamp}\n{nonce}\n{{}}\n").as_bytes(),
    );
    let auth = format!(
        "WECHATPAY2-SHA256-RSA2048 mchid=\"{MCHID}\",nonce_str=\"{nonce}\",timestamp=\"{timestamp}\",serial_no=\"{MERCHANT_SERIAL}\",signature=\"{signature}\""
    );
    let a = h
        .wechat_with_authorization("POST", path, &body, &auth)
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["code"], "SIGN_ERROR");

    // Signed with a key that is not the merchant's.
    let signature = sign(
        &h.app_key,
        format!("POST\n{path}\n{timestamp}\n{nonce}\n{body}\n").as_bytes(),
    );
    let auth = format!(
        "WECHATPAY2-SHA256-RSA2048 mchid=\"{MCHID}\",nonce_str=\"{nonce}\",timestamp=\"{timestamp}\",serial_no=\"{MERCHANT_SERIAL}\",signature=\"{signature}\""
    );
    let a = h
        .wechat_with_authorization("POST", path, &body, &auth)
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["code"], "SIGN_ERROR");

    // Another merchant's id.
    let signature = sign(
        &h.merchant_key,
        format!("POST\n{path}\n{timestamp}\n{nonce}\n{body}\n").as_bytes(),
    );
    let auth = format!(
        "WECHATPAY2-SHA256-RSA2048 mchid=\"1900000999\",nonce_str=\"{nonce}\",timestamp=\"{timestamp}\",serial_no=\"{MERCHANT_SERIAL}\",signature=\"{signature}\""
    );
    let a = h
        .wechat_with_authorization("POST", path, &body, &auth)
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["code"], "SIGN_ERROR");

    // No Authorization at all.
    let a = h
        .wechat_with_authorization("GET", "/v3/refund/domestic/refunds/R1", "", "")
        .await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn wechat_requests_are_verified_over_the_raw_body_bytes_and_repeat_orders_get_the_same_code()
{
    let h = start().await;
    // Spacing and \u escapes that a re-serialization would not reproduce.
    let raw = format!(
        "{{ \"appid\" : \"{APPID}\",\n  \"mchid\": \"{MCHID}\", \"description\": \"\\u4f1a\\u5458 monthly\", \"out_trade_no\": \"ML-raw_0001\", \"notify_url\": \"https://example.com/n\", \"amount\": {{\"total\": 100, \"currency\": \"CNY\"}} }}"
    );
    let first = h
        .wechat_raw("POST", "/v3/pay/transactions/native", &raw)
        .await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let again = h
        .wechat_raw("POST", "/v3/pay/transactions/native", &raw)
        .await;
    assert_eq!(again.json()["code_url"], first.json()["code_url"]);

    let different = raw.replace("\"total\": 100", "\"total\": 101");
    let refused = h
        .wechat_raw("POST", "/v3/pay/transactions/native", &different)
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["code"], "INVALID_REQUEST");

    let bad_no = raw.replace("ML-raw_0001", "ML 1");
    let refused = h
        .wechat_raw("POST", "/v3/pay/transactions/native", &bad_no)
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["code"], "PARAM_ERROR");

    let other_app = raw.replace(APPID, "wx0000000000000000");
    let refused = h
        .wechat_raw("POST", "/v3/pay/transactions/native", &other_app)
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["code"], "APPID_MCHID_NOT_MATCH");

    h.pay("wechat", "ML-raw_0001").await;
    let paid = h
        .wechat_raw("POST", "/v3/pay/transactions/native", &raw)
        .await;
    assert_eq!(paid.status, 400);
    assert_eq!(paid.json()["code"], "ORDERPAID");
}

#[tokio::test]
async fn wechat_close_answers_a_signed_204_and_a_closed_order_cannot_be_paid() {
    let h = start().await;
    h.create_wechat_order("ML20261124000003", 100, "https://example.com/n")
        .await;
    let path = "/v3/pay/transactions/out-trade-no/ML20261124000003/close";
    let closed = h.wechat("POST", path, Some(json!({"mchid": MCHID}))).await;
    assert_eq!(closed.status, 204);
    assert!(closed.body.is_empty());
    // assert_wechat_signed verified the signature over "TIMESTAMP\nNONCE\n\n".
    let again = h.wechat("POST", path, Some(json!({"mchid": MCHID}))).await;
    assert_eq!(again.status, 204);

    assert_eq!(
        h.query_wechat("ML20261124000003").await.json()["trade_state"],
        "CLOSED"
    );
    let (status, refused) = h.pay("wechat", "ML20261124000003").await;
    assert_eq!(status, 409);
    assert!(refused["error"].as_str().unwrap().contains("closed"));
    let create_again = h
        .create_wechat_order("ML20261124000003", 100, "https://example.com/n")
        .await;
    assert_eq!(create_again.json()["code"], "ORDER_CLOSED");

    // A payment that raced the close.
    let (status, _) = h
        .control(
            "/emulator/pay",
            json!({"provider": "wechat", "out_trade_no": "ML20261124000003", "force": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        h.query_wechat("ML20261124000003").await.json()["trade_state"],
        "SUCCESS"
    );
    let paid_close = h.wechat("POST", path, Some(json!({"mchid": MCHID}))).await;
    assert_eq!(paid_close.status, 400);
    assert_eq!(paid_close.json()["code"], "ORDERPAID");
    let unknown = h
        .wechat(
            "POST",
            "/v3/pay/transactions/out-trade-no/ML_NOPE_01/close",
            Some(json!({"mchid": MCHID})),
        )
        .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn an_expired_code_cannot_be_paid() {
    let h = start().await;
    h.create_wechat_order("ML20261124000004", 100, "https://example.com/n")
        .await;
    let (status, _) = h
        .control(
            "/emulator/expire",
            json!({"provider": "wechat", "out_trade_no": "ML20261124000004"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = h.pay("wechat", "ML20261124000004").await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn wechat_refund_retried_with_the_same_number_refunds_once() {
    let h = start().await;
    let merchant = receiver(vec![], (204, "")).await;
    h.create_wechat_order("ML20261124000005", 3000, &merchant.url)
        .await;
    h.pay("wechat", "ML20261124000005").await;
    let refund = json!({
        "out_trade_no": "ML20261124000005",
        "out_refund_no": "RF20261124000005",
        "reason": "会员退订",
        "amount": { "refund": 1000, "total": 3000, "currency": "CNY" },
    });
    let first = h
        .wechat("POST", "/v3/refund/domestic/refunds", Some(refund.clone()))
        .await;
    assert_eq!(first.status, 200);
    let r = first.json();
    assert_eq!(r["status"], "PROCESSING");
    assert_eq!(r["channel"], "ORIGINAL");
    assert_eq!(r["amount"]["refund"], 1000);
    assert_eq!(r["amount"]["discount_refund"], 0);
    let second = h
        .wechat("POST", "/v3/refund/domestic/refunds", Some(refund))
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["refund_id"], r["refund_id"]);

    let view = h
        .control_get("/emulator/trades/wechat/ML20261124000005")
        .await;
    assert_eq!(view["refunded"], 1000);
    assert_eq!(view["refunds"].as_array().unwrap().len(), 1);

    wait_until("the refund to succeed", async || {
        h.wechat("GET", "/v3/refund/domestic/refunds/RF20261124000005", None)
            .await
            .json()["status"]
            == "SUCCESS"
    })
    .await;
    assert_eq!(
        h.query_wechat("ML20261124000005").await.json()["trade_state"],
        "REFUND"
    );
    wait_until("REFUND.SUCCESS", async || merchant.count() >= 2).await;
    let (headers, body) = merchant.get(1);
    let (envelope, plain) = open_wechat_notification(&h, &headers, &body);
    assert_eq!(envelope["event_type"], "REFUND.SUCCESS");
    assert_eq!(envelope["resource"]["original_type"], "refund");
    assert_eq!(plain["refund_status"], "SUCCESS");
    assert_eq!(plain["out_refund_no"], "RF20261124000005");
    assert_eq!(plain["amount"]["refund"], 1000);

    let missing = h
        .wechat("GET", "/v3/refund/domestic/refunds/RF_NOPE", None)
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], "RESOURCE_NOT_EXISTS");
}

#[tokio::test]
async fn wechat_refunds_adding_up_to_more_than_the_total_are_refused() {
    let h = start().await;
    h.create_wechat_order("ML20261124000006", 1000, "https://example.com/n")
        .await;
    let refund = |no: &str, amount: i64, total: i64| json!({"out_trade_no": "ML20261124000006", "out_refund_no": no, "amount": {"refund": amount, "total": total, "currency": "CNY"}});
    let unpaid = h
        .wechat(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(refund("RFA", 100, 1000)),
        )
        .await;
    assert_eq!(unpaid.status, 400);
    h.pay("wechat", "ML20261124000006").await;
    assert_eq!(
        h.wechat(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(refund("RFB", 600, 1000))
        )
        .await
        .status,
        200
    );
    let over = h
        .wechat(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(refund("RFC", 500, 1000)),
        )
        .await;
    assert_eq!(over.status, 400);
    assert_eq!(over.json()["code"], "INVALID_REQUEST");
    assert!(
        over.json()["message"]
            .as_str()
            .unwrap()
            .contains("refund amount exceeds")
    );
    let wrong_total = h
        .wechat(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(refund("RFD", 100, 999)),
        )
        .await;
    assert_eq!(wrong_total.status, 400);
    assert_eq!(
        h.wechat(
            "POST",
            "/v3/refund/domestic/refunds",
            Some(refund("RFE", 400, 1000))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        h.control_get("/emulator/trades/wechat/ML20261124000006")
            .await["refunded"],
        1000
    );
}

#[tokio::test]
async fn wechat_payment_notification_decrypts_with_the_apiv3_key_and_verifies_with_the_platform_key()
 {
    let h = start().await;
    let merchant = receiver(vec![], (200, "")).await;
    h.create_wechat_order("ML20261124000007", 2990, &merchant.url)
        .await;
    let (_, paid) = h.pay("wechat", "ML20261124000007").await;
    wait_until("the notification", async || merchant.count() == 1).await;
    let (headers, body) = merchant.get(0);
    let (envelope, plain) = open_wechat_notification(&h, &headers, &body);
    assert_eq!(envelope["event_type"], "TRANSACTION.SUCCESS");
    assert_eq!(envelope["resource_type"], "encrypt-resource");
    assert_eq!(envelope["resource"]["associated_data"], "transaction");
    assert!(
        envelope["create_time"]
            .as_str()
            .unwrap()
            .ends_with("+08:00")
    );
    assert!(uuid::Uuid::parse_str(envelope["id"].as_str().unwrap()).is_ok());
    assert_eq!(plain["trade_state"], "SUCCESS");
    assert_eq!(plain["mchid"], MCHID);
    assert_eq!(plain["appid"], APPID);
    assert_eq!(plain["transaction_id"], paid["transaction_id"]);
    assert_eq!(plain["amount"]["total"], 2990);
    assert_eq!(plain["attach"], "plan=monthly");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(merchant.count(), 1, "a success reply stops the deliveries");
    let log = h.attempts("wechat", "ML20261124000007").await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["success"], true);
    assert_eq!(log[0]["event"], "TRANSACTION.SUCCESS");
    assert_eq!(log[0]["attempt"], 1);
}

#[tokio::test]
async fn notification_retries_stop_at_the_first_success() {
    let h = start().await;
    // Fails twice (a 500, then a 400; a 200 carrying FAIL would count as success), then 204.
    let merchant = receiver(
        vec![(500, "{\"code\":\"FAIL\"}"), (400, "{\"code\":\"FAIL\"}")],
        (204, ""),
    )
    .await;
    h.create_wechat_order("ML20261124000008", 100, &merchant.url)
        .await;
    h.pay("wechat", "ML20261124000008").await;
    wait_until("three deliveries", async || merchant.count() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(merchant.count(), 3);
    let log = h.attempts("wechat", "ML20261124000008").await;
    let outcome: Vec<(u64, bool)> = log
        .iter()
        .map(|a| (a["attempt"].as_u64().unwrap(), a["success"] == true))
        .collect();
    assert_eq!(outcome, vec![(1, false), (2, false), (3, true)]);
    assert!(log.iter().all(|a| a["event_id"] == log[0]["event_id"]));

    // Alipay wants exactly "success".
    let alipay_merchant = receiver(vec![(200, "fail"), (200, "SUCCESS")], (200, "success")).await;
    h.precreate("AL20261124000008", "1.00", Some(&alipay_merchant.url))
        .await;
    h.pay("alipay", "AL20261124000008").await;
    wait_until("three alipay deliveries", async || {
        alipay_merchant.count() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alipay_merchant.count(), 3);
    let ids: Vec<String> = (0..3)
        .map(|i| open_alipay_notification(&h, &alipay_merchant.get(i).1)["notify_id"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "retries carry the same notify_id"
    );
}

#[tokio::test]
async fn drop_mode_sends_nothing() {
    let h = start().await;
    let merchant = receiver(vec![], (204, "")).await;
    let (status, modes) = h
        .control(
            "/emulator/notify-mode",
            json!({"provider": null, "mode": "drop"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(modes["wechat"]["mode"], "drop");
    assert_eq!(modes["alipay"]["mode"], "drop");
    h.create_wechat_order("ML20261124000009", 100, &merchant.url)
        .await;
    h.pay("wechat", "ML20261124000009").await;
    h.precreate("AL20261124000009", "1.00", Some(&merchant.url))
        .await;
    h.pay("alipay", "AL20261124000009").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(merchant.count(), 0);
    assert!(h.attempts("wechat", "").await.is_empty());
    let events = h.control_get("/emulator/events").await;
    assert_eq!(events.as_array().unwrap().len(), 2);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["dropped"] == true)
    );
    let current = h.control_get("/emulator/notify-mode").await;
    assert_eq!(current["wechat"]["mode"], "drop");
}

#[tokio::test]
async fn hold_mode_keeps_signed_notifications_until_released_then_retries_them_as_usual() {
    let h = start().await;
    // The first held notification's first send fails; it is retried on the schedule.
    let merchant = receiver(vec![(500, "{\"code\":\"FAIL\"}")], (204, "")).await;
    let (status, modes) = h
        .control(
            "/emulator/notify-mode",
            json!({"provider": "wechat", "mode": "hold"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(modes["wechat"]["mode"], "hold");
    for no in ["ML20261124000030", "ML20261124000031"] {
        h.create_wechat_order(no, 100, &merchant.url).await;
        h.pay("wechat", no).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(merchant.count(), 0, "held until released");
    assert!(h.attempts("wechat", "").await.is_empty());

    let (status, released) = h
        .control(
            "/emulator/release",
            json!({"provider": "wechat", "concurrency": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(released["released"], 2);
    wait_until("both delivered, one after a retry", async || {
        merchant.count() == 3
    })
    .await;
    for i in 0..3 {
        let (headers, body) = merchant.get(i);
        let (envelope, plain) = open_wechat_notification(&h, &headers, &body);
        assert_eq!(envelope["event_type"], "TRANSACTION.SUCCESS");
        assert_eq!(plain["trade_state"], "SUCCESS");
    }
    let outcomes: Vec<(u64, bool)> = h
        .attempts("wechat", "")
        .await
        .iter()
        .map(|a| (a["attempt"].as_u64().unwrap(), a["success"] == true))
        .collect();
    assert_eq!(outcomes.iter().filter(|(_, ok)| *ok).count(), 2);
    assert!(outcomes.contains(&(1, false)) && outcomes.contains(&(2, true)));
    let (_, again) = h.control("/emulator/release", json!({})).await;
    assert_eq!(
        again["released"], 0,
        "a release sends each held notification once"
    );
    let (status, _) = h
        .control("/emulator/release", json!({"concurrency": 0}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn probe_first_and_copies_send_a_bad_signature_then_the_same_event_twice() {
    let h = start().await;
    let merchant = receiver(vec![], (204, "")).await;
    h.control(
        "/emulator/notify-mode",
        json!({"provider": "wechat", "mode": "deliver", "copies": 2, "probe_first": true}),
    )
    .await;
    h.create_wechat_order("ML20261124000010", 100, &merchant.url)
        .await;
    h.pay("wechat", "ML20261124000010").await;
    wait_until("three sends", async || merchant.count() == 3).await;
    let (probe_headers, probe_body) = merchant.get(0);
    let mut message = format!(
        "{}\n{}\n",
        probe_headers["wechatpay-timestamp"], probe_headers["wechatpay-nonce"]
    )
    .into_bytes();
    message.extend_from_slice(&probe_body);
    message.push(b'\n');
    assert!(!verifies(
        &h.platform_public,
        &message,
        &probe_headers["wechatpay-signature"]
    ));
    let (_, a) = open_wechat_notification(&h, &merchant.get(1).0, &merchant.get(1).1);
    let (_, b) = open_wechat_notification(&h, &merchant.get(2).0, &merchant.get(2).1);
    assert_eq!(a, b);
    let ids: Vec<Value> = (0..3)
        .map(|i| serde_json::from_slice::<Value>(&merchant.get(i).1).unwrap()["id"].clone())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    let log = h.attempts("wechat", "ML20261124000010").await;
    assert_eq!(log.iter().filter(|a| a["probe"] == true).count(), 1);
}

#[tokio::test]
async fn alipay_get_and_post_requests_are_both_verified() {
    let h = start().await;
    let created = h.precreate("AL20261124000011", "12.34", None).await;
    assert_eq!(created["_key"], "alipay_trade_precreate_response");
    assert_eq!(created["code"], "10000");
    let qr = created["qr_code"].as_str().unwrap().to_string();
    assert!(qr.starts_with("https://qr.alipay.com/bax0"));

    let params = h.alipay_params(
        "alipay.trade.precreate",
        json!({ "out_trade_no": "AL20261124000011", "total_amount": "12.34", "subject": "Memberline 年度会员" }),
        None,
    );
    let via_get = h.alipay_get(&params).await;
    assert_eq!(via_get["code"], "10000", "{via_get}");
    assert_eq!(
        via_get["qr_code"],
        qr.as_str(),
        "the same order gets the same code"
    );

    let other_amount = h.precreate("AL20261124000011", "12.35", None).await;
    assert_eq!(other_amount["code"], "40004");

    // A bad signature: the signed error shape.
    let mut tampered = params.clone();
    tampered
        .iter_mut()
        .find(|(k, _)| k == "biz_content")
        .unwrap()
        .1 = json!({ "out_trade_no": "AL20261124000011", "total_amount": "0.01", "subject": "x" })
        .to_string();
    let refused = h.alipay_post(&tampered).await;
    assert_eq!(refused["code"], "40002");
    assert_eq!(refused["msg"], "Invalid Arguments");
    assert_eq!(refused["sub_code"], "isv.invalid-signature");
    let refused = h.alipay_get(&tampered).await;
    assert_eq!(refused["sub_code"], "isv.invalid-signature");

    // sign_type is part of the signed content on requests: leaving it out of the signature fails.
    let mut unsigned_type: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "sign")
        .cloned()
        .collect();
    let mut content: Vec<&(String, String)> = unsigned_type
        .iter()
        .filter(|(k, v)| k != "sign_type" && !v.is_empty())
        .collect();
    content.sort();
    let content = content
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    unsigned_type.push(("sign".into(), sign(&h.app_key, content.as_bytes())));
    assert_eq!(
        h.alipay_get(&unsigned_type).await["sub_code"],
        "isv.invalid-signature"
    );

    let unknown = h.alipay_params("alipay.trade.nonsense", json!({}), None);
    let answer = h.alipay_get(&unknown).await;
    assert_eq!(answer["sub_code"], "isv.invalid-method");
}

#[tokio::test]
async fn alipay_query_before_scan_answers_trade_not_exist_and_a_close_does_not_stop_the_payment() {
    let h = start().await;
    h.precreate("AL20261124000012", "30.00", None).await;
    let query = h.alipay_params(
        "alipay.trade.query",
        json!({"out_trade_no": "AL20261124000012"}),
        None,
    );
    let before = h.alipay_post(&query).await;
    assert_eq!(before["code"], "40004");
    assert_eq!(before["msg"], "Business Failed");
    assert_eq!(before["sub_code"], "ACQ.TRADE_NOT_EXIST");
    let close = h.alipay_params(
        "alipay.trade.close",
        json!({"out_trade_no": "AL20261124000012"}),
        None,
    );
    assert_eq!(
        h.alipay_post(&close).await["sub_code"],
        "ACQ.TRADE_NOT_EXIST"
    );

    let (status, paid) = h.pay("alipay", "AL20261124000012").await;
    assert_eq!(status, 200, "{paid}");
    let trade_no = paid["transaction_id"].as_str().unwrap().to_string();
    assert_eq!(trade_no.len(), 28);
    let after = h.alipay_get(&query).await;
    assert_eq!(after["code"], "10000");
    assert_eq!(after["trade_status"], "TRADE_SUCCESS");
    assert_eq!(after["trade_no"], trade_no.as_str());
    assert_eq!(after["total_amount"], "30.00");
    assert_eq!(after["buyer_pay_amount"], "30.00");
    assert_eq!(after["send_pay_date"].as_str().unwrap().len(), 19);
    assert_eq!(
        h.alipay_post(&close).await["sub_code"],
        "ACQ.TRADE_STATUS_ERROR"
    );

    // Scanned but unpaid: close works, then payment is refused.
    h.precreate("AL20261124000013", "30.00", None).await;
    let (status, _) = h
        .control(
            "/emulator/scan",
            json!({"provider": "alipay", "out_trade_no": "AL20261124000013"}),
        )
        .await;
    assert_eq!(status, 200);
    let close = h.alipay_params(
        "alipay.trade.close",
        json!({"out_trade_no": "AL20261124000013"}),
        None,
    );
    let closed = h.alipay_post(&close).await;
    assert_eq!(closed["code"], "10000");
    assert_eq!(closed["out_trade_no"], "AL20261124000013");
    assert_eq!(h.pay("alipay", "AL20261124000013").await.0, 409);
}

#[tokio::test]
async fn alipay_notification_is_signed_over_every_parameter_except_sign_and_sign_type() {
    let h = start().await;
    let merchant = receiver(vec![], (200, "success")).await;
    h.precreate("AL20261124000014", "88.00", Some(&merchant.url))
        .await;
    h.pay("alipay", "AL20261124000014").await;
    wait_until("the notification", async || merchant.count() == 1).await;
    let (headers, body) = merchant.get(0);
    assert!(headers["content-type"].starts_with("application/x-www-form-urlencoded"));
    let p = open_alipay_notification(&h, &body);
    assert_eq!(p["notify_type"], "trade_status_sync");
    assert_eq!(p["trade_status"], "TRADE_SUCCESS");
    assert_eq!(p["app_id"], ALIPAY_APP_ID);
    assert_eq!(p["seller_id"], ALIPAY_SELLER_ID);
    assert_eq!(p["total_amount"], "88.00");
    assert_eq!(p["receipt_amount"], "88.00");
    assert_eq!(p["sign_type"], "RSA2");
    assert!(p["buyer_id"].starts_with("2088"));
    assert!(!p.contains_key("passback_params"));
    assert_eq!(p["subject"], "Memberline 年度会员");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(merchant.count(), 1);
}

#[tokio::test]
async fn alipay_refund_with_the_same_request_number_refunds_once() {
    let h = start().await;
    h.precreate("AL20261124000015", "10.00", None).await;
    let refund = |no: &str, amount: &str| {
        h.alipay_params(
            "alipay.trade.refund",
            json!({"out_trade_no": "AL20261124000015", "refund_amount": amount, "out_request_no": no}),
            None,
        )
    };
    let first_request = refund("R1", "4.00");
    h.control(
        "/emulator/scan",
        json!({"provider": "alipay", "out_trade_no": "AL20261124000015"}),
    )
    .await;
    assert_eq!(
        h.alipay_post(&first_request).await["sub_code"],
        "ACQ.TRADE_STATUS_ERROR"
    );
    h.pay("alipay", "AL20261124000015").await;
    let first = h.alipay_post(&first_request).await;
    assert_eq!(first["code"], "10000");
    assert_eq!(first["fund_change"], "Y");
    assert_eq!(first["refund_fee"], "4.00");
    let again = h.alipay_post(&first_request).await;
    assert_eq!(again["fund_change"], "N");
    assert_eq!(again["refund_fee"], "4.00");
    let over = h.alipay_post(&refund("R2", "6.01")).await;
    assert_eq!(over["code"], "40004");
    assert_eq!(over["sub_code"], "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL");
    let rest = h.alipay_post(&refund("R3", "6.00")).await;
    assert_eq!(rest["refund_fee"], "10.00");
    let query = h.alipay_params(
        "alipay.trade.query",
        json!({"out_trade_no": "AL20261124000015"}),
        None,
    );
    assert_eq!(h.alipay_get(&query).await["trade_status"], "TRADE_CLOSED");

    let rq = h.alipay_params(
        "alipay.trade.fastpay.refund.query",
        json!({"out_trade_no": "AL20261124000015", "out_request_no": "R1"}),
        None,
    );
    let found = h.alipay_get(&rq).await;
    assert_eq!(found["refund_status"], "REFUND_SUCCESS");
    assert_eq!(found["refund_amount"], "4.00");
    assert_eq!(found["total_amount"], "10.00");
    let rq = h.alipay_params(
        "alipay.trade.fastpay.refund.query",
        json!({"out_trade_no": "AL20261124000015", "out_request_no": "R2"}),
        None,
    );
    let missing = h.alipay_get(&rq).await;
    assert_eq!(missing["code"], "10000");
    assert!(missing.get("refund_status").is_none());
}

#[tokio::test]
async fn crafted_notifications_are_genuine_unless_told_otherwise() {
    let h = start().await;
    let merchant = receiver(vec![], (200, "")).await;
    h.create_wechat_order("ML20261124000016", 500, &merchant.url)
        .await;
    h.control(
        "/emulator/notify-mode",
        json!({"provider": "wechat", "mode": "drop"}),
    )
    .await;
    let (status, _) = h
        .control(
            "/emulator/send",
            json!({"provider": "wechat", "out_trade_no": "ML20261124000016"}),
        )
        .await;
    assert_eq!(status, 409, "unpaid needs force");
    let (status, reply) = h
        .control(
            "/emulator/send",
            json!({"provider": "wechat", "out_trade_no": "ML20261124000016", "force": true, "amount_fen": 1, "event_id": "EV-1"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["status"], 200);
    let (envelope, plain) = open_wechat_notification(&h, &merchant.get(0).0, &merchant.get(0).1);
    assert_eq!(envelope["id"], "EV-1");
    assert_eq!(plain["amount"]["total"], 1);
    assert_eq!(
        h.query_wechat("ML20261124000016").await.json()["trade_state"],
        "NOTPAY",
        "send changes nothing"
    );

    h.control("/emulator/send", json!({"provider": "wechat", "out_trade_no": "ML20261124000016", "force": true, "tamper_body": true}))
        .await;
    h.control(
        "/emulator/send",
        json!({"provider": "wechat", "out_trade_no": "ML20261124000016", "force": true, "timestamp_offset_secs": -600, "serial": "PUB_KEY_ID_X"}),
    )
    .await;
    let (headers, body) = merchant.get(1);
    let mut message = format!(
        "{}\n{}\n",
        headers["wechatpay-timestamp"], headers["wechatpay-nonce"]
    )
    .into_bytes();
    message.extend_from_slice(&body);
    message.push(b'\n');
    assert!(
        !verifies(
            &h.platform_public,
            &message,
            &headers["wechatpay-signature"]
        ),
        "tampered body"
    );
    let (headers, _) = merchant.get(2);
    assert_eq!(headers["wechatpay-serial"], "PUB_KEY_ID_X");
    let ts: i64 = headers["wechatpay-timestamp"].parse().unwrap();
    assert!(ts < chrono::Utc::now().timestamp() - 500);

    let alipay_merchant = receiver(vec![], (200, "success")).await;
    h.precreate("AL20261124000016", "5.00", Some(&alipay_merchant.url))
        .await;
    let (status, reply) = h
        .control(
            "/emulator/send",
            json!({"provider": "alipay", "out_trade_no": "AL20261124000016", "trade_status": "TRADE_CLOSED", "seller_id": "2088999999999999"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["body"], "success");
    let p = open_alipay_notification(&h, &alipay_merchant.get(0).1);
    assert_eq!(p["trade_status"], "TRADE_CLOSED");
    assert_eq!(p["seller_id"], "2088999999999999");
    let (status, _) = h
        .control("/emulator/send", json!({"provider": "alipay", "out_trade_no": "AL20261124000016", "url": "http://127.0.0.1:9/x", "trade_status": "TRADE_CLOSED"}))
        .await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn a_notification_signed_with_another_key_does_not_verify() {
    let h = start().await;
    let merchant = receiver(vec![], (200, "success")).await;
    h.precreate("AL20261124000017", "5.00", Some(&merchant.url))
        .await;
    h.control("/emulator/notify-mode", json!({"mode": "drop"}))
        .await;
    h.pay("alipay", "AL20261124000017").await;
    h.control("/emulator/send", json!({"provider": "alipay", "out_trade_no": "AL20261124000017", "sign_with_other_key": true}))
        .await;
    let params: HashMap<String, String> = serde_urlencoded::from_bytes(&merchant.get(0).1).unwrap();
    assert!(!verifies(
        &h.alipay_public,
        alipay_signed_content(&params).as_bytes(),
        &params["sign"]
    ));
    assert_eq!(params["trade_status"], "TRADE_SUCCESS");
}

#[tokio::test]
async fn the_scan_page_shows_the_trade_and_its_pay_button_pays() {
    let h = start().await;
    let created = h
        .create_wechat_order("ML20261124000018", 1990, "http://127.0.0.1:9/n")
        .await;
    let code = created.json()["code_url"].as_str().unwrap().to_string();
    let query = serde_urlencoded::to_string([("code", code.as_str())]).unwrap();
    let page = h
        .http
        .get(format!("{}/emulator/scan?{query}", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("19.90"));
    assert!(page.contains("Memberline 月度会员"));
    assert!(page.contains("action=\"/emulator/scan/pay\""));
    let result = h
        .http
        .post(format!("{}/emulator/scan/pay", h.base))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(query)
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    assert!(result.text().await.unwrap().contains("Payment successful"));
    assert_eq!(
        h.query_wechat("ML20261124000018").await.json()["trade_state"],
        "SUCCESS"
    );
    let view = h
        .control_get("/emulator/trades/wechat/ML20261124000018")
        .await;
    assert_eq!(view["state"], "SUCCESS");
    let health = h
        .http
        .get(format!("{}/emulator/healthz", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn the_emulator_uses_the_development_identifiers_by_default() {
    let c = Config::development();
    assert_eq!(c.wechat.mchid, MCHID);
    assert_eq!(c.wechat.appid, APPID);
    assert_eq!(c.wechat.merchant_serial, MERCHANT_SERIAL);
    assert_eq!(c.wechat.public_key_id, PUB_KEY_ID);
    assert_eq!(c.wechat.apiv3_key, APIV3_KEY);
    assert_eq!(c.alipay.app_id, ALIPAY_APP_ID);
    assert_eq!(c.alipay.seller_id, ALIPAY_SELLER_ID);
    assert_eq!(c.wechat.miniprogram_appid, MINI_APPID);
    assert_eq!(c.wechat.miniprogram_secret, MINI_SECRET);
    assert_eq!(c.wechat.official_account_appid, OA_APPID);
    assert_eq!(c.wechat.official_account_secret, OA_SECRET);
    let cli = <crate::Cli as clap::Parser>::try_parse_from(["provider-emulator"]).unwrap();
    let from_cli = cli.config();
    assert_eq!(from_cli.wechat.public_key_id, PUB_KEY_ID);
    assert_eq!(from_cli.wechat.miniprogram_appid, MINI_APPID);
    assert_eq!(from_cli.wechat.miniprogram_secret, MINI_SECRET);
    assert_eq!(from_cli.wechat.official_account_appid, OA_APPID);
    assert_eq!(from_cli.wechat.official_account_secret, OA_SECRET);
    let other = <crate::Cli as clap::Parser>::try_parse_from([
        "provider-emulator",
        "--wechat-miniprogram-appid",
        "wx0000000000000001",
        "--wechat-official-account-secret",
        "s",
    ])
    .unwrap()
    .config();
    assert_eq!(other.wechat.miniprogram_appid, "wx0000000000000001");
    assert_eq!(other.wechat.official_account_secret, "s");
    assert_eq!(from_cli.alipay.seller_id, ALIPAY_SELLER_ID);
    assert!(
        <crate::Cli as clap::Parser>::try_parse_from(["provider-emulator", "--time-scale", "-1"])
            .is_err()
    );
}

#[tokio::test]
async fn wechat_jsapi_orders_name_only_a_buyer_who_logged_in_to_the_same_app() {
    let h = start().await;
    let merchant = receiver(vec![], (204, "")).await;
    let buyer = h.login_code("miniprogram", None, None).await;
    assert_eq!(buyer["appid"], MINI_APPID);
    let openid = buyer["openid"].as_str().unwrap().to_string();
    let jsapi = |appid: &str, openid: &str, total: i64| {
        let mut body = order_body("ML20261201000001", appid, total, &merchant.url);
        body["payer"] = json!({ "openid": openid });
        body
    };

    let stranger = h
        .wechat_order(
            "jsapi",
            jsapi(MINI_APPID, "oNeverLoggedIn0000000000000", 990),
        )
        .await;
    assert_eq!(stranger.status, 400);
    assert_eq!(stranger.json()["code"], "PARAM_ERROR");
    assert_eq!(stranger.json()["message"], "openid and appid do not match");
    let other_app = h.wechat_order("jsapi", jsapi(OA_APPID, &openid, 990)).await;
    assert_eq!(other_app.json()["message"], "openid and appid do not match");
    let no_payer = h
        .wechat_order(
            "jsapi",
            order_body("ML20261201000001", MINI_APPID, 990, &merchant.url),
        )
        .await;
    assert_eq!(no_payer.status, 400);
    assert_eq!(no_payer.json()["code"], "PARAM_ERROR");
    let unbound = h
        .wechat_order("jsapi", jsapi("wx0000000000000000", &openid, 990))
        .await;
    assert_eq!(unbound.json()["code"], "APPID_MCHID_NOT_MATCH");

    let created = h
        .wechat_order("jsapi", jsapi(MINI_APPID, &openid, 990))
        .await;
    assert_eq!(created.status, 200, "{}", created.json());
    let prepay_id = created.json()["prepay_id"].as_str().unwrap().to_string();
    assert!(prepay_id.starts_with("wx"));
    assert_eq!(prepay_id.len(), 36);
    assert!(prepay_id[2..16].bytes().all(|b| b.is_ascii_digit()));
    let again = h
        .wechat_order("jsapi", jsapi(MINI_APPID, &openid, 990))
        .await;
    assert_eq!(again.json()["prepay_id"], prepay_id.as_str());
    let other_total = h
        .wechat_order("jsapi", jsapi(MINI_APPID, &openid, 991))
        .await;
    assert_eq!(other_total.json()["code"], "INVALID_REQUEST");
    let second_buyer = h.login_code("miniprogram", None, None).await;
    let other_payer = h
        .wechat_order(
            "jsapi",
            jsapi(MINI_APPID, second_buyer["openid"].as_str().unwrap(), 990),
        )
        .await;
    assert_eq!(other_payer.json()["code"], "INVALID_REQUEST");
    let as_native = h
        .wechat_order(
            "native",
            order_body("ML20261201000001", MINI_APPID, 990, &merchant.url),
        )
        .await;
    assert_eq!(as_native.json()["code"], "INVALID_REQUEST");

    let q = h.query_wechat("ML20261201000001").await.json();
    assert_eq!(q["trade_type"], "JSAPI");
    assert_eq!(q["appid"], MINI_APPID);
    assert_eq!(q["trade_state"], "NOTPAY");
    let view = h
        .control_get("/emulator/trades/wechat/ML20261201000001")
        .await;
    assert_eq!(view["trade_type"], "JSAPI");
    assert_eq!(view["prepay_id"], prepay_id.as_str());
    assert_eq!(view["payer_openid"], openid.as_str());
    assert!(view["code_url"].is_null());

    let (status, _) = h.pay("wechat", "ML20261201000001").await;
    assert_eq!(status, 200);
    wait_until("the notification", async || merchant.count() == 1).await;
    let (envelope, plain) = open_wechat_notification(&h, &merchant.get(0).0, &merchant.get(0).1);
    assert_eq!(envelope["event_type"], "TRANSACTION.SUCCESS");
    assert_eq!(plain["trade_type"], "JSAPI");
    assert_eq!(plain["appid"], MINI_APPID);
    assert_eq!(plain["payer"]["openid"], openid.as_str());
    let q = h.query_wechat("ML20261201000001").await.json();
    assert_eq!(q["trade_state"], "SUCCESS");
    assert_eq!(q["payer"]["openid"], openid.as_str());
}

#[tokio::test]
async fn a_jsapi_payment_checks_the_front_end_parameters_as_the_wechat_client_does() {
    let h = start().await;
    // A returning buyer of the official account, minted twice.
    h.login_code(
        "official_account",
        Some("oReturningBuyer_01-abcdefghij"),
        None,
    )
    .await;
    let buyer = h
        .login_code(
            "official_account",
            Some("oReturningBuyer_01-abcdefghij"),
            None,
        )
        .await;
    assert_eq!(buyer["openid"], "oReturningBuyer_01-abcdefghij");
    let mut body = order_body("ML20261201000002", OA_APPID, 1990, "http://127.0.0.1:9/n");
    body["payer"] = json!({ "openid": "oReturningBuyer_01-abcdefghij" });
    let prepay_id = h.wechat_order("jsapi", body).await.json()["prepay_id"]
        .as_str()
        .unwrap()
        .to_string();
    let good = jsapi_params(&h.merchant_key, OA_APPID, &prepay_id);
    let pay_with = |params: Value| {
        h.control(
            "/emulator/pay",
            json!({ "provider": "wechat", "out_trade_no": "ML20261201000002", "jsapi_params": params }),
        )
    };

    let mut wrong_package = good.clone();
    wrong_package["package"] = json!("prepay_id=wx000");
    // Signed correctly, but for the other app.
    let wrong_app = jsapi_params(&h.merchant_key, MINI_APPID, &prepay_id);
    let mut wrong_type = good.clone();
    wrong_type["signType"] = json!("HMAC-SHA256");
    let other_key = jsapi_params(&h.app_key, OA_APPID, &prepay_id);
    let mut three_lines = good.clone();
    three_lines["paySign"] = json!(sign(
        &h.merchant_key,
        format!(
            "{OA_APPID}\n{}\n{}\n{}",
            good["timeStamp"].as_str().unwrap(),
            good["nonceStr"].as_str().unwrap(),
            good["package"].as_str().unwrap()
        )
        .as_bytes()
    ));
    for (params, named) in [
        (wrong_package, "package"),
        (wrong_app, "appId"),
        (wrong_type, "signType"),
        (other_key, "paySign"),
        (three_lines, "paySign"),
    ] {
        let (status, refused) = pay_with(params).await;
        assert_eq!(status, 400, "{refused}");
        assert!(
            refused["error"].as_str().unwrap().contains(named),
            "{refused} should name {named}"
        );
    }
    assert_eq!(
        h.query_wechat("ML20261201000002").await.json()["trade_state"],
        "NOTPAY",
        "nothing was paid"
    );

    let (status, paid) = pay_with(good.clone()).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(
        h.query_wechat("ML20261201000002").await.json()["payer"]["openid"],
        "oReturningBuyer_01-abcdefghij"
    );

    h.create_wechat_order("ML20261201000003", 100, "http://127.0.0.1:9/n")
        .await;
    let (status, refused) = h
        .control(
            "/emulator/pay",
            json!({ "provider": "wechat", "out_trade_no": "ML20261201000003", "jsapi_params": good }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("not a JSAPI order")
    );
}

#[tokio::test]
async fn wechat_h5_orders_need_scene_info_and_each_call_returns_a_new_cashier_url() {
    let h = start().await;
    let h5 = |scene: Value| {
        let mut body = order_body("ML20261201000004", APPID, 990, "http://127.0.0.1:9/n");
        body["scene_info"] = scene;
        body
    };
    let missing = h
        .wechat_order(
            "h5",
            order_body("ML20261201000004", APPID, 990, "http://127.0.0.1:9/n"),
        )
        .await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["code"], "PARAM_ERROR");
    for scene in [
        json!({ "payer_client_ip": "not-an-ip", "h5_info": { "type": "Wap" } }),
        json!({ "payer_client_ip": "203.0.113.7" }),
        json!({ "payer_client_ip": "203.0.113.7", "h5_info": { "type": "Web" } }),
        json!({ "h5_info": { "type": "iOS" } }),
    ] {
        let refused = h.wechat_order("h5", h5(scene.clone())).await;
        assert_eq!(refused.status, 400, "{scene}");
        assert_eq!(refused.json()["code"], "PARAM_ERROR");
    }

    let first = h.wechat_order("h5", h5(h5_scene())).await;
    assert_eq!(first.status, 200, "{}", first.json());
    let first_url = first.json()["h5_url"].as_str().unwrap().to_string();
    let prefix = format!("{}/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx", h.base);
    assert!(first_url.starts_with(&prefix), "{first_url}");
    let again = h
        .wechat_order(
            "h5",
            h5(json!({ "payer_client_ip": "2001:db8::1", "h5_info": { "type": "Android" } })),
        )
        .await;
    let second_url = again.json()["h5_url"].as_str().unwrap().to_string();
    assert_ne!(first_url, second_url, "a new URL each time");
    let parts = |url: &str| -> HashMap<String, String> {
        serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap()
    };
    let (a, b) = (parts(&first_url), parts(&second_url));
    assert_eq!(a["prepay_id"], b["prepay_id"], "for the same prepay_id");
    assert_ne!(a["package"], b["package"]);
    assert!(a["package"].bytes().all(|c| c.is_ascii_digit()));

    let q = h.query_wechat("ML20261201000004").await.json();
    assert_eq!(q["trade_type"], "MWEB");
    let view = h
        .control_get("/emulator/trades/wechat/ML20261201000004")
        .await;
    assert_eq!(view["prepay_id"], a["prepay_id"].as_str());
    assert!(view["code_url"].is_null());
}

#[tokio::test]
async fn the_wechat_h5_cashier_pays_once_then_sends_the_buyer_back_to_the_merchant() {
    let h = start().await;
    let merchant = receiver(vec![], (204, "")).await;
    let mut body = order_body("ML20261201000005", APPID, 2990, &merchant.url);
    body["scene_info"] = h5_scene();
    let h5_url = h.wechat_order("h5", body).await.json()["h5_url"]
        .as_str()
        .unwrap()
        .to_string();
    let back = "https://m.memberline.example/orders/5?from=wechat&x=<1>";
    let link = format!("{h5_url}&redirect_url={}", crate::html::urlencode(back));

    let (status, headers, page) = h.browse(&link).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(page.contains("Memberline 月度会员"));
    assert!(page.contains("29.90"));
    assert!(!page.contains("<script") && !page.contains("src=\"http"));
    let button = element(&page, "pay").unwrap();
    assert!(button.starts_with("<button"));
    assert!(page.contains("action=\"/cgi-bin/mmpayweb-bin/checkmweb/pay\""));
    let cancel = element(&page, "cancel").unwrap();
    assert_eq!(
        attribute(cancel, "href").unwrap(),
        crate::html::escape(back)
    );

    let q: HashMap<String, String> =
        serde_urlencoded::from_str(h5_url.split_once('?').unwrap().1).unwrap();
    let form = [
        ("prepay_id", q["prepay_id"].as_str()),
        ("package", q["package"].as_str()),
        ("redirect_url", back),
    ];
    let (status, headers, _) = h.submit("/cgi-bin/mmpayweb-bin/checkmweb/pay", &form).await;
    assert_eq!(status, 302);
    assert_eq!(headers["location"], back);
    assert_eq!(
        h.query_wechat("ML20261201000005").await.json()["trade_state"],
        "SUCCESS"
    );
    wait_until("the notification", async || merchant.count() == 1).await;
    let (_, plain) = open_wechat_notification(&h, &merchant.get(0).0, &merchant.get(0).1);
    assert_eq!(plain["trade_type"], "MWEB");
    assert_eq!(plain["trade_state"], "SUCCESS");

    // Paid: the link and the button show the error page instead of paying twice.
    let (status, _, page) = h.browse(&link).await;
    assert_eq!(status, 400);
    assert!(page.contains("already been paid"));
    let (status, _, _) = h.submit("/cgi-bin/mmpayweb-bin/checkmweb/pay", &form).await;
    assert_eq!(status, 400);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(merchant.count(), 1);

    let unknown = format!(
        "{}/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={}&package=0000000000",
        h.base, q["prepay_id"]
    );
    let (status, _, page) = h.browse(&unknown).await;
    assert_eq!(status, 400);
    assert!(page.contains("expired"));

    // An expired link; then, without redirect_url, a page that says paid.
    let mut body = order_body("ML20261201000006", APPID, 100, "http://127.0.0.1:9/n");
    body["scene_info"] = h5_scene();
    let old_url = h.wechat_order("h5", body.clone()).await.json()["h5_url"]
        .as_str()
        .unwrap()
        .to_string();
    h.control(
        "/emulator/expire",
        json!({"provider": "wechat", "out_trade_no": "ML20261201000006"}),
    )
    .await;
    let (status, _, page) = h.browse(&old_url).await;
    assert_eq!(status, 400);
    assert!(page.contains("expired"));
    let fresh_url = h.wechat_order("h5", body).await.json()["h5_url"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, page) = h.browse(&fresh_url).await;
    assert_eq!(status, 200);
    assert!(element(&page, "cancel").is_none());
    let q: HashMap<String, String> =
        serde_urlencoded::from_str(fresh_url.split_once('?').unwrap().1).unwrap();
    let (status, _, page) = h
        .submit(
            "/cgi-bin/mmpayweb-bin/checkmweb/pay",
            &[("prepay_id", &q["prepay_id"]), ("package", &q["package"])],
        )
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("Payment successful"));
}

#[tokio::test]
async fn wechat_login_codes_exchange_once_for_the_buyer_they_were_minted_for() {
    let h = start().await;
    let minted = h
        .login_code("miniprogram", None, Some("uMemberline0001"))
        .await;
    let openid = minted["openid"].as_str().unwrap().to_string();
    assert!(openid.starts_with('o'));
    assert_eq!(openid.len(), 28);
    assert!(
        openid[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    );
    let code = minted["code"].as_str().unwrap().to_string();
    let session = async |code: &str, appid: &str, secret: &str, grant: &str| {
        let params = [
            ("appid", appid),
            ("secret", secret),
            ("js_code", code),
            ("grant_type", grant),
        ];
        h.sns("/sns/jscode2session", &params).await
    };
    let ok = session(&code, MINI_APPID, MINI_SECRET, "authorization_code").await;
    assert_eq!(ok["openid"], openid.as_str());
    assert_eq!(ok["unionid"], "uMemberline0001");
    assert_eq!(
        B64.decode(ok["session_key"].as_str().unwrap())
            .unwrap()
            .len(),
        16
    );
    assert!(ok.get("errcode").is_none());
    let used = session(&code, MINI_APPID, MINI_SECRET, "authorization_code").await;
    assert_eq!(used["errcode"], 40163);
    assert!(used.get("openid").is_none());

    let plain = h.login_code("miniprogram", None, None).await;
    let plain_code = plain["code"].as_str().unwrap();
    for (appid, secret, grant, errcode) in [
        (OA_APPID, OA_SECRET, "authorization_code", 40013),
        (
            "wx0000000000000000",
            MINI_SECRET,
            "authorization_code",
            40013,
        ),
        (MINI_APPID, "wrong", "authorization_code", 40125),
        (MINI_APPID, MINI_SECRET, "client_credential", 40002),
    ] {
        let refused = session(plain_code, appid, secret, grant).await;
        assert_eq!(refused["errcode"], errcode, "{refused}");
        assert!(refused["errmsg"].as_str().unwrap().contains("rid: "));
    }
    let refused = session("nonsense", MINI_APPID, MINI_SECRET, "authorization_code").await;
    assert_eq!(refused["errcode"], 40029);
    let ok = session(plain_code, MINI_APPID, MINI_SECRET, "authorization_code").await;
    assert_eq!(ok["openid"], plain["openid"]);
    assert!(
        ok.get("unionid").is_none(),
        "no unionid unless minted with one"
    );

    let oa = h
        .login_code(
            "official_account",
            Some("oOfficialBuyer_000000000000"),
            None,
        )
        .await;
    assert_eq!(oa["appid"], OA_APPID);
    let oa_code = oa["code"].as_str().unwrap();
    let params = |appid: &'static str, code: &str| {
        vec![
            ("appid", appid.to_string()),
            ("secret", OA_SECRET.to_string()),
            ("code", code.to_string()),
            ("grant_type", "authorization_code".to_string()),
        ]
    };
    let exchange = async |p: Vec<(&str, String)>| {
        let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.sns("/sns/oauth2/access_token", &p).await
    };
    // The mini-program's code and app are not the official account's.
    let other = h.login_code("miniprogram", None, None).await;
    let refused = exchange(params(OA_APPID, other["code"].as_str().unwrap())).await;
    assert_eq!(refused["errcode"], 40029);
    let refused = exchange(params(MINI_APPID, oa_code)).await;
    assert_eq!(refused["errcode"], 40013);
    let token = exchange(params(OA_APPID, oa_code)).await;
    assert_eq!(token["openid"], "oOfficialBuyer_000000000000");
    assert_eq!(token["expires_in"], 7200);
    assert_eq!(token["scope"], "snsapi_base");
    assert!(!token["access_token"].as_str().unwrap().is_empty());
    assert!(!token["refresh_token"].as_str().unwrap().is_empty());
    assert!(token.get("unionid").is_none());
    assert_eq!(exchange(params(OA_APPID, oa_code)).await["errcode"], 40163);

    let (status, refused) = h
        .control("/emulator/wechat/codes", json!({ "app": "native" }))
        .await;
    assert_eq!(status, 400);
    assert!(refused["error"].is_string());
}

#[tokio::test]
async fn an_injected_login_failure_answers_the_next_exchange_once_and_leaves_the_code_unspent() {
    let h = start().await;
    let minted = h.login_code("miniprogram", None, None).await;
    let params = [
        ("appid", MINI_APPID),
        ("secret", MINI_SECRET),
        ("js_code", minted["code"].as_str().unwrap()),
        ("grant_type", "authorization_code"),
    ];
    let (status, set) = h
        .control(
            "/emulator/wechat/login-failure",
            json!({ "errcode": 45011 }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(set["errcode"], 45011);
    let limited = h.sns("/sns/jscode2session", &params).await;
    assert_eq!(limited["errcode"], 45011);
    assert!(limited["errmsg"].as_str().unwrap().contains("minute-quota"));
    let ok = h.sns("/sns/jscode2session", &params).await;
    assert_eq!(ok["openid"], minted["openid"], "the code was not spent");

    let oa = h.login_code("official_account", None, None).await;
    h.control(
        "/emulator/wechat/login-failure",
        json!({ "errcode": -1, "errmsg": "system busy" }),
    )
    .await;
    let oa_params = [
        ("appid", OA_APPID),
        ("secret", OA_SECRET),
        ("code", oa["code"].as_str().unwrap()),
        ("grant_type", "authorization_code"),
    ];
    let failed = h.sns("/sns/oauth2/access_token", &oa_params).await;
    assert_eq!(failed["errcode"], -1);
    assert!(
        failed["errmsg"]
            .as_str()
            .unwrap()
            .starts_with("system busy")
    );
    h.control(
        "/emulator/wechat/login-failure",
        json!({ "errcode": 40226 }),
    )
    .await;
    assert_eq!(
        h.sns("/sns/oauth2/access_token", &oa_params).await["errcode"],
        40226
    );
    assert_eq!(
        h.sns("/sns/oauth2/access_token", &oa_params).await["openid"],
        oa["openid"]
    );
    let (status, _) = h
        .control("/emulator/wechat/login-failure", json!({ "errcode": 0 }))
        .await;
    assert_eq!(status, 400);
}

/// What Alipay signs in a notification or a synchronous return, as a merchant rebuilds it:
/// every parameter but `sign` and `sign_type`, sorted, raw `k=v` joined with `&`.
fn alipay_signed_content(params: &HashMap<String, String>) -> String {
    let mut signed: Vec<(&String, &String)> = params
        .iter()
        .filter(|(k, _)| *k != "sign" && *k != "sign_type")
        .collect();
    signed.sort();
    signed
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Checks the synchronous return's `sign` the way a merchant must: RSA2 with the Alipay public
/// key over [`alipay_signed_content`].
fn verify_alipay_return(h: &Harness, params: &HashMap<String, String>) {
    let content = alipay_signed_content(params);
    assert!(
        verifies(&h.alipay_public, content.as_bytes(), &params["sign"]),
        "the synchronous return's signature"
    );
}

#[tokio::test]
async fn the_alipay_wap_cashier_opens_the_trade_and_its_pay_button_returns_with_a_signed_return() {
    let h = start().await;
    let merchant = receiver(vec![], (200, "success")).await;
    let biz = json!({
        "out_trade_no": "AL20261201000001",
        "total_amount": "15.00",
        "subject": "Memberline 月度会员",
        "product_code": "QUICK_WAP_WAY",
        "quit_url": "https://m.memberline.example/plans",
        "timeout_express": "30m",
    });
    let return_url = "https://m.memberline.example/return?via=alipay";
    let params = h.alipay_params_with(
        "alipay.trade.wap.pay",
        biz.clone(),
        &[("notify_url", &merchant.url), ("return_url", return_url)],
    );
    let query = h.alipay_params(
        "alipay.trade.query",
        json!({"out_trade_no": "AL20261201000001"}),
        None,
    );
    // Never opened: Alipay does not know the trade.
    assert_eq!(
        h.alipay_get(&query).await["sub_code"],
        "ACQ.TRADE_NOT_EXIST"
    );
    assert_eq!(h.pay("alipay", "AL20261201000001").await.0, 404);

    let (status, page) = h.alipay_cashier_get(&params).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Memberline 月度会员") && page.contains("15.00"));
    assert!(!page.contains("<script") && !page.contains("src=\"http"));
    assert!(element(&page, "pay").unwrap().starts_with("<button"));
    assert!(page.contains("action=\"/emulator/alipay/cashier/pay\""));
    assert!(page.contains("name=\"out_trade_no\" value=\"AL20261201000001\""));
    assert_eq!(
        attribute(element(&page, "quit").unwrap(), "href"),
        Some("https://m.memberline.example/plans")
    );
    let waiting = h.alipay_get(&query).await;
    assert_eq!(waiting["code"], "10000");
    assert_eq!(waiting["trade_status"], "WAIT_BUYER_PAY");
    let (status, _) = h.alipay_cashier_get(&params).await;
    assert_eq!(status, 200, "opening it again shows it again");
    let mut other_total = biz.clone();
    other_total["total_amount"] = json!("16.00");
    let (status, page) = h
        .alipay_cashier_get(&h.alipay_params_with(
            "alipay.trade.wap.pay",
            other_total,
            &[("return_url", return_url)],
        ))
        .await;
    assert_eq!(status, 400);
    assert!(page.contains("ACQ.CONTEXT_INCONSISTENT"));

    let view = h
        .control_get("/emulator/trades/alipay/AL20261201000001")
        .await;
    assert_eq!(view["method"], "alipay.trade.wap.pay");
    assert_eq!(view["return_url"], return_url);
    assert_eq!(view["quit_url"], "https://m.memberline.example/plans");
    assert!(view["qr_code"].is_null());
    assert_eq!(view["exists_at_alipay"], true);

    let (status, headers, _) = h
        .submit(
            "/emulator/alipay/cashier/pay",
            &[("out_trade_no", "AL20261201000001")],
        )
        .await;
    assert_eq!(status, 302);
    let location = headers["location"].to_str().unwrap();
    let rest = location
        .strip_prefix("https://m.memberline.example/return?via=alipay&")
        .unwrap_or_else(|| panic!("{location}"));
    let back: HashMap<String, String> = serde_urlencoded::from_str(rest).unwrap();
    verify_alipay_return(&h, &back);
    assert_eq!(back["method"], "alipay.trade.wap.pay.return");
    assert_eq!(back["charset"], "utf-8");
    assert_eq!(back["out_trade_no"], "AL20261201000001");
    assert_eq!(back["total_amount"], "15.00");
    assert_eq!(back["app_id"], ALIPAY_APP_ID);
    assert_eq!(back["auth_app_id"], ALIPAY_APP_ID);
    assert_eq!(back["seller_id"], ALIPAY_SELLER_ID);
    assert_eq!(back["version"], "1.0");
    assert_eq!(back["sign_type"], "RSA2");
    assert_eq!(back["timestamp"].len(), 19);
    assert!(!back.contains_key("trade_status"));
    let paid = h.alipay_get(&query).await;
    assert_eq!(paid["trade_status"], "TRADE_SUCCESS");
    assert_eq!(paid["trade_no"], back["trade_no"].as_str());

    wait_until("the notification", async || merchant.count() == 1).await;
    let p = open_alipay_notification(&h, &merchant.get(0).1);
    assert_eq!(p["trade_status"], "TRADE_SUCCESS");
    assert_eq!(p["trade_no"], back["trade_no"]);

    let (status, page) = h.alipay_cashier_get(&params).await;
    assert_eq!(status, 400);
    assert!(page.contains("ACQ.TRADE_HAS_SUCCESS"));
    let (status, _, _) = h
        .submit(
            "/emulator/alipay/cashier/pay",
            &[("out_trade_no", "AL20261201000001")],
        )
        .await;
    assert_eq!(status, 400, "not paid twice");
}

#[tokio::test]
async fn alipay_page_pay_submitted_as_the_official_sdk_form_shows_the_cashier_and_pays_either_way()
{
    let h = start().await;
    let merchant = receiver(vec![], (200, "success")).await;
    let biz = |no: &str| {
        json!({
            "out_trade_no": no,
            "total_amount": "120.00",
            "subject": "Memberline 年度会员",
            "product_code": "FAST_INSTANT_TRADE_PAY",
            "passback_params": "plan=yearly",
        })
    };
    // Without `format`, which the gateway accepts as well as json / JSON.
    let with_return = h.alipay_params_with(
        "alipay.trade.page.pay",
        biz("AL20261201000002"),
        &[
            ("format", ""),
            ("notify_url", &merchant.url),
            ("return_url", "https://www.memberline.example/paid"),
        ],
    );
    let (status, page) = h.alipay_cashier_form(&with_return).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("120.00") && page.contains("Memberline 年度会员"));
    assert!(element(&page, "pay").is_some());
    assert!(
        element(&page, "quit").is_none(),
        "the desktop cashier has no quit link"
    );
    let (status, headers, _) = h
        .submit(
            "/emulator/alipay/cashier/pay",
            &[("out_trade_no", "AL20261201000002")],
        )
        .await;
    assert_eq!(status, 302);
    let location = headers["location"].to_str().unwrap();
    let back: HashMap<String, String> = serde_urlencoded::from_str(
        location
            .strip_prefix("https://www.memberline.example/paid?")
            .unwrap(),
    )
    .unwrap();
    verify_alipay_return(&h, &back);
    assert_eq!(back["method"], "alipay.trade.page.pay.return");
    wait_until("the notification", async || merchant.count() == 1).await;
    let p = open_alipay_notification(&h, &merchant.get(0).1);
    assert_eq!(p["passback_params"], "plan=yearly");

    // Paid by the control API instead; without return_url the button answers a page.
    let params = h.alipay_params_with(
        "alipay.trade.page.pay",
        biz("AL20261201000003"),
        &[("format", "json"), ("notify_url", &merchant.url)],
    );
    assert_eq!(
        h.pay("alipay", "AL20261201000003").await.0,
        404,
        "not opened yet"
    );
    assert_eq!(h.alipay_cashier_form(&params).await.0, 200);
    let (status, paid) = h.pay("alipay", "AL20261201000003").await;
    assert_eq!(status, 200, "{paid}");
    wait_until("the second notification", async || merchant.count() == 2).await;
    let p = open_alipay_notification(&h, &merchant.get(1).1);
    assert_eq!(p["out_trade_no"], "AL20261201000003");
    assert_eq!(p["trade_status"], "TRADE_SUCCESS");
    let params = h.alipay_params_with("alipay.trade.page.pay", biz("AL20261201000004"), &[]);
    assert_eq!(h.alipay_cashier_get(&params).await.0, 200);
    let (status, _, page) = h
        .submit(
            "/emulator/alipay/cashier/pay",
            &[("out_trade_no", "AL20261201000004")],
        )
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("Payment successful"));
}

#[tokio::test]
async fn alipay_cashier_errors_are_html_pages_naming_the_sub_code() {
    let h = start().await;
    let wap = |no: &str, product_code: Option<&str>| {
        let mut biz =
            json!({ "out_trade_no": no, "total_amount": "9.90", "subject": "Memberline 月度会员" });
        if let Some(p) = product_code {
            biz["product_code"] = json!(p);
        }
        h.alipay_params("alipay.trade.wap.pay", biz, None)
    };
    let mut tampered = wap("AL20261201000010", Some("QUICK_WAP_WAY"));
    tampered
        .iter_mut()
        .find(|(k, _)| k == "biz_content")
        .unwrap()
        .1 = json!({ "out_trade_no": "AL20261201000010", "total_amount": "0.01", "subject": "x" })
        .to_string();
    let (status, page) = h.alipay_cashier_get(&tampered).await;
    assert_eq!(status, 400);
    assert!(page.contains("isv.invalid-signature"));
    let (status, page) = h.alipay_cashier_form(&tampered).await;
    assert_eq!(status, 400);
    assert!(page.contains("isv.invalid-signature"));

    // The three wap product codes clients send are accepted; others are not.
    for (no, code) in [
        ("AL20261201000011", Some("QUICK_WAP_WAY")),
        ("AL20261201000012", Some("QUICK_WAP_PAY")),
        ("AL20261201000013", None),
    ] {
        assert_eq!(
            h.alipay_cashier_get(&wap(no, code)).await.0,
            200,
            "{code:?}"
        );
    }
    let (status, page) = h
        .alipay_cashier_get(&wap("AL20261201000014", Some("FAST_INSTANT_TRADE_PAY")))
        .await;
    assert_eq!(status, 400);
    assert!(page.contains("ACQ.INVALID_PARAMETER"));
    let page_pay = h.alipay_params(
        "alipay.trade.page.pay",
        json!({ "out_trade_no": "AL20261201000015", "total_amount": "9.90", "subject": "x", "product_code": "QUICK_WAP_WAY" }),
        None,
    );
    assert!(
        h.alipay_cashier_get(&page_pay)
            .await
            .1
            .contains("ACQ.INVALID_PARAMETER")
    );
    let no_subject = h.alipay_params(
        "alipay.trade.wap.pay",
        json!({ "out_trade_no": "AL20261201000016", "total_amount": "9.90" }),
        None,
    );
    assert!(
        h.alipay_cashier_get(&no_subject)
            .await
            .1
            .contains("ACQ.INVALID_PARAMETER")
    );
    let xml = h.alipay_params_with(
        "alipay.trade.wap.pay",
        json!({ "out_trade_no": "AL20261201000017", "total_amount": "9.90", "subject": "x" }),
        &[("format", "xml")],
    );
    assert!(
        h.alipay_cashier_get(&xml)
            .await
            .1
            .contains("isv.invalid-format")
    );
    let bad_return = h.alipay_params_with(
        "alipay.trade.wap.pay",
        json!({ "out_trade_no": "AL20261201000018", "total_amount": "9.90", "subject": "x" }),
        &[("return_url", "javascript:alert(1)")],
    );
    assert_eq!(h.alipay_cashier_get(&bad_return).await.0, 400);

    // A QR trade's number cannot be reused at the cashier.
    h.precreate("AL20261201000019", "9.90", None).await;
    let (status, page) = h.alipay_cashier_get(&wap("AL20261201000019", None)).await;
    assert_eq!(status, 400);
    assert!(page.contains("ACQ.CONTEXT_INCONSISTENT"));

    // Opened, then closed by the merchant: the cashier refuses it.
    let close = h.alipay_params(
        "alipay.trade.close",
        json!({"out_trade_no": "AL20261201000011"}),
        None,
    );
    assert_eq!(h.alipay_post(&close).await["code"], "10000");
    let (status, page) = h
        .alipay_cashier_get(&wap("AL20261201000011", Some("QUICK_WAP_WAY")))
        .await;
    assert_eq!(status, 400);
    assert!(page.contains("ACQ.TRADE_HAS_CLOSE"));
    let (status, _, _) = h
        .submit(
            "/emulator/alipay/cashier/pay",
            &[("out_trade_no", "AL20261201000011")],
        )
        .await;
    assert_eq!(status, 400);
    // A QR trade has no cashier Pay button.
    let (status, _, _) = h
        .submit(
            "/emulator/alipay/cashier/pay",
            &[("out_trade_no", "AL20261201000019")],
        )
        .await;
    assert_eq!(status, 400);
}
