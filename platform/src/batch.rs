//! Batches that share one transaction: [`together_else_alone`], the rule, and [`Lanes`], a few
//! tasks that run the gateway's money-moving writes, so that writes arriving
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
//! answered from what it committed.
//!
//! A batch runs in one transaction ([`Batch::together`]). If that fails, each of its jobs runs
//! again on its own ([`together_else_alone`], the rule the workers' shared transactions follow
//! too), so that a job the database refuses fails alone (one that committed after all is then
//! found by its key and answered as it was). A batch that got no connection at all is answered
//! unavailable instead: each job alone would wait as long again. What a job is and what its
//! transaction does is the [`Batch`]'s: see the purchases (`memberline_orders::purchases`) and
//! the payment notifications (`memberline_orders::notifications`).

use crate::metrics::{BatchOutcome, Metrics};
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
    type Job: Send + Sync + 'static;
    type Answer: Send + 'static;
    type Key: Hash + PartialEq;
    type Error: std::fmt::Display + Send;
    /// The lanes' name in metrics and logs.
    const NAME: &'static str;
    /// Jobs with equal keys go to the same lane, in the order they came, and never share a
    /// batch.
    fn key(job: &Self::Job) -> Self::Key;
    /// Runs `jobs` (of different keys) in one transaction: one answer per job, in order, once
    /// it committed (or rolled back having written nothing); `Err` when it failed.
    fn together(
        &self,
        jobs: &[Self::Job],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, Self::Error>> + Send;
    /// The answer of a job whose transaction failed with `error`.
    fn failed(error: Self::Error) -> Self::Answer;
    /// Whether `error` means the transaction never started (no pooled connection in time).
    fn never_started(error: &Self::Error) -> bool;
    /// The answer of a job that got no connection.
    fn unavailable() -> Self::Answer;
    /// The answer of a job refused unrun: its lane's queue was full, or it waited in it longer
    /// than the lanes' `max_wait`.
    fn overloaded() -> Self::Answer;
    /// Whether `answer` is of a job that wrote something.
    fn wrote(answer: &Self::Answer) -> bool;
}

/// The way into the lanes; cheap to clone. The lanes stop once every clone is dropped.
pub struct Lanes<B: Batch> {
    queues: Arc<[mpsc::Sender<Job<B>>]>,
    metrics: Arc<Metrics>,
}

impl<B: Batch> Clone for Lanes<B> {
    fn clone(&self) -> Self {
        Self {
            queues: self.queues.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

struct Job<B: Batch> {
    job: B::Job,
    answer: oneshot::Sender<B::Answer>,
    queued: std::time::Instant,
}

/// Why a job got no answer from the lanes.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The lanes stopped (the gateway is stopping), or the batch failed unexpectedly, before
    /// answering.
    #[error("the lanes have stopped")]
    Stopped,
    /// Its lane's queue is full: the job was not taken, nothing was run (the caller answers
    /// "try again" at once instead of queueing without bound).
    #[error("the lane's queue is full")]
    Busy,
}

impl<B: Batch> Lanes<B> {
    /// Starts `lanes` lanes (at least one) that run batches of at most `batch_max` jobs, each
    /// with room for `queue_max` jobs waiting, none of them for longer than `max_wait` (it is
    /// then answered [`Batch::overloaded`] unrun). A job goes to the lane its key hashes to: a
    /// busy key (one buyer's burst) keeps one lane busy, not all of them.
    pub fn start(
        batch: B,
        lanes: usize,
        batch_max: usize,
        queue_max: usize,
        max_wait: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (lanes, batch_max, queue_max) = (lanes.max(1), batch_max.max(1), queue_max.max(1));
        let batch = Arc::new(batch);
        let queues: Vec<_> = (0..lanes)
            .map(|_| {
                let (queue, receiver) = mpsc::channel(queue_max);
                let lane = Lane {
                    batch: batch.clone(),
                    metrics: metrics.clone(),
                    batch_max,
                    max_wait,
                };
                tokio::spawn(lane.run(receiver));
                queue
            })
            .collect();
        Self {
            queues: queues.into(),
            metrics,
        }
    }

    /// Runs `job` in the next batch of its lane it fits: its answer; [`Refused::Busy`] at once,
    /// with nothing run, when its lane's queue is full. A job whose caller gave up before its
    /// lane took it is dropped unrun.
    pub async fn submit(&self, job: B::Job) -> Result<B::Answer, Refused> {
        let mut hasher = DefaultHasher::new();
        B::key(&job).hash(&mut hasher);
        let queue = &self.queues[(hasher.finish() % self.queues.len() as u64) as usize];
        let permit = queue.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => Refused::Busy,
            mpsc::error::TrySendError::Closed(()) => Refused::Stopped,
        })?;
        let (answer, answered) = oneshot::channel();
        self.metrics.lane_waiting(B::NAME, 1);
        permit.send(Job {
            job,
            answer,
            queued: std::time::Instant::now(),
        });
        answered.await.map_err(|_| Refused::Stopped)
    }
}

/// One lane: its batch runner, and where it reports.
struct Lane<B: Batch> {
    batch: Arc<B>,
    metrics: Arc<Metrics>,
    batch_max: usize,
    max_wait: std::time::Duration,
}

impl<B: Batch> Lane<B> {
    async fn run(self, mut queue: mpsc::Receiver<Job<B>>) {
        let batch_max = self.batch_max;
        let took = || self.metrics.lane_waiting(B::NAME, -1);
        // Jobs taken from the queue whose key was already in the batch: they go first next
        // time, in the order they came.
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
                        took();
                        jobs.push(job);
                    }
                    // Every sender is gone and nothing is held: the gateway has stopped.
                    None => return,
                }
            }
            // Whatever else is waiting, as long as the held ones stay few.
            while jobs.len() < batch_max && held.len() < batch_max {
                let Ok(job) = queue.try_recv() else { break };
                took();
                if has_key::<B>(&jobs, &job.job) {
                    held.push_back(job);
                } else {
                    jobs.push(job);
                }
            }
            // Nobody waits for these any more (the client left, the request timed out): not run.
            jobs.retain(|j| !j.answer.is_closed());
            // Waited too long: refused unrun, so what the lane accepts stays fast under a rush.
            let (late, on_time): (Vec<_>, Vec<_>) = jobs
                .into_iter()
                .partition(|j| j.queued.elapsed() > self.max_wait);
            for job in late {
                let _ = job.answer.send(B::overloaded());
            }
            let jobs = on_time;
            if jobs.is_empty() {
                continue;
            }
            let (inputs, answers): (Vec<B::Job>, Vec<oneshot::Sender<B::Answer>>) =
                jobs.into_iter().map(|j| (j.job, j.answer)).unzip();
            // A batch that panics answers nobody (each caller gets `Stopped`); the lane goes on.
            let Ok(results) = AssertUnwindSafe(self.answer(&inputs)).catch_unwind().await else {
                tracing::error!(
                    lane = B::NAME,
                    jobs = inputs.len(),
                    "A batch panicked; its jobs are unanswered"
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

    /// Runs `jobs` together, or each on its own if that fails: one answer per job.
    async fn answer(&self, jobs: &[B::Job]) -> Vec<B::Answer> {
        let batch = &self.batch;
        let ran = together_else_alone(
            jobs.len(),
            batch.together(jobs),
            |at| async move {
                match batch.together(std::slice::from_ref(&jobs[at])).await {
                    Ok(one) => one.into_iter().next().unwrap_or_else(B::unavailable),
                    Err(e) => B::failed(e),
                }
            },
            // One job's failure is its answer; a batch that got no connection is answered
            // unavailable, as each job alone would wait as long again.
            |e| {
                let split = jobs.len() > 1 && !B::never_started(e);
                if split {
                    tracing::warn!(
                        lane = B::NAME,
                        error = %e,
                        jobs = jobs.len(),
                        "A transaction shared by several jobs failed; running each on its own"
                    );
                    self.metrics.lane_batch(B::NAME, BatchOutcome::Split);
                }
                split
            },
        )
        .await;
        match ran {
            Ok(Ran::Together(answers)) => {
                if jobs.len() > 1 && answers.iter().any(B::wrote) {
                    self.metrics.lane_batch(B::NAME, BatchOutcome::Committed);
                }
                answers
            }
            Ok(Ran::Alone(answers)) => answers,
            Err(e) if jobs.len() == 1 => vec![B::failed(e)],
            Err(_) => jobs.iter().map(|_| B::unavailable()).collect(),
        }
    }
}

fn has_key<B: Batch>(jobs: &[Job<B>], job: &B::Job) -> bool {
    let key = B::key(job);
    jobs.iter().any(|j| B::key(&j.job) == key)
}

/// How [`together_else_alone`] ran its jobs: one answer per job, in order.
#[derive(Debug)]
pub enum Ran<T, R> {
    /// In the one shared transaction.
    Together(Vec<T>),
    /// Each on its own, after the shared transaction failed.
    Alone(Vec<R>),
}

/// Runs a batch of `jobs` jobs in one shared transaction (`together`); if that fails and
/// `split` says so for its error, runs each job on its own (`alone`, given the job's place in
/// the batch), in order, so that a job the database refuses fails alone and takes no other with
/// it. `Err` is the shared failure that `split` declined. A shared transaction whose commit was
/// lost may have committed after all: `alone` must find what a job committed (by its key) and
/// answer it as it was.
pub async fn together_else_alone<T, R, E, A>(
    jobs: usize,
    together: impl Future<Output = Result<Vec<T>, E>>,
    alone: impl Fn(usize) -> A,
    split: impl FnOnce(&E) -> bool,
) -> Result<Ran<T, R>, E>
where
    A: Future<Output = R>,
{
    match together.await {
        Ok(answers) => Ok(Ran::Together(answers)),
        Err(e) if !split(&e) => Err(e),
        Err(_) => {
            let mut answers = Vec::with_capacity(jobs);
            for at in 0..jobs {
                answers.push(alone(at).await);
            }
            Ok(Ran::Alone(answers))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_that_commit_together_are_answered_together() {
        let jobs = [1, 2, 3];
        let ran = together_else_alone(
            jobs.len(),
            async { Ok::<_, String>(jobs.iter().map(|j| j * 10).collect()) },
            |_| async { unreachable!("nothing runs alone") as i32 },
            |_| true,
        )
        .await;
        assert!(matches!(ran, Ok(Ran::Together(a)) if a == vec![10, 20, 30]));
    }

    #[tokio::test]
    async fn a_failed_shared_transaction_runs_each_job_alone_in_order() {
        let jobs = [1, 2, 3];
        let ran = together_else_alone(
            jobs.len(),
            async { Err::<Vec<i32>, _>("deadlock".to_owned()) },
            |at| async move { if jobs[at] == 2 { -1 } else { jobs[at] } },
            |_| true,
        )
        .await;
        assert!(matches!(ran, Ok(Ran::Alone(a)) if a == vec![1, -1, 3]));
    }

    #[tokio::test]
    async fn a_failure_split_declines_is_returned_and_nothing_runs_alone() {
        let ran = together_else_alone(
            2,
            async { Err::<Vec<i32>, _>("no connection".to_owned()) },
            |_| async { unreachable!("nothing runs alone") as i32 },
            |e| e != "no connection",
        )
        .await;
        assert!(matches!(ran, Err(e) if e == "no connection"));
    }
}
