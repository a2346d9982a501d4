//! The channel sender: sends the template/SMS/webhook messages the notifier recorded in
//! `channel_deliveries`, after the notifier's transaction committed and outside any transaction
//! of its own. A receiver that answers slowly, or not at all, holds no pooled connection and
//! delays no effect of any worker; a message is retried here, on its own, never by re-running
//! the notifier's effect.
//!
//! Due messages are claimed in one short statement (`FOR UPDATE SKIP LOCKED`; the claim counts
//! the attempt and pushes `next_attempt_at` forward as a lease) and sent concurrently, up to
//! `workers.channel_batch_size` at once, through [`Channel`] (each HTTP call bounded by
//! `workers.webhook_timeout_ms`). Each outcome is recorded as it arrives: delivered; or the
//! error and a bounded, doubling backoff; or, after `workers.webhook_attempts`, failed: an ERROR
//! log and `memberline_channel_deliveries_total{outcome="failed"}`, for an operator to resend or
//! discard it (README, Operations).
//!
//! A notifier commit in this process wakes the sender at once; it also polls every
//! `workers.channel_poll_interval_ms`, which is how replicas share the work and how a message
//! leased by a sender that died is picked up. Delivery is at least once: a sender that stops
//! between sending and recording sends the message again after its lease, with the same
//! `webhook-id`, on which receivers deduplicate.

use crate::channel::{Channel, Message};
use crate::runtime::WorkerContext;
use crate::store::channel_deliveries::{self, Claimed};
use memberline_platform::metrics::ChannelOutcome;
use memberline_platform::metrics::Metrics;
use memberline_platform::settings::WorkerSettings;
use sea_orm::{DatabaseConnection, DbErr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How the sender paces itself; from `workers.*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Attempts per message before it is marked failed.
    pub attempts: u32,
    /// Sends under way at once (and so the most messages one claim takes).
    pub batch: u32,
    /// Pause between claims when nothing wakes the sender.
    pub poll: Duration,
    /// How long a claim keeps a message from other senders.
    pub lease: Duration,
    /// Wait after the first failed attempt; doubles with each further one...
    pub retry_base: Duration,
    /// ...up to this.
    pub retry_max: Duration,
}

impl Policy {
    pub fn from_settings(w: &WorkerSettings) -> Self {
        let timeout = Duration::from_millis(w.webhook_timeout_ms);
        Self {
            attempts: w.webhook_attempts,
            batch: w.channel_batch_size,
            poll: Duration::from_millis(w.channel_poll_interval_ms),
            // Covers the HTTP call with room for recording its outcome under a busy database;
            // a shorter lease would let a second sender send a message the first one is still
            // waiting on.
            lease: timeout * 2 + Duration::from_secs(10),
            retry_base: Duration::from_millis(w.channel_retry_base_ms),
            retry_max: Duration::from_millis(w.channel_retry_max_ms),
        }
    }
}

/// What follows a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this long.
    RetryIn(Duration),
    /// That was the last attempt.
    GiveUp,
}

/// What follows failed attempt number `attempt` (1-based): a pure function of the policy.
pub fn after_failure(attempt: i32, policy: &Policy) -> AfterFailure {
    let attempt = u32::try_from(attempt).unwrap_or(0).max(1);
    if attempt >= policy.attempts {
        return AfterFailure::GiveUp;
    }
    let factor = 2u32.saturating_pow(attempt - 1);
    AfterFailure::RetryIn(
        policy
            .retry_base
            .saturating_mul(factor)
            .min(policy.retry_max),
    )
}

/// The sender of one workers process.
pub struct Sender {
    db: DatabaseConnection,
    channel: Channel,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    policy: Policy,
}

/// A send under way, and how it went.
type Sent = (Claimed, anyhow::Result<()>);

impl Sender {
    /// A sender on the process's pool, woken by its workers' commits.
    pub fn new(ctx: &WorkerContext) -> anyhow::Result<Self> {
        Ok(Self {
            db: ctx.db.clone(),
            channel: Channel::from_settings(&ctx.settings.workers)?,
            metrics: ctx.metrics.clone(),
            wake: ctx.outgoing.clone(),
            policy: Policy::from_settings(&ctx.settings.workers),
        })
    }

    /// Sends due messages until `shutdown` fires, then lets the sends under way finish (each is
    /// bounded by its HTTP timeout) and records them, so no message waits out its lease for
    /// nothing.
    ///
    /// Up to `workers.channel_batch_size` sends are under way at once, each in its own task; a
    /// claim fills whatever room there is, so a slow receiver holds up only its own messages.
    pub async fn run(self, shutdown: CancellationToken) {
        info!(
            concurrency = self.policy.batch,
            attempts = self.policy.attempts,
            "Channel sender running"
        );
        let mut sending: JoinSet<Sent> = JoinSet::new();
        let mut poll = tokio::time::interval(self.policy.poll);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Whether messages may be due that this sender has not claimed yet.
        let mut maybe_due = true;
        loop {
            let room = (self.policy.batch as usize).saturating_sub(sending.len());
            if maybe_due && room > 0 {
                maybe_due = self.claim(room, &mut sending).await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(joined) = sending.join_next(), if !sending.is_empty() => {
                    self.finish(joined).await;
                }
                _ = self.wake.notified() => maybe_due = true,
                _ = poll.tick() => maybe_due = true,
            }
        }
        let drained = tokio::time::timeout(self.policy.lease, async {
            while let Some(joined) = sending.join_next().await {
                self.finish(joined).await;
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                left = sending.len(),
                "Channel sends still under way at shutdown; they are sent again after their lease"
            );
        }
        info!("Channel sender stopped");
    }

    /// Claims up to `room` due messages and starts sending them; `true` when the claim filled
    /// the room (more may be due).
    async fn claim(&self, room: usize, sending: &mut JoinSet<Sent>) -> bool {
        let batch = u32::try_from(room).unwrap_or(u32::MAX);
        let claimed = match channel_deliveries::claim(&self.db, batch, self.policy.lease).await {
            Ok(claimed) => claimed,
            Err(e) => {
                // The poll tries again; nothing was claimed, so nothing waits on a lease.
                warn!(error = %e, "Channel messages not claimed");
                return false;
            }
        };
        let full = claimed.len() == room;
        let last = i32::try_from(self.policy.attempts).unwrap_or(i32::MAX);
        let mut readable = Vec::with_capacity(claimed.len());
        for row in claimed {
            match row {
                Ok(message) => readable.push(message),
                Err(unreadable) => self.set_aside(&unreadable).await,
            }
        }
        for message in readable {
            let channel = self.channel.clone();
            sending.spawn(async move {
                let result = if message.attempts > last {
                    // Claimed again after the sender of its last attempt stopped unrecorded.
                    Err(anyhow::anyhow!(
                        "the sender of the last attempt stopped before recording its outcome"
                    ))
                } else {
                    channel.send(&outgoing(&message)).await
                };
                (message, result)
            });
        }
        full
    }

    /// Gives up at once on a row no attempt can send (its payload is not a message), alone,
    /// for an operator, with a metric; the rows claimed with it are sent.
    async fn set_aside(&self, row: &channel_deliveries::Unreadable) {
        let error = format!("unreadable: {}", row.error);
        match channel_deliveries::give_up(&self.db, row.id, row.attempts, &error).await {
            Ok(_) => {
                self.metrics.channel_delivery(ChannelOutcome::Unreadable);
                error!(delivery_id = row.id, error = %error,
                    "Channel message unreadable; set aside for an operator (README, Operations)");
            }
            Err(e) => warn!(delivery_id = row.id, error = %e,
                "Unreadable channel message not set aside; claimed again after its lease"),
        }
    }

    /// Records how a send went. Outcomes are recorded one at a time, as they arrive: the sender
    /// never holds more than one pooled connection (see `runtime::delivery_permits`).
    async fn finish(&self, joined: Result<Sent, tokio::task::JoinError>) {
        let (message, result) = match joined {
            Ok(sent) => sent,
            Err(e) => {
                error!(error = %e, "A channel send panicked; its message is sent again after its lease");
                return;
            }
        };
        if let Err(e) = self.record(&message, result).await {
            warn!(message_id = %message.message_id, error = %e,
                "Channel message outcome not recorded; it is sent again after its lease");
        }
    }

    async fn record(&self, message: &Claimed, result: anyhow::Result<()>) -> Result<(), DbErr> {
        let error = match result {
            Ok(()) => {
                channel_deliveries::delivered(&self.db, message.id).await?;
                self.metrics.channel_delivery(ChannelOutcome::Delivered);
                debug!(message_id = %message.message_id, attempt = message.attempts,
                    "Channel message delivered");
                return Ok(());
            }
            Err(e) => format!("{e:#}"),
        };
        match after_failure(message.attempts, &self.policy) {
            AfterFailure::RetryIn(backoff) => {
                channel_deliveries::retry_later(
                    &self.db,
                    message.id,
                    message.attempts,
                    &error,
                    backoff,
                )
                .await?;
                self.metrics.channel_delivery(ChannelOutcome::Retried);
                warn!(message_id = %message.message_id, attempt = message.attempts,
                    retry_in_ms = backoff.as_millis() as u64, error = %error,
                    "Channel message not delivered; trying again");
            }
            AfterFailure::GiveUp => {
                if channel_deliveries::give_up(&self.db, message.id, message.attempts, &error)
                    .await?
                {
                    self.metrics.channel_delivery(ChannelOutcome::Failed);
                    error!(message_id = %message.message_id, user_id = %message.user_id,
                        kind = %message.kind, attempts = message.attempts, error = %error,
                        "Channel message undeliverable; an operator must resend or discard it \
                         (README, Operations)");
                }
            }
        }
        Ok(())
    }
}

/// The message as the channel sends it.
fn outgoing(message: &Claimed) -> Message {
    Message {
        id: message.message_id.clone(),
        kind: message.kind,
        user_id: message.user_id,
        title: message.content.title.clone(),
        body: message.content.body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32) -> Policy {
        Policy {
            attempts,
            batch: 16,
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(16),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(3),
        }
    }

    #[test]
    fn a_failed_attempt_waits_twice_as_long_as_the_one_before_up_to_the_cap() {
        let p = policy(10);
        let waits: Vec<_> = (1..=5).map(|a| after_failure(a, &p)).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 3000, 3000]
                .map(|ms| AfterFailure::RetryIn(Duration::from_millis(ms)))
        );
    }

    #[test]
    fn the_last_attempt_gives_up_and_so_does_any_beyond_it() {
        let p = policy(3);
        assert!(matches!(after_failure(2, &p), AfterFailure::RetryIn(_)));
        assert_eq!(after_failure(3, &p), AfterFailure::GiveUp);
        assert_eq!(after_failure(4, &p), AfterFailure::GiveUp);
        assert_eq!(after_failure(1, &policy(1)), AfterFailure::GiveUp);
    }

    #[test]
    fn a_huge_attempt_number_does_not_overflow_the_backoff() {
        assert_eq!(
            after_failure(1_000, &policy(u32::MAX)),
            AfterFailure::RetryIn(Duration::from_secs(3))
        );
    }

    #[test]
    fn the_lease_outlasts_the_http_call() {
        let s = memberline_platform::Settings::load_from(None, "test", std::iter::empty())
            .expect("defaults load");
        let p = Policy::from_settings(&s.workers);
        assert!(p.lease > Duration::from_millis(s.workers.webhook_timeout_ms) * 2);
        assert_eq!(p.attempts, s.workers.webhook_attempts);
    }
}
