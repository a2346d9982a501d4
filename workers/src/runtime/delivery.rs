//! One delivery end to end: decode the envelope, take a connection permit, run the
//! claim-and-apply transaction ([`super::inbox`]), turn the result into a [`Decision`] with the
//! pure [`decide`], carry it out (ack; re-publish to a retry tier or the dead-letter queue with
//! our headers, then ack), and count it. Never panics on bad input: an undecodable message is
//! dead-lettered, a panicking handler counts as a permanent failure.

use crate::decide::{Decision, HandlerError, Outcome, decide_bounded};
use crate::runtime::{Effects, Handler, Incoming, Push, WorkerContext, inbox};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use memberline_platform::batch::{Ran, together_else_alone};
use memberline_platform::broker;
use memberline_platform::dead_letters::{header_i64, header_str, headers};
use memberline_platform::metrics::{BatchOutcome, DeliveryOutcome};
use memberline_schema::events::EnvelopeHead;
use sea_orm::TransactionTrait;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, info, info_span, warn};

/// The channels of one session: deliveries arrive, are retried, dead-lettered and acknowledged on
/// `consume`; pushes go out on `push`, so a slow or blocked push never holds up a settlement.
#[derive(Clone)]
pub struct Channels {
    pub consume: Channel,
    pub push: Channel,
}

/// What handling one delivery came to, before it is settled.
struct Handled {
    decision: Decision,
    /// The metric outcome.
    outcome: DeliveryOutcome,
    /// The handler's error, for the `x-last-error` header.
    error: Option<String>,
    /// When the event occurred (absent for an undecodable message).
    occurred_at: Option<DateTime<Utc>>,
}

/// Handles one delivery end to end; see the module docs.
pub async fn process(
    handler: &dyn Handler,
    ctx: &WorkerContext,
    channels: &Channels,
    delivery: &Delivery,
) {
    let started = Instant::now();
    let counts = counts(delivery);
    let handled = match decode(&delivery.data, counts.0).map(|mut msg| {
        msg.claimed = !handler.claims_itself(&msg);
        msg
    }) {
        Err(reason) => Handled {
            decision: Decision::DeadLetter {
                reason: reason.clone(),
            },
            outcome: DeliveryOutcome::DeadLettered,
            error: Some(reason),
            occurred_at: None,
        },
        Ok(msg) => handle(handler, ctx, &channels.push, &msg, counts.1).await,
    };
    finish(
        ctx,
        handler,
        &channels.consume,
        delivery,
        counts,
        &handled,
        started,
    )
    .await;
}

/// Deliveries that arrived together. Those whose handler gives a [`Handler::batch_key`] share
/// one claim-and-apply transaction, in key order, with one commit; the others, and all of them
/// if that transaction does not commit with every one applied, go through [`process`] one by
/// one.
pub async fn process_batch(
    handler: &dyn Handler,
    ctx: &WorkerContext,
    channels: &Channels,
    deliveries: Vec<Delivery>,
) {
    let started = Instant::now();
    let mut keyed = Vec::new();
    let mut single = Vec::new();
    for delivery in deliveries {
        let counts = counts(&delivery);
        match decode(&delivery.data, counts.0) {
            Ok(mut msg) => match handler.batch_key(&msg) {
                Some(key) => {
                    msg.claimed = !handler.claims_itself(&msg);
                    keyed.push((key, msg, delivery, counts));
                }
                None => single.push(delivery),
            },
            Err(_) => single.push(delivery),
        }
    }
    if keyed.len() < 2 {
        single.extend(keyed.into_iter().map(|(_, _, delivery, _)| delivery));
        keyed = Vec::new();
    }
    let singles = futures::future::join_all(
        single
            .iter()
            .map(|delivery| process(handler, ctx, channels, delivery)),
    );
    futures::join!(singles, shared(handler, ctx, channels, keyed, started));
}

/// The keyed deliveries of [`process_batch`], in one transaction (none: nothing to do).
async fn shared(
    handler: &dyn Handler,
    ctx: &WorkerContext,
    channels: &Channels,
    mut keyed: Vec<(i64, Incoming, Delivery, (u32, u32))>,
    started: Instant,
) {
    if keyed.is_empty() {
        return;
    }
    keyed.sort_by_key(|(key, ..)| *key);
    let msgs: Vec<&Incoming> = keyed.iter().map(|(_, msg, ..)| msg).collect();
    let ran = together_else_alone(
        keyed.len(),
        async {
            AssertUnwindSafe(together(handler, ctx, &msgs))
                .catch_unwind()
                .await
                .unwrap_or(None)
                .ok_or(())
        },
        |at| process(handler, ctx, channels, &keyed[at].2),
        |_| {
            ctx.metrics
                .batch(handler.worker().as_str(), BatchOutcome::Split);
            debug!(
                consumer = handler.worker().as_str(),
                deliveries = keyed.len(),
                "Shared transaction not committed: each delivery handled on its own"
            );
            true
        },
    )
    .await;
    let Ok(Ran::Together(effects)) = ran else {
        return;
    };
    ctx.metrics
        .batch(handler.worker().as_str(), BatchOutcome::Committed);
    for ((_, msg, delivery, counts), effects) in keyed.into_iter().zip(effects) {
        if effects.outgoing {
            ctx.outgoing.notify_one();
        }
        publish_pushes(ctx, &channels.push, &effects.pushes).await;
        let handled = Handled {
            decision: Decision::Ack,
            outcome: DeliveryOutcome::Applied,
            error: None,
            occurred_at: Some(msg.head.occurred_at),
        };
        finish(
            ctx,
            handler,
            &channels.consume,
            &delivery,
            counts,
            &handled,
            started,
        )
        .await;
    }
}

/// The shared transaction of [`process_batch`]: every message claimed and applied, then one
/// commit. `None` (rolled back, or its outcome unknown) unless every one was applied and the
/// commit succeeded; the redeliveries' claims settle an unknown outcome.
async fn together(
    handler: &dyn Handler,
    ctx: &WorkerContext,
    msgs: &[&Incoming],
) -> Option<Vec<Effects>> {
    let Ok(_permit) = ctx.permits.acquire().await else {
        return None;
    };
    let txn = ctx.db.begin().await.ok()?;
    let mut all = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let claimed = !msg.claimed
            || inbox::claim(&txn, handler.worker().as_str(), msg)
                .await
                .unwrap_or(false);
        let effects = match claimed {
            true => handler.apply(&txn, msg).await.ok(),
            false => None,
        };
        match effects {
            Some(effects) if !effects.already_applied => all.push(effects),
            _ => {
                let _ = txn.rollback().await;
                return None;
            }
        }
    }
    txn.commit().await.ok()?;
    Some(all)
}

/// The delivery's `x-attempt` and `x-deferrals` headers.
fn counts(delivery: &Delivery) -> (u32, u32) {
    let attempt = header_i64(&delivery.properties, headers::ATTEMPT)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(0);
    let deferrals = header_i64(&delivery.properties, headers::DEFERRALS)
        .and_then(|d| u32::try_from(d).ok())
        .unwrap_or(0);
    (attempt, deferrals)
}

/// Settles a handled delivery (given back to the queue when it cannot be) and counts it.
async fn finish(
    ctx: &WorkerContext,
    handler: &dyn Handler,
    channel: &Channel,
    delivery: &Delivery,
    counts: (u32, u32),
    handled: &Handled,
    started: Instant,
) {
    let worker = handler.worker();
    if !settle(ctx, handler, channel, delivery, counts, handled).await {
        // Not settled: give the message back so it is redelivered (best effort: if the channel
        // is gone, the broker requeues it anyway).
        let _ = delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await;
    }
    ctx.metrics.delivery(
        worker.as_str(),
        handled.outcome,
        started.elapsed().as_secs_f64(),
    );
    if let (Some(at), DeliveryOutcome::Applied) = (handled.occurred_at, handled.outcome) {
        let age = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
        ctx.metrics.event_to_effect(worker.as_str(), age);
    }
    debug!(
        consumer = worker.as_str(),
        outcome = handled.outcome.as_str(),
        "Delivery handled"
    );
}

/// Runs the handler once (claim, apply, commit), publishes its pushes after the commit, and
/// decides what happens to the delivery.
async fn handle(
    handler: &dyn Handler,
    ctx: &WorkerContext,
    push_channel: &Channel,
    msg: &Incoming,
    deferrals: u32,
) -> Handled {
    let span = info_span!("delivery", event_id = %msg.head.event_id,
        event_type = %msg.head.event_type, attempt = msg.attempt,
        correlation_id = %msg.head.correlation_id);
    // A panicking handler must not leave its delivery unsettled (it would hold a prefetch slot
    // forever): it counts as a permanent failure and is dead-lettered.
    let result = AssertUnwindSafe(transaction(handler, ctx, msg).instrument(span))
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
    let outcome = match result {
        Ok((outcome, effects)) => {
            if effects.outgoing {
                ctx.outgoing.notify_one();
            }
            publish_pushes(ctx, push_channel, &effects.pushes).await;
            Ok(outcome)
        }
        Err(e) => Err(e),
    };
    let tiers = ctx.topology.retry_delays_for(handler.worker()).len();
    let decision = decide_bounded(&outcome, msg.attempt, deferrals, tiers);
    let label = match (&outcome, &decision) {
        (Ok(Outcome::Applied), _) => DeliveryOutcome::Applied,
        (Ok(Outcome::Duplicate), _) => DeliveryOutcome::Duplicate,
        (Err(_), Decision::Retry { .. }) => DeliveryOutcome::Retried,
        (Err(_), Decision::Defer) => DeliveryOutcome::Deferred,
        _ => DeliveryOutcome::DeadLettered,
    };
    Handled {
        decision,
        outcome: label,
        error: outcome.as_ref().err().map(|e| e.to_string()),
        occurred_at: Some(msg.head.occurred_at),
    }
}

/// The claim-and-apply transaction, run while holding one of the process's connection permits:
/// waiting for a permit is free, where waiting on the pool would time out and cost an attempt.
/// The permit goes back once the transaction ended, before pushes and settling.
async fn transaction(
    handler: &dyn Handler,
    ctx: &WorkerContext,
    msg: &Incoming,
) -> Result<(Outcome, Effects), HandlerError> {
    let waited = Instant::now();
    let Ok(_permit) = ctx.permits.acquire().await else {
        // The semaphore is never closed; if it were, the work was not tried.
        return Err(HandlerError::Backpressure(anyhow::anyhow!(
            "connection permits closed"
        )));
    };
    let waited = waited.elapsed();
    if waited > Duration::from_secs(1) {
        debug!(
            waited_ms = waited.as_millis() as u64,
            "Waited for a connection permit"
        );
    }
    inbox::apply_once(handler, &ctx.db, msg).await
}

/// Carries out the decision; `false` when the delivery could not be settled.
async fn settle(
    ctx: &WorkerContext,
    handler: &dyn Handler,
    channel: &Channel,
    delivery: &Delivery,
    (attempt, deferrals): (u32, u32),
    handled: &Handled,
) -> bool {
    let worker = handler.worker();
    let original_key = header_str(&delivery.properties, headers::ORIGINAL_ROUTING_KEY)
        .unwrap_or_else(|| delivery.routing_key.to_string());
    let mut table = delivery.properties.headers().clone().unwrap_or_default();
    table.insert(headers::ORIGINAL_ROUTING_KEY.into(), long(&original_key));
    match &handled.decision {
        Decision::Ack => ack(delivery).await,
        Decision::Defer => {
            // The first tier, with `x-attempt` as it was: a wait for a connection is not a
            // failure of this event and must not walk it towards the dead-letter queue.
            let queue = ctx.topology.retry_queue(worker, 0);
            table.insert(
                headers::DEFERRALS.into(),
                AMQPValue::LongLongInt(i64::from(deferrals + 1)),
            );
            info!(
                consumer = worker.as_str(),
                error = handled.error.as_deref().unwrap_or(""),
                "Delivery deferred (back-pressure); no attempt counted"
            );
            republish(channel, &queue, delivery, table).await && ack(delivery).await
        }
        Decision::Retry { tier } => {
            let queue = ctx.topology.retry_queue(worker, *tier);
            table.insert(
                headers::ATTEMPT.into(),
                AMQPValue::LongLongInt(i64::from(attempt + 1)),
            );
            table.insert(
                headers::LAST_ERROR.into(),
                long(&truncate(handled.error.as_deref().unwrap_or(""), 1000)),
            );
            republish(channel, &queue, delivery, table).await && ack(delivery).await
        }
        Decision::DeadLetter { reason } => {
            let queue = ctx.topology.dead_queue(worker);
            table.insert(headers::DEATH_REASON.into(), long(&truncate(reason, 1000)));
            table.insert(
                headers::ATTEMPTS.into(),
                AMQPValue::LongLongInt(i64::from(attempt + 1)),
            );
            table.insert(
                headers::LAST_ERROR.into(),
                long(&truncate(handled.error.as_deref().unwrap_or(reason), 1000)),
            );
            table.insert(
                headers::DEAD_LETTERED_AT.into(),
                long(&Utc::now().to_rfc3339()),
            );
            if handled.occurred_at.is_some() {
                warn!(consumer = worker.as_str(), reason = %reason, "Event dead-lettered");
            } else {
                warn!(consumer = worker.as_str(), reason = %reason, "Undecodable message dead-lettered");
            }
            republish(channel, &queue, delivery, table).await && ack(delivery).await
        }
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
        claimed: true,
    })
}

async fn ack(delivery: &Delivery) -> bool {
    // Bounded: an ack awaited on a connection that died under it may never be answered.
    let Ok(acked) =
        tokio::time::timeout(broker::OP_TIMEOUT, delivery.ack(BasicAckOptions::default())).await
    else {
        warn!("Ack not answered in time; the message will be redelivered");
        return true;
    };
    match acked {
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
async fn republish(channel: &Channel, queue: &str, delivery: &Delivery, table: FieldTable) -> bool {
    let props = delivery
        .properties
        .clone()
        .with_headers(table)
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
    let confirm = match tokio::time::timeout(broker::OP_TIMEOUT, publish).await {
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
    match tokio::time::timeout(broker::OP_TIMEOUT, confirm).await {
        Ok(Ok(Confirmation::Ack(None))) => true,
        other => {
            warn!(queue, result = ?other.map(|r| r.map(|c| c.is_ack())), "Re-publish not confirmed");
            false
        }
    }
}

/// Publishes pushes after the commit, each bounded by [`broker::OP_TIMEOUT`]. A lost push is
/// recovered by consoles from the stored, sequenced feed, so failures are logged, not retried.
async fn publish_pushes(ctx: &WorkerContext, channel: &Channel, pushes: &[Push]) {
    for push in pushes {
        let body = push.body.to_string();
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(1);
        let published = tokio::time::timeout(
            broker::OP_TIMEOUT,
            channel.basic_publish(
                ctx.topology.push_exchange().as_str().into(),
                push.route.routing_key().as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            ),
        )
        .await;
        let confirmed = match published {
            Ok(Ok(confirm)) => tokio::time::timeout(broker::OP_TIMEOUT, confirm).await,
            Ok(Err(e)) => {
                warn!(error = %e, route = ?push.route, "Push not published");
                continue;
            }
            Err(_) => {
                warn!(route = ?push.route, "Push publish timed out");
                continue;
            }
        };
        match confirmed {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, route = ?push.route, "Push not confirmed"),
            Err(_) => warn!(route = ?push.route, "Push confirm timed out"),
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

/// Ways into what [`process`] does with a delivery's bytes before any transaction, for the fuzz
/// targets (`fuzz/`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::Incoming;

    /// Decodes a delivery's body as [`process`] does (`Err`: why it is dead-lettered).
    pub fn decode(data: &[u8], attempt: u32) -> Result<Incoming, String> {
        super::decode(data, attempt)
    }

    /// Cuts a header value (a dead-letter reason, a last error) as [`process`] does.
    pub fn truncate(s: &str, max: usize) -> String {
        super::truncate(s, max)
    }
}

#[cfg(test)]
mod tests;
