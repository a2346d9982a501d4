//! Dead letters: list, show, replay and purge a worker's dead-letter queue. Used by the admin
//! API and the `memberline-dlq` CLI.
//!
//! Listing peeks: it takes messages without acknowledging them and closes its channel, which
//! returns them to the queue untouched. Replaying moves a message back to the worker's queue
//! (attempt counter reset, publisher-confirmed) and only then removes it from the dead-letter
//! queue, so a crash in between duplicates a message rather than losing it; the worker's
//! consumed-event claim makes the duplicate harmless, and replaying an event whose effect was
//! already applied changes nothing.

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use memberline_schema::topology::{Topology, Worker};
use serde::Serialize;

/// One dead-lettered message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// Why it was dead-lettered (`permanent: …`, `retries exhausted …`, `undecodable …`).
    pub reason: Option<String>,
    /// Attempts made before it was dead-lettered.
    pub attempts: Option<i64>,
    pub last_error: Option<String>,
    pub original_routing_key: Option<String>,
    pub dead_lettered_at: Option<String>,
    /// The message body: JSON when it parses, otherwise the text (lossy).
    #[schema(value_type = Object)]
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
    let conn = Connection::connect(
        amqp_url,
        ConnectionProperties::default().with_connection_name("memberline-dlq".into()),
    )
    .await?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn header_i64(props: &BasicProperties, key: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

fn describe(props: &BasicProperties, data: &[u8]) -> DeadLetter {
    let body = serde_json::from_slice::<serde_json::Value>(data)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(data).into_owned()));
    DeadLetter {
        event_id: body
            .get("event_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| props.message_id().as_ref().map(|s| s.to_string())),
        event_type: body.get("type").and_then(|v| v.as_str()).map(str::to_owned),
        reason: header_str(props, "x-death-reason"),
        attempts: header_i64(props, "x-attempts"),
        last_error: header_str(props, "x-last-error"),
        original_routing_key: header_str(props, "x-original-routing-key"),
        dead_lettered_at: header_str(props, "x-dead-lettered-at"),
        body,
    }
}

/// Up to `limit` dead letters of `worker`, oldest first, left in the queue.
pub async fn list(
    amqp_url: &str,
    topology: &Topology,
    worker: Worker,
    limit: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let (conn, channel) = open(amqp_url).await?;
    let queue = topology.dead_queue(worker);
    let mut out = Vec::new();
    while out.len() < limit {
        match channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(msg) => out.push(describe(&msg.delivery.properties, &msg.delivery.data)),
            None => break,
        }
    }
    // Closing without acks returns every peeked message to the queue.
    let _ = channel.close(200, "peek done".into()).await;
    let _ = conn.close(200, "peek done".into()).await;
    Ok(out)
}

/// Moves dead letters of `worker` back to its queue: all of them, or only `event_id`'s, at
/// most `max`. `progress(done, total)` is called after each message.
pub async fn replay(
    amqp_url: &str,
    topology: &Topology,
    worker: Worker,
    event_id: Option<&str>,
    max: Option<u64>,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<ReplayReport> {
    let (conn, channel) = open(amqp_url).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let dead = topology.dead_queue(worker);
    let work = topology.work_queue(worker);
    let mut report = ReplayReport::default();
    let mut examined = 0u64;
    let mut total: Option<u64> = None;
    loop {
        if max.is_some_and(|m| report.replayed >= m) {
            break;
        }
        let Some(msg) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        // The queue length when we started bounds the walk: skipped messages are only returned
        // when the channel closes, so they cannot be seen twice.
        let total = *total.get_or_insert(u64::from(msg.message_count) + 1);
        examined += 1;
        let delivery = msg.delivery;
        let matches = event_id.is_none_or(|id| {
            describe(&delivery.properties, &delivery.data)
                .event_id
                .as_deref()
                == Some(id)
        });
        if matches {
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            for key in [
                "x-death-reason",
                "x-attempts",
                "x-dead-lettered-at",
                "x-death",
            ] {
                remove(&mut headers, key);
            }
            headers.insert("x-attempt".into(), AMQPValue::LongLongInt(0));
            headers.insert(
                "x-replayed-at".into(),
                AMQPValue::LongString(LongString::from(chrono::Utc::now().to_rfc3339())),
            );
            let props = delivery.properties.clone().with_headers(headers);
            let confirm = channel
                .basic_publish(
                    "".into(),
                    work.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &delivery.data,
                    props,
                )
                .await?
                .await?;
            if !matches!(confirm, Confirmation::Ack(None)) {
                anyhow::bail!("the broker did not accept the replayed message ({confirm:?})");
            }
            delivery.ack(BasicAckOptions::default()).await?;
            report.replayed += 1;
        }
        progress(examined, total);
        if examined >= total {
            break;
        }
    }
    let _ = channel.close(200, "replay done".into()).await;
    let _ = conn.close(200, "replay done".into()).await;
    report.remaining = count(amqp_url, topology, worker).await?;
    Ok(report)
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
