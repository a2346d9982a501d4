//! Purchase lanes: the gateway's balance, points and free purchases run here, and those that
//! arrive together share one transaction.
//!
//! A handler hands its purchase to the lanes and waits for the answer. Each lane (at most
//! `purchases.lanes`, each holding a pooled connection while it runs) takes the next purchase
//! and every other one already waiting, up to `purchases.batch_max`, and places them with
//! [`place_together`]: one transaction, one commit, the same five statements whatever their
//! number. Under light load a lane finds one purchase and nothing waits for company; under a
//! rush the purchases that queued while every lane was busy go together.
//!
//! The guarantees are those of a purchase alone. Buyers are locked in id order, and a batch
//! never holds two purchases of one buyer: the second waits for the next batch, so each of a
//! buyer's purchases still sees the one before. Refusals and replays in a batch write nothing
//! and are answered as they would be alone. If the shared transaction fails (a constraint, a
//! key claimed meanwhile, a lost connection), each purchase is placed again on its own: one
//! that did commit is found by its idempotency key and replayed, so nothing is applied twice
//! and nothing is lost. A handler that gives up (its client left, its timeout) does not cancel
//! its purchase: the lane finishes it and a retry with the same key replays the answer.

use super::OrderError;
use super::placement::{PlaceOrder, Placed, place, place_together, refuse_other_methods};
use memberline_platform::metrics::Metrics;
use memberline_platform::settings::PurchaseSettings;
use sea_orm::DatabaseConnection;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

/// The way into the lanes; cheap to clone. The lanes stop once every clone is dropped.
#[derive(Clone)]
pub struct Purchases {
    queue: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

struct Job {
    cmd: PlaceOrder,
    answer: oneshot::Sender<Result<Placed, OrderError>>,
}

/// What every lane shares.
struct Lane {
    db: DatabaseConnection,
    relay: Option<Arc<Notify>>,
    metrics: Arc<Metrics>,
    batch_max: usize,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
}

impl Purchases {
    /// Starts the lanes on `db` (at most `max_connections` of them); `relay` is the embedded
    /// relay's wake-up, if this gateway embeds one (see [`super::placement::place`]).
    pub fn start(
        db: DatabaseConnection,
        relay: Option<Arc<Notify>>,
        settings: &PurchaseSettings,
        max_connections: u32,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lanes = u32::from(settings.lanes).clamp(1, max_connections.max(1)) as usize;
        let batch_max = usize::from(settings.batch_max.max(1));
        // Room for a full batch per lane waiting, and as many again arriving.
        let (queue, receiver) = mpsc::channel(2 * lanes * batch_max);
        let lane = Arc::new(Lane {
            db,
            relay,
            metrics: metrics.clone(),
            batch_max,
            queue: Arc::new(Mutex::new(receiver)),
        });
        for _ in 0..lanes {
            tokio::spawn(lane.clone().run());
        }
        Self { queue, metrics }
    }

    /// Places a balance, points or free purchase: the answer [`super::place`] would give.
    pub async fn place(&self, cmd: PlaceOrder) -> Result<Placed, OrderError> {
        refuse_other_methods(&cmd)?;
        let (answer, answered) = oneshot::channel();
        self.metrics.purchases_waiting(1);
        if self.queue.send(Job { cmd, answer }).await.is_err() {
            self.metrics.purchases_waiting(-1);
            return Err(anyhow::anyhow!("the purchase lanes have stopped").into());
        }
        answered
            .await
            .map_err(|_| anyhow::anyhow!("the purchase lane stopped before answering"))?
    }
}

impl Lane {
    async fn run(self: Arc<Self>) {
        // Purchases taken from the queue whose buyer was already in the batch: they go first
        // next time, in the order they came.
        let mut held: VecDeque<Job> = VecDeque::new();
        loop {
            let mut batch: Vec<Job> = Vec::new();
            let mut still_held = VecDeque::new();
            while let Some(job) = held.pop_front() {
                if batch.len() < self.batch_max && !has_buyer(&batch, job.cmd.buyer_id) {
                    batch.push(job);
                } else {
                    still_held.push_back(job);
                }
            }
            held = still_held;
            // A lane with held purchases must not wait for the queue: another lane may hold
            // it while waiting for purchases that are not coming.
            let queue = if batch.is_empty() {
                Some(self.queue.lock().await)
            } else {
                self.queue.try_lock().ok()
            };
            if let Some(mut queue) = queue {
                if batch.is_empty() {
                    match queue.recv().await {
                        Some(job) => {
                            self.metrics.purchases_waiting(-1);
                            batch.push(job);
                        }
                        // Every sender is gone and nothing is held: the gateway has stopped.
                        None => return,
                    }
                }
                // Whatever else is waiting, as long as the held ones stay few.
                while batch.len() < self.batch_max && held.len() < self.batch_max {
                    let job = queue.try_recv();
                    if job.is_ok() {
                        self.metrics.purchases_waiting(-1);
                    }
                    match job {
                        Ok(job) if has_buyer(&batch, job.cmd.buyer_id) => held.push_back(job),
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
            self.place(batch).await;
        }
    }

    /// Places `batch` (different buyers) and answers each purchase.
    async fn place(&self, batch: Vec<Job>) {
        let relay = self.relay.as_deref();
        let cmds: Vec<&PlaceOrder> = batch.iter().map(|j| &j.cmd).collect();
        let answers = match place_together(&self.db, &cmds, relay).await {
            Ok(answers) => {
                if cmds.len() > 1 {
                    self.metrics.purchase_batch("committed");
                }
                answers
            }
            Err(e) if cmds.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    purchases = cmds.len(),
                    "A transaction shared by several purchases failed; placing each on its own"
                );
                self.metrics.purchase_batch("split");
                let mut answers = Vec::with_capacity(cmds.len());
                for cmd in &cmds {
                    answers.push(place(&self.db, cmd, relay).await);
                }
                answers
            }
        };
        for (job, answer) in batch.into_iter().zip(answers) {
            // A handler that gave up dropped its receiver; its purchase stands all the same.
            let _ = job.answer.send(answer);
        }
    }
}

fn has_buyer(batch: &[Job], buyer_id: i64) -> bool {
    batch.iter().any(|j| j.cmd.buyer_id == buyer_id)
}
