//! `consumed_events`: the workers' inbox, one row per (consumer, event id), written in the same
//! transaction as the effect (see the runtime's `inbox`).

use super::insert_once;
use memberline_schema::ids::EventId;
use sea_orm::{DatabaseTransaction, DbErr};

/// Claims `event_id` for `consumer`; `false` when it was claimed before.
pub async fn claim(
    txn: &DatabaseTransaction,
    consumer: &str,
    event_id: EventId,
    event_type: &str,
) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO consumed_events (consumer, event_id, event_type) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING RETURNING event_id",
        [consumer.into(), event_id.into(), event_type.into()],
    )
    .await
}
