//! The operations endpoints of a process that serves no API of its own (the standalone relay,
//! the workers): `/metrics` and `/readyz` on a small listener of their own.

use crate::metrics::{self, Metrics};
use axum::http::{StatusCode, header};
use axum::routing::get;
use sea_orm::DatabaseConnection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// A named readiness flag, true while that part of the process is connected and working.
pub type Check = (&'static str, Arc<AtomicBool>);

/// `/metrics` (with the outbox lag read at scrape time when `db` is given) and `/readyz` (200
/// when every check is true, 503 otherwise; the body lists each as `name=true|false`).
pub fn router(
    metrics: Arc<Metrics>,
    db: Option<DatabaseConnection>,
    checks: Vec<Check>,
) -> axum::Router {
    let checks = Arc::new(checks);
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let db = db.clone();
                async move {
                    if let Some(db) = &db {
                        metrics.set_outbox_lag(crate::outbox::lag(db).await);
                    }
                    (
                        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                        metrics.render(),
                    )
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let checks = checks.clone();
                async move {
                    let lines: Vec<String> = checks
                        .iter()
                        .map(|(name, ok)| format!("{name}={}", ok.load(Ordering::SeqCst)))
                        .collect();
                    let ready = checks.iter().all(|(_, ok)| ok.load(Ordering::SeqCst));
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, lines.join("\n"))
                }
            }),
        )
}

/// Serves `router` on `addr` until `shutdown` fires; `key` names the setting in errors. An
/// empty `addr` serves nothing. Returns the bound address (port 0 picks a free one).
pub async fn serve(
    addr: &str,
    key: &str,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "Operations endpoints listening");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(Some(bound))
}
