//! Notification lanes: verified WeChat Pay and Alipay notifications are stored (and their
//! payments applied) in lanes (`memberline_platform::batch`), and those of different orders that
//! arrive together share one transaction.
//!
//! A batch is run with [`settle::notifications_together`]: the orders locked in order-number
//! order, each notification's statements as alone, one commit. A batch never holds two
//! notifications of one order (the key is the order number), so each sees the one before
//! committed. A copy of a stored notification writes nothing and is answered as a duplicate.
//! If the shared transaction fails, or a copy was stored first by another request while it
//! ran, each notification is stored again on its own: one that committed is then found stored,
//! so nothing is applied twice, and the provider is told to retry only what was not stored.

use crate::providers::{Payment, Payments};
use crate::settle::{self, Incoming, Notification, Stored};
use memberline_platform::batch::{Batch, Lanes, Refused};
use memberline_platform::metrics::Metrics;
use memberline_platform::outbox::Wake;
use memberline_platform::settings::LaneSettings;
use memberline_schema::states::Provider;
use sea_orm::{ConnAcquireErr, DatabaseConnection, DbErr};
use std::sync::Arc;

/// A verified notification, owned, as the lanes carry it.
pub struct Verified {
    pub provider: Provider,
    /// WeChat `id`, Alipay `notify_id`.
    pub event_id: String,
    pub out_trade_no: Option<String>,
    pub headers: serde_json::Value,
    pub raw_body: String,
    /// The payment it reports, if any.
    pub payment: Option<Payment>,
}

impl Verified {
    fn notification(&self) -> Notification<'_> {
        Notification {
            provider: self.provider,
            event_id: &self.event_id,
            out_trade_no: self.out_trade_no.as_deref(),
            headers: self.headers.clone(),
            raw_body: &self.raw_body,
        }
    }
}

/// The way into the notification lanes; cheap to clone.
#[derive(Clone)]
pub struct Notifications {
    lanes: Lanes<NotificationBatch>,
}

struct NotificationBatch {
    db: DatabaseConnection,
    payments: Payments,
    wake: Wake,
}

impl Notifications {
    /// Starts the lanes on `db` (at most `max_connections` of them); `wake` is how their
    /// commits wake the relay (see [`settle::notifications_together`]).
    pub fn start(
        db: DatabaseConnection,
        payments: Payments,
        wake: Wake,
        settings: &LaneSettings,
        max_connections: u32,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lanes = u32::from(settings.count).min(max_connections) as usize;
        let batch = NotificationBatch { db, payments, wake };
        Self {
            lanes: Lanes::start(
                batch,
                lanes,
                usize::from(settings.batch_max),
                usize::from(settings.queue_max),
                std::time::Duration::from_millis(settings.max_wait_ms),
                metrics,
            ),
        }
    }

    /// Stores `verified` and applies its payment: what it became.
    pub async fn store(&self, verified: Verified) -> Result<Stored, DbErr> {
        match self.lanes.submit(verified).await {
            Ok(stored) => stored,
            // Busy: refused like a database too busy to answer, so the provider sends it again.
            Err(Refused::Busy) => NotificationBatch::overloaded(),
            Err(e @ Refused::Stopped) => {
                Err(DbErr::Custom(format!("no notification lane answered: {e}")))
            }
        }
    }
}

impl Batch for NotificationBatch {
    type Job = Verified;
    type Answer = Result<Stored, DbErr>;
    type Key = Option<String>;
    type Error = DbErr;
    const NAME: &'static str = "notifications";

    fn key(job: &Verified) -> Option<String> {
        job.payment.as_ref().map(|p| p.out_trade_no.clone())
    }

    async fn together(&self, jobs: &[Verified]) -> Result<Vec<Self::Answer>, DbErr> {
        let mut clients = Vec::with_capacity(jobs.len());
        for job in jobs {
            let client = self.payments.get(job.provider).ok_or_else(|| {
                DbErr::Custom(format!("{} is not enabled on this shop", job.provider))
            })?;
            clients.push(client);
        }
        let notifications: Vec<Notification<'_>> =
            jobs.iter().map(Verified::notification).collect();
        let incoming: Vec<Incoming<'_>> = jobs
            .iter()
            .zip(&clients)
            .zip(&notifications)
            .map(|((job, client), notification)| Incoming {
                client: client.as_ref(),
                notification,
                payment: job.payment.as_ref(),
            })
            .collect();
        let stored = settle::notifications_together(&self.db, &incoming, &self.wake).await?;
        Ok(stored.into_iter().map(Ok).collect())
    }

    fn failed(error: DbErr) -> Self::Answer {
        Err(error)
    }

    fn never_started(error: &DbErr) -> bool {
        matches!(error, DbErr::ConnectionAcquire(_))
    }

    fn unavailable() -> Self::Answer {
        Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))
    }

    /// Refused like a database too busy to answer: the provider sends it again.
    fn overloaded() -> Self::Answer {
        Self::unavailable()
    }

    fn wrote(answer: &Self::Answer) -> bool {
        matches!(answer, Ok(Stored::New(_)))
    }
}
