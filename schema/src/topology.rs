//! The RabbitMQ topology, defined once: exchange and queue names, their arguments, and the
//! idempotent declaration that the gateway, the relay and every worker run at start.
//!
//! ```text
//! {p}.events (topic, durable) ──order.paid.v1──> {p}.membership | {p}.ledger | {p}.notifier | {p}.savings
//!    └─ alternate exchange {p}.events.unrouted (fanout) ─> {p}.events.unrouted   (nothing routed nowhere)
//! {p}.{worker}.retry.{n} (TTL n) ──dead-letter──> {p}.{worker}      (retry ladder)
//! {p}.{worker} ──delivery limit / reject──> {p}.{worker}.dead          (dead letters)
//! {p}.push (topic): console and buyer pushes; each gateway binds its own exclusive queue.
//! ```
//! `{p}` is the configured prefix (`memberline` by default); tests use a unique prefix each.
//! This module owns names and declarations, not consuming or publishing.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;

/// A worker with its own queue, retry ladder and dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Worker {
    Membership,
    Ledger,
    Notifier,
    Savings,
}

impl Worker {
    pub const ALL: [Worker; 4] = [
        Worker::Membership,
        Worker::Ledger,
        Worker::Notifier,
        Worker::Savings,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Worker::Membership => "membership",
            Worker::Ledger => "ledger",
            Worker::Notifier => "notifier",
            Worker::Savings => "savings",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.as_str() == s)
    }

    /// The routing keys this worker's queue is bound to.
    pub fn bindings(self) -> &'static [&'static str] {
        match self {
            // The notifier also tells the buyer when the membership is active and when their
            // level changed, which only the membership and ledger workers know.
            Worker::Notifier => &[
                "order.paid.v1",
                "membership.extended.v1",
                "level.changed.v1",
            ],
            _ => &["order.paid.v1"],
        }
    }
}

/// The default retry ladder: 1 s, 10 s, 1 min, 10 min, 1 h.
pub const DEFAULT_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];

/// Names and limits of every exchange and queue, for one prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
    /// Delay of each retry tier, in order (every worker without an override).
    pub retry_delays: Vec<Duration>,
    /// Per-worker retry ladders that replace [`Self::retry_delays`].
    pub worker_retry_delays: std::collections::HashMap<Worker, Vec<Duration>>,
    /// Broker-side redelivery limit of a worker queue. It only trips when a consumer dies or
    /// rejects the same message this many times (a crash loop): our own retry ladder re-publishes
    /// with a fresh delivery count and an attempt header instead.
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
            worker_retry_delays: Default::default(),
            delivery_limit: 20,
        }
    }

    /// The retry ladder of one worker.
    pub fn retry_delays_for(&self, worker: Worker) -> &[Duration] {
        self.worker_retry_delays
            .get(&worker)
            .map(Vec::as_slice)
            .unwrap_or(&self.retry_delays)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The durable topic exchange every domain event is published to.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Alternate exchange of the events exchange: catches events no queue is bound to.
    pub fn unrouted_exchange(&self) -> String {
        format!("{}.events.unrouted", self.prefix)
    }

    /// The queue behind [`Self::unrouted_exchange`].
    pub fn unrouted_queue(&self) -> String {
        self.unrouted_exchange()
    }

    /// Topic exchange for console and buyer pushes.
    pub fn push_exchange(&self) -> String {
        format!("{}.push", self.prefix)
    }

    pub fn work_queue(&self, worker: Worker) -> String {
        format!("{}.{}", self.prefix, worker.as_str())
    }

    /// Retry tier `tier` (0-based) of a worker.
    pub fn retry_queue(&self, worker: Worker, tier: usize) -> String {
        format!("{}.{}.retry.{}", self.prefix, worker.as_str(), tier)
    }

    pub fn dead_queue(&self, worker: Worker) -> String {
        format!("{}.{}.dead", self.prefix, worker.as_str())
    }

    /// Every queue name, for tooling and cleanup.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![self.unrouted_queue()];
        for worker in Worker::ALL {
            queues.push(self.work_queue(worker));
            queues.extend(
                (0..self.retry_delays_for(worker).len()).map(|t| self.retry_queue(worker, t)),
            );
            queues.push(self.dead_queue(worker));
        }
        queues
    }

    /// Every exchange, queue and binding, as data. [`Self::declare`] and the RabbitMQ
    /// definitions file (`deploy/rabbitmq/definitions.json`) are both derived from this.
    pub fn specs(&self) -> Specs {
        let mut specs = Specs::default();
        specs.exchanges.push(ExchangeSpec {
            name: self.unrouted_exchange(),
            kind: "fanout",
            args: vec![],
        });
        specs.queues.push(QueueSpec {
            name: self.unrouted_queue(),
            args: vec![],
        });
        specs.bindings.push(BindingSpec {
            exchange: self.unrouted_exchange(),
            queue: self.unrouted_queue(),
            routing_key: String::new(),
        });
        specs.exchanges.push(ExchangeSpec {
            name: self.events_exchange(),
            kind: "topic",
            // An event that no queue is bound to (a new type before its consumer ships) is
            // parked, not dropped and not bounced back to the relay forever.
            args: vec![("alternate-exchange", Arg::Str(self.unrouted_exchange()))],
        });
        specs.exchanges.push(ExchangeSpec {
            name: self.push_exchange(),
            kind: "topic",
            args: vec![],
        });
        for worker in Worker::ALL {
            let work = self.work_queue(worker);
            let dead = self.dead_queue(worker);
            // The end of the line keeps everything until an operator replays or purges it.
            specs.queues.push(QueueSpec {
                name: dead.clone(),
                args: vec![],
            });
            specs.queues.push(QueueSpec {
                name: work.clone(),
                args: vec![
                    // Protects against a poison message that kills its consumer: after this
                    // many redeliveries the broker dead-letters it instead of looping forever
                    // (RabbitMQ 3.10 has no default limit).
                    ("x-delivery-limit", Arg::Int(i64::from(self.delivery_limit))),
                    ("x-dead-letter-exchange", Arg::Str(String::new())),
                    ("x-dead-letter-routing-key", Arg::Str(dead)),
                    // at-least-once dead-lettering: a message leaves the source queue only
                    // after the dead-letter queue confirmed it (needs reject-publish overflow).
                    ("x-dead-letter-strategy", Arg::Str("at-least-once".into())),
                    ("x-overflow", Arg::Str("reject-publish".into())),
                ],
            });
            for key in worker.bindings() {
                specs.bindings.push(BindingSpec {
                    exchange: self.events_exchange(),
                    queue: work.clone(),
                    routing_key: (*key).to_owned(),
                });
            }
            for (tier, delay) in self.retry_delays_for(worker).iter().enumerate() {
                specs.queues.push(QueueSpec {
                    name: self.retry_queue(worker, tier),
                    args: vec![
                        // A fixed, queue-level TTL: every message in a tier waits the same
                        // time, so the head always expires first (per-message TTL only expires
                        // at the queue head).
                        ("x-message-ttl", Arg::Int(delay.as_millis() as i64)),
                        // Expired messages go straight back to the worker queue.
                        ("x-dead-letter-exchange", Arg::Str(String::new())),
                        ("x-dead-letter-routing-key", Arg::Str(work.clone())),
                        ("x-dead-letter-strategy", Arg::Str("at-least-once".into())),
                        ("x-overflow", Arg::Str("reject-publish".into())),
                    ],
                });
            }
        }
        specs
    }

    /// Declares everything. Idempotent: re-declaring with the same arguments is a no-op, and
    /// different arguments fail loudly (PRECONDITION_FAILED) instead of drifting silently.
    pub async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let specs = self.specs();
        // Exchanges first (the events exchange names its alternate, declared just before it).
        for ex in &specs.exchanges {
            declare_exchange(ch, ex).await?;
        }
        for q in &specs.queues {
            let mut args = field_table(&q.args);
            // Quorum queues are replicated (Raft) once the broker runs as a cluster.
            args.insert("x-queue-type".into(), long_string("quorum"));
            ch.queue_declare(
                ShortString::from(q.name.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        }
        for b in &specs.bindings {
            ch.queue_bind(
                b.queue.as_str().into(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// The topology as a RabbitMQ definitions document (import with
    /// `rabbitmqctl import_definitions` or the management UI) for vhost `/`.
    pub fn definitions(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let args = |list: &[(&'static str, Arg)], quorum: bool| {
            let mut m = Map::new();
            for (k, v) in list {
                m.insert(
                    (*k).to_owned(),
                    match v {
                        Arg::Str(s) => Value::String(s.clone()),
                        Arg::Int(i) => json!(i),
                    },
                );
            }
            if quorum {
                m.insert("x-queue-type".into(), Value::String("quorum".into()));
            }
            Value::Object(m)
        };
        let specs = self.specs();
        json!({
            "vhosts": [{"name": "/"}],
            "exchanges": specs.exchanges.iter().map(|e| json!({
                "name": e.name, "vhost": "/", "type": e.kind, "durable": true,
                "auto_delete": false, "internal": false, "arguments": args(&e.args, false),
            })).collect::<Vec<_>>(),
            "queues": specs.queues.iter().map(|q| json!({
                "name": q.name, "vhost": "/", "durable": true, "auto_delete": false,
                "arguments": args(&q.args, true),
            })).collect::<Vec<_>>(),
            "bindings": specs.bindings.iter().map(|b| json!({
                "source": b.exchange, "vhost": "/", "destination": b.queue,
                "destination_type": "queue", "routing_key": b.routing_key, "arguments": {},
            })).collect::<Vec<_>>(),
        })
    }

    /// Declares only the exchanges (and the unrouted queue behind the alternate exchange), then
    /// checks without creating anything that every worker queue exists. The relay falls back to
    /// this when the broker holds queues declared with other arguments than this configuration
    /// (PRECONDITION_FAILED): events keep flowing to the existing queues while an operator
    /// reconciles the ladder.
    pub async fn declare_exchanges_and_verify_queues(
        &self,
        ch: &Channel,
    ) -> Result<(), lapin::Error> {
        let specs = self.specs();
        for ex in &specs.exchanges {
            declare_exchange(ch, ex).await?;
        }
        for q in &specs.queues {
            ch.queue_declare(
                q.name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// Checks, without creating anything, that a worker's dead-letter path exists. A worker
    /// refuses to start without it: a failure with nowhere to go would be lost.
    pub async fn verify_dead_letter_path(
        &self,
        ch: &Channel,
        worker: Worker,
    ) -> Result<(), lapin::Error> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare(
            self.dead_queue(worker).into(),
            passive,
            FieldTable::default(),
        )
        .await?;
        for tier in 0..self.retry_delays_for(worker).len() {
            ch.queue_declare(
                self.retry_queue(worker, tier).into(),
                passive,
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes everything this topology declared (tests and teardown only).
    pub async fn delete(&self, ch: &Channel) -> Result<(), lapin::Error> {
        for queue in self.all_queues() {
            ch.queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            self.events_exchange(),
            self.unrouted_exchange(),
            self.push_exchange(),
        ] {
            ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

/// An argument value of an exchange or queue.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Str(String),
    Int(i64),
}

#[derive(Clone, Debug)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: &'static str,
    pub args: Vec<(&'static str, Arg)>,
}

/// A durable quorum queue and its arguments.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub name: String,
    pub args: Vec<(&'static str, Arg)>,
}

#[derive(Clone, Debug)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

/// The whole topology as data.
#[derive(Clone, Debug, Default)]
pub struct Specs {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
}

async fn declare_exchange(ch: &Channel, ex: &ExchangeSpec) -> Result<(), lapin::Error> {
    let kind = match ex.kind {
        "fanout" => ExchangeKind::Fanout,
        _ => ExchangeKind::Topic,
    };
    ch.exchange_declare(
        ex.name.as_str().into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        field_table(&ex.args),
    )
    .await
}

fn field_table(args: &[(&'static str, Arg)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            Arg::Str(s) => long_string(s),
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
        };
        table.insert((*k).into(), value);
    }
    table
}

/// The AMQP reply code of a broker error (404 NOT_FOUND, 406 PRECONDITION_FAILED, …), if the
/// error came from the broker rather than the network.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// PRECONDITION_FAILED: a declaration's arguments differ from what the broker holds.
pub const PRECONDITION_FAILED: u16 = 406;
/// NOT_FOUND: a passive declaration named something that does not exist.
pub const NOT_FOUND: u16 = 404;

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespaced_by_prefix() {
        let t = Topology::new("t1");
        assert_eq!(t.events_exchange(), "t1.events");
        assert_eq!(t.work_queue(Worker::Ledger), "t1.ledger");
        assert_eq!(t.retry_queue(Worker::Ledger, 2), "t1.ledger.retry.2");
        assert_eq!(t.dead_queue(Worker::Savings), "t1.savings.dead");
    }

    #[test]
    fn every_worker_has_a_queue_a_full_ladder_and_a_dead_letter_queue() {
        let t = Topology::new("p");
        let queues = t.all_queues();
        assert_eq!(queues.len(), 1 + 4 * (1 + 5 + 1));
        for w in Worker::ALL {
            assert!(queues.contains(&t.dead_queue(w)));
        }
    }
}
