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
}

impl LaneSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        for (key, value) in [
            ("lanes.count", self.count),
            ("lanes.batch_max", self.batch_max),
        ] {
            if !(1..=256).contains(&value) {
                return Err(SettingsError::Invalid {
                    key,
                    reason: "must be between 1 and 256".to_owned(),
                });
            }
        }
        Ok(())
    }
}
