//! Purchase lanes: the gateway's balance, points and free purchases run in [`crate::lanes`], and
//! those of different buyers that arrive together share one transaction.
//!
//! A batch is placed with [`place_together`]: buyers locked in id order, the same five
//! statements whatever the number of purchases, one commit. The guarantees are those of a
//! purchase alone. A batch never holds two purchases of one buyer (the key is the buyer), so
//! each of a buyer's purchases still sees the one before. Refusals and replays in a batch write
//! nothing and are answered as they would be alone. If the shared transaction fails (a
//! constraint, a key claimed meanwhile, a lost connection), each purchase is placed again on
//! its own: one that did commit is found by its idempotency key and replayed, so nothing is
//! applied twice and nothing is lost.

use super::OrderError;
use super::placement::{PlaceOrder, Placed, place, place_together, refuse_other_methods};
use crate::lanes::{Batch, Lanes};
use memberline_platform::metrics::Metrics;
use memberline_platform::settings::LaneSettings;
use sea_orm::{ConnAcquireErr, DatabaseConnection, DbErr};
use std::sync::Arc;
use tokio::sync::Notify;

/// The way into the purchase lanes; cheap to clone.
#[derive(Clone)]
pub struct Purchases {
    lanes: Lanes<PurchaseBatch>,
}

struct PurchaseBatch {
    db: DatabaseConnection,
    relay: Option<Arc<Notify>>,
    metrics: Arc<Metrics>,
}

impl Purchases {
    /// Starts the lanes on `db` (at most `max_connections` of them); `relay` is the embedded
    /// relay's wake-up, if this gateway embeds one (see [`super::placement::place`]).
    pub fn start(
        db: DatabaseConnection,
        relay: Option<Arc<Notify>>,
        settings: &LaneSettings,
        max_connections: u32,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lanes = u32::from(settings.count).min(max_connections) as usize;
        let batch = PurchaseBatch { db, relay, metrics };
        Self {
            lanes: Lanes::start(batch, lanes, usize::from(settings.batch_max)),
        }
    }

    /// Places a balance, points or free purchase: the answer [`super::place`] would give.
    pub async fn place(&self, cmd: PlaceOrder) -> Result<Placed, OrderError> {
        refuse_other_methods(&cmd)?;
        self.lanes
            .submit(cmd)
            .await
            .map_err(|e| anyhow::anyhow!("no purchase lane answered: {e}"))?
    }
}

impl Batch for PurchaseBatch {
    type Job = PlaceOrder;
    type Answer = Result<Placed, OrderError>;
    type Key = i64;

    fn key(job: &PlaceOrder) -> i64 {
        job.buyer_id
    }

    async fn run(&self, jobs: &[PlaceOrder]) -> Vec<Self::Answer> {
        let relay = self.relay.as_deref();
        let cmds: Vec<&PlaceOrder> = jobs.iter().collect();
        match place_together(&self.db, &cmds, relay).await {
            Ok(answers) => {
                let wrote = answers.iter().any(|a| matches!(a, Ok(Placed::Created(_))));
                if cmds.len() > 1 && wrote {
                    self.metrics.lane_batch("purchases", "committed");
                }
                answers
            }
            Err(e) if cmds.len() == 1 => vec![Err(e)],
            // No connection within `database.acquire_timeout_secs`: the transaction never
            // started, and each purchase on its own would wait as long again.
            Err(OrderError::Database(DbErr::ConnectionAcquire(_))) => cmds
                .iter()
                .map(|_| Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout).into()))
                .collect(),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    purchases = cmds.len(),
                    "A transaction shared by several purchases failed; placing each on its own"
                );
                self.metrics.lane_batch("purchases", "split");
                let mut answers = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    answers.push(place(&self.db, cmd, relay).await);
                }
                answers
            }
        }
    }

    fn waiting(&self, change: i64) {
        self.metrics.lane_waiting("purchases", change);
    }
}
