//! Dead letters: the header contract the worker runtime writes when it dead-letters or retries a
//! message, and the operations the admin API and the `memberline-dlq` CLI run on a worker's
//! dead-letter queue (list, show, replay, purge).
//!
//! Listing walks the queue once and puts a confirmed copy of each message back at its tail
//! before acknowledging the original, so looking never adds a delivery attempt (on RabbitMQ 4.x
//! a quorum-queue message handed back 20 times is dropped). Replaying moves a message back to the
//! worker's queue (attempt counter reset, publisher-confirmed) and only then removes it from the
//! dead-letter queue, so a crash in between duplicates a message rather than losing it; the
//! worker's consumed-event claim makes the duplicate harmless, and replaying an event whose effect
//! was already applied changes nothing. Two walks at once (two operators) lose nothing either, but
//! each may list a message twice or miss one.

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use memberline_schema::topology::{Topology, Worker};
use serde::Serialize;

/// The headers a retried or dead-lettered message carries. Written by the worker runtime, read
/// here; one definition so the two sides cannot drift apart.
pub mod headers {
    /// How many attempts failed before this delivery (our counter; 0 or absent on the first).
    pub const ATTEMPT: &str = "x-attempt";
    /// The routing key the event was first published under.
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
    /// How many times back-pressure deferred this delivery without counting an attempt.
    pub const DEFERRALS: &str = "x-deferrals";
    /// The last handler error, truncated to 1,000 bytes.
    pub const LAST_ERROR: &str = "x-last-error";
    /// Why the message was dead-lettered (`permanent: …`, `retries exhausted …`, `undecodable …`).
    pub const DEATH_REASON: &str = "x-death-reason";
    /// Attempts made before the message was dead-lettered.
    pub const ATTEMPTS: &str = "x-attempts";
    /// When it was dead-lettered (RFC 3339, UTC).
    pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
    /// When an operator replayed it (RFC 3339, UTC).
    pub const REPLAYED_AT: &str = "x-replayed-at";
    /// The broker's own dead-lettering history (removed on replay).
    pub const BROKER_DEATH: &str = "x-death";
}

/// One dead-lettered message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The worker whose dead-letter queue holds it.
    #[schema(value_type = String)]
    pub worker: Worker,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// Why it was dead-lettered (`permanent: …`, `retries exhausted …`, `undecodable …`).
    pub reason: Option<String>,
    /// Attempts made before it was dead-lettered.
    pub attempts: Option<i64>,
    pub last_error: Option<String>,
    pub original_routing_key: Option<String>,
    pub dead_lettered_at: Option<String>,
    /// The message body: any JSON value when it parses as JSON, otherwise its text as a string
    /// (invalid UTF-8 replaced).
    pub body: serde_json::Value,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub replayed: u64,
    /// Messages left in the dead-letter queue afterwards.
    pub remaining: u64,
}

async fn open(amqp_url: &str) -> anyhow::Result<(Connection, Channel)> {
    let conn = crate::broker::connect(amqp_url, "memberline-dlq").await?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

/// A text header, if present and textual.
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// An integer header of any AMQP integer width, if present.
pub fn header_i64(props: &BasicProperties, key: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

fn describe(worker: Worker, props: &BasicProperties, data: &[u8]) -> DeadLetter {
    let body = serde_json::from_slice::<serde_json::Value>(data)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(data).into_owned()));
    DeadLetter {
        worker,
        event_id: body
            .get("event_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| props.message_id().as_ref().map(|s| s.to_string())),
        event_type: body.get("type").and_then(|v| v.as_str()).map(str::to_owned),
        reason: header_str(props, headers::DEATH_REASON),
        attempts: header_i64(props, headers::ATTEMPTS),
        last_error: header_str(props, headers::LAST_ERROR),
        original_routing_key: header_str(props, headers::ORIGINAL_ROUTING_KEY),
        dead_lettered_at: header_str(props, headers::DEAD_LETTERED_AT),
        body,
    }
}

/// What a walk does with one message it took from the dead-letter queue.
enum Step {
    /// Put a copy back at the tail of the same queue (looked at, left in place).
    Keep,
    /// Move it to `queue` with these headers (replay).
    Move { queue: String, headers: FieldTable },
}

/// Walks `queue` once, from its head to the message that was last when the walk started: takes
/// each message, publishes what `step` decides (a copy to the tail, or the message elsewhere),
/// waits for the broker's confirm, and only then acknowledges the original. A message is never
/// handed back unacknowledged, so looking at dead letters adds no delivery attempts (RabbitMQ
/// 4.x drops a quorum-queue message after its delivery limit of hand-backs), and a walk that
/// stops halfway (crash, lost connection) leaves at worst a duplicate, never a gap. A full walk
/// leaves the queue in its original order. `step(index, total, delivery)` sees each message.
async fn walk(
    channel: &Channel,
    queue: &str,
    mut step: impl FnMut(u64, u64, &lapin::message::Delivery) -> Option<Step>,
) -> anyhow::Result<()> {
    let mut total: Option<u64> = None;
    let mut index = 0u64;
    loop {
        if total.is_some_and(|t| index >= t) {
            return Ok(());
        }
        let Some(msg) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            return Ok(());
        };
        // The queue length when the walk started bounds it: copies put back at the tail (and
        // messages dead-lettered meanwhile) are not seen again.
        let total = *total.get_or_insert(u64::from(msg.message_count) + 1);
        let delivery = msg.delivery;
        let (target, table) = match step(index, total, &delivery) {
            Some(Step::Move { queue, headers }) => (queue, headers),
            Some(Step::Keep) | None => (
                queue.to_owned(),
                delivery.properties.headers().clone().unwrap_or_default(),
            ),
        };
        let props = delivery
            .properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(2);
        let confirm = tokio::time::timeout(
            crate::broker::OP_TIMEOUT,
            channel.basic_publish(
                "".into(),
                target.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                props,
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("publishing to {target} timed out"))??;
        let confirm = tokio::time::timeout(crate::broker::OP_TIMEOUT, confirm)
            .await
            .map_err(|_| anyhow::anyhow!("the broker did not confirm a copy to {target}"))??;
        if !matches!(confirm, Confirmation::Ack(None)) {
            anyhow::bail!("the broker did not accept the message for {target} ({confirm:?})");
        }
        delivery.ack(BasicAckOptions::default()).await?;
        index += 1;
    }
}

async fn open_confirmed(amqp_url: &str) -> anyhow::Result<(Connection, Channel)> {
    let (conn, channel) = open(amqp_url).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

async fn close(conn: Connection, channel: Channel) {
    let _ = channel.close(200, "dead letters done".into()).await;
    crate::broker::close(&conn, "dead letters done").await;
}

/// Up to `limit` dead letters of `worker`, oldest first, left in the queue (see [`walk`]: the
/// whole queue is walked once so that its order is kept).
pub async fn list(
    amqp_url: &str,
    topology: &Topology,
    worker: Worker,
    limit: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let (conn, channel) = open_confirmed(amqp_url).await?;
    let mut out = Vec::new();
    let walked = walk(&channel, &topology.dead_queue(worker), |_, _, delivery| {
        if out.len() < limit {
            out.push(describe(worker, &delivery.properties, &delivery.data));
        }
        Some(Step::Keep)
    })
    .await;
    close(conn, channel).await;
    walked.map(|()| out)
}

/// Moves dead letters of `worker` back to its queue: all of them, or only `event_id`'s, at
/// most `max`; the others stay. `progress(done, total)` is called after each message.
pub async fn replay(
    amqp_url: &str,
    topology: &Topology,
    worker: Worker,
    event_id: Option<&str>,
    max: Option<u64>,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<ReplayReport> {
    let (conn, channel) = open_confirmed(amqp_url).await?;
    let work = topology.work_queue(worker);
    let mut report = ReplayReport::default();
    let walked = walk(
        &channel,
        &topology.dead_queue(worker),
        |index, total, delivery| {
            progress(index + 1, total);
            if max.is_some_and(|m| report.replayed >= m) {
                return Some(Step::Keep);
            }
            let matches = event_id.is_none_or(|id| {
                describe(worker, &delivery.properties, &delivery.data)
                    .event_id
                    .as_deref()
                    == Some(id)
            });
            if !matches {
                return Some(Step::Keep);
            }
            report.replayed += 1;
            Some(Step::Move {
                queue: work.clone(),
                headers: replay_headers(&delivery.properties),
            })
        },
    )
    .await;
    close(conn, channel).await;
    walked?;
    report.remaining = count(amqp_url, topology, worker).await?;
    Ok(report)
}

/// The headers of a replayed message: the dead-letter marks removed, the attempt counter reset,
/// the replay time added.
fn replay_headers(props: &BasicProperties) -> FieldTable {
    let mut table = props.headers().clone().unwrap_or_default();
    for key in [
        headers::DEATH_REASON,
        headers::ATTEMPTS,
        headers::DEAD_LETTERED_AT,
        headers::BROKER_DEATH,
    ] {
        remove(&mut table, key);
    }
    table.insert(headers::ATTEMPT.into(), AMQPValue::LongLongInt(0));
    table.insert(
        headers::REPLAYED_AT.into(),
        AMQPValue::LongString(LongString::from(chrono::Utc::now().to_rfc3339())),
    );
    table
}

fn remove(headers: &mut FieldTable, key: &str) {
    let mut map = headers.inner().clone();
    map.remove(key);
    *headers = FieldTable::from(map);
}

/// Messages in `worker`'s dead-letter queue.
pub async fn count(amqp_url: &str, topology: &Topology, worker: Worker) -> anyhow::Result<u64> {
    let (conn, channel) = open(amqp_url).await?;
    let q = channel
        .queue_declare(
            topology.dead_queue(worker).into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = conn.close(200, "count done".into()).await;
    Ok(u64::from(q.message_count()))
}

/// Deletes every dead letter of `worker`; returns how many.
pub async fn purge(amqp_url: &str, topology: &Topology, worker: Worker) -> anyhow::Result<u64> {
    let (conn, channel) = open(amqp_url).await?;
    let n = channel
        .queue_purge(
            topology.dead_queue(worker).into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    let _ = conn.close(200, "purge done".into()).await;
    Ok(u64::from(n))
}
