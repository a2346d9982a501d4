//! Notifications from the providers to the merchant: building them (WeChat's encrypted,
//! header-signed JSON; Alipay's signed form), the delivery mode (deliver / drop, copies, delay,
//! signature probes), background delivery with each provider's retry schedule × time-scale, and
//! the log of every event and every send attempt that the control API exposes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::keys;
use crate::state::{
    AlipayStatus, AlipayTrade, Emulator, Provider, Shared, WechatRefund, WechatTrade, alipay_time,
    format_yuan, rfc3339_beijing,
};

/// WeChat's documented retry delays after a failed notification (24 h 4 min in all).
pub const WECHAT_RETRY_SECS: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
];
/// Alipay's documented retry delays (Chinese documentation).
pub const ALIPAY_RETRY_SECS: [u64; 7] = [240, 600, 600, 3600, 7200, 21600, 54000];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Deliver,
    Drop,
    /// Signed and encrypted when the event happens, sent when `POST /emulator/release` asks (a
    /// bench can take the provider's own work out of what it times).
    Hold,
}

/// How the next events of one provider are delivered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotifyMode {
    pub mode: Mode,
    /// Copies of the same event (same id / notify_id) sent concurrently, each retried on its own.
    pub copies: u32,
    /// Wait before the first send.
    pub delay_ms: u64,
    /// First send one copy with a deliberately wrong signature (never retried).
    pub probe_first: bool,
}

impl Default for NotifyMode {
    fn default() -> Self {
        Self {
            mode: Mode::Deliver,
            copies: 1,
            delay_ms: 0,
            probe_first: false,
        }
    }
}

/// One send of one notification.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub seq: u64,
    pub provider: Provider,
    pub event_id: String,
    pub event: String,
    pub out_trade_no: String,
    pub url: String,
    /// 1-based, per copy.
    pub attempt: u32,
    /// 1-based copy number (see `NotifyMode::copies`); 0 for probes and crafted sends.
    pub copy: u32,
    pub probe: bool,
    /// Sent by `POST /emulator/send`.
    pub crafted: bool,
    pub sent_at: String,
    pub reply_status: Option<u16>,
    pub reply_body: Option<String>,
    /// The network error, when there was no reply.
    pub error: Option<String>,
    /// Whether the reply counts as success for this provider (for a probe: the merchant wrongly
    /// accepted a bad signature).
    pub success: bool,
}

/// One event, whether or not it was sent.
#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    pub provider: Provider,
    pub event_id: String,
    pub event: String,
    pub out_trade_no: String,
    pub url: Option<String>,
    pub created_at: String,
    pub mode: NotifyMode,
    /// Not sent: drop mode, or no notify_url.
    pub dropped: bool,
}

#[derive(Default)]
pub struct Hub {
    wechat_mode: Mutex<NotifyMode>,
    alipay_mode: Mutex<NotifyMode>,
    attempts: Mutex<Vec<Attempt>>,
    events: Mutex<Vec<EventRecord>>,
    /// Notifications of hold mode, with their first send already signed.
    held: Mutex<Vec<(Notification, Rendered)>>,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn mode(&self, provider: Provider) -> NotifyMode {
        match provider {
            Provider::Wechat => lock(&self.wechat_mode).clone(),
            Provider::Alipay => lock(&self.alipay_mode).clone(),
        }
    }

    pub fn set_mode(&self, provider: Option<Provider>, mode: NotifyMode) {
        if provider != Some(Provider::Alipay) {
            *lock(&self.wechat_mode) = mode.clone();
        }
        if provider != Some(Provider::Wechat) {
            *lock(&self.alipay_mode) = mode;
        }
    }

    pub fn attempts(&self, provider: Option<Provider>, out_trade_no: Option<&str>) -> Vec<Attempt> {
        lock(&self.attempts)
            .iter()
            .filter(|a| provider.is_none_or(|p| a.provider == p))
            .filter(|a| out_trade_no.is_none_or(|n| a.out_trade_no == n))
            .cloned()
            .collect()
    }

    pub fn events(
        &self,
        provider: Option<Provider>,
        out_trade_no: Option<&str>,
    ) -> Vec<EventRecord> {
        lock(&self.events)
            .iter()
            .filter(|e| provider.is_none_or(|p| e.provider == p))
            .filter(|e| out_trade_no.is_none_or(|n| e.out_trade_no == n))
            .cloned()
            .collect()
    }

    fn record_event(&self, event: EventRecord) {
        lock(&self.events).push(event);
    }

    fn record_attempt(&self, mut attempt: Attempt) -> Attempt {
        attempt.seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.attempts).push(attempt.clone());
        attempt
    }
}

/// What is sent, before the per-send headers and signatures are added.
#[derive(Clone, Debug)]
pub enum Payload {
    /// The notification JSON body, serialized once; headers are signed per send.
    Wechat { body: Vec<u8> },
    /// Every parameter except `sign`; signed per send.
    Alipay { params: Vec<(String, String)> },
}

/// One event to deliver.
#[derive(Clone, Debug)]
pub struct Notification {
    pub provider: Provider,
    pub event_id: String,
    pub event: String,
    pub out_trade_no: String,
    pub url: Option<String>,
    pub payload: Payload,
}

/// How one send deviates from a genuine one (all off = genuine).
#[derive(Clone, Debug, Default)]
pub struct Wire {
    /// A signature that does not verify (WeChat's signature probe).
    pub probe: bool,
    /// WeChat: `Wechatpay-Timestamp` = now + this.
    pub timestamp_offset_secs: i64,
    /// Sign with a key that belongs to nobody.
    pub other_key: bool,
    /// Change one character of the body after signing.
    pub tamper_body: bool,
    /// WeChat: `Wechatpay-Serial` instead of the configured public key id.
    pub serial: Option<String>,
}

/// A request ready to send.
#[derive(Debug)]
pub struct Rendered {
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Notification {
    /// Signs (and, if asked, spoils) one send of this notification.
    pub fn render(&self, emu: &Emulator, wire: &Wire) -> Rendered {
        match &self.payload {
            Payload::Wechat { body } => {
                let timestamp = (Utc::now().timestamp() + wire.timestamp_offset_secs).to_string();
                let nonce = keys::random_alnum(32);
                let signed_nonce = if wire.probe {
                    keys::random_alnum(32)
                } else {
                    nonce.clone()
                };
                let mut message = format!("{timestamp}\n{signed_nonce}\n").into_bytes();
                message.extend_from_slice(body);
                message.push(b'\n');
                let key = if wire.other_key {
                    keys::stranger_key()
                } else {
                    &emu.keys.wechat_platform_private
                };
                let signature = keys::sign_sha256_rsa(key, &message);
                let mut body = body.clone();
                if wire.tamper_body {
                    tamper_after(&mut body, b"\"id\":\"");
                }
                let serial = wire
                    .serial
                    .clone()
                    .unwrap_or_else(|| emu.config.wechat.public_key_id.clone());
                Rendered {
                    content_type: "application/json; charset=utf-8",
                    headers: vec![
                        ("Wechatpay-Timestamp", timestamp),
                        ("Wechatpay-Nonce", nonce),
                        ("Wechatpay-Signature", signature),
                        ("Wechatpay-Serial", serial),
                        (
                            "Wechatpay-Signature-Type",
                            "WECHATPAY2-SHA256-RSA2048".into(),
                        ),
                        ("Request-ID", crate::wechat::request_id()),
                    ],
                    body,
                }
            }
            Payload::Alipay { params } => {
                let mut params: Vec<(String, String)> = params
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .cloned()
                    .collect();
                let mut content = alipay_notify_content(&params);
                if wire.probe {
                    content.push_str("&probe=1");
                }
                let key = if wire.other_key {
                    keys::stranger_key()
                } else {
                    &emu.keys.alipay_private
                };
                let sign = keys::sign_sha256_rsa(key, content.as_bytes());
                params.push(("sign".into(), sign));
                let mut body = serde_urlencoded::to_string(&params)
                    .unwrap_or_default()
                    .into_bytes();
                if wire.tamper_body {
                    tamper_after(&mut body, b"notify_id=");
                }
                Rendered {
                    content_type: "application/x-www-form-urlencoded; charset=utf-8",
                    headers: vec![],
                    body,
                }
            }
        }
    }
}

/// Alipay's notification signing content: every parameter except `sign` and `sign_type`, empty
/// values dropped, sorted by key, `k=v` joined with `&`, raw values.
pub fn alipay_notify_content(params: &[(String, String)]) -> String {
    let mut pairs: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, v)| k != "sign" && k != "sign_type" && !v.is_empty())
        .collect();
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Changes the first character after `marker` (keeping the body well-formed).
fn tamper_after(body: &mut [u8], marker: &[u8]) {
    let at = body
        .windows(marker.len())
        .position(|w| w == marker)
        .map(|p| p + marker.len());
    let at = at
        .filter(|&i| i < body.len())
        .unwrap_or(body.len().saturating_sub(1));
    if let Some(b) = body.get_mut(at) {
        *b = if *b == b'a' { b'b' } else { b'a' };
    }
}

/// Whether a reply counts as success for the provider.
pub fn is_success(provider: Provider, status: u16, body: &str) -> bool {
    match provider {
        Provider::Wechat => status == 200 || status == 204,
        Provider::Alipay => status == 200 && body == "success",
    }
}

/// The outcome of one HTTP send.
pub struct Reply {
    pub status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
}

/// Sends one rendered request and records the attempt.
pub async fn send_once(
    emu: &Emulator,
    n: &Notification,
    wire: &Wire,
    attempt: u32,
    copy: u32,
    crafted: bool,
) -> (Attempt, Reply) {
    let rendered = n.render(emu, wire);
    send_rendered(emu, n, rendered, wire.probe, attempt, copy, crafted).await
}

/// Sends one request signed earlier and records the attempt.
async fn send_rendered(
    emu: &Emulator,
    n: &Notification,
    rendered: Rendered,
    probe: bool,
    attempt: u32,
    copy: u32,
    crafted: bool,
) -> (Attempt, Reply) {
    let url = n.url.clone().unwrap_or_default();
    let sent_at = rfc3339_beijing(Utc::now());
    let mut request = emu
        .http
        .post(&url)
        .header("Content-Type", rendered.content_type);
    for (name, value) in &rendered.headers {
        request = request.header(*name, value);
    }
    let request = request
        .header(
            "User-Agent",
            match n.provider {
                Provider::Wechat => "Mozilla/4.0",
                Provider::Alipay => "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.0)",
            },
        )
        .body(rendered.body);
    let reply = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(bytes) => {
                    let mut text = String::from_utf8_lossy(&bytes).into_owned();
                    if text.len() > 4096 {
                        let mut cut = 4096;
                        while !text.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        text.truncate(cut);
                    }
                    Reply {
                        status: Some(status),
                        body: Some(text),
                        error: None,
                    }
                }
                Err(e) => Reply {
                    status: Some(status),
                    body: None,
                    error: Some(e.to_string()),
                },
            }
        }
        Err(e) => Reply {
            status: None,
            body: None,
            error: Some(format!("{e}")),
        },
    };
    let success = match (reply.status, &reply.body, &reply.error) {
        (Some(s), Some(b), None) => is_success(n.provider, s, b),
        _ => false,
    };
    tracing::info!(
        provider = n.provider.name(), event = %n.event, event_id = %n.event_id, %url, attempt, copy,
        probe, status = ?reply.status, success, error = ?reply.error, "notification sent"
    );
    let recorded = emu.notify.record_attempt(Attempt {
        seq: 0,
        provider: n.provider,
        event_id: n.event_id.clone(),
        event: n.event.clone(),
        out_trade_no: n.out_trade_no.clone(),
        url,
        attempt,
        copy,
        probe,
        crafted,
        sent_at,
        reply_status: reply.status,
        reply_body: reply.body.clone(),
        error: reply.error.clone(),
        success,
    });
    (recorded, reply)
}

/// Records the event and, unless the mode drops it, delivers it in the background.
pub fn dispatch(emu: &Shared, n: Notification) {
    let mode = emu.notify.mode(n.provider);
    let dropped = mode.mode == Mode::Drop || n.url.as_deref().is_none_or(str::is_empty);
    emu.notify.record_event(EventRecord {
        provider: n.provider,
        event_id: n.event_id.clone(),
        event: n.event.clone(),
        out_trade_no: n.out_trade_no.clone(),
        url: n.url.clone(),
        created_at: rfc3339_beijing(Utc::now()),
        mode: mode.clone(),
        dropped,
    });
    if dropped {
        tracing::info!(provider = n.provider.name(), event = %n.event, event_id = %n.event_id, "notification not sent");
        return;
    }
    if mode.mode == Mode::Hold {
        let first = n.render(emu, &Wire::default());
        lock(&emu.notify.held).push((n, first));
        return;
    }
    let emu = emu.clone();
    tokio::spawn(async move {
        if mode.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(mode.delay_ms)).await;
        }
        if mode.probe_first {
            send_once(
                &emu,
                &n,
                &Wire {
                    probe: true,
                    ..Wire::default()
                },
                1,
                0,
                false,
            )
            .await;
        }
        for copy in 1..=mode.copies.max(1) {
            let emu = emu.clone();
            let n = n.clone();
            tokio::spawn(async move { deliver_with_retries(&emu, &n, copy, None).await });
        }
    });
}

/// Sends every held notification (of `provider`, or of both), `concurrency` at a time, each
/// then retried on the provider's schedule like any other; returns how many there were.
pub fn release(emu: &Shared, provider: Option<Provider>, concurrency: usize) -> usize {
    let held: Vec<(Notification, Rendered)> = {
        let mut all = lock(&emu.notify.held);
        let (mine, others) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|(n, _)| provider.is_none_or(|p| n.provider == p));
        *all = others;
        mine
    };
    let count = held.len();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    for (n, first) in held {
        let (emu, permits) = (emu.clone(), permits.clone());
        tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            let (recorded, _) = send_rendered(&emu, &n, first, false, 1, 1, false).await;
            drop(permit);
            if !recorded.success {
                deliver_with_retries(&emu, &n, 1, Some(1)).await;
            }
        });
    }
    count
}

/// Sends one copy until it is answered with success or the provider's schedule runs out;
/// `after` is the attempt already made (and failed) before this call, if any.
async fn deliver_with_retries(emu: &Emulator, n: &Notification, copy: u32, after: Option<u32>) {
    let schedule: &[u64] = match n.provider {
        Provider::Wechat => &WECHAT_RETRY_SECS,
        Provider::Alipay => &ALIPAY_RETRY_SECS,
    };
    let mut attempt = 1u32;
    if let Some(made) = after {
        let Some(&wait) = schedule.get(made as usize - 1) else {
            return;
        };
        tokio::time::sleep(emu.config.scaled(Duration::from_secs(wait))).await;
        attempt = made + 1;
    }
    loop {
        let (recorded, _) = send_once(emu, n, &Wire::default(), attempt, copy, false).await;
        if recorded.success {
            return;
        }
        let Some(&wait) = schedule.get(attempt as usize - 1) else {
            tracing::warn!(provider = n.provider.name(), event_id = %n.event_id, copy, "notification retries exhausted");
            return;
        };
        tokio::time::sleep(emu.config.scaled(Duration::from_secs(wait))).await;
        attempt += 1;
    }
}

/// Deviations a crafted notification may carry inside its payload.
#[derive(Clone, Debug, Default)]
pub struct PayloadOverrides {
    pub event_id: Option<String>,
    pub mchid: Option<String>,
    pub appid: Option<String>,
    pub app_id: Option<String>,
    pub seller_id: Option<String>,
    pub amount_fen: Option<i64>,
    pub url: Option<String>,
}

/// A WeChat notification with an AES-256-GCM encrypted resource.
/// The unencrypted parts of a WeChat notification.
struct Envelope<'a> {
    event_id: String,
    event_type: &'a str,
    summary: &'a str,
    /// Also the `associated_data`.
    original_type: &'a str,
    out_trade_no: &'a str,
    url: Option<String>,
}

fn wechat_notification(
    emu: &Emulator,
    e: Envelope<'_>,
    plaintext: &Value,
) -> anyhow::Result<Notification> {
    let Envelope {
        event_id,
        event_type,
        summary,
        original_type,
        out_trade_no,
        url,
    } = e;
    let nonce = keys::random_alnum(12);
    let plaintext = serde_json::to_vec(plaintext)?;
    let ciphertext = keys::aes_gcm_encrypt(
        &emu.config.wechat.apiv3_key,
        &nonce,
        original_type,
        &plaintext,
    )?;
    let body = json!({
        "id": event_id,
        "create_time": rfc3339_beijing(Utc::now()),
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": original_type,
            "nonce": nonce,
        },
    });
    Ok(Notification {
        provider: Provider::Wechat,
        event_id,
        event: event_type.into(),
        out_trade_no: out_trade_no.into(),
        url,
        payload: Payload::Wechat {
            body: serde_json::to_vec(&body)?,
        },
    })
}

/// `TRANSACTION.SUCCESS` for a paid trade (the transaction object with `trade_state` SUCCESS).
pub fn wechat_transaction_success(
    emu: &Emulator,
    trade: &WechatTrade,
    o: &PayloadOverrides,
) -> anyhow::Result<Notification> {
    let mut transaction = trade.transaction_json();
    transaction["trade_state"] = json!("SUCCESS");
    transaction["trade_state_desc"] = json!("支付成功");
    if let Some(m) = &o.mchid {
        transaction["mchid"] = json!(m);
    }
    if let Some(a) = &o.appid {
        transaction["appid"] = json!(a);
    }
    if let Some(fen) = o.amount_fen {
        transaction["amount"]["total"] = json!(fen);
        transaction["amount"]["payer_total"] = json!(fen);
    }
    let envelope = Envelope {
        event_id: o
            .event_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        event_type: "TRANSACTION.SUCCESS",
        summary: "支付成功",
        original_type: "transaction",
        out_trade_no: &trade.out_trade_no,
        url: Some(o.url.clone().unwrap_or_else(|| trade.notify_url.clone())),
    };
    wechat_notification(emu, envelope, &transaction)
}

/// `REFUND.SUCCESS` for a refund that has succeeded, `REFUND.ABNORMAL` for one that failed.
pub fn wechat_refund_outcome(
    emu: &Emulator,
    trade: &WechatTrade,
    refund: &WechatRefund,
) -> anyhow::Result<Notification> {
    let abnormal = refund.status == crate::state::RefundStatus::Abnormal;
    let mut plaintext = json!({
        "mchid": trade.mchid,
        "out_trade_no": refund.out_trade_no,
        "transaction_id": refund.transaction_id,
        "out_refund_no": refund.out_refund_no,
        "refund_id": refund.refund_id,
        "refund_status": refund.status.code(),
        "user_received_account": crate::state::USER_RECEIVED_ACCOUNT,
        "amount": {
            "total": refund.total,
            "refund": refund.refund,
            "payer_total": refund.total,
            "payer_refund": refund.refund,
        },
    });
    if !abnormal {
        plaintext["success_time"] = json!(rfc3339_beijing(
            refund.success_time.unwrap_or_else(Utc::now)
        ));
    }
    let url = refund
        .notify_url
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| trade.notify_url.clone());
    let envelope = Envelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: if abnormal {
            "REFUND.ABNORMAL"
        } else {
            "REFUND.SUCCESS"
        },
        summary: if abnormal {
            "退款异常"
        } else {
            "退款成功"
        },
        original_type: "refund",
        out_trade_no: &trade.out_trade_no,
        url: Some(url),
    };
    wechat_notification(emu, envelope, &plaintext)
}

/// What an Alipay `trade_status_sync` notification reports beyond the trade itself.
#[derive(Clone, Debug, Default)]
pub struct AlipayRefundInfo {
    pub out_biz_no: String,
    pub refund_fee: i64,
    pub gmt_refund: DateTime<Utc>,
}

/// A `trade_status_sync` notification describing `trade` with `status`.
pub fn alipay_trade_status(
    emu: &Emulator,
    trade: &AlipayTrade,
    status: AlipayStatus,
    refund: Option<&AlipayRefundInfo>,
    o: &PayloadOverrides,
) -> Notification {
    let now = Utc::now();
    let notify_id = o.event_id.clone().unwrap_or_else(|| keys::random_hex(34));
    let paid_like = matches!(
        status,
        AlipayStatus::TradeSuccess | AlipayStatus::TradeFinished
    ) || trade.is_paid();
    let total = o.amount_fen.unwrap_or(trade.total);
    let scan = trade.scan.clone();
    let trade_no = scan
        .as_ref()
        .map(|s| s.trade_no.clone())
        .unwrap_or_else(crate::alipay::new_trade_no);
    let buyer_id = scan
        .as_ref()
        .map(|s| s.buyer_id.clone())
        .unwrap_or_else(crate::alipay::new_buyer_id);
    let buyer_logon_id = scan
        .as_ref()
        .map(|s| s.buyer_logon_id.clone())
        .unwrap_or_else(crate::alipay::new_logon_id);
    let gmt_create = scan.as_ref().map(|s| s.gmt_create).unwrap_or(now);
    let mut p: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| p.push((k.to_string(), v));
    put("notify_time", alipay_time(now));
    put("notify_type", "trade_status_sync".into());
    put("notify_id", notify_id.clone());
    put(
        "app_id",
        o.app_id
            .clone()
            .unwrap_or_else(|| emu.config.alipay.app_id.clone()),
    );
    put("charset", "utf-8".into());
    put("version", "1.0".into());
    put("sign_type", "RSA2".into());
    put("trade_no", trade_no);
    put("out_trade_no", trade.out_trade_no.clone());
    put("buyer_id", buyer_id);
    put("buyer_logon_id", buyer_logon_id);
    put(
        "seller_id",
        o.seller_id
            .clone()
            .unwrap_or_else(|| emu.config.alipay.seller_id.clone()),
    );
    put("trade_status", status.code().into());
    put("total_amount", format_yuan(total));
    put("gmt_create", alipay_time(gmt_create));
    put("subject", trade.subject.clone());
    if let Some(b) = &trade.body {
        put("body", b.clone());
    }
    if paid_like {
        let amount = format_yuan(total);
        put("receipt_amount", amount.clone());
        put("invoice_amount", amount.clone());
        put("buyer_pay_amount", amount.clone());
        put("point_amount", "0.00".into());
        put("gmt_payment", alipay_time(trade.gmt_payment.unwrap_or(now)));
        put(
            "fund_bill_list",
            format!("[{{\"amount\":\"{amount}\",\"fundChannel\":\"ALIPAYACCOUNT\"}}]"),
        );
    }
    if status == AlipayStatus::TradeClosed {
        put("gmt_close", alipay_time(trade.gmt_close.unwrap_or(now)));
    }
    if let Some(r) = refund {
        put("out_biz_no", r.out_biz_no.clone());
        put("refund_fee", format_yuan(r.refund_fee));
        put("gmt_refund", format!("{}.000", alipay_time(r.gmt_refund)));
    }
    if let Some(pp) = &trade.passback_params {
        put("passback_params", pp.clone());
    }
    p.retain(|(_, v)| !v.is_empty());
    Notification {
        provider: Provider::Alipay,
        event_id: notify_id,
        event: status.code().into(),
        out_trade_no: trade.out_trade_no.clone(),
        url: o.url.clone().or_else(|| trade.notify_url.clone()),
        payload: Payload::Alipay { params: p },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alipay_notify_content_drops_sign_and_sign_type_and_sorts_keys() {
        let params = vec![
            ("sign".to_string(), "x".to_string()),
            ("sign_type".to_string(), "RSA2".to_string()),
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1 & 2".to_string()),
            ("e".to_string(), String::new()),
        ];
        assert_eq!(alipay_notify_content(&params), "a=1 & 2&b=2");
    }

    #[test]
    fn tampering_changes_exactly_one_byte() {
        let mut body = b"{\"id\":\"abc\"}".to_vec();
        tamper_after(&mut body, b"\"id\":\"");
        assert_eq!(body, b"{\"id\":\"bbc\"}");
    }

    #[test]
    fn the_retry_schedules_add_up_to_the_documented_totals() {
        assert_eq!(WECHAT_RETRY_SECS.iter().sum::<u64>(), 24 * 3600 + 4 * 60);
        assert_eq!(
            ALIPAY_RETRY_SECS.iter().sum::<u64>(),
            4 * 60 + 20 * 60 + 3 * 3600 + 21 * 3600
        );
    }
}
