//! Layered configuration: compiled-in defaults (below, every key commented with its unit), then
//! `deploy/config/base.toml` and `deploy/config/{MEMBERLINE_ENV}.toml` when present, then
//! environment variables `MEMBERLINE__SECTION__KEY` (for example `MEMBERLINE__HTTP__PORT=9000`).
//!
//! A value of the wrong type stops the process with the key's name in the message. Secrets are
//! wrapped in [`Secret`], whose `Debug` never shows them.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The compiled-in defaults; a missing config file changes nothing.
pub const DEFAULTS: &str = r#"
[http]
# Interface the gateway listens on.
host = "127.0.0.1"
# TCP port; 0 picks a free one (tests).
port = 8080
# Seconds a request may run before it is cut off with 408.
request_timeout_secs = 30
# Largest accepted request body, in bytes (64 KiB); larger bodies get 413.
body_limit_bytes = 65536

[database]
# PostgreSQL URL.
url = "postgres://postgres@127.0.0.1:5432/memberline"
# Pool size, in connections.
max_connections = 20
# Seconds to wait for a free pooled connection before failing the request.
acquire_timeout_secs = 10

[amqp]
# RabbitMQ URL.
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
# Prefix of every exchange and queue name; tests use a unique one each.
prefix = "memberline"
# Broker-side redelivery limit of worker queues (deliveries).
delivery_limit = 20
# Delay of each retry tier, in milliseconds (1 s, 10 s, 1 min, 10 min, 1 h).
retry_delays_ms = [1000, 10000, 60000, 600000, 3600000]
# Per-worker ladders replacing retry_delays_ms, e.g. notifier = [5000, 60000] (milliseconds).
[amqp.worker_retry_delays_ms]

[auth]
# HS256 secret for bearer tokens; at least 32 bytes. Replace it in every real deployment.
jwt_secret = "memberline-local-development-secret-change-me"
# Lifetime of a token minted by `memberline token`, in seconds.
token_ttl_secs = 86400

[log]
# "text" (human-readable) or "json".
format = "text"
# tracing filter directive, e.g. "info,memberline_gateway=debug".
filter = "info"

[relay]
# Run the outbox relay inside the gateway process (single-machine deployments).
embedded = true
# Outbox rows published per transaction.
batch_size = 100
# Milliseconds between polls when no NOTIFY arrives (a safety net; NOTIFY wakes it at once).
poll_interval_ms = 1000
# Milliseconds to wait for the broker's publisher confirms of one batch.
confirm_timeout_ms = 5000
# Longest pause between reconnect attempts to the broker, in milliseconds.
max_reconnect_delay_ms = 5000

[workers]
# Declare the topology at start (true), or only verify it exists and refuse to start without a
# dead-letter path (false: production, where deploy/rabbitmq/definitions.json is loaded).
declare_topology = true
# Unacknowledged deliveries per worker (basic_qos); also the bound on in-flight work.
prefetch = 16
# Seconds to let in-flight deliveries finish at shutdown.
drain_timeout_secs = 10
# Longest pause between reconnect attempts, in milliseconds.
max_reconnect_delay_ms = 5000
# Address of the workers' /metrics endpoint; port 0 picks a free one, "" turns it off.
metrics_addr = "127.0.0.1:9100"
# Reward points per yuan paid (fen / 100), before the level bonus.
points_per_yuan = 1
# Growth value per yuan paid.
growth_per_yuan = 1
# Most reward points a buyer can earn per UTC day; the excess is not credited, only flagged.
daily_points_cap = 5000
# A buyer becomes a promoter at this many purchases...
promoter_min_purchases = 5
# ...or at this total paid, in fen.
promoter_min_paid_fen = 100000
# Template/SMS delivery channel: "log" (writes a log line) or "webhook".
channel = "log"
# Webhook channel: URL, Standard Webhooks secret ("whsec_" + base64 key), attempts and timeout.
webhook_url = ""
webhook_secret = "whsec_bWVtYmVybGluZS1sb2NhbC13ZWJob29rLXNlY3JldA=="
webhook_attempts = 3
webhook_timeout_ms = 3000
"#;

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
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub relay: RelaySettings,
    pub workers: WorkerSettings,
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
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub request_timeout_secs: u64,
    pub body_limit_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May carry a password, so it is a secret.
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
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
    pub confirm_timeout_ms: u64,
    pub max_reconnect_delay_ms: u64,
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
        let env = std::env::var("MEMBERLINE_ENV").unwrap_or_else(|_| "local".to_owned());
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
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(dir) = dir {
            for name in ["base", env] {
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
        if self.auth.jwt_secret.expose().len() < 32 {
            return invalid("auth.jwt_secret", "must be at least 32 bytes long");
        }
        if self.auth.token_ttl_secs <= 0 {
            return invalid("auth.token_ttl_secs", "must be positive");
        }
        if self.http.body_limit_bytes == 0 {
            return invalid("http.body_limit_bytes", "must be positive");
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
        if self.workers.points_per_yuan < 0 || self.workers.growth_per_yuan < 0 {
            return invalid("workers.points_per_yuan", "rates must not be negative");
        }
        if self.workers.daily_points_cap < 0 {
            return invalid("workers.daily_points_cap", "must not be negative");
        }
        if self.workers.channel == ChannelKind::Webhook && self.workers.webhook_url.is_empty() {
            return invalid(
                "workers.webhook_url",
                "is required when workers.channel = webhook",
            );
        }
        if self.workers.webhook_attempts == 0 {
            return invalid("workers.webhook_attempts", "must be at least 1");
        }
        if self.relay.batch_size == 0 || self.relay.batch_size > 10_000 {
            return invalid("relay.batch_size", "must be between 1 and 10000");
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
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::load_from(
            None,
            "test",
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_load_without_any_file() {
        let s = load(&[]).unwrap();
        assert_eq!(s.http.port, 8080);
        assert_eq!(s.amqp.retry_delays_ms.len(), 5);
    }

    #[test]
    fn environment_variables_override_defaults() {
        let s = load(&[
            ("MEMBERLINE__HTTP__PORT", "9001"),
            ("MEMBERLINE__LOG__FORMAT", "json"),
            ("MEMBERLINE__AMQP__RETRY_DELAYS_MS", "5,50"),
        ])
        .unwrap();
        assert_eq!(s.http.port, 9001);
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.amqp.retry_delays_ms, vec![5, 50]);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = load(&[("MEMBERLINE__HTTP__PORT", "eighty")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.port"), "{err}");
        let err = load(&[("MEMBERLINE__LOG__FORMAT", "xml")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.format"), "{err}");
        let err = load(&[("MEMBERLINE__AUTH__JWT_SECRET", "short")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.jwt_secret"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = load(&[]).unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains(s.auth.jwt_secret.expose()));
        assert!(!printed.contains("guest:guest"));
    }
}
