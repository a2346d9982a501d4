//! `lanes.*`: how the gateway runs balance, points and free purchases, and payment
//! notifications (`gateway/src/lanes.rs`); split from `settings.rs` only to keep each file
//! readable.

use super::SettingsError;
use serde::Deserialize;

/// How the gateway runs balance, points and free purchases, and payment notifications: each in
/// its own lanes (`gateway/src/lanes.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneSettings {
    /// Transactions of each kind that may run at once (each holds a pooled connection; the
    /// gateway runs at most `database.max_connections`).
    pub count: u16,
    /// Purchases of different buyers, or notifications of different orders, that may share one
    /// transaction.
    pub batch_max: u16,
    /// Jobs that may wait for each lane; past it, a purchase is answered 503 `overloaded` (and a
    /// notification refused, for its provider to send again) at once, with nothing written.
    pub queue_max: u16,
    /// Milliseconds a job may wait for its lane; one that waited longer is refused unrun, the
    /// same way.
    pub max_wait_ms: u64,
}

/// Connections of the gateway's pool that its lanes leave to everything else: reads, refunds,
/// sign-ins, the order streams.
pub const CONNECTIONS_FOR_THE_REST: u32 = 2;

impl LaneSettings {
    /// Whether the purchase lanes and the notification lanes, each `count` transactions at once,
    /// fit together in a pool of `max_connections` with [`CONNECTIONS_FOR_THE_REST`] to spare:
    /// lanes that could hold every connection would starve every other request.
    pub fn fit(&self, max_connections: u32) -> Result<(), SettingsError> {
        let lanes = 2 * u32::from(self.count);
        if lanes + CONNECTIONS_FOR_THE_REST > max_connections {
            return Err(SettingsError::Invalid {
                key: "lanes.count",
                reason: format!(
                    "the purchase and the notification lanes take {lanes} connections \
                     (2 × lanes.count) and must leave {CONNECTIONS_FOR_THE_REST} of \
                     database.max_connections ({max_connections}) to other requests: lower \
                     lanes.count to at most {} or raise database.max_connections to at least {}",
                    max_connections.saturating_sub(CONNECTIONS_FOR_THE_REST) / 2,
                    lanes + CONNECTIONS_FOR_THE_REST
                ),
            });
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=60_000).contains(&self.max_wait_ms) {
            return Err(SettingsError::Invalid {
                key: "lanes.max_wait_ms",
                reason: "must be between 1 and 60000".to_owned(),
            });
        }
        for (key, value, max) in [
            ("lanes.count", self.count, 256),
            ("lanes.batch_max", self.batch_max, 256),
            ("lanes.queue_max", self.queue_max, 4096),
        ] {
            if !(1..=max).contains(&value) {
                return Err(SettingsError::Invalid {
                    key,
                    reason: format!("must be between 1 and {max}"),
                });
            }
        }
        Ok(())
    }
}
