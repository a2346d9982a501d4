//! One broker session of a worker: connect, open a channel with the prefetch and publisher
//! confirms, declare (or verify) the topology, consume until shutdown or a failure, then drain.
//!
//! `basic_qos` is applied on every new channel: lapin's own recovery would not restore it, so
//! every session starts from a new connection (see `memberline_platform::broker`).

use crate::runtime::{Handler, WorkerContext, delivery};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use memberline_platform::broker::{self, Progress, SessionError};
use memberline_schema::topology::{NOT_FOUND, Part, reply_code};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Marks the worker not ready whenever a session ends, however it ends.
struct NotReadyOnExit<'a>(&'a WorkerContext);

impl Drop for NotReadyOnExit<'_> {
    fn drop(&mut self) {
        self.0.ready.store(false, Ordering::SeqCst);
    }
}

/// Runs one session: `Ok` on shutdown, [`SessionError::Lost`] when the connection or channel
/// broke, [`SessionError::Fatal`] when the worker must not run (no dead-letter path).
pub async fn session(
    handler: &Arc<dyn Handler>,
    ctx: &WorkerContext,
    shutdown: &CancellationToken,
    progress: Progress,
) -> Result<(), SessionError> {
    let _not_ready = NotReadyOnExit(ctx);
    let worker = handler.worker();
    let name = format!(
        "{}.{}.{}",
        ctx.topology.prefix(),
        worker.as_str(),
        std::process::id()
    );
    let conn = broker::connect(ctx.settings.amqp.url.expose(), &name).await?;
    if ctx.settings.workers.declare_topology {
        // A queue the broker holds with other arguments (say, a changed delivery limit) is used
        // as it is; a changed retry ladder declares new tiers beside the old ones.
        for drift in ctx
            .topology
            .declare_part(&conn, Part::Worker(worker))
            .await?
        {
            error!(queue = %drift.name, error = %drift.error,
                "Broker topology differs from this configuration; consuming with the existing \
                 one until an operator reconciles it (README, Operations)");
        }
        let tiers: Vec<String> = (0..ctx.topology.retry_delays_for(worker).len())
            .map(|tier| ctx.topology.retry_queue(worker, tier))
            .collect();
        info!(
            ?tiers,
            "Retry ladder declared; tiers of an earlier ladder empty themselves \
            back into the worker queue and can be deleted once empty"
        );
    }
    let channel = open_channel(&conn, ctx.settings.workers.prefetch).await?;
    let push = conn.create_channel().await?;
    push.confirm_select(ConfirmSelectOptions::default()).await?;
    let channels = delivery::Channels {
        consume: channel.clone(),
        push,
    };
    if let Err(e) = ctx.topology.verify_dead_letter_path(&channel, worker).await {
        if reply_code(&e) != Some(NOT_FOUND) {
            // A network blip is not a missing queue: try again with a new session.
            return Err(e.into());
        }
        broker::close(&conn, "worker cannot start").await;
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
    progress.connected();
    ctx.ready.store(true, Ordering::SeqCst);
    info!(queue = %queue, prefetch = ctx.settings.workers.prefetch, "Worker consuming");

    let mut in_flight = JoinSet::new();
    // The consumer is not always told when its connection dies under it: the connection's own
    // state is checked too, so the worker reconnects rather than waits.
    let mut alive = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = alive.tick() => if !conn.status().connected() {
                return Err(anyhow::anyhow!("the broker connection closed").into());
            },
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(e) = joined {
                    error!(error = %e, "A delivery task panicked; its message will be redelivered");
                }
            }
            next = consumer.next() => match next {
                Some(Ok(message)) => {
                    // Deliveries already here besides this one go together (see
                    // `delivery::process_batch`); a failure of the stream is met on the next turn.
                    let mut batch = vec![message];
                    while batch.len() < usize::from(ctx.settings.workers.batch_max) {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(more))) => batch.push(more),
                            Some(Some(Err(e))) => {
                                spawn(&mut in_flight, handler, ctx, &channels, batch);
                                return Err(e.into());
                            }
                            _ => break,
                        }
                    }
                    spawn(&mut in_flight, handler, ctx, &channels, batch);
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(anyhow::anyhow!("the broker cancelled the consumer").into()),
            },
        }
    }

    // Shutdown: stop new deliveries, let the in-flight ones finish (bounded), close.
    ctx.ready.store(false, Ordering::SeqCst);
    let _ = tokio::time::timeout(
        broker::OP_TIMEOUT,
        channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
    )
    .await;
    drain(
        &mut in_flight,
        Duration::from_secs(ctx.settings.workers.drain_timeout_secs),
    )
    .await;
    let _ = tokio::time::timeout(
        broker::OP_TIMEOUT,
        channel.close(200, "worker shutting down".into()),
    )
    .await;
    broker::close(&conn, "worker shutting down").await;
    Ok(())
}

/// Handles deliveries that arrived together on a task of their own.
fn spawn(
    in_flight: &mut JoinSet<()>,
    handler: &Arc<dyn Handler>,
    ctx: &WorkerContext,
    channels: &delivery::Channels,
    mut batch: Vec<lapin::message::Delivery>,
) {
    let (handler, ctx, channels) = (handler.clone(), ctx.clone(), channels.clone());
    in_flight.spawn(async move {
        if batch.len() == 1 {
            let message = batch.pop().expect("one delivery");
            delivery::process(&*handler, &ctx, &channels, &message).await;
        } else {
            delivery::process_batch(&*handler, &ctx, &channels, batch).await;
        }
    });
}

/// Lets in-flight deliveries finish within `limit`; what is left is aborted and will be
/// redelivered by the broker (the inbox claim makes that harmless).
async fn drain(in_flight: &mut JoinSet<()>, limit: Duration) {
    let drained = tokio::time::timeout(limit, async {
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
