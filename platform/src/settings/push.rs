//! `push.*`: the gateway's WebSockets (merchant consoles, buyers' order streams); split from
//! `settings.rs` only to keep each file readable.

use super::SettingsError;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    pub socket_queue: usize,
    pub ping_interval_secs: u64,
    pub idle_timeout_secs: u64,
    pub ticket_ttl_secs: u64,
    pub feed_poll_ms: u64,
    pub buyer_streams_max: usize,
    pub buyer_streams_per_buyer: usize,
}

impl PushSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key, reason: &str| {
            Err(SettingsError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if !(1..=100_000).contains(&self.socket_queue) {
            return invalid("push.socket_queue", "must be between 1 and 100000 messages");
        }
        if self.ping_interval_secs == 0 || self.idle_timeout_secs <= self.ping_interval_secs {
            return invalid(
                "push.idle_timeout_secs",
                "must be longer than push.ping_interval_secs, which must be positive",
            );
        }
        if !(5..=600).contains(&self.ticket_ttl_secs) {
            return invalid("push.ticket_ttl_secs", "must be between 5 and 600 seconds");
        }
        if self.feed_poll_ms == 0 {
            return invalid("push.feed_poll_ms", "must be positive");
        }
        if !(1..=100_000).contains(&self.buyer_streams_max) {
            return invalid(
                "push.buyer_streams_max",
                "must be between 1 and 100000 sockets",
            );
        }
        if !(1..=100).contains(&self.buyer_streams_per_buyer) {
            return invalid(
                "push.buyer_streams_per_buyer",
                "must be between 1 and 100 sockets",
            );
        }
        Ok(())
    }
}
