//! The outbox relay: publishes committed outbox rows to the events exchange.
//!
//! Each batch is one database transaction: take up to `batch_size` unpublished rows with
//! `FOR UPDATE SKIP LOCKED` (so several relays share the work without an id cursor, which would
//! skip rows whose transactions commit out of order), publish each as a persistent, `mandatory`
//! message on a channel in confirm mode, and mark a row published only after a positive confirm
//! that carried no returned message. Everything else stays unpublished and is retried.
//!
//! A failure is charged to the row it belongs to: a row the broker refuses, returns or could
//! never accept (say, a routing key longer than AMQP's 255-byte short string) waits for its next
//! attempt with backoff and is quarantined after `relay.quarantine_after_attempts`, while the
//! rows around it are published. Only a broken channel or database ends the session.
//!
//! The relay sleeps on PostgreSQL `LISTEN memberline_outbox` (a trigger NOTIFYs on every
//! insert) and, embedded in the gateway, on an in-process wake-up that purchases use instead of
//! the NOTIFY (see [`Relay::woken_by`]), so an event reaches the broker milliseconds after its
//! commit; a slow poll is only a safety net. When the broker is unreachable it reconnects with capped, jittered backoff until
//! it is shut down; purchases never wait for it.
//!
//! Delivery is at least once: a confirm lost between the broker and us means the row is
//! published again, and consumers deduplicate on the event id.

use super::{NOTIFY_CHANNEL, Wake};
use crate::broker;
use crate::metrics::Metrics;
use crate::settings::RelaySettings;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use memberline_schema::topology::{Part, Topology};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span};
use uuid::Uuid;

#[derive(Clone)]
pub struct Relay {
    db: DatabaseConnection,
    amqp_url: String,
    topology: Topology,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    /// Wakes the relay from inside its process (see [`Relay::woken_by`]).
    wake: Arc<Notify>,
}

/// What happened to one outbox row in a batch.
enum RowOutcome {
    Published(Uuid),
    /// The row itself cannot be published (unreadable, a key AMQP cannot carry, returned as
    /// unroutable): charged an attempt, backed off, quarantined after too many.
    Refused(Uuid, String),
    /// The broker or the channel failed (timeout, nack, lost channel): not the row's fault, so
    /// no attempt is charged and a broker outage never quarantines healthy events.
    Failed(Uuid, String),
}

/// An outbox row as the message the relay publishes.
struct OutboxMessage {
    routing_key: ShortString,
    body: Vec<u8>,
    props: BasicProperties,
}

impl OutboxMessage {
    /// Builds row `id`'s message; `Err` says why this row can never be published as it is (a
    /// column of the wrong type, or a routing key or type longer than AMQP's 255-byte short
    /// string, which lapin would panic on rather than refuse).
    fn read(id: Uuid, row: &sea_orm::QueryResult) -> Result<Self, String> {
        let column = |e: sea_orm::DbErr| format!("outbox row unreadable: {e}");
        let routing_key = row.try_get::<String>("", "routing_key").map_err(column)?;
        let event_type = row.try_get::<String>("", "event_type").map_err(column)?;
        let correlation_id = row.try_get::<Uuid>("", "correlation_id").map_err(column)?;
        let payload = row
            .try_get::<serde_json::Value>("", "payload")
            .map_err(column)?;
        let created_at = row
            .try_get::<chrono::DateTime<chrono::Utc>>("", "created_at")
            .map_err(column)?;
        let short = |what: &str, value: String| {
            ShortString::try_new(value).map_err(|e| format!("{what} cannot be published: {e}"))
        };
        let routing_key = short("routing key", routing_key)?;
        let event_type = short("event type", event_type)?;

        let mut headers = FieldTable::default();
        headers.insert(
            "x-correlation-id".into(),
            AMQPValue::LongString(LongString::from(correlation_id.to_string())),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2) // persistent: survives a broker restart
            .with_content_type("application/json".into())
            .with_message_id(id.to_string().into())
            .with_correlation_id(correlation_id.to_string().into())
            .with_type(event_type)
            .with_app_id("memberline".into())
            .with_timestamp(created_at.timestamp().max(0) as u64)
            .with_headers(headers);
        Ok(Self {
            routing_key,
            body: payload.to_string().into_bytes(),
            props,
        })
    }
}

impl Relay {
    pub fn new(
        db: DatabaseConnection,
        amqp_url: String,
        topology: Topology,
        settings: RelaySettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            amqp_url,
            topology,
            settings,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Also wakes on `wake`, when it wakes in-process: writers in this process that commit
    /// outbox rows without the trigger's NOTIFY call [`Wake::committed`] after their commit.
    pub fn woken_by(mut self, wake: &Wake) -> Self {
        if let Some(notify) = wake.in_process_notify() {
            self.wake = notify;
        }
        self
    }

    /// True while the relay is connected to the broker and listening for new rows (readiness).
    pub fn ready(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Runs until `shutdown` fires. Connection failures are retried with capped backoff for as
    /// long as the relay runs; the batch in flight at shutdown finishes first.
    pub async fn run(self, shutdown: CancellationToken) {
        // A relay session never ends fatally: only the shutdown stops it.
        let _ = broker::supervise(
            "Relay",
            self.settings.max_reconnect_delay_ms,
            &shutdown,
            |progress| self.session(&shutdown, progress),
        )
        .await;
        self.ready.store(false, Ordering::SeqCst);
        info!("Relay stopped");
    }

    /// One connected session: returns `Ok` on shutdown, `Err` when a connection broke.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        progress: broker::Progress,
    ) -> Result<(), broker::SessionError> {
        self.ready.store(false, Ordering::SeqCst);
        let conn =
            broker::connect(&self.amqp_url, &format!("{}.relay", self.topology.prefix())).await?;
        // Only what the relay publishes to: exchanges, worker queues and their bindings. A
        // queue the broker holds with other arguments is used as it is (reported, not fatal),
        // and retry tiers are the workers' own business.
        for drift in self.topology.declare_part(&conn, Part::Publishing).await? {
            error!(queue = %drift.name, error = %drift.error,
                "Broker topology differs from this configuration; publishing to the existing \
                 one until an operator reconciles it (README, Operations)");
        }
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut listener = PgListener::connect_with(self.db.get_postgres_connection_pool()).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        progress.connected();
        self.ready.store(true, Ordering::SeqCst);
        info!(exchange = %self.topology.events_exchange(), "Relay connected");

        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        loop {
            let batch = self
                .publish_batch(&channel)
                .instrument(info_span!("relay_batch"))
                .await;
            let (taken, published) = match batch {
                Ok(counts) => counts,
                Err(e) => {
                    self.ready.store(false, Ordering::SeqCst);
                    return Err(e.into());
                }
            };
            if shutdown.is_cancelled() {
                broker::close(&conn, "relay shutting down").await;
                return Ok(());
            }
            if taken as u64 >= self.settings.batch_size && published == taken {
                // A full batch, all confirmed: more rows are probably waiting. After any
                // failure we wait instead, so rows that keep failing cannot spin the loop.
                continue;
            }
            if taken > 1 && published == taken && self.settings.linger_ms > 0 {
                // Several rows since the last batch: commits are streaming in, so let the next
                // batch gather them. A lone row (light load) is followed at once, as before.
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        broker::close(&conn, "relay shutting down").await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(Duration::from_millis(self.settings.linger_ms)) => {}
                }
                while listener.next_buffered().is_some() {}
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    broker::close(&conn, "relay shutting down").await;
                    return Ok(());
                }
                notified = listener.recv() => {
                    if let Err(e) = notified {
                        self.ready.store(false, Ordering::SeqCst);
                        return Err(e.into());
                    }
                    // One batch serves every commit so far: drop the notifications already
                    // buffered instead of waking once per commit (under load they would pile up
                    // in PostgreSQL's notification queue).
                    while listener.next_buffered().is_some() {}
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Publishes one batch; returns how many rows it took and how many were confirmed. `Err`
    /// means the channel or the database failed; rows not confirmed stay unpublished.
    async fn publish_batch(&self, channel: &Channel) -> anyhow::Result<(usize, usize)> {
        let txn = self.db.begin().await?;
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id, routing_key, event_type, correlation_id, payload, created_at \
                 FROM outbox WHERE published_at IS NULL AND quarantined_at IS NULL \
                 AND next_attempt_at <= now() \
                 ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
                [(self.settings.batch_size as i64).into()],
            ))
            .await?;
        if rows.is_empty() {
            txn.commit().await?;
            return Ok((0, 0));
        }
        let taken = rows.len();
        let (outcomes, fatal) = self.publish_rows(channel, &rows).await;
        #[cfg(feature = "failpoints")]
        crate::failpoints::hit("relay_after_confirm");
        if let Err(e) = record(&txn, &outcomes, &self.settings).await {
            let _ = txn.rollback().await;
            return Err(e.into());
        }
        txn.commit().await?;

        let published = outcomes
            .iter()
            .filter(|o| matches!(o, RowOutcome::Published(_)))
            .count();
        let failed = outcomes.len() - published;
        self.metrics.outbox_batch(published as u64, failed as u64);
        debug!(taken, published, failed, "Relay batch done");
        match fatal {
            Some(e) => Err(e),
            None => Ok((taken, published)),
        }
    }

    /// Publishes `rows` and waits for their confirms: one outcome per row tried, and the error
    /// that broke the channel, if one did (the rows after it are left untried).
    async fn publish_rows(
        &self,
        channel: &Channel,
        rows: &[sea_orm::QueryResult],
    ) -> (Vec<RowOutcome>, Option<anyhow::Error>) {
        let exchange = ShortString::from(self.topology.events_exchange());
        let mut pending = Vec::with_capacity(rows.len());
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut fatal = None;
        for row in rows {
            // Without its id a row cannot even be marked failed; the key column is never null,
            // so this is the database or the schema failing, not the row.
            let id = match row.try_get::<Uuid>("", "id") {
                Ok(id) => id,
                Err(e) => {
                    fatal = Some(anyhow::anyhow!("outbox row unreadable: {e}"));
                    break;
                }
            };
            // A row no broker could ever accept fails on its own (retried with backoff, then
            // quarantined); it must not end the session and starve the rows behind it.
            let message = match OutboxMessage::read(id, row) {
                Ok(message) => message,
                Err(error) => {
                    outcomes.push(RowOutcome::Refused(id, error));
                    continue;
                }
            };
            let options = BasicPublishOptions {
                // Unroutable messages come back instead of vanishing (the events exchange also
                // has an alternate exchange, so this is the second line of defence).
                mandatory: true,
                ..Default::default()
            };
            // A broker under a memory or disk alarm blocks publishers: bound the wait.
            let publish = channel.basic_publish(
                exchange.clone(),
                message.routing_key,
                options,
                &message.body,
                message.props,
            );
            match tokio::time::timeout(broker::OP_TIMEOUT, publish).await {
                Ok(Ok(confirm)) => pending.push((id, confirm)),
                Ok(Err(e)) => {
                    outcomes.push(RowOutcome::Failed(id, format!("publish failed: {e}")));
                    fatal = Some(e.into());
                    break;
                }
                Err(_) => {
                    outcomes.push(RowOutcome::Failed(id, "publish timed out".into()));
                    fatal = Some(anyhow::anyhow!("publish timed out (broker blocked?)"));
                    break;
                }
            }
        }

        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.settings.confirm_timeout_ms);
        for (id, confirm) in pending {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => outcomes.push(RowOutcome::Published(id)),
                Ok(Ok(Confirmation::Ack(Some(returned)))) => outcomes.push(RowOutcome::Refused(
                    id,
                    format!(
                        "returned by the broker: {} {}",
                        returned.reply_code, returned.reply_text
                    ),
                )),
                Ok(Ok(Confirmation::Nack(_))) => {
                    outcomes.push(RowOutcome::Failed(id, "nacked by the broker".into()))
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    outcomes.push(RowOutcome::Failed(id, "channel not in confirm mode".into()));
                    fatal.get_or_insert_with(|| anyhow::anyhow!("channel not in confirm mode"));
                }
                Ok(Err(e)) => {
                    outcomes.push(RowOutcome::Failed(id, format!("confirm failed: {e}")));
                    fatal.get_or_insert_with(|| e.into());
                }
                Err(_) => {
                    outcomes.push(RowOutcome::Failed(id, "confirm timed out".into()));
                    fatal.get_or_insert_with(|| anyhow::anyhow!("publisher confirm timed out"));
                }
            }
        }
        (outcomes, fatal)
    }
}

/// Marks confirmed rows published; gives each refused row its error, its next attempt time
/// (`relay.retry_base_ms` doubling per attempt, capped at `relay.retry_max_ms`) and, after
/// `relay.quarantine_after_attempts`, its quarantine; and notes the error of a row that failed
/// with the broker, without charging it (the session is rebuilt with its own backoff).
async fn record(
    txn: &DatabaseTransaction,
    outcomes: &[RowOutcome],
    settings: &RelaySettings,
) -> Result<(), sea_orm::DbErr> {
    let published: Vec<Uuid> = outcomes
        .iter()
        .filter_map(|o| match o {
            RowOutcome::Published(id) => Some(*id),
            RowOutcome::Refused(..) | RowOutcome::Failed(..) => None,
        })
        .collect();
    if !published.is_empty() {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)",
            [published.into()],
        ))
        .await?;
    }
    for outcome in outcomes {
        let (id, error) = match outcome {
            RowOutcome::Published(_) => continue,
            RowOutcome::Failed(id, error) => {
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE outbox SET last_error = $2 WHERE id = $1",
                    [(*id).into(), error.clone().into()],
                ))
                .await?;
                continue;
            }
            RowOutcome::Refused(id, error) => (id, error),
        };
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = now() + make_interval(secs => \
                     LEAST($4::float8, $3::float8 * power(2, LEAST(attempts, 30))) / 1000.0), \
                 quarantined_at = CASE WHEN attempts + 1 >= $5 THEN now() END \
                 WHERE id = $1 RETURNING attempts, quarantined_at IS NOT NULL AS quarantined",
                [
                    (*id).into(),
                    error.clone().into(),
                    (settings.retry_base_ms as f64).into(),
                    (settings.retry_max_ms as f64).into(),
                    settings.quarantine_after_attempts.into(),
                ],
            ))
            .await?;
        if let Some(row) = row
            && row.try_get::<bool>("", "quarantined")?
        {
            let attempts: i32 = row.try_get("", "attempts")?;
            error!(event_id = %id, attempts, last_error = %error,
                "Outbox row quarantined after repeated publish failures; inspect and release it \
                 with GET /v1/admin/outbox/quarantined and POST /v1/admin/outbox/{id}/release");
        }
    }
    Ok(())
}

/// `memberline relay`: the relay alone, without the HTTP API, with its own `/metrics` (relay
/// counters and the outbox lag) and `/readyz` (200 while connected) on `relay.metrics_addr`.
pub async fn run_standalone(
    settings: crate::Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = crate::db::connect(&settings.database).await?;
    let metrics = Arc::new(Metrics::default());
    let relay = Relay::new(
        db.clone(),
        settings.amqp.url.expose().to_owned(),
        settings.topology(),
        settings.relay.clone(),
        metrics.clone(),
    );
    let router = crate::ops::router(metrics, Some(db), vec![("relay", relay.ready())]);
    crate::ops::serve(
        &settings.relay.metrics_addr,
        "relay.metrics_addr",
        router,
        shutdown.clone(),
    )
    .await?;
    relay.run(shutdown).await;
    Ok(())
}
