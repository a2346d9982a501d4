//! `console_feed` (with its one-row `console_feed_counter`): the merchant consoles' sequenced
//! feed, numbered in commit order so a reconnecting console can resume after the last number it
//! saw. Serving the feed is the gateway's.

use super::one;
use memberline_schema::ids::EventId;
use memberline_schema::states::NotificationKind;
use sea_orm::{DatabaseTransaction, DbErr};

/// Appends an entry under the next feed number and returns that number. The counter row stays
/// locked until the transaction ends, so call this as the transaction's last statement: numbers
/// then become visible in order (see the `sequence_console_feed` migration). `None` only if the
/// counter row is missing.
pub async fn append(
    txn: &DatabaseTransaction,
    event_id: EventId,
    kind: NotificationKind,
    payload: serde_json::Value,
) -> Result<Option<i64>, DbErr> {
    one(
        txn,
        "WITH next AS (UPDATE console_feed_counter SET last_seq = last_seq + 1 \
         RETURNING last_seq) \
         INSERT INTO console_feed (seq, event_id, kind, payload) \
         SELECT last_seq, $1, $2, $3 FROM next RETURNING seq",
        [event_id.into(), kind.as_str().into(), payload.into()],
    )
    .await?
    .map(|r| r.try_get("", "seq"))
    .transpose()
}
