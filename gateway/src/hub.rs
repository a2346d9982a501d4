//! One gateway instance's view of the push exchange: an exclusive, auto-deleted queue bound to
//! `console.#` and `buyer.#`, consumed by one task whose messages fan out to every socket of the
//! instance through a broadcast channel. A lost broker is survived: the task reconnects (capped,
//! jittered backoff) and binds a new queue; sockets stay open and catch up from the console
//! feed, so what was pushed meanwhile is not lost to them.
//!
//! The queue is transient by design (pushes are best effort): bounded to 10,000 messages (the
//! oldest dropped first) that expire after a minute and are consumed without acknowledgements,
//! it never needs a dead-letter path.
//!
//! The instance also reads the console feed's newest number, once every `push.feed_poll_ms`
//! for all its sockets ([`Hub::watch_feed`]), so that a missed push is noticed without every
//! socket asking the database: 10,000 consoles cost one query per interval, not 10,000. And
//! the sockets are woken only when the instance did not broadcast every entry up to that
//! number: a socket misses nothing the hub broadcast (it subscribed before it read its starting
//! point, and one that falls too far behind is told so), so when the hub pushed them all there
//! is nothing to catch up and 10,000 wake-ups per interval are saved.

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use memberline_platform::broker::{self, Progress, SessionError};
use memberline_schema::push::{self, ConsoleMessage};
use memberline_schema::topology::Topology;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// One message from the push exchange, shared by every socket of the instance.
#[derive(Debug)]
pub struct Pushed {
    /// `console.order_paid`, `buyer.42`, …
    pub routing_key: String,
    pub body: serde_json::Value,
    /// For a console push, the stream message every console receives, rendered once here
    /// rather than once per socket.
    pub console_message: Option<Utf8Bytes>,
}

impl Pushed {
    /// Whether this is a console push.
    pub fn is_console(&self) -> bool {
        push::is_console(&self.routing_key)
    }

    /// The console feed number of a console push.
    fn console_seq(&self) -> Option<i64> {
        self.console_message.as_ref()?;
        self.body["seq"].as_i64()
    }

    pub fn new(routing_key: String, body: serde_json::Value) -> Self {
        let console_message = push::is_console(&routing_key)
            .then(|| {
                let seq = body["seq"].as_i64()?;
                let kind = body["type"].as_str().unwrap_or_default();
                let at = body.get("at").cloned().unwrap_or(serde_json::Value::Null);
                // Rendered through a `Value`, so its keys are in the order a catch-up's are.
                let message = ConsoleMessage::of(seq, kind, &body["order"], at);
                Some(serde_json::to_value(message).ok()?.to_string().into())
            })
            .flatten();
        Self {
            routing_key,
            body,
            console_message,
        }
    }
}

/// The instance's fan-out of pushes, and whether it is consuming.
#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<Pushed>>,
    consuming: Arc<AtomicBool>,
    /// Cancelled when the gateway shuts down: every socket closes (1001 "going away").
    pub closing: CancellationToken,
    /// The instance's socket sessions, so that shutdown waits for their close frames.
    pub sessions: tokio_util::task::TaskTracker,
    /// The console feed's newest number as read one poll interval ago: every entry up to it
    /// was committed at least an interval ago, so its push had that long to arrive.
    settled: Arc<watch::Sender<i64>>,
    /// Console feed numbers broadcast here above the settled number.
    pushed: Arc<Mutex<BTreeSet<i64>>>,
}

/// Messages a slow socket task may fall behind the hub before it must catch up from the feed.
const FAN_OUT: usize = 4096;

/// Feed numbers remembered as broadcast at most; past that they are forgotten, and the next
/// settled reading wakes every socket as if they had not been pushed (safe, only slower).
const PUSHED_REMEMBERED: usize = 100_000;

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(FAN_OUT).0,
            consuming: Arc::new(AtomicBool::new(false)),
            closing: CancellationToken::new(),
            sessions: tokio_util::task::TaskTracker::new(),
            settled: Arc::new(watch::channel(0).0),
            pushed: Arc::default(),
        }
    }

    fn note_pushed(&self, seq: i64) {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        if pushed.len() >= PUSHED_REMEMBERED {
            pushed.clear();
        }
        pushed.insert(seq);
    }

    /// Whether this instance broadcast every feed entry in (`from`, `to`]; forgets the
    /// numbers up to `to`.
    fn pushed_all(&self, from: i64, to: i64) -> bool {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        if to < from {
            // The feed went back (emptied and renumbered): what was remembered is of no use.
            pushed.clear();
        }
        let all = to <= from || pushed.range(from + 1..=to).count() as i64 == to - from;
        *pushed = pushed.split_off(&(to + 1));
        all
    }

    /// Changes whenever the feed's settled newest number does (see [`Hub::watch_feed`]); a
    /// socket behind it missed a push and catches up from the feed.
    pub fn settled(&self) -> watch::Receiver<i64> {
        self.settled.subscribe()
    }

    /// Reads the console feed's newest number every `poll` until `shutdown`, and publishes
    /// each reading one interval later, as [`Hub::settled`]. One reader per instance, however
    /// many sockets are open. A failed read is retried at the next tick. A reading up to which
    /// every entry was broadcast here is recorded without waking the sockets.
    pub async fn watch_feed(
        self,
        db: sea_orm::DatabaseConnection,
        poll: std::time::Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<i64> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = newest_feed_seq(&db) => read,
            };
            match read {
                Ok(now) => {
                    if let Some(then) = previous.replace(now) {
                        self.settled.send_if_modified(|v| {
                            let missed = !self.pushed_all(*v, then);
                            let changed = *v != then;
                            *v = then;
                            changed && missed
                        });
                    }
                }
                Err(e) => {
                    debug!(error = %e, "Reading the console feed failed; the next tick tries again")
                }
            }
        }
    }

    /// Every push from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Pushed>> {
        self.sender.subscribe()
    }

    /// Whether the instance is bound to the push exchange right now.
    pub fn consuming(&self) -> bool {
        self.consuming.load(Ordering::SeqCst)
    }

    /// Consumes the push exchange until `shutdown`, reconnecting as needed.
    pub async fn run(
        self,
        amqp_url: String,
        topology: Topology,
        max_reconnect_delay_ms: u64,
        shutdown: CancellationToken,
    ) {
        let result = broker::supervise("Push hub", max_reconnect_delay_ms, &shutdown, |progress| {
            self.session(&amqp_url, &topology, progress, shutdown.clone())
        })
        .await;
        self.consuming.store(false, Ordering::SeqCst);
        if let Err(e) = result {
            warn!(error = %e, "Push hub stopped");
        }
    }

    async fn session(
        &self,
        amqp_url: &str,
        topology: &Topology,
        progress: Progress,
        shutdown: CancellationToken,
    ) -> Result<(), SessionError> {
        let name = format!("{}.gateway.push", topology.prefix());
        let conn = broker::connect(amqp_url, &name).await?;
        let channel = conn.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-max-length"),
            AMQPValue::LongLongInt(10_000),
        );
        args.insert(
            ShortString::from("x-overflow"),
            AMQPValue::LongString(LongString::from("drop-head")),
        );
        args.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(60_000),
        );
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        let queue_name = queue.name().as_str().to_owned();
        for key in push::BINDINGS {
            channel
                .queue_bind(
                    queue_name.as_str().into(),
                    topology.push_exchange().as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let mut consumer = channel
            .basic_consume(
                queue_name.as_str().into(),
                "".into(),
                // Pushes are best effort and this queue is the instance's own: acknowledged as
                // they are sent. An ack awaited on a connection that died under it can wait
                // forever, and the hub with it.
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        progress.connected();
        self.consuming.store(true, Ordering::SeqCst);
        info!(queue = %queue_name, "Push hub consuming");
        // The consumer is not always told when its connection dies (the broker's socket closed
        // under it, say): the connection's own state is checked too.
        let mut alive = tokio::time::interval(std::time::Duration::from_secs(1));
        let outcome = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = alive.tick() => if !conn.status().connected() {
                    break Err(anyhow::anyhow!("the broker connection closed").into());
                },
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        if let Ok(body) = serde_json::from_slice(&delivery.data) {
                            let pushed =
                                Pushed::new(delivery.routing_key.as_str().to_owned(), body);
                            if let Some(seq) = pushed.console_seq() {
                                self.note_pushed(seq);
                            }
                            // No receiver is fine: no socket is open on this instance.
                            let _ = self.sender.send(Arc::new(pushed));
                        }
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(anyhow::anyhow!("the broker cancelled the push consumer").into()),
                },
            }
        };
        self.consuming.store(false, Ordering::SeqCst);
        broker::close(&conn, "push hub stopping").await;
        outcome
    }
}

/// Up to `page` console-feed entries after number `after`, in order: number, kind, payload and
/// when it was written.
pub async fn feed_after(
    db: &sea_orm::DatabaseConnection,
    after: i64,
    page: i64,
) -> Result<
    Vec<(
        i64,
        String,
        serde_json::Value,
        chrono::DateTime<chrono::Utc>,
    )>,
    DbErr,
> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT seq, kind, payload, created_at FROM console_feed \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            [after.into(), page.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("", "seq")?,
                row.try_get("", "kind")?,
                row.try_get("", "payload")?,
                row.try_get("", "created_at")?,
            ))
        })
        .collect()
}

/// The console feed's newest number (0 when empty).
pub async fn newest_feed_seq(db: &sea_orm::DatabaseConnection) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT coalesce(max(seq), 0) AS seq FROM console_feed",
        ))
        .await?;
    Ok(row.map(|r| r.try_get("", "seq")).transpose()?.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::Hub;

    #[test]
    fn a_settled_reading_wakes_the_sockets_only_when_an_entry_up_to_it_was_not_pushed_here() {
        let hub = Hub::new();
        for seq in [1, 2, 4] {
            hub.note_pushed(seq);
        }
        assert!(hub.pushed_all(0, 2));
        assert!(!hub.pushed_all(2, 4), "3 was never pushed here");
        assert!(hub.pushed_all(4, 4), "nothing new");
        hub.note_pushed(5);
        assert!(hub.pushed_all(4, 5));
        assert!(!hub.pushed_all(5, 6));
        assert!(
            !hub.pushed_all(0, 1_000_000),
            "a first reading of an old feed"
        );
    }
}
