//! The consumer runtime every worker uses.
//!
//! One supervisor loop per worker: connect (capped, jittered backoff from `backon`), open a
//! channel, apply `basic_qos` (again after every reconnect: lapin's own recovery would not
//! restore it, so we do not use it), put the channel in confirm mode, declare or verify the
//! topology, consume. Any connection or channel error tears the session down and the
//! supervisor builds a new one. Shutdown stops consuming, drains in-flight deliveries with a
//! timeout and closes cleanly.
//!
//! Each delivery: decode the envelope, then in ONE transaction claim the event id in
//! `consumed_events` and apply the handler's effect, commit, and only then ack. A duplicate
//! (claim already taken) is acked without effect. Failures are mapped by [`decide`] to a retry
//! tier (re-published with our attempt header, then the original acked) or the dead-letter queue
//! (with reason, attempts, last error and original routing key in headers). An ack that lapin
//! reports as not sent is logged and counted; the broker redelivers and the claim makes that
//! harmless.

use crate::decide::{Decision, HandlerError, Outcome, decide};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use memberline_gateway::metrics::Metrics;
use memberline_gateway::settings::Settings;
use memberline_schema::events::EnvelopeHead;
use memberline_schema::topology::{NOT_FOUND, PRECONDITION_FAILED, Topology, Worker, reply_code};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait,
};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// Header carrying how many attempts failed before this delivery.
pub const ATTEMPT_HEADER: &str = "x-attempt";
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";
pub const LAST_ERROR_HEADER: &str = "x-last-error";
pub const DEATH_REASON_HEADER: &str = "x-death-reason";
pub const ATTEMPTS_HEADER: &str = "x-attempts";

/// Longest wait for one broker operation (connect, publish, cancel, close).
const BROKER_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A decoded delivery as handlers see it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub head: EnvelopeHead,
    /// The whole envelope, for handlers to decode their payload type from.
    pub envelope: serde_json::Value,
    pub attempt: u32,
}

/// A message to publish to the push exchange after the effect committed.
#[derive(Debug, Clone)]
pub struct Push {
    pub routing_key: String,
    pub body: serde_json::Value,
}

/// What a handler did inside the transaction.
#[derive(Debug, Default)]
pub struct Effects {
    /// The business key shows the effect was applied before (under another event id): the
    /// transaction is rolled back and the delivery counted as a duplicate.
    pub already_applied: bool,
    /// Pushes to publish once the transaction committed.
    pub pushes: Vec<Push>,
}

impl Effects {
    pub fn applied() -> Self {
        Self::default()
    }
    pub fn already_applied() -> Self {
        Self {
            already_applied: true,
            pushes: vec![],
        }
    }
}

/// One worker's effect.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    fn worker(&self) -> Worker;

    /// Applies the effect of `msg` inside `txn`, which already holds this event's claim in
    /// `consumed_events`. Must not commit; must not talk to the broker (return [`Push`]es).
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError>;
}

/// Everything a worker needs besides its handler.
#[derive(Clone)]
pub struct WorkerContext {
    pub db: DatabaseConnection,
    pub settings: Arc<Settings>,
    pub topology: Topology,
    pub metrics: Arc<Metrics>,
    /// True while a consumer is attached (readiness).
    pub ready: Arc<AtomicBool>,
}

impl WorkerContext {
    pub fn new(db: DatabaseConnection, settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            db,
            topology: settings.topology(),
            settings: Arc::new(settings),
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

fn backoff(max_ms: u64) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(max_ms.max(50)))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `handler` until `shutdown` fires, rebuilding connection, channel, qos and consumer after
/// any error. Returns an error only when the worker must not run at all (no dead-letter path).
pub async fn run(
    handler: Arc<dyn Handler>,
    ctx: WorkerContext,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let worker = handler.worker();
    let max_delay = ctx.settings.workers.max_reconnect_delay_ms;
    let mut delays = backoff(max_delay);
    let span = info_span!("worker", consumer = worker.as_str());
    async {
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let mut connected = false;
            match session(&handler, &ctx, &shutdown, &mut connected).await {
                Ok(()) => break,
                Err(SessionError::Fatal(e)) => {
                    ctx.ready.store(false, Ordering::SeqCst);
                    error!(error = %e, "Worker cannot start");
                    return Err(e);
                }
                Err(SessionError::Lost(e)) => {
                    ctx.ready.store(false, Ordering::SeqCst);
                    if connected {
                        delays = backoff(max_delay);
                    }
                    let delay = delays.next().unwrap_or(Duration::from_millis(max_delay));
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                        "Worker lost its connection; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        ctx.ready.store(false, Ordering::SeqCst);
        info!("Worker stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

enum SessionError {
    /// Retry with a new session.
    Lost(anyhow::Error),
    /// Do not start.
    Fatal(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for SessionError {
    fn from(e: E) -> Self {
        SessionError::Lost(e.into())
    }
}

async fn session(
    handler: &Arc<dyn Handler>,
    ctx: &WorkerContext,
    shutdown: &CancellationToken,
    connected: &mut bool,
) -> Result<(), SessionError> {
    let worker = handler.worker();
    let name = format!(
        "{}.{}.{}",
        ctx.topology.prefix(),
        worker.as_str(),
        std::process::id()
    );
    let conn = tokio::time::timeout(
        BROKER_OP_TIMEOUT,
        Connection::connect(
            ctx.settings.amqp.url.expose(),
            ConnectionProperties::default().with_connection_name(LongString::from(name)),
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to the broker timed out"))??;
    let mut channel = open_channel(&conn, ctx.settings.workers.prefetch).await?;
    if ctx.settings.workers.declare_topology
        && let Err(e) = ctx.topology.declare(&channel).await
    {
        if reply_code(&e) != Some(PRECONDITION_FAILED) {
            return Err(e.into());
        }
        // Queues exist with other arguments (a changed ladder): run on what exists, as long as
        // the dead-letter path is there (checked next), and tell the operator.
        error!(error = %e, "Broker topology differs from this configuration; \
            consuming from the existing queues until it is reconciled");
        channel = open_channel(&conn, ctx.settings.workers.prefetch).await?;
    }
    if let Err(e) = ctx.topology.verify_dead_letter_path(&channel, worker).await {
        if reply_code(&e) != Some(NOT_FOUND) {
            // A network blip is not a missing queue: try again with a new session.
            return Err(e.into());
        }
        close(&conn).await;
        return Err(SessionError::Fatal(anyhow::anyhow!(
            "the dead-letter path of {} is missing ({e}); declare the topology first",
            worker.as_str()
        )));
    }
    let queue = ctx.topology.work_queue(worker);
    let tag = format!("{}-{}", worker.as_str(), uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    *connected = true;
    ctx.ready.store(true, Ordering::SeqCst);
    info!(queue = %queue, prefetch = ctx.settings.workers.prefetch, "Worker consuming");

    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(e) = joined {
                    error!(error = %e, "A delivery task panicked; its message will be redelivered");
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let handler = handler.clone();
                    let ctx = ctx.clone();
                    let channel = channel.clone();
                    in_flight.spawn(async move {
                        process(&*handler, &ctx, &channel, delivery).await;
                    });
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(anyhow::anyhow!("the broker cancelled the consumer").into()),
            },
        }
    }

    // Shutdown: stop new deliveries, let the in-flight ones finish (bounded), close.
    ctx.ready.store(false, Ordering::SeqCst);
    let _ = tokio::time::timeout(
        BROKER_OP_TIMEOUT,
        channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
    )
    .await;
    let drain = Duration::from_secs(ctx.settings.workers.drain_timeout_secs);
    let drained = tokio::time::timeout(drain, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = in_flight.len(),
            "Drain timed out; unfinished deliveries will be redelivered"
        );
        in_flight.abort_all();
    }
    let _ = tokio::time::timeout(
        BROKER_OP_TIMEOUT,
        channel.close(200, "worker shutting down".into()),
    )
    .await;
    close(&conn).await;
    Ok(())
}

/// A channel with the prefetch applied and publisher confirms on (for retry and dead-letter
/// re-publishes).
async fn open_channel(conn: &Connection, prefetch: u16) -> Result<Channel, lapin::Error> {
    let channel = conn.create_channel().await?;
    // Prefetch bounds the unacknowledged deliveries, and so the in-flight work. Applied on
    // every new channel: a reconnect without it would flood the worker.
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Closes the connection, giving up after a bounded wait (a blocked broker never answers).
async fn close(conn: &Connection) {
    let _ = tokio::time::timeout(
        BROKER_OP_TIMEOUT,
        conn.close(200, "worker shutting down".into()),
    )
    .await;
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(key)
}

fn header_u32(props: &BasicProperties, key: &str) -> Option<u32> {
    match header(props, key)? {
        AMQPValue::LongLongInt(v) => u32::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u32::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(*v),
        AMQPValue::ShortInt(v) => u32::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u32::from(*v)),
        AMQPValue::ShortShortInt(v) => u32::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u32::from(*v)),
        _ => None,
    }
}

fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    match header(props, key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn decode(data: &[u8], attempt: u32) -> Result<Incoming, String> {
    let envelope: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("undecodable payload: {e}"))?;
    let head: EnvelopeHead = serde_json::from_value(envelope.clone())
        .map_err(|e| format!("undecodable envelope: {e}"))?;
    Ok(Incoming {
        head,
        envelope,
        attempt,
    })
}

/// Handles one delivery end to end; never panics on bad input.
async fn process(
    handler: &dyn Handler,
    ctx: &WorkerContext,
    channel: &Channel,
    delivery: lapin::message::Delivery,
) {
    let worker = handler.worker();
    let started = Instant::now();
    let attempt = header_u32(&delivery.properties, ATTEMPT_HEADER).unwrap_or(0);
    let original_key = header_str(&delivery.properties, ORIGINAL_ROUTING_KEY_HEADER)
        .unwrap_or_else(|| delivery.routing_key.to_string());
    let tiers = ctx.topology.retry_delays_for(worker).len();

    let (decision, label, error_text, event_id, occurred_at) = match decode(&delivery.data, attempt)
    {
        Err(reason) => (
            Decision::DeadLetter {
                reason: reason.clone(),
            },
            "dead_lettered",
            Some(reason),
            None,
            None,
        ),
        Ok(msg) => {
            let span = info_span!("delivery", event_id = %msg.head.event_id,
                    event_type = %msg.head.event_type, attempt,
                    correlation_id = %msg.head.correlation_id);
            // A panicking handler must not leave its delivery unsettled (it would hold a
            // prefetch slot forever): it counts as a permanent failure and is dead-lettered.
            let result = AssertUnwindSafe(apply_once(handler, ctx, &msg).instrument(span))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_owned());
                    Err(HandlerError::permanent(anyhow::anyhow!(
                        "handler panicked: {what}"
                    )))
                });
            let outcome = match &result {
                Ok((o, pushes)) => {
                    publish_pushes(ctx, channel, pushes).await;
                    Ok(*o)
                }
                Err(e) => Err(match e {
                    HandlerError::Transient(e) => HandlerError::Transient(anyhow::anyhow!("{e:#}")),
                    HandlerError::Permanent(e) => HandlerError::Permanent(anyhow::anyhow!("{e:#}")),
                }),
            };
            let decision = decide(&outcome, attempt, tiers);
            let label = match (&outcome, &decision) {
                (Ok(Outcome::Applied), _) => "applied",
                (Ok(Outcome::Duplicate), _) => "duplicate",
                (Err(_), Decision::Retry { .. }) => "retried",
                _ => "dead_lettered",
            };
            let err = outcome.as_ref().err().map(|e| e.to_string());
            (
                decision,
                label,
                err,
                Some(msg.head.event_id),
                Some(msg.head.occurred_at),
            )
        }
    };

    let settled = match &decision {
        Decision::Ack => ack(&delivery).await,
        Decision::Retry { tier } => {
            let queue = ctx.topology.retry_queue(worker, *tier);
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            headers.insert(
                ATTEMPT_HEADER.into(),
                AMQPValue::LongLongInt(i64::from(attempt + 1)),
            );
            headers.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), long(&original_key));
            headers.insert(
                LAST_ERROR_HEADER.into(),
                long(&truncate(error_text.as_deref().unwrap_or(""), 1000)),
            );
            republish(channel, &queue, &delivery, headers).await && ack(&delivery).await
        }
        Decision::DeadLetter { reason } => {
            let queue = ctx.topology.dead_queue(worker);
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            headers.insert(DEATH_REASON_HEADER.into(), long(&truncate(reason, 1000)));
            headers.insert(
                ATTEMPTS_HEADER.into(),
                AMQPValue::LongLongInt(i64::from(attempt + 1)),
            );
            headers.insert(
                LAST_ERROR_HEADER.into(),
                long(&truncate(error_text.as_deref().unwrap_or(reason), 1000)),
            );
            headers.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), long(&original_key));
            headers.insert(
                "x-dead-lettered-at".into(),
                long(&chrono::Utc::now().to_rfc3339()),
            );
            if event_id.is_some() {
                warn!(consumer = worker.as_str(), reason = %reason, "Event dead-lettered");
            } else {
                warn!(consumer = worker.as_str(), reason = %reason, "Undecodable message dead-lettered");
            }
            republish(channel, &queue, &delivery, headers).await && ack(&delivery).await
        }
    };
    if !settled {
        // Not settled: give the message back so it is redelivered (best effort: if the channel
        // is gone, the broker requeues it anyway).
        let _ = delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await;
    }

    let m = &ctx.metrics;
    m.inc(
        "memberline_worker_deliveries_total",
        &[("consumer", worker.as_str()), ("outcome", label)],
    );
    m.observe(
        "memberline_worker_handling_seconds",
        &[("consumer", worker.as_str())],
        started.elapsed().as_secs_f64(),
    );
    if let (Some(at), "applied") = (occurred_at, label) {
        let age = (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
        m.observe(
            "memberline_worker_event_to_effect_seconds",
            &[("consumer", worker.as_str())],
            age,
        );
    }
    debug!(
        consumer = worker.as_str(),
        outcome = label,
        "Delivery handled"
    );
}

/// Claim, apply, commit. Returns the outcome and the pushes to publish.
async fn apply_once(
    handler: &dyn Handler,
    ctx: &WorkerContext,
    msg: &Incoming,
) -> Result<(Outcome, Vec<Push>), HandlerError> {
    let consumer = handler.worker().as_str();
    let txn = ctx.db.begin().await?;
    let claimed = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO consumed_events (consumer, event_id, event_type) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING event_id",
            [
                consumer.into(),
                msg.head.event_id.into(),
                msg.head.event_type.clone().into(),
            ],
        ))
        .await?;
    if claimed.is_none() {
        let _ = txn.rollback().await;
        return Ok((Outcome::Duplicate, vec![]));
    }
    match handler.apply(&txn, msg).await {
        Ok(effects) if effects.already_applied => {
            let _ = txn.rollback().await;
            Ok((Outcome::Duplicate, vec![]))
        }
        Ok(effects) => {
            txn.commit().await?;
            Ok((Outcome::Applied, effects.pushes))
        }
        Err(e) => {
            let _ = txn.rollback().await;
            Err(e)
        }
    }
}

async fn ack(delivery: &lapin::message::Delivery) -> bool {
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => true,
        Ok(false) => {
            // lapin did not send it (channel closing): the broker will redeliver, and the
            // consumed-event claim turns that into a duplicate.
            warn!("Ack not sent; the message will be redelivered");
            true
        }
        Err(e) => {
            warn!(error = %e, "Ack failed; the message will be redelivered");
            true
        }
    }
}

/// Publishes a copy of `delivery` to `queue` (default exchange) and waits for the confirm.
async fn republish(
    channel: &Channel,
    queue: &str,
    delivery: &lapin::message::Delivery,
    headers: FieldTable,
) -> bool {
    let props = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let publish = channel.basic_publish(
        ShortString::from(""),
        queue.into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        &delivery.data,
        props,
    );
    let confirm = match tokio::time::timeout(BROKER_OP_TIMEOUT, publish).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            warn!(error = %e, queue, "Re-publish failed");
            return false;
        }
        Err(_) => {
            warn!(queue, "Re-publish timed out");
            return false;
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), confirm).await {
        Ok(Ok(Confirmation::Ack(None))) => true,
        other => {
            warn!(queue, result = ?other.map(|r| r.map(|c| c.is_ack())), "Re-publish not confirmed");
            false
        }
    }
}

/// Publishes pushes after the commit. A lost push is recovered by consoles from the stored,
/// sequenced feed, so failures are logged, not retried here.
async fn publish_pushes(ctx: &WorkerContext, channel: &Channel, pushes: &[Push]) {
    for push in pushes {
        let body = push.body.to_string();
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(1);
        let result = channel
            .basic_publish(
                ctx.topology.push_exchange().as_str().into(),
                push.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await;
        match result {
            Ok(confirm) => {
                if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), confirm).await {
                    warn!(error = %e, key = %push.routing_key, "Push not confirmed");
                }
            }
            Err(e) => warn!(error = %e, key = %push.routing_key, "Push not published"),
        }
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_payload_is_reported_not_panicked() {
        assert!(
            decode(b"\xff not json", 0)
                .unwrap_err()
                .contains("undecodable payload")
        );
        assert!(
            decode(b"{\"hello\": 1}", 0)
                .unwrap_err()
                .contains("undecodable envelope")
        );
    }

    #[test]
    fn the_attempt_header_reads_any_integer_width() {
        let mut h = FieldTable::default();
        h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongInt(3));
        let props = BasicProperties::default().with_headers(h);
        assert_eq!(header_u32(&props, ATTEMPT_HEADER), Some(3));
        assert_eq!(
            header_u32(&BasicProperties::default(), ATTEMPT_HEADER),
            None
        );
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
