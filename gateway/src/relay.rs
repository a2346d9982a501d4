//! The outbox relay: publishes committed outbox rows to the events exchange.
//!
//! Each batch is one database transaction: take up to `batch_size` unpublished rows with
//! `FOR UPDATE SKIP LOCKED` (so several relays share the work without an id cursor, which would
//! skip rows whose transactions commit out of order), publish each as a persistent, `mandatory`
//! message on a channel in confirm mode, and mark a row published only after a positive confirm
//! that carried no returned message. Everything else stays unpublished and is retried.
//!
//! The relay sleeps on PostgreSQL `LISTEN memberline_outbox` (a trigger NOTIFYs on every
//! insert), so an event reaches the broker milliseconds after its commit; a slow poll is only a
//! safety net. When the broker is unreachable it reconnects with capped, jittered backoff until
//! it is shut down; purchases never wait for it.
//!
//! Delivery is at least once: a confirm lost between the broker and us means the row is
//! published again, and consumers deduplicate on the event id.

use crate::metrics::Metrics;
use crate::settings::RelaySettings;
use backon::BackoffBuilder;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use memberline_schema::topology::{PRECONDITION_FAILED, Topology, reply_code};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait,
};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

/// The PostgreSQL notification channel the outbox trigger signals.
pub const NOTIFY_CHANNEL: &str = "memberline_outbox";

/// Longest wait for one broker operation (connect, publish, close).
const BROKER_OP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Relay {
    db: DatabaseConnection,
    amqp_url: String,
    topology: Topology,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
}

/// What happened to one outbox row in a batch.
enum RowOutcome {
    Published(Uuid),
    Failed(Uuid, String),
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
        }
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(self.settings.max_reconnect_delay_ms))
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Runs until `shutdown` fires. Connection failures are retried with capped backoff for as
    /// long as the relay runs; the batch in flight at shutdown finishes first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut delays = self.backoff();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let mut connected = false;
            match self.session(&shutdown, &mut connected).await {
                Ok(()) => break,
                Err(e) => {
                    if connected {
                        delays = self.backoff();
                    }
                    let delay = delays
                        .next()
                        .unwrap_or(Duration::from_millis(self.settings.max_reconnect_delay_ms));
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                        "Relay lost the broker or the database; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        info!("Relay stopped");
    }

    /// One connected session: returns `Ok` on shutdown, `Err` when a connection broke.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        connected: &mut bool,
    ) -> anyhow::Result<()> {
        let conn = tokio::time::timeout(
            BROKER_OP_TIMEOUT,
            Connection::connect(&self.amqp_url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to the broker timed out"))??;
        let mut channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if let Err(e) = self.topology.declare(&channel).await {
            if reply_code(&e) != Some(PRECONDITION_FAILED) {
                return Err(e.into());
            }
            // The broker holds queues declared with other arguments (a changed retry ladder or
            // delivery limit). Keep delivering to the queues that exist; an operator must
            // reconcile them (README, Operations).
            error!(error = %e, "Broker topology differs from this configuration; \
                publishing to the existing queues until it is reconciled");
            channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            self.topology
                .declare_exchanges_and_verify_queues(&channel)
                .await?;
        }
        let mut listener = PgListener::connect_with(self.db.get_postgres_connection_pool()).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        *connected = true;
        info!(exchange = %self.topology.events_exchange(), "Relay connected");

        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        loop {
            let (taken, published) = self
                .publish_batch(&channel)
                .instrument(info_span!("relay_batch"))
                .await?;
            if shutdown.is_cancelled() {
                close(&conn).await;
                return Ok(());
            }
            if taken as u64 >= self.settings.batch_size && published == taken {
                // A full batch, all confirmed: more rows are probably waiting. After any
                // failure we wait instead, so rows that keep failing cannot spin the loop.
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    close(&conn).await;
                    return Ok(());
                }
                notified = listener.recv() => { notified?; }
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
                 FROM outbox WHERE published_at IS NULL \
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
        if let Err(e) = record(&txn, &outcomes).await {
            let _ = txn.rollback().await;
            return Err(e.into());
        }
        txn.commit().await?;

        let published = outcomes
            .iter()
            .filter(|o| matches!(o, RowOutcome::Published(_)))
            .count();
        self.metrics
            .add("memberline_outbox_published_total", &[], published as u64);
        let failed = outcomes.len() - published;
        if failed > 0 {
            self.metrics.add(
                "memberline_outbox_publish_failures_total",
                &[],
                failed as u64,
            );
        }
        debug!(taken, published, failed, "Relay batch done");
        match fatal {
            Some(e) => Err(e),
            None => Ok((taken, published)),
        }
    }

    async fn publish_rows(
        &self,
        channel: &Channel,
        rows: &[sea_orm::QueryResult],
    ) -> (Vec<RowOutcome>, Option<anyhow::Error>) {
        let exchange = self.topology.events_exchange();
        let mut pending = Vec::with_capacity(rows.len());
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut fatal = None;
        for row in rows {
            let parsed = (|| -> Result<_, sea_orm::DbErr> {
                Ok((
                    row.try_get::<Uuid>("", "id")?,
                    row.try_get::<String>("", "routing_key")?,
                    row.try_get::<String>("", "event_type")?,
                    row.try_get::<Uuid>("", "correlation_id")?,
                    row.try_get::<serde_json::Value>("", "payload")?,
                    row.try_get::<chrono::DateTime<chrono::Utc>>("", "created_at")?,
                ))
            })();
            let (id, routing_key, event_type, correlation_id, payload, created_at) = match parsed {
                Ok(v) => v,
                Err(e) => {
                    fatal = Some(anyhow::anyhow!("outbox row unreadable: {e}"));
                    break;
                }
            };
            let body = payload.to_string().into_bytes();
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
                .with_type(event_type.into())
                .with_app_id("memberline".into())
                .with_timestamp(created_at.timestamp().max(0) as u64)
                .with_headers(headers);
            let options = BasicPublishOptions {
                // Unroutable messages come back instead of vanishing (the events exchange also
                // has an alternate exchange, so this is the second line of defence).
                mandatory: true,
                ..Default::default()
            };
            // A broker under a memory or disk alarm blocks publishers: bound the wait.
            let publish = channel.basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                options,
                &body,
                props,
            );
            match tokio::time::timeout(BROKER_OP_TIMEOUT, publish).await {
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
                Ok(Ok(Confirmation::Ack(Some(returned)))) => outcomes.push(RowOutcome::Failed(
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

/// Closes the connection, giving up after a bounded wait (a blocked broker never answers).
async fn close(conn: &Connection) {
    let _ = tokio::time::timeout(
        BROKER_OP_TIMEOUT,
        conn.close(200, "relay shutting down".into()),
    )
    .await;
}

async fn record(txn: &DatabaseTransaction, outcomes: &[RowOutcome]) -> Result<(), sea_orm::DbErr> {
    let published: Vec<Uuid> = outcomes
        .iter()
        .filter_map(|o| match o {
            RowOutcome::Published(id) => Some(*id),
            RowOutcome::Failed(..) => None,
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
        if let RowOutcome::Failed(id, error) = outcome {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
                [(*id).into(), error.clone().into()],
            ))
            .await?;
        }
    }
    Ok(())
}
