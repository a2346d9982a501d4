//! The consumer runtime every worker uses.
//!
//! - [`session`]: one supervised broker session per worker: connect, apply `basic_qos`, confirm
//!   mode, declare or verify the topology, consume, and drain on shutdown. Any connection or
//!   channel error builds a new session after a capped, jittered pause.
//! - [`delivery`]: one delivery end to end: decode, run the claim-and-apply transaction, let
//!   [`crate::decide`] choose ack / retry tier / dead letter, settle it, count it.
//! - [`inbox`]: the claim of an event id in `consumed_events`, in the same transaction as the
//!   effect, which makes every redelivery, re-publish or replay a no-op.
//!
//! This module holds what handlers see: [`Handler`], [`Incoming`], [`Effects`], [`Push`]; and
//! what the workers of one process share: [`WorkerContext`], whose permits keep the deliveries
//! that run a transaction at once within the connections the pool can give them. A delivery
//! waits for a permit instead of timing out on the pool; a pool time-out that still happens is
//! back-pressure, deferred without spending an attempt (see [`crate::decide`]).

pub mod delivery;
pub mod inbox;
pub mod session;

use crate::decide::HandlerError;
use memberline_platform::Settings;
use memberline_platform::metrics::Metrics;
use memberline_schema::events::EnvelopeHead;
use memberline_schema::ids::BuyerId;
use memberline_schema::push::{BuyerPush, ConsolePush, Route};
use memberline_schema::topology::{Topology, Worker};
use sea_orm::{DatabaseConnection, DatabaseTransaction};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

/// A decoded delivery as handlers see it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub head: EnvelopeHead,
    /// The whole envelope, for handlers to decode their payload type from.
    pub envelope: serde_json::Value,
    pub attempt: u32,
    /// The runtime claimed the event in `consumed_events` before [`Handler::apply`]; when
    /// `false`, the handler claims it in its first statement ([`Handler::claims_itself`]). Set
    /// from the handler the runtime holds, so a handler wrapped in another that does not pass
    /// `claims_itself` on is told the claim is made, and does not claim twice.
    pub claimed: bool,
}

/// A message to publish to the push exchange after the effect committed (the contract:
/// `memberline_schema::push`).
#[derive(Debug, Clone)]
pub struct Push {
    pub route: Route,
    pub body: serde_json::Value,
}

impl Push {
    /// A console-feed entry for every merchant console.
    pub fn console(push: &ConsolePush) -> Self {
        Self {
            route: Route::Console(push.kind),
            body: serde_json::to_value(push).unwrap_or_default(),
        }
    }

    /// A push for buyer `buyer_id`'s sockets.
    pub fn buyer(buyer_id: BuyerId, push: &BuyerPush) -> Self {
        Self {
            route: Route::Buyer(buyer_id),
            body: serde_json::to_value(push).unwrap_or_default(),
        }
    }
}

/// What a handler did inside the transaction.
#[derive(Debug, Default)]
pub struct Effects {
    /// The business key shows the effect was applied before (under another event id): the
    /// transaction is rolled back and the delivery counted as a duplicate.
    pub already_applied: bool,
    /// Pushes to publish once the transaction committed.
    pub pushes: Vec<Push>,
    /// Channel messages were recorded: wake the channel sender once the transaction committed.
    pub outgoing: bool,
}

impl Effects {
    pub fn applied() -> Self {
        Self::default()
    }
    pub fn already_applied() -> Self {
        Self {
            already_applied: true,
            ..Self::default()
        }
    }
    /// Applied, with `pushes` to publish after the commit.
    pub fn pushing(pushes: Vec<Push>) -> Self {
        Self {
            pushes,
            ..Self::default()
        }
    }
    /// These effects recorded channel messages (see [`Effects::outgoing`]).
    pub fn with_outgoing(self) -> Self {
        Self {
            outgoing: true,
            ..self
        }
    }
}

/// One worker's effect.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    fn worker(&self) -> Worker;

    /// Whether [`Handler::apply`] claims `msg` itself, in its first statement, instead of the
    /// runtime claiming it first (one round trip fewer). It must then, when
    /// [`Incoming::claimed`] is `false`, claim it and return [`Effects::already_applied`] when
    /// the claim finds the event consumed before.
    fn claims_itself(&self, _msg: &Incoming) -> bool {
        false
    }

    /// The buyer whose row [`Handler::apply`] locks (`FOR UPDATE`) before any other lock, when
    /// it does; `None` otherwise (the default). Deliveries with a key may share one transaction
    /// with others of this worker, applied in key order, so that two such transactions never
    /// wait on each other in a cycle. Within such a transaction, `apply` returning an error or
    /// [`Effects::already_applied`] rolls back the whole of it, and every delivery of it is then
    /// handled on its own: `apply` must not rely on a rollback of its own.
    fn batch_key(&self, _msg: &Incoming) -> Option<i64> {
        None
    }

    /// Applies the effect of `msg` inside `txn`, which already holds this event's claim in
    /// `consumed_events` (unless [`Handler::claims_itself`]). Must not commit; must not talk to
    /// the broker (return [`Push`]es).
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError>;
}

/// Everything a worker needs besides its handler. The pool, the permits and the sender's
/// wake-up are the process's: [`WorkerContext::for_another_worker`] shares them.
#[derive(Clone)]
pub struct WorkerContext {
    pub db: DatabaseConnection,
    pub settings: Arc<Settings>,
    pub topology: Topology,
    pub metrics: Arc<Metrics>,
    /// True while a consumer is attached (readiness).
    pub ready: Arc<AtomicBool>,
    /// One permit per pooled connection deliveries may hold (see [`delivery_permits`]); a
    /// delivery takes one before it opens its transaction and gives it back after the commit.
    pub permits: Arc<Semaphore>,
    /// Wakes the channel sender after a commit that recorded channel messages.
    pub outgoing: Arc<Notify>,
}

impl WorkerContext {
    /// The context of the first (or only) worker of a process.
    pub fn new(db: DatabaseConnection, settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            db,
            topology: settings.topology(),
            permits: Arc::new(Semaphore::new(delivery_permits(&settings))),
            settings: Arc::new(settings),
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            outgoing: Arc::new(Notify::new()),
        }
    }

    /// The context of another worker of the same process: the same pool, permits and sender,
    /// its own readiness.
    pub fn for_another_worker(&self) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            ..self.clone()
        }
    }
}

/// Connections of `database.max_connections` that deliveries may hold at once: all but one for
/// the channel sender (one statement at a time) and one for retention when it runs, at least
/// one. The sender's is kept even in a process without the notifier: one idle connection is
/// cheaper than a rule that depends on which workers run.
pub fn delivery_permits(settings: &Settings) -> usize {
    let reserved = 1 + u32::from(settings.retention.enabled);
    settings
        .database
        .max_connections
        .saturating_sub(reserved)
        .max(1) as usize
}

/// Runs `handler` until `shutdown` fires, rebuilding connection, channel, qos and consumer after
/// any error. Returns an error only when the worker must not run at all (no dead-letter path).
pub async fn run(
    handler: Arc<dyn Handler>,
    ctx: WorkerContext,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let worker = handler.worker();
    let span = info_span!("worker", consumer = worker.as_str());
    async {
        let result = memberline_platform::broker::supervise(
            "Worker",
            ctx.settings.workers.max_reconnect_delay_ms,
            &shutdown,
            |progress| session::session(&handler, &ctx, &shutdown, progress),
        )
        .await;
        ctx.ready.store(false, std::sync::atomic::Ordering::SeqCst);
        info!("Worker stopped");
        result
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_connections: &str, retention: &str) -> Settings {
        Settings::load_from(
            None,
            "test",
            [
                ("MEMBERLINE__DATABASE__MAX_CONNECTIONS", max_connections),
                ("MEMBERLINE__RETENTION__ENABLED", retention),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("settings load")
    }

    #[test]
    fn deliveries_get_every_connection_but_the_senders_and_retentions_and_at_least_one() {
        assert_eq!(delivery_permits(&settings("20", "true")), 18);
        assert_eq!(delivery_permits(&settings("20", "false")), 19);
        assert_eq!(delivery_permits(&settings("3", "false")), 2);
        assert_eq!(delivery_permits(&settings("2", "true")), 1);
        assert_eq!(delivery_permits(&settings("1", "true")), 1);
    }
}
