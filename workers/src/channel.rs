//! Template/SMS delivery channels. `log` writes a log line (the default: nothing leaves the
//! machine); `webhook` POSTs JSON signed the Standard Webhooks way (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>`).
//!
//! One [`Channel::send`] is one attempt (one HTTP call, bounded by `workers.webhook_timeout_ms`).
//! Only the channel sender (`sender`) calls it, outside any transaction; attempts,
//! backoff and giving up are its business. Receivers deduplicate on `webhook-id`.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use memberline_platform::settings::{ChannelKind, WorkerSettings};
use memberline_schema::ids::BuyerId;
use memberline_schema::states::NotificationKind;
use serde::Serialize;
use sha2::Sha256;
use std::time::Duration;

/// A message for the buyer outside the app.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// Unique per message; sent as `webhook-id`.
    pub id: String,
    pub kind: NotificationKind,
    pub user_id: BuyerId,
    pub title: String,
    pub body: String,
}

#[derive(Clone)]
pub enum Channel {
    Log,
    Webhook(Webhook),
}

#[derive(Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
}

impl Channel {
    pub fn from_settings(s: &WorkerSettings) -> anyhow::Result<Self> {
        Ok(match s.channel {
            ChannelKind::Log => Channel::Log,
            ChannelKind::Webhook => {
                // Settings validation already refused a missing or short key.
                let key = s.webhook_key().ok_or_else(|| {
                    anyhow::anyhow!("workers.webhook_secret must be whsec_<base64>")
                })?;
                Channel::Webhook(Webhook {
                    client: reqwest::Client::builder()
                        .timeout(Duration::from_millis(s.webhook_timeout_ms))
                        .build()?,
                    url: s.webhook_url.clone(),
                    key,
                })
            }
        })
    }

    /// Sends `message` once; an error means this attempt failed (the receiver may still have
    /// it, so a later attempt carries the same `webhook-id`).
    pub async fn send(&self, message: &Message) -> anyhow::Result<()> {
        match self {
            Channel::Log => {
                tracing::info!(user_id = %message.user_id, kind = %message.kind,
                    title = %message.title, "Notification sent (log channel)");
                Ok(())
            }
            Channel::Webhook(w) => w.send(message).await,
        }
    }
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

impl Webhook {
    async fn send(&self, message: &Message) -> anyhow::Result<()> {
        let body = serde_json::to_string(message).context("webhook body")?;
        // A fresh timestamp per attempt: receivers refuse stale ones.
        let timestamp = chrono::Utc::now().timestamp();
        let res = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                sign(&self.key, &message.id, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            .context("webhook delivery failed")?;
        res.error_for_status().context("webhook delivery refused")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_follows_standard_webhooks() {
        // Example from the Standard Webhooks specification.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
