//! Memberline workers: the consumer runtime ([`runtime`], [`decide`]) and the four effects of a
//! paid order ([`handlers`]): membership, ledger, notifier and savings. Each runs as its own
//! binary (`membership-worker`, …) or all four in one process (`memberline-workers`).
//! Their SQL lives in [`store`], one module per table. A process that runs the notifier also
//! runs the channel [`sender`], which sends the notifier's template/SMS/webhook messages after
//! its commits. Dead-letter tooling is the `memberline-dlq` binary.

pub mod channel;
pub mod decide;
pub mod handlers;
pub mod lifecycle;
pub mod retention;
pub mod runtime;
pub mod sender;
pub mod store;

use memberline_platform::Settings;
use memberline_platform::metrics::Metrics;
use memberline_schema::topology::Worker;
use runtime::{Handler, WorkerContext};
use sea_orm::DatabaseConnection;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The handler of one worker, configured from settings.
pub fn handler_for(worker: Worker, settings: &Settings) -> anyhow::Result<Arc<dyn Handler>> {
    let w = &settings.workers;
    Ok(match worker {
        Worker::Membership => Arc::new(handlers::membership::Membership {
            time_zone: settings.shop.time_zone,
        }),
        Worker::Ledger => Arc::new(handlers::ledger::Ledger::from_settings(w)),
        Worker::Notifier => Arc::new(handlers::notifier::Notifier),
        Worker::Savings => Arc::new(handlers::savings::Savings::from_settings(w)),
    })
}

/// The workers of one process, started: their tasks, and each worker's readiness flag.
pub struct Started {
    tasks: JoinSet<anyhow::Result<()>>,
    /// `(worker, consuming)` for `/readyz`.
    pub checks: Vec<(&'static str, Arc<AtomicBool>)>,
}

/// Starts `workers` on the pool `db`, with what they share in one process (connection permits,
/// see [`runtime::delivery_permits`]), the channel [`sender`] when the notifier is among them,
/// the payment [`lifecycle`] job when a provider is enabled, and retention when
/// `retention.enabled`. Every task stops when `shutdown` fires. The worker
/// binaries and the test harness both start workers through here.
pub fn start(
    workers: &[Worker],
    db: DatabaseConnection,
    settings: &Settings,
    metrics: Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Started> {
    let process = WorkerContext::new(db.clone(), settings.clone(), metrics);
    let mut tasks = JoinSet::new();
    if workers.contains(&Worker::Notifier) {
        let sender = sender::Sender::new(&process)?;
        let stop = shutdown.child_token();
        tasks.spawn(async move {
            sender.run(stop).await;
            Ok(())
        });
    }
    let mut checks = Vec::new();
    for &worker in workers {
        let ctx = process.for_another_worker();
        let handler = handler_for(worker, settings)?;
        checks.push((worker.as_str(), ctx.ready.clone()));
        tasks.spawn(runtime::run(handler, ctx, shutdown.child_token()));
    }
    let payments = memberline_orders::providers::Payments::from_settings(
        &settings.payments,
        &settings.environment,
    )?;
    if payments.any() {
        let job = lifecycle::Lifecycle::new(
            db.clone(),
            payments,
            settings.payments.clone(),
            process.metrics.clone(),
        );
        let stop = shutdown.child_token();
        tasks.spawn(async move {
            job.run(stop).await;
            Ok(())
        });
    }
    if settings.retention.enabled {
        let (retention, stop) = (settings.retention.clone(), shutdown.child_token());
        tasks.spawn(async move {
            retention::run(db, retention, stop).await;
            Ok(())
        });
    }
    Ok(Started { tasks, checks })
}

impl Started {
    /// Waits until every task ended. A worker that cannot run cancels `shutdown`, stopping the
    /// others: better a crash loop an operator sees than a worker silently missing.
    pub async fn wait(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    shutdown.cancel();
                    result = Err(e);
                }
                Err(e) => {
                    shutdown.cancel();
                    result = Err(anyhow::anyhow!("worker task failed: {e}"));
                }
            }
        }
        result
    }
}

/// Runs `workers` in this process until `shutdown` fires, with a `/metrics` and `/readyz`
/// endpoint on `workers.metrics_addr` (unless it is empty).
pub async fn run(
    workers: &[Worker],
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // One pool for the workers of this process (`database.max_connections`). Deliveries take a
    // connection permit before their transaction, so they wait in the process rather than
    // time out on the pool, and the sender and retention keep a connection of their own.
    let db = memberline_platform::db::connect(&settings.database).await?;
    let metrics = Arc::new(Metrics::default());
    let mut started = start(workers, db, &settings, metrics.clone(), &shutdown)?;
    let checks = std::mem::take(&mut started.checks);
    let router = memberline_platform::ops::router(metrics, None, checks);
    memberline_platform::ops::serve(
        &settings.workers.metrics_addr,
        "workers.metrics_addr",
        router,
        shutdown.clone(),
    )
    .await?;
    started.wait(shutdown).await
}

/// `main` of a worker binary: settings, telemetry, run until Ctrl-C or SIGTERM.
pub async fn main_for(workers: &[Worker]) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    memberline_platform::telemetry::init(&settings.log);
    run(
        workers,
        settings,
        memberline_platform::shutdown::on_signals(),
    )
    .await
}
