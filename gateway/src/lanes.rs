//! Lanes: a few tasks that run the gateway's money-moving writes, so that writes arriving
//! together share one database transaction (one commit) instead of each paying for its own.
//!
//! A handler hands its job to the lanes and waits for the answer. Each lane (at most a
//! configured number, each holding a pooled connection while it runs) takes the next job and
//! every other one already waiting, up to a batch size, and runs them as one batch. Under light
//! load a lane finds one job and nothing waits for company; under a rush the jobs that queued
//! while every lane was busy go together.
//!
//! Two jobs with the same [`Batch::key`] (the same buyer, the same order) never share a batch:
//! the second is held for the lane's next one, so each still sees the one before committed. A
//! handler that gives up (its client left, its timeout) does not cancel its job: the lane
//! finishes it, and a retry is answered from what it committed. What a batch does and how it
//! fails is the [`Batch`]'s: see the purchases (`crate::orders::lanes`) and the payment
//! notifications (`crate::api::payments`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// What the lanes run.
pub trait Batch: Send + Sync + 'static {
    type Job: Send + 'static;
    type Answer: Send + 'static;
    type Key: PartialEq;
    /// Jobs with equal keys never share a batch.
    fn key(job: &Self::Job) -> Self::Key;
    /// Runs `jobs` (of different keys): one answer per job, in order.
    fn run(&self, jobs: &[Self::Job]) -> impl Future<Output = Vec<Self::Answer>> + Send;
    /// Jobs that started (`1`) or stopped (`-1`) waiting for a lane.
    fn waiting(&self, change: i64);
}

/// The way into the lanes; cheap to clone. The lanes stop once every clone is dropped.
pub struct Lanes<B: Batch> {
    queue: mpsc::Sender<Job<B>>,
    batch: Arc<B>,
}

impl<B: Batch> Clone for Lanes<B> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            batch: self.batch.clone(),
        }
    }
}

struct Job<B: Batch> {
    job: B::Job,
    answer: oneshot::Sender<B::Answer>,
}

/// The lanes stopped (the gateway is stopping) before answering.
#[derive(Debug, thiserror::Error)]
#[error("the lanes have stopped")]
pub struct Stopped;

impl<B: Batch> Lanes<B> {
    /// Starts `lanes` lanes (at least one) that run batches of at most `batch_max` jobs.
    pub fn start(batch: B, lanes: usize, batch_max: usize) -> Self {
        let (lanes, batch_max) = (lanes.max(1), batch_max.max(1));
        // Room for a full batch per lane waiting, and as many again arriving.
        let (queue, receiver) = mpsc::channel(2 * lanes * batch_max);
        let batch = Arc::new(batch);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..lanes {
            tokio::spawn(run_lane(batch.clone(), receiver.clone(), batch_max));
        }
        Self { queue, batch }
    }

    /// Runs `job` in the next batch it fits: its answer.
    pub async fn submit(&self, job: B::Job) -> Result<B::Answer, Stopped> {
        let (answer, answered) = oneshot::channel();
        self.batch.waiting(1);
        if self.queue.send(Job { job, answer }).await.is_err() {
            self.batch.waiting(-1);
            return Err(Stopped);
        }
        answered.await.map_err(|_| Stopped)
    }
}

async fn run_lane<B: Batch>(
    batch: Arc<B>,
    queue: Arc<Mutex<mpsc::Receiver<Job<B>>>>,
    batch_max: usize,
) {
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
        // A lane with held jobs must not wait for the queue: another lane may hold it while
        // waiting for jobs that are not coming.
        let receiver = if jobs.is_empty() {
            Some(queue.lock().await)
        } else {
            queue.try_lock().ok()
        };
        if let Some(mut receiver) = receiver {
            if jobs.is_empty() {
                match receiver.recv().await {
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
                let Ok(job) = receiver.try_recv() else { break };
                batch.waiting(-1);
                if has_key::<B>(&jobs, &job.job) {
                    held.push_back(job);
                } else {
                    jobs.push(job);
                }
            }
        }
        let (inputs, answers): (Vec<B::Job>, Vec<oneshot::Sender<B::Answer>>) =
            jobs.into_iter().map(|j| (j.job, j.answer)).unzip();
        let results = batch.run(&inputs).await;
        for (answer, result) in answers.into_iter().zip(results) {
            // A handler that gave up dropped its receiver; its job stands all the same.
            let _ = answer.send(result);
        }
    }
}

fn has_key<B: Batch>(jobs: &[Job<B>], job: &B::Job) -> bool {
    let key = B::key(job);
    jobs.iter().any(|j| B::key(&j.job) == key)
}
