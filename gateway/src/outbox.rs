//! Writing events: the only way an event leaves a state change is a row in the `outbox` table,
//! inserted in the same transaction as the change. Nothing here talks to the broker; the
//! [`crate::relay`] publishes committed rows.

use memberline_schema::entities::outbox;
use memberline_schema::events::{Envelope, Event};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, Set};

/// Inserts `envelope` into the outbox using `conn`, which must be the caller's open transaction.
pub async fn enqueue<C: ConnectionTrait, P: Event>(
    conn: &C,
    envelope: &Envelope<P>,
) -> Result<(), DbErr> {
    let payload = serde_json::to_value(envelope)
        .map_err(|e| DbErr::Custom(format!("event cannot be serialized: {e}")))?;
    outbox::ActiveModel {
        id: Set(envelope.event_id),
        aggregate_type: Set(P::AGGREGATE.to_owned()),
        aggregate_id: Set(envelope.payload.aggregate_id()),
        event_type: Set(envelope.event_type.clone()),
        routing_key: Set(envelope.routing_key()),
        correlation_id: Set(envelope.correlation_id),
        payload: Set(payload),
        created_at: Set(envelope.occurred_at),
        published_at: Set(None),
        attempts: Set(0),
        last_error: Set(None),
    }
    .insert(conn)
    .await?;
    Ok(())
}
