//! RabbitMQ for tests: channels on the real broker (never through a [`crate::proxy`]), taps
//! that let a test see what was published on the events exchange ([`Tap`], [`Seen`]),
//! publishing raw messages, queue depths, consumers' prefetch, and deleting a test's topology
//! when its [`TestApp`] is dropped.

use crate::{TestApp, clean_up};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use memberline_schema::topology::Topology;
use std::time::Duration;
use uuid::Uuid;

/// The broker tests use (`TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A connection to the real broker (not through any proxy).
pub async fn broker_connection() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running (make test starts it)")
}

/// A channel on the real broker (not through any proxy).
pub async fn broker_channel() -> Channel {
    broker_connection()
        .await
        .create_channel()
        .await
        .expect("channel")
}

/// Deletes every queue and exchange of `topology`, as far as the broker lets it.
pub(crate) fn delete_topology(topology: Topology) {
    clean_up(move || delete_topology_now(topology));
}

/// Deletes every queue and exchange of `topology` now, as far as the broker lets it.
pub async fn delete_topology_now(topology: Topology) {
    let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else {
        return;
    };
    // One name at a time, on a fresh channel after any error (a queue a test deleted
    // itself closes the channel), so one failure does not leave the rest behind.
    let Ok(mut ch) = conn.create_channel().await else {
        return;
    };
    let queues = topology.all_queues().into_iter().map(|q| (true, q));
    let exchanges = [
        topology.events_exchange(),
        topology.unrouted_exchange(),
        topology.push_exchange(),
    ]
    .into_iter()
    .map(|e| (false, e));
    for (is_queue, name) in queues.chain(exchanges) {
        let deleted = if is_queue {
            ch.queue_delete(name.as_str().into(), Default::default())
                .await
                .map(|_| ())
        } else {
            ch.exchange_delete(name.as_str().into(), Default::default())
                .await
        };
        if deleted.is_err() {
            match conn.create_channel().await {
                Ok(fresh) => ch = fresh,
                Err(_) => return,
            }
        }
    }
    let _ = conn.close(200, "test cleanup".into()).await;
}

/// The prefetch of every consumer of `queue`, as `rabbitmqctl list_consumers` reports them.
pub fn consumer_prefetches(queue: &str) -> Vec<u32> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_consumers",
            "-q",
            "--no-table-headers",
            "queue_name",
            "prefetch_count",
        ])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let q = parts.next()?;
            let p = parts.next()?.trim().parse().ok()?;
            (q == queue).then_some(p)
        })
        .collect()
}

/// A test's own queue on the events exchange.
pub struct Tap {
    _channel: Channel,
    consumer: Consumer,
}

/// A message seen on a tap.
#[derive(Debug)]
pub struct Seen {
    pub body: serde_json::Value,
    pub message_id: Option<String>,
    pub persistent: bool,
}

impl Tap {
    /// The next message, or `None` if none arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Seen> {
        let delivery = tokio::time::timeout(wait, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        delivery.ack(BasicAckOptions::default()).await.ok();
        Some(Seen {
            body: serde_json::from_slice(&delivery.data).expect("JSON message"),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
            persistent: delivery.properties.delivery_mode() == &Some(2),
        })
    }

    /// Collects messages until `n` arrived or `wait` passes with nothing new.
    pub async fn collect(&mut self, n: usize, wait: Duration) -> Vec<Seen> {
        let mut seen = Vec::new();
        while seen.len() < n {
            match self.next(wait).await {
                Some(m) => seen.push(m),
                None => break,
            }
        }
        seen
    }
}

impl TestApp {
    /// Binds a fresh exclusive queue of the test's own to the events exchange.
    pub async fn tap(&self, routing_key: &str) -> Tap {
        let ch = broker_channel().await;
        let queue = format!("{}.tap.{}", self.topology.prefix(), Uuid::new_v4().simple());
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.as_str().into(),
            self.topology.events_exchange().into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Tap {
            _channel: ch,
            consumer,
        }
    }

    /// Publishes raw bytes to the events exchange (confirmed), as a misbehaving or replaying
    /// publisher would.
    pub async fn publish_event(&self, routing_key: &str, body: &[u8]) {
        let ch = broker_channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = ch
            .basic_publish(
                self.topology.events_exchange().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Messages waiting in a queue.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        queue_state(queue).await.message_count()
    }
}

/// A queue's message and consumer counts, by a passive declare (nothing is created).
pub async fn queue_state(queue: &str) -> lapin::Queue {
    broker_channel()
        .await
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue exists")
}
