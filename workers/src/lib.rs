//! Memberline workers: the consumer runtime ([`runtime`], [`decide`]) and the four effects of a
//! paid order ([`handlers`]): membership, ledger, notifier and savings. Each runs as its own
//! binary (`membership-worker`, …) or all four in one process (`memberline-workers`).
//! Dead-letter tooling is the `memberline-dlq` binary.

pub mod channel;
pub mod decide;
pub mod handlers;
pub mod runtime;

use memberline_gateway::metrics::Metrics;
use memberline_gateway::settings::Settings;
use memberline_schema::topology::Worker;
use runtime::{Handler, WorkerContext};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

/// The handler of one worker, configured from settings.
pub fn handler_for(worker: Worker, settings: &Settings) -> anyhow::Result<Arc<dyn Handler>> {
    let w = &settings.workers;
    Ok(match worker {
        Worker::Membership => Arc::new(handlers::membership::Membership),
        Worker::Ledger => Arc::new(handlers::ledger::Ledger::from_settings(w)),
        Worker::Notifier => Arc::new(handlers::notifier::Notifier {
            channel: channel::Channel::from_settings(w)?,
        }),
        Worker::Savings => Arc::new(handlers::savings::Savings::from_settings(w)),
    })
}

/// Runs `workers` in this process until `shutdown` fires, with a `/metrics` and `/readyz`
/// endpoint on `workers.metrics_addr` (unless it is empty).
pub async fn run(
    workers: &[Worker],
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // One pool for the workers of this process (`database.max_connections`). Each in-flight
    // delivery holds a connection for its transaction, so a pool smaller than the summed
    // prefetch makes deliveries queue for connections (bounded by
    // `database.acquire_timeout_secs`, then retried) rather than exhausting PostgreSQL's own
    // connection limit.
    let db = memberline_gateway::app::connect_db(&settings.database).await?;
    let metrics = Arc::new(Metrics::default());
    let mut contexts = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for &worker in workers {
        let ctx = WorkerContext::new(db.clone(), settings.clone(), metrics.clone());
        let handler = handler_for(worker, &settings)?;
        contexts.push((worker, ctx.clone()));
        tasks.spawn(runtime::run(handler, ctx, shutdown.child_token()));
    }
    if !settings.workers.metrics_addr.is_empty() {
        let listener = tokio::net::TcpListener::bind(&settings.workers.metrics_addr)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} (workers.metrics_addr): {e}",
                    settings.workers.metrics_addr
                )
            })?;
        tracing::info!(addr = %listener.local_addr()?, "Worker metrics listening");
        let router = ops_router(metrics.clone(), contexts);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // A worker that cannot run stops the process: better a crash loop an operator
                // sees than a worker silently missing.
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

fn ops_router(metrics: Arc<Metrics>, contexts: Vec<(Worker, WorkerContext)>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let contexts = Arc::new(contexts);
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render(&[]) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let contexts = contexts.clone();
                async move {
                    let states: Vec<String> = contexts
                        .iter()
                        .map(|(w, c)| format!("{}={}", w.as_str(), c.ready.load(Ordering::SeqCst)))
                        .collect();
                    let ready = contexts.iter().all(|(_, c)| c.ready.load(Ordering::SeqCst));
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, states.join("\n"))
                }
            }),
        )
}

/// `main` of a worker binary: settings, telemetry, run until Ctrl-C or SIGTERM.
pub async fn main_for(workers: &[Worker]) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    memberline_gateway::telemetry::init(&settings.log);
    run(
        workers,
        settings,
        memberline_gateway::app::shutdown_on_signals(),
    )
    .await
}
