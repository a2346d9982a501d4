//! Declaring the topology on a broker: each part of the system declares what it needs, one
//! exchange or queue at a time, and a queue the broker already holds with other arguments is
//! kept and reported as [`Drift`] instead of stopping anything. Also the passive checks a worker
//! runs before it consumes, and the teardown tests use.

use super::{Arg, ExchangeSpec, Part, QueueSpec, Topology, Worker};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

impl Topology {
    /// Declares everything (tests, `make run`). See [`Self::declare_part`].
    pub async fn declare(&self, conn: &Connection) -> Result<Vec<Drift>, lapin::Error> {
        self.declare_part(conn, Part::Everything).await
    }

    /// Declares what `part` needs, idempotently, each item on its own: an exchange or queue the
    /// broker already holds with other arguments is checked to exist and reported as [`Drift`]
    /// (on a fresh channel: the broker closes the one that failed), and the rest is declared
    /// anyway. Any other failure (a lost connection) is an error.
    pub async fn declare_part(
        &self,
        conn: &Connection,
        part: Part,
    ) -> Result<Vec<Drift>, lapin::Error> {
        let specs = self.part_specs(part);
        let mut drift = Vec::new();
        let mut ch = conn.create_channel().await?;
        // Exchanges first (the events exchange names its alternate, declared just before it).
        for ex in &specs.exchanges {
            if let Err(e) = declare_exchange(&ch, ex, false).await {
                ch = drifted(conn, &e).await?;
                declare_exchange(&ch, ex, true).await?;
                drift.push(Drift::new(&ex.name, &e));
            }
        }
        for q in &specs.queues {
            if let Err(e) = declare_queue(&ch, q, false).await {
                ch = drifted(conn, &e).await?;
                declare_queue(&ch, q, true).await?;
                drift.push(Drift::new(&q.name, &e));
            }
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
        let _ = ch.close(200, "declared".into()).await;
        Ok(drift)
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

/// An exchange or queue the broker holds with other arguments than this configuration. The
/// broker's one is used; an operator reconciles (README, Operations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub name: String,
    pub error: String,
}

impl Drift {
    fn new(name: &str, error: &lapin::Error) -> Self {
        Self {
            name: name.to_owned(),
            error: error.to_string(),
        }
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.error)
    }
}

/// After a declaration failed: a fresh channel when the broker refused the arguments
/// (PRECONDITION_FAILED closes the channel), the error otherwise.
async fn drifted(conn: &Connection, e: &lapin::Error) -> Result<Channel, lapin::Error> {
    if reply_code(e) != Some(PRECONDITION_FAILED) {
        return Err(e.clone());
    }
    conn.create_channel().await
}

async fn declare_exchange(
    ch: &Channel,
    ex: &ExchangeSpec,
    passive: bool,
) -> Result<(), lapin::Error> {
    let kind = match ex.kind {
        "fanout" => ExchangeKind::Fanout,
        _ => ExchangeKind::Topic,
    };
    ch.exchange_declare(
        ex.name.as_str().into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            passive,
            ..Default::default()
        },
        field_table(&ex.args),
    )
    .await
}

async fn declare_queue(ch: &Channel, q: &QueueSpec, passive: bool) -> Result<(), lapin::Error> {
    let mut args = field_table(&q.args);
    // Quorum queues are replicated (Raft) once the broker runs as a cluster.
    args.insert("x-queue-type".into(), long_string("quorum"));
    ch.queue_declare(
        q.name.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            passive,
            ..Default::default()
        },
        args,
    )
    .await
    .map(|_| ())
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
