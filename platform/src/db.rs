//! The PostgreSQL pool and what every caller needs to read a database error: whether a retry
//! can cure it, and which constraint it broke.

use crate::settings::DatabaseSettings;
use anyhow::Context;
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr, RuntimeErr, sqlx};
use std::time::Duration;

/// Opens the PostgreSQL pool described by `settings`.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    connect_with(settings, settings.max_connections).await
}

/// A pool of at most `max_connections` on the configured database: the embedded relay's own,
/// so that a rush of requests holding the gateway's pool never makes it publish late.
pub async fn connect_with(
    settings: &DatabaseSettings,
    max_connections: u32,
) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(settings.url.expose().to_owned());
    opts.max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    if settings.lock_timeout_ms > 0 {
        let lock_timeout = format!("{}ms", settings.lock_timeout_ms);
        opts.map_sqlx_postgres_opts(move |pg| {
            pg.options([("lock_timeout", lock_timeout.as_str())])
        });
    }
    match settings.ping_after_idle_ms {
        0 => opts.test_before_acquire(true),
        ms => opts.test_before_acquire_if_idle_for(Duration::from_millis(ms)),
    };
    Database::connect(opts)
        .await
        .context("cannot connect to PostgreSQL (database.url)")
}

fn sqlx_error(err: &DbErr) -> Option<&sqlx::Error> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// The SQLSTATE of a database error, if PostgreSQL answered with one.
pub fn sqlstate(err: &DbErr) -> Option<String> {
    match sqlx_error(err)? {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether retrying can cure `err`: no pooled connection in time, a lost connection, a
/// serialization failure or deadlock, a lock or statement timeout, an administrator shutdown.
pub fn is_retryable(err: &DbErr) -> bool {
    if matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) {
        return true;
    }
    match sqlx_error(err) {
        Some(sqlx::Error::Database(db)) => matches!(
            db.code().as_deref(),
            Some("40001" | "40P01" | "55P03" | "57014" | "57P01")
        ),
        Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => true,
        _ => false,
    }
}

/// Whether `err` is a wait for a pooled connection that ran out of time: back-pressure, not a
/// failure of the work itself.
pub fn is_pool_timeout(err: &DbErr) -> bool {
    matches!(err, DbErr::ConnectionAcquire(_))
        || matches!(sqlx_error(err), Some(sqlx::Error::PoolTimedOut))
}

/// The name of the constraint a database error broke, if it was a constraint violation.
pub fn violated_constraint(err: &DbErr) -> Option<String> {
    match sqlx_error(err)? {
        sqlx::Error::Database(db) => db.constraint().map(str::to_owned),
        _ => None,
    }
}
