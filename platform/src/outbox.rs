//! Writing events: the only way an event leaves a state change is a row in the `outbox` table,
//! inserted in the same transaction as the change. Nothing here talks to the broker; the
//! relay (`memberline relay` or the one embedded in the gateway) publishes committed rows.

use memberline_schema::entities::outbox;
use memberline_schema::events::{Envelope, Event};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, NotSet, Set};

/// The columns of the outbox row of `envelope` that its writer sets; the others keep their
/// defaults (`next_attempt_at` is the database's `now()`: the relay compares it with the
/// database's clock, and a host clock a few milliseconds ahead would make a fresh row wait for
/// the poll).
pub struct Row {
    pub id: uuid::Uuid,
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub event_type: memberline_schema::states::EventType,
    pub routing_key: String,
    pub correlation_id: uuid::Uuid,
    pub payload: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Row {
    pub fn of<P: Event>(envelope: &Envelope<P>) -> Result<Self, DbErr> {
        Ok(Self {
            id: envelope.event_id,
            aggregate_type: P::AGGREGATE,
            aggregate_id: envelope.payload.aggregate_id(),
            event_type: envelope.event_type,
            routing_key: envelope.routing_key(),
            correlation_id: envelope.correlation_id,
            payload: serde_json::to_value(envelope)
                .map_err(|e| DbErr::Custom(format!("event cannot be serialized: {e}")))?,
            created_at: envelope.occurred_at,
        })
    }
}

/// Inserts `envelope` into the outbox using `conn`, which must be the caller's open transaction.
pub async fn enqueue<C: ConnectionTrait, P: Event>(
    conn: &C,
    envelope: &Envelope<P>,
) -> Result<(), DbErr> {
    let row = Row::of(envelope)?;
    outbox::ActiveModel {
        id: Set(row.id),
        aggregate_type: Set(row.aggregate_type.to_owned()),
        aggregate_id: Set(row.aggregate_id),
        event_type: Set(row.event_type),
        routing_key: Set(row.routing_key),
        correlation_id: Set(row.correlation_id),
        payload: Set(row.payload),
        created_at: Set(row.created_at),
        published_at: Set(None),
        attempts: Set(0),
        last_error: Set(None),
        // Left to the column's DEFAULT now(): the relay compares it with the database's clock,
        // and a host clock a few milliseconds ahead would make a fresh row wait for the poll.
        next_attempt_at: NotSet,
        quarantined_at: Set(None),
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// How far the relay is behind, read from the database at scrape time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lag {
    /// Rows committed and not yet confirmed by the broker (quarantined rows excluded).
    pub waiting: f64,
    /// Age of the oldest such row, in seconds.
    pub oldest_age_seconds: f64,
    /// Rows left out after too many failed attempts, waiting for an operator.
    pub quarantined: f64,
}

/// The outbox lag; every field `-1` when the database cannot be read.
pub async fn lag<C: ConnectionTrait>(conn: &C) -> Lag {
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) FILTER (WHERE quarantined_at IS NULL)::bigint AS waiting, \
             COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) \
                 FILTER (WHERE quarantined_at IS NULL)), 0)::float8 AS oldest, \
             count(*) FILTER (WHERE quarantined_at IS NOT NULL)::bigint AS quarantined \
             FROM outbox WHERE published_at IS NULL",
        ))
        .await;
    let unreadable = Lag {
        waiting: -1.0,
        oldest_age_seconds: -1.0,
        quarantined: -1.0,
    };
    let Ok(Some(row)) = row else {
        return unreadable;
    };
    let read = || -> Result<Lag, sea_orm::DbErr> {
        Ok(Lag {
            waiting: row.try_get::<i64>("", "waiting")? as f64,
            oldest_age_seconds: row.try_get::<f64>("", "oldest")?,
            quarantined: row.try_get::<i64>("", "quarantined")? as f64,
        })
    };
    read().unwrap_or(unreadable)
}
