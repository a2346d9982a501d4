//! Purchase lanes: the gateway's balance, points and free purchases run in lanes
//! (`memberline_platform::batch`), and those of different buyers that arrive together share
//! one transaction.
//!
//! A batch is placed with [`place_together`]: buyers locked in id order, the same five
//! statements whatever the number of purchases, one commit. The guarantees are those of a
//! purchase alone. A batch never holds two purchases of one buyer (the key is the buyer), so
//! each of a buyer's purchases still sees the one before. Refusals and replays in a batch write
//! nothing and are answered as they would be alone. If the shared transaction fails (a
//! constraint, a key claimed meanwhile, a lost connection), each purchase is placed again on
//! its own: one that did commit is found by its idempotency key and replayed, so nothing is
//! applied twice and nothing is lost.

use crate::OrderError;
use crate::place::{PlaceOrder, place_together, refuse_other_methods};
use memberline_platform::batch::{Batch, Lanes, Refused};
use memberline_platform::idempotency::Answer;
use memberline_platform::metrics::Metrics;
use memberline_platform::outbox::Wake;
use memberline_platform::settings::LaneSettings;
use memberline_schema::ids::BuyerId;
use sea_orm::{ConnAcquireErr, DatabaseConnection, DbErr};
use std::sync::Arc;

/// The way into the purchase lanes; cheap to clone.
#[derive(Clone)]
pub struct Purchases {
    lanes: Lanes<PurchaseBatch>,
}

struct PurchaseBatch {
    db: DatabaseConnection,
    wake: Wake,
}

impl Purchases {
    /// Starts the lanes on `db` (at most `max_connections` of them); `wake` is how their
    /// commits wake the relay (see [`place_together`]).
    pub fn start(
        db: DatabaseConnection,
        wake: Wake,
        settings: &LaneSettings,
        max_connections: u32,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lanes = u32::from(settings.count).min(max_connections) as usize;
        let batch = PurchaseBatch { db, wake };
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

    /// Places a balance, points or free purchase: the order, the replay of an earlier answer
    /// under the same key, or why not.
    pub async fn place(&self, cmd: PlaceOrder) -> Result<Answer, OrderError> {
        refuse_other_methods(&cmd)?;
        match self.lanes.submit(cmd).await {
            Ok(answer) => answer,
            Err(Refused::Busy) => PurchaseBatch::overloaded(),
            Err(e @ Refused::Stopped) => {
                Err(anyhow::anyhow!("no purchase lane answered: {e}").into())
            }
        }
    }
}

impl Batch for PurchaseBatch {
    type Job = PlaceOrder;
    type Answer = Result<Answer, OrderError>;
    type Key = BuyerId;
    type Error = OrderError;
    const NAME: &'static str = "purchases";

    fn key(job: &PlaceOrder) -> BuyerId {
        job.buyer_id
    }

    async fn together(&self, jobs: &[PlaceOrder]) -> Result<Vec<Self::Answer>, OrderError> {
        let cmds: Vec<&PlaceOrder> = jobs.iter().collect();
        place_together(&self.db, &cmds, &self.wake).await
    }

    fn failed(error: OrderError) -> Self::Answer {
        Err(error)
    }

    fn never_started(error: &OrderError) -> bool {
        matches!(error, OrderError::Database(DbErr::ConnectionAcquire(_)))
    }

    fn unavailable() -> Self::Answer {
        Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout).into())
    }

    fn overloaded() -> Self::Answer {
        Err(OrderError::Overloaded)
    }

    fn wrote(answer: &Self::Answer) -> bool {
        matches!(answer, Ok(a) if !a.replayed)
    }
}
