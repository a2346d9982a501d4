//! The transactional outbox, the one way an event leaves a state change: a row in the `outbox`
//! table, inserted in the same transaction as the change ([`enqueue`], or [`insert_sql`] inside
//! a statement that does the change), published by the [`relay`] only once committed, and
//! woken after the commit ([`Wake`]). Rows the relay could not publish are quarantined for an
//! operator ([`quarantine`]). Nothing that writes a row talks to the broker.

pub mod quarantine;
pub mod relay;

use memberline_schema::events::{Envelope, Event};
use memberline_schema::ids::EventId;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::Notify;

/// The PostgreSQL notification channel the outbox trigger signals.
pub const NOTIFY_CHANNEL: &str = "memberline_outbox";

/// The columns of the outbox row of `envelope` that its writer sets, named as the table's; the
/// others keep their defaults (`next_attempt_at` is the database's `now()`: the relay compares
/// it with the database's clock, and a host clock a few milliseconds ahead would make a fresh
/// row wait for the poll).
#[derive(Debug, Serialize)]
pub struct Row {
    pub id: EventId,
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub event_type: memberline_schema::states::EventType,
    pub routing_key: String,
    pub correlation_id: uuid::Uuid,
    pub payload: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The columns a writer sets: the fields of [`Row`].
const COLUMNS: [&str; 8] = [
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "routing_key",
    "correlation_id",
    "payload",
    "created_at",
];

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

    /// The row as the JSON that [`insert_sql`] reads.
    pub fn to_json(&self) -> Result<serde_json::Value, DbErr> {
        serde_json::to_value(self)
            .map_err(|e| DbErr::Custom(format!("outbox row cannot be serialized: {e}")))
    }
}

/// The outbox insert, the only one: the [`Row`] in `json` (an SQL expression of type `jsonb`),
/// once for each row of `from` when given (so `from` empty inserts nothing). Statements that
/// write an event beside their change in one round trip embed it as a CTE.
pub fn insert_sql(json: &str, from: Option<&str>) -> String {
    let select: Vec<String> = COLUMNS.iter().map(|c| format!("x.{c}")).collect();
    format!(
        "INSERT INTO outbox ({}) SELECT {} FROM {}jsonb_populate_record(NULL::outbox, {json}) x",
        COLUMNS.join(", "),
        select.join(", "),
        from.map(|f| format!("{f}, ")).unwrap_or_default(),
    )
}

/// Inserts `envelope` into the outbox using `conn`, which must be the caller's open transaction.
pub async fn enqueue<C: ConnectionTrait, P: Event>(
    conn: &C,
    envelope: &Envelope<P>,
) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        insert_sql("$1::jsonb", None),
        [Row::of(envelope)?.to_json()?.into()],
    ))
    .await?;
    Ok(())
}

/// How the relay hears of committed rows. By default the outbox trigger's NOTIFY wakes
/// whichever relay listens. A process that embeds the relay wakes it in-process instead:
/// its writers opt their transactions out of the NOTIFY (PostgreSQL serializes notifying
/// commits database-wide, see `m20261125_000011_outbox_notify_opt_out`) and call
/// [`Wake::committed`] after the commit. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Wake(Option<Arc<Notify>>);

impl Wake {
    /// Wakes by PostgreSQL's NOTIFY: any relay, anywhere.
    pub fn by_notify() -> Self {
        Self(None)
    }

    /// Wakes the relay of this process (see [`relay::Relay::woken_by`]).
    pub fn in_process() -> Self {
        Self(Some(Arc::new(Notify::new())))
    }

    /// The value a writer's transaction sets `memberline.outbox_notify` to, through
    /// [`notify_setting_sql`]: `off` when the relay is woken in-process.
    pub fn notify_setting(&self) -> &'static str {
        if self.0.is_some() { "off" } else { "on" }
    }

    /// Tells the in-process relay that outbox rows were committed (nothing with NOTIFY: the
    /// trigger did).
    pub fn committed(&self) {
        if let Some(notify) = &self.0 {
            notify.notify_one();
        }
    }

    fn in_process_notify(&self) -> Option<Arc<Notify>> {
        self.0.clone()
    }
}

/// An SQL expression that sets this transaction's `memberline.outbox_notify` to `param` (a
/// placeholder bound to [`Wake::notify_setting`]), for the first statement of a writer.
pub fn notify_setting_sql(param: &str) -> String {
    format!("set_config('memberline.outbox_notify', {param}, true)")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_as_json_names_exactly_the_columns_the_insert_sets() {
        let row = Row {
            id: EventId(uuid::Uuid::nil()),
            aggregate_type: "order",
            aggregate_id: "1".into(),
            event_type: memberline_schema::states::EventType::OrderPaid,
            routing_key: "order.paid.v1".into(),
            correlation_id: uuid::Uuid::nil(),
            payload: serde_json::json!({}),
            created_at: chrono::Utc::now(),
        };
        let json = row.to_json().unwrap();
        let mut fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        let mut columns = COLUMNS.to_vec();
        columns.sort_unstable();
        assert_eq!(fields, columns);
    }

    #[test]
    fn the_insert_runs_once_per_row_of_its_source() {
        assert_eq!(
            insert_sql("r.outbox", Some("r")),
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, routing_key, \
             correlation_id, payload, created_at) SELECT x.id, x.aggregate_type, x.aggregate_id, \
             x.event_type, x.routing_key, x.correlation_id, x.payload, x.created_at \
             FROM r, jsonb_populate_record(NULL::outbox, r.outbox) x"
        );
    }
}
