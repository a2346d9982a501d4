//! The RabbitMQ topology, defined once: exchange and queue names, their arguments, and the
//! idempotent declaration that the gateway, the relay and every worker run at start.
//!
//! ```text
//! {p}.events (topic, durable) ──order.paid.v1──> {p}.membership | {p}.ledger | {p}.notifier | {p}.savings
//!    └─ alternate exchange {p}.events.unrouted (fanout) ─> {p}.events.unrouted   (nothing routed nowhere)
//! {p}.{worker}.retry.{delay} (TTL) ──dead-letter──> {p}.{worker}   (retry ladder, e.g. retry.10s)
//! {p}.{worker} ──delivery limit / reject──> {p}.{worker}.dead          (dead letters)
//! {p}.push (topic): console and buyer pushes; each gateway binds its own exclusive queue.
//! ```
//! `{p}` is the configured prefix (`memberline` by default); tests use a unique prefix each.
//! This module owns names and declarations, not consuming or publishing.
//!
//! Who declares what: the relay declares what it publishes to ([`Part::Publishing`]: the
//! exchanges, and each worker queue with its dead-letter queue and bindings, so that no event is
//! routed nowhere before a worker first starts); each worker declares its own queues, bindings and
//! retry tiers ([`Part::Worker`]). A retry tier is named after its delay, so changing a ladder
//! declares new tiers instead of clashing with the old ones; messages parked in an old tier still
//! expire back to the worker queue, and the old tier can be deleted once empty. A queue the broker
//! already holds with other arguments (a changed delivery limit) is kept and reported as
//! [`Drift`] rather than stopping anything.

mod declare;

pub use declare::{Drift, NOT_FOUND, PRECONDITION_FAILED, reply_code};
use std::time::Duration;

/// A worker with its own queue, retry ladder and dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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
            // level changed, which only the membership and ledger workers know, and when an
            // unpaid order was closed or a late payment refunded (the payment lifecycle).
            Worker::Notifier => &[
                "order.paid.v1",
                "membership.extended.v1",
                "level.changed.v1",
                "order.closed.v1",
                "order.late_payment_refunded.v1",
                "order.refunded.v1",
                "membership.changed.v1",
                "order.reminded.v1",
            ],
            // A refund reverses what the paid order did; an admin's revocation ends the
            // membership.
            Worker::Membership => &[
                "order.paid.v1",
                "order.refunded.v1",
                "membership.revoked.v1",
            ],
            Worker::Ledger | Worker::Savings => &["order.paid.v1", "order.refunded.v1"],
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

    /// Retry tier `tier` (0-based) of a worker, named after its delay (`….retry.10s`).
    pub fn retry_queue(&self, worker: Worker, tier: usize) -> String {
        let delay = self
            .retry_delays_for(worker)
            .get(tier)
            .copied()
            .unwrap_or_default();
        format!(
            "{}.{}.retry.{}",
            self.prefix,
            worker.as_str(),
            delay_name(delay)
        )
    }

    pub fn dead_queue(&self, worker: Worker) -> String {
        format!("{}.{}.dead", self.prefix, worker.as_str())
    }

    /// Every queue name, for tooling and cleanup.
    pub fn all_queues(&self) -> Vec<String> {
        self.specs().queues.into_iter().map(|q| q.name).collect()
    }

    /// Every exchange, queue and binding, as data. [`Self::declare`] and the RabbitMQ
    /// definitions file (`deploy/rabbitmq/definitions.json`) are both derived from this.
    pub fn specs(&self) -> Specs {
        self.part_specs(Part::Everything)
    }

    /// The exchanges, queues and bindings one part of the system declares.
    pub fn part_specs(&self, part: Part) -> Specs {
        let mut specs = self.exchange_specs();
        for worker in Worker::ALL {
            match part {
                Part::Publishing => self.worker_specs(worker, false, &mut specs),
                Part::Worker(w) if w == worker => self.worker_specs(worker, true, &mut specs),
                Part::Worker(_) => {}
                Part::Everything => self.worker_specs(worker, true, &mut specs),
            }
        }
        specs
    }

    fn exchange_specs(&self) -> Specs {
        let mut specs = Specs::default();
        specs.exchanges.push(ExchangeSpec {
            name: self.unrouted_exchange(),
            kind: "fanout",
            args: vec![],
        });
        specs.queues.push(QueueSpec {
            name: self.unrouted_queue(),
            args: look_only_args(),
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
        specs
    }

    fn worker_specs(&self, worker: Worker, with_retry: bool, specs: &mut Specs) {
        let work = self.work_queue(worker);
        let dead = self.dead_queue(worker);
        // The end of the line keeps everything until an operator replays or purges it.
        specs.queues.push(QueueSpec {
            name: dead.clone(),
            args: look_only_args(),
        });
        specs.queues.push(QueueSpec {
            name: work.clone(),
            args: vec![
                // Protects against a poison message that kills its consumer: after this many
                // redeliveries the broker dead-letters it instead of looping forever (RabbitMQ
                // 3.10 has no default limit; 4.x defaults to 20 and then drops without a DLX).
                ("x-delivery-limit", Arg::Int(i64::from(self.delivery_limit))),
                ("x-dead-letter-exchange", Arg::Str(String::new())),
                ("x-dead-letter-routing-key", Arg::Str(dead)),
                // at-least-once dead-lettering: a message leaves the source queue only after
                // the dead-letter queue confirmed it (needs reject-publish overflow).
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
        if !with_retry {
            return;
        }
        for (tier, delay) in self.retry_delays_for(worker).iter().enumerate() {
            let name = self.retry_queue(worker, tier);
            // Two tiers with the same delay share one queue.
            if specs.queues.iter().any(|q| q.name == name) {
                continue;
            }
            let mut args = vec![
                // A fixed, queue-level TTL: every message in a tier waits the same time, so
                // the head always expires first (per-message TTL only expires at the head).
                ("x-message-ttl", Arg::Int(delay.as_millis() as i64)),
                // Expired messages go straight back to the worker queue.
                ("x-dead-letter-exchange", Arg::Str(String::new())),
                ("x-dead-letter-routing-key", Arg::Str(work.clone())),
                ("x-dead-letter-strategy", Arg::Str("at-least-once".into())),
                ("x-overflow", Arg::Str("reject-publish".into())),
            ];
            // Nobody consumes a tier; the limit is explicit so 4.x's default of 20 never
            // applies.
            args.push(("x-delivery-limit", Arg::Int(LOOK_ONLY_DELIVERY_LIMIT)));
            specs.queues.push(QueueSpec { name, args });
        }
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

/// Which part of the system a declaration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// What the relay publishes to: exchanges, and every worker queue with its dead-letter
    /// queue and bindings (no retry tiers: only the worker uses them).
    Publishing,
    /// One worker's queue, bindings, retry tiers and dead-letter queue (and the exchanges).
    Worker(Worker),
    /// All of it.
    Everything,
}

/// Queues nobody consumes from (dead letters, unrouted events, retry tiers): tooling only looks,
/// and puts back a confirmed copy of what it looked at, so the delivery count never grows. The
/// limit is explicit because RabbitMQ 4.x would otherwise apply 20 and drop the message.
pub const LOOK_ONLY_DELIVERY_LIMIT: i64 = 1_000_000;

fn look_only_args() -> Vec<(&'static str, Arg)> {
    vec![("x-delivery-limit", Arg::Int(LOOK_ONLY_DELIVERY_LIMIT))]
}

/// `10s`, `1m`, `1h`, or `250ms` for a delay that is not a whole number of seconds.
fn delay_name(delay: Duration) -> String {
    let ms = delay.as_millis();
    match ms {
        0 => "0ms".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespaced_by_prefix() {
        let t = Topology::new("t1");
        assert_eq!(t.events_exchange(), "t1.events");
        assert_eq!(t.work_queue(Worker::Ledger), "t1.ledger");
        assert_eq!(t.retry_queue(Worker::Ledger, 2), "t1.ledger.retry.1m");
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
