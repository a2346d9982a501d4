//! Lanes: a few tasks that run the gateway's money-moving writes, so that writes arriving
//! together share one database transaction (one commit) instead of each paying for its own.
//!
//! A handler hands its job to a lane, chosen by the job's [`Batch::key`], and waits for the
//! answer. Each lane (a configured number, each holding a pooled connection while it runs)
//! takes its next job and every other one already waiting for it, up to a batch size, and runs
//! them as one batch. Under light load a lane finds one job and nothing waits for company;
//! under a rush the jobs that queued while their lane was busy go together.
//!
//! Jobs with the same key (the same buyer, the same order) go to the same lane in the order
//! they came and never share a batch: the second is held for the lane's next one, so each
//! still sees the one before committed. A job whose handler gave up (its client left, its
//! timeout) before its lane took it is not run; once taken, it is finished, and a retry is
//! answered from what it committed. What a batch does and how it
//! fails is the [`Batch`]'s: see the purchases (`crate::orders::lanes`) and the payment
//! notifications (`crate::api::payments`).

use futures::FutureExt;
use std::collections::VecDeque;
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the lanes run.
pub trait Batch: Send + Sync + 'static {
    type Job: Send + 'static;
    type Answer: Send + 'static;
    type Key: Hash + PartialEq;
    /// Jobs with equal keys go to the same lane, in the order they came, and never share a
    /// batch.
    fn key(job: &Self::Job) -> Self::Key;
    /// Runs `jobs` (of different keys): one answer per job, in order.
    fn run(&self, jobs: &[Self::Job]) -> impl Future<Output = Vec<Self::Answer>> + Send;
    /// Jobs that started (`1`) or stopped (`-1`) waiting for a lane.
    fn waiting(&self, change: i64);
}

/// The way into the lanes; cheap to clone. The lanes stop once every clone is dropped.
pub struct Lanes<B: Batch> {
    queues: Arc<[mpsc::Sender<Job<B>>]>,
    batch: Arc<B>,
}

impl<B: Batch> Clone for Lanes<B> {
    fn clone(&self) -> Self {
        Self {
            queues: self.queues.clone(),
            batch: self.batch.clone(),
        }
    }
}

struct Job<B: Batch> {
    job: B::Job,
    answer: oneshot::Sender<B::Answer>,
}

/// The lanes stopped (the gateway is stopping), or the batch failed unexpectedly, before
/// answering.
#[derive(Debug, thiserror::Error)]
#[error("the lanes have stopped")]
pub struct Stopped;

impl<B: Batch> Lanes<B> {
    /// Starts `lanes` lanes (at least one) that run batches of at most `batch_max` jobs. A job
    /// goes to the lane its key hashes to: a busy key (one buyer's burst) keeps one lane busy,
    /// not all of them.
    pub fn start(batch: B, lanes: usize, batch_max: usize) -> Self {
        let (lanes, batch_max) = (lanes.max(1), batch_max.max(1));
        let batch = Arc::new(batch);
        let queues: Vec<_> = (0..lanes)
            .map(|_| {
                // Room for two full batches waiting.
                let (queue, receiver) = mpsc::channel(2 * batch_max);
                tokio::spawn(run_lane(batch.clone(), receiver, batch_max));
                queue
            })
            .collect();
        Self {
            queues: queues.into(),
            batch,
        }
    }

    /// Runs `job` in the next batch of its lane it fits: its answer. A job whose caller gave
    /// up before its lane took it is dropped unrun.
    pub async fn submit(&self, job: B::Job) -> Result<B::Answer, Stopped> {
        let mut hasher = DefaultHasher::new();
        B::key(&job).hash(&mut hasher);
        let queue = &self.queues[(hasher.finish() % self.queues.len() as u64) as usize];
        let permit = queue.reserve().await.map_err(|_| Stopped)?;
        let (answer, answered) = oneshot::channel();
        self.batch.waiting(1);
        permit.send(Job { job, answer });
        answered.await.map_err(|_| Stopped)
    }
}

async fn run_lane<B: Batch>(batch: Arc<B>, mut queue: mpsc::Receiver<Job<B>>, batch_max: usize) {
    // Jobs taken from the queue whose key was already in the batch: they go first next time,
    // in the order they came.
    let mut held: VecDeque<Job<B>> = VecDeque::new();
    loop {
        let mut jobs: Vec<Job<B>> = Vec::new();
        let mut still_held = VecDeque::new();
        while let Some(job) = held.pop_front() {
            if jobs.len() < batch_max && !has_key::<B>(&jobs, &job.job) {
                jobs.push(job);
            } else {
                still_held.push_back(job);
            }
        }
        held = still_held;
        if jobs.is_empty() {
            match queue.recv().await {
                Some(job) => {
                    batch.waiting(-1);
                    jobs.push(job);
                }
                // Every sender is gone and nothing is held: the gateway has stopped.
                None => return,
            }
        }
        // Whatever else is waiting, as long as the held ones stay few.
        while jobs.len() < batch_max && held.len() < batch_max {
            let Ok(job) = queue.try_recv() else { break };
            batch.waiting(-1);
            if has_key::<B>(&jobs, &job.job) {
                held.push_back(job);
            } else {
                jobs.push(job);
            }
        }
        // Nobody waits for these any more (the client left, the request timed out): not run.
        jobs.retain(|j| !j.answer.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (inputs, answers): (Vec<B::Job>, Vec<oneshot::Sender<B::Answer>>) =
            jobs.into_iter().map(|j| (j.job, j.answer)).unzip();
        // A batch that panics answers nobody (each caller gets `Stopped`); the lane goes on.
        let Ok(results) = AssertUnwindSafe(batch.run(&inputs)).catch_unwind().await else {
            tracing::error!(
                jobs = inputs.len(),
                "A lane's batch panicked; its jobs are unanswered"
            );
            continue;
        };
        for (answer, result) in answers.into_iter().zip(results) {
            // A handler that gave up meanwhile dropped its receiver; its job stands all the
            // same, and a retry is answered from what it committed.
            let _ = answer.send(result);
        }
    }
}

fn has_key<B: Batch>(jobs: &[Job<B>], job: &B::Job) -> bool {
    let key = B::key(job);
    jobs.iter().any(|j| B::key(&j.job) == key)
}
