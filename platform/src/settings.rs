//! Layered configuration: compiled-in defaults (`defaults.toml` beside this file, every key
//! commented with its unit), then `deploy/config/base.toml` and
//! `deploy/config/{MEMBERLINE_ENV}.toml` when present, then environment variables
//! `MEMBERLINE__SECTION__KEY` (for example `MEMBERLINE__HTTP__PORT=9000`).
//!
//! A value of the wrong type stops the process with the key's name in the message. Secrets are
//! wrapped in [`Secret`], whose `Debug` never shows them.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod lanes;
mod payments;
mod push;
pub use lanes::LaneSettings;
pub use payments::{AlipaySettings, PaymentSettings, WechatSettings};
pub use push::PushSettings;

/// The compiled-in defaults; a missing config file changes nothing.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// A secret value: deserialized like a string, never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `local`, `production`, … (MEMBERLINE_ENV); empty when it is not set.
    pub environment: String,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub relay: RelaySettings,
    pub workers: WorkerSettings,
    pub retention: RetentionSettings,
    pub payments: PaymentSettings,
    pub push: PushSettings,
    pub lanes: LaneSettings,
    pub shop: ShopSettings,
}

/// The shop itself.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopSettings {
    /// The IANA time zone the shop keeps its days in (`Asia/Shanghai`): the dashboard's days and
    /// the times of the CSV exports.
    pub time_zone: chrono_tz::Tz,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub enabled: bool,
    pub interval_secs: u64,
    pub batch_size: u32,
    pub outbox_published_days: u32,
    pub consumed_events_days: u32,
    pub console_feed_days: u32,
    pub idempotency_key_hours: u32,
    pub channel_deliveries_days: u32,
    pub stream_ticket_hours: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Log,
    Webhook,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub declare_topology: bool,
    pub prefetch: u16,
    /// Deliveries of one worker that may share a transaction (1: each its own); no more than
    /// `prefetch` can arrive together, so a larger value means `prefetch`.
    pub batch_max: u16,
    pub drain_timeout_secs: u64,
    pub max_reconnect_delay_ms: u64,
    pub metrics_addr: String,
    pub points_per_yuan: i64,
    pub growth_per_yuan: i64,
    pub daily_points_cap: i64,
    pub promoter_min_purchases: i32,
    pub promoter_min_paid_fen: i64,
    pub channel: ChannelKind,
    pub webhook_url: String,
    pub webhook_secret: Secret,
    pub webhook_attempts: u32,
    pub webhook_timeout_ms: u64,
    pub channel_batch_size: u32,
    pub channel_poll_interval_ms: u64,
    pub channel_retry_base_ms: u64,
    pub channel_retry_max_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub request_timeout_secs: u64,
    pub body_limit_bytes: usize,
    pub client_ip_header: String,
    /// Requests the gateway works on at once; past it, 503 `overloaded` at once.
    pub max_in_flight: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May carry a password, so it is a secret.
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
    /// A pooled connection idle at least this long is pinged before it is handed out; 0 pings
    /// every time.
    pub ping_after_idle_ms: u64,
    /// A statement waiting longer than this for a lock fails (retryable); 0 waits forever.
    pub lock_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: Secret,
    pub prefix: String,
    pub delivery_limit: u32,
    pub retry_delays_ms: Vec<u64>,
    pub worker_retry_delays_ms: std::collections::BTreeMap<String, Vec<u64>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub jwt_secret: Secret,
    pub token_ttl_secs: i64,
    pub buyer_token_ttl_secs: i64,
    pub staff_sign_in: StaffSignInSettings,
}

/// How many failed staff sign-ins are let through before the next ones wait.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffSignInSettings {
    pub window_secs: i64,
    pub max_failures_per_username: i64,
    pub max_failures_per_address: i64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    pub embedded: bool,
    pub batch_size: u64,
    pub poll_interval_ms: u64,
    /// After a batch that was not full, how long to let more rows gather before the next one.
    pub linger_ms: u64,
    pub confirm_timeout_ms: u64,
    pub max_reconnect_delay_ms: u64,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub quarantine_after_attempts: i32,
    pub metrics_addr: String,
}

/// Whether `key` (dotted, e.g. `workers.metrics_addr`) names a setting. Deploy files are checked
/// against it, so a misspelt `MEMBERLINE__…` variable cannot go unnoticed.
pub fn is_known_key(key: &str) -> bool {
    config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .is_ok_and(|c| c.get::<config::Value>(key).is_ok())
}

/// The setting a `MEMBERLINE__SECTION__KEY` environment variable sets (`section.key`).
pub fn key_of_variable(name: &str) -> Option<String> {
    let rest = name.strip_prefix("MEMBERLINE__")?;
    Some(rest.to_ascii_lowercase().replace("__", "."))
}

/// The development secrets committed in `deploy/config/local.toml`: public, so refused in any
/// other environment.
const LOCAL_ONLY_SECRETS: [&str; 2] = [
    "memberline-local-development-secret-change-me",
    "whsec_bWVtYmVybGluZS1sb2NhbC13ZWJob29rLXNlY3JldA==",
];

impl AuthSettings {
    /// The token signing secret, or an error naming the key when none is configured (the
    /// gateway and `memberline token` need one; the relay and the workers do not).
    pub fn signing_secret(&self) -> Result<&str, SettingsError> {
        match self.jwt_secret.expose() {
            "" => Err(SettingsError::Invalid {
                key: "auth.jwt_secret",
                reason: "is required (at least 32 bytes): set MEMBERLINE__AUTH__JWT_SECRET \
                         (for development, MEMBERLINE_ENV=local loads the public value of \
                         deploy/config/local.toml, as `make run` does)"
                    .to_owned(),
            }),
            secret => Ok(secret),
        }
    }
}

impl WorkerSettings {
    /// The webhook signing key: `whsec_` + base64, decoded; `None` when it is not that.
    pub fn webhook_key(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let secret = self.webhook_secret.expose();
        let encoded = secret.strip_prefix("whsec_")?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
    }
}

/// Why settings could not be loaded; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration error: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration error: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Settings {
    /// Loads the layers from the process environment and `deploy/config` (or
    /// `MEMBERLINE_CONFIG_DIR`).
    pub fn load() -> Result<Self, SettingsError> {
        let dir = std::env::var_os("MEMBERLINE_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("deploy/config"));
        // No default: an unnamed environment reads base.toml only, so a deployment that forgets
        // MEMBERLINE_ENV never picks up local.toml's public development secrets.
        let env = std::env::var("MEMBERLINE_ENV").unwrap_or_default();
        Self::load_from(Some(&dir), &env, std::env::vars())
    }

    /// Loads defaults, then `dir/base.toml` and `dir/{env}.toml` (optional), then the given
    /// `MEMBERLINE__…` variables. Tests pass their own variables instead of the process's.
    pub fn load_from(
        dir: Option<&std::path::Path>,
        env: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .set_override("environment", env)?;
        if let Some(dir) = dir {
            for name in ["base", env].into_iter().filter(|n| !n.is_empty()) {
                let path = dir.join(name);
                builder = builder.add_source(
                    config::File::with_name(&path.to_string_lossy())
                        .format(config::FileFormat::Toml)
                        .required(false),
                );
            }
        }
        let vars: config::Map<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("MEMBERLINE__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("MEMBERLINE")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("amqp.retry_delays_ms")
                .with_list_parse_key("payments.wechat.channels")
                .with_list_parse_key("payments.alipay.channels")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key, reason: &str| {
            Err(SettingsError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        self.push.validate()?;
        self.lanes.validate()?;
        let jwt = self.auth.jwt_secret.expose();
        if !jwt.is_empty() && jwt.len() < 32 {
            return invalid("auth.jwt_secret", "must be at least 32 bytes long");
        }
        if self.environment != "local" && LOCAL_ONLY_SECRETS.contains(&jwt) {
            return invalid(
                "auth.jwt_secret",
                "is the public development value of deploy/config/local.toml; set a secret of \
                 your own (MEMBERLINE__AUTH__JWT_SECRET)",
            );
        }
        if self.auth.token_ttl_secs <= 0 {
            return invalid("auth.token_ttl_secs", "must be positive");
        }
        if self.auth.buyer_token_ttl_secs <= 0 {
            return invalid("auth.buyer_token_ttl_secs", "must be positive");
        }
        let limits = &self.auth.staff_sign_in;
        if limits.window_secs <= 0
            || limits.max_failures_per_username <= 0
            || limits.max_failures_per_address <= 0
        {
            return invalid(
                "auth.staff_sign_in",
                "the window and both limits must be positive",
            );
        }
        if self.http.body_limit_bytes == 0 {
            return invalid("http.body_limit_bytes", "must be positive");
        }
        if self.http.max_in_flight == 0 {
            return invalid("http.max_in_flight", "must be positive");
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be positive");
        }
        if self.amqp.retry_delays_ms.is_empty() || self.amqp.retry_delays_ms.contains(&0) {
            return invalid(
                "amqp.retry_delays_ms",
                "needs at least one tier and every delay must be positive",
            );
        }
        if self.amqp.prefix.is_empty()
            || !self
                .amqp
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return invalid("amqp.prefix", "must be non-empty [A-Za-z0-9_.-]");
        }
        for (name, delays) in &self.amqp.worker_retry_delays_ms {
            if memberline_schema::topology::Worker::parse(name).is_none() {
                return invalid(
                    "amqp.worker_retry_delays_ms",
                    "keys must be membership, ledger, notifier or savings",
                );
            }
            if delays.is_empty() || delays.contains(&0) {
                return invalid(
                    "amqp.worker_retry_delays_ms",
                    "every ladder needs a tier and positive delays",
                );
            }
        }
        if self.workers.prefetch == 0 {
            return invalid("workers.prefetch", "must be positive");
        }
        if self.workers.batch_max == 0 {
            return invalid(
                "workers.batch_max",
                "must be positive (1 turns batching off)",
            );
        }
        if self.workers.points_per_yuan < 0 || self.workers.growth_per_yuan < 0 {
            return invalid("workers.points_per_yuan", "rates must not be negative");
        }
        if self.workers.daily_points_cap < 0 {
            return invalid("workers.daily_points_cap", "must not be negative");
        }
        if self.workers.channel == ChannelKind::Webhook {
            if self.workers.webhook_url.is_empty() {
                return invalid(
                    "workers.webhook_url",
                    "is required when workers.channel = webhook",
                );
            }
            let secret = self.workers.webhook_secret.expose();
            if self.environment != "local" && LOCAL_ONLY_SECRETS.contains(&secret) {
                return invalid(
                    "workers.webhook_secret",
                    "is the public development value of deploy/config/local.toml",
                );
            }
            if self.workers.webhook_key().is_none_or(|key| key.len() < 24) {
                return invalid(
                    "workers.webhook_secret",
                    "is required when workers.channel = webhook: whsec_<base64 of at least \
                     24 bytes> (MEMBERLINE__WORKERS__WEBHOOK_SECRET)",
                );
            }
        }
        if self.workers.webhook_attempts == 0 {
            return invalid("workers.webhook_attempts", "must be at least 1");
        }
        if self.workers.webhook_timeout_ms == 0 {
            return invalid("workers.webhook_timeout_ms", "must be positive");
        }
        if self.workers.channel_batch_size == 0 || self.workers.channel_batch_size > 1000 {
            return invalid("workers.channel_batch_size", "must be between 1 and 1000");
        }
        if self.workers.channel_poll_interval_ms == 0 {
            return invalid("workers.channel_poll_interval_ms", "must be positive");
        }
        if self.workers.channel_retry_base_ms == 0
            || self.workers.channel_retry_max_ms < self.workers.channel_retry_base_ms
        {
            return invalid(
                "workers.channel_retry_base_ms",
                "must be positive and at most workers.channel_retry_max_ms",
            );
        }
        if self.relay.retry_base_ms == 0 || self.relay.retry_max_ms < self.relay.retry_base_ms {
            return invalid(
                "relay.retry_base_ms",
                "must be positive and at most relay.retry_max_ms",
            );
        }
        if self.relay.quarantine_after_attempts < 1 {
            return invalid("relay.quarantine_after_attempts", "must be at least 1");
        }
        if self.retention.interval_secs == 0 {
            return invalid("retention.interval_secs", "must be positive");
        }
        if self.retention.batch_size == 0 {
            return invalid("retention.batch_size", "must be positive");
        }
        self.payments.validate()?;
        if self.relay.batch_size == 0 || self.relay.batch_size > 10_000 {
            return invalid("relay.batch_size", "must be between 1 and 10000");
        }
        if self.relay.linger_ms > 1_000 {
            return invalid(
                "relay.linger_ms",
                "must be at most 1000 (it delays every event)",
            );
        }
        Ok(())
    }

    /// The RabbitMQ topology these settings describe.
    pub fn topology(&self) -> memberline_schema::topology::Topology {
        let mut t = memberline_schema::topology::Topology::new(self.amqp.prefix.clone());
        t.delivery_limit = self.amqp.delivery_limit;
        t.retry_delays = self
            .amqp
            .retry_delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        for (name, delays) in &self.amqp.worker_retry_delays_ms {
            if let Some(worker) = memberline_schema::topology::Worker::parse(name) {
                t.worker_retry_delays.insert(
                    worker,
                    delays.iter().map(|ms| Duration::from_millis(*ms)).collect(),
                );
            }
        }
        t
    }
}

#[cfg(test)]
mod tests;
