//! Retention: a scheduled job that keeps the delivery tables from growing without bound. It
//! deletes, in small batches (short transactions, no long locks), published outbox rows,
//! consumed-event records, console-feed entries and delivered channel messages older than their
//! configured windows, and
//! idempotency keys older than `retention.idempotency_key_hours` (24 h, like Stripe's), and
//! stream tickets `retention.stream_ticket_hours` (24) after they expired.
//!
//! Pruning a consumed-event record does not make its event applicable again: every effect is
//! also guarded by a business key (one period, one reward, one saving, one message per order),
//! so a replay of a pruned event is still a no-op. Several replicas may run it at once.

use memberline_platform::settings::RetentionSettings;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What one pass deleted, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub outbox: u64,
    pub consumed_events: u64,
    pub console_feed: u64,
    pub idempotency_keys: u64,
    pub channel_deliveries: u64,
    pub stream_tickets: u64,
}

/// One table's rule: rows whose `column` is older than the window go.
struct Rule {
    table: &'static str,
    /// The primary key's columns, comma-separated.
    key: &'static str,
    column: &'static str,
    window: Duration,
}

/// Deletes everything past its window, `batch` rows per statement, until nothing is left.
pub async fn prune(db: &DatabaseConnection, settings: &RetentionSettings) -> Result<Pruned, DbErr> {
    let day = Duration::from_secs(86_400);
    let rules = [
        Rule {
            table: "outbox",
            key: "id",
            column: "published_at",
            window: day * settings.outbox_published_days,
        },
        Rule {
            table: "consumed_events",
            key: "consumer, event_id",
            column: "consumed_at",
            window: day * settings.consumed_events_days,
        },
        Rule {
            table: "console_feed",
            key: "seq",
            column: "created_at",
            window: day * settings.console_feed_days,
        },
        Rule {
            table: "idempotency_keys",
            key: "owner_kind, user_id, key",
            column: "created_at",
            window: Duration::from_secs(3_600) * settings.idempotency_key_hours,
        },
        // Only delivered messages: a failed one waits for an operator, however old.
        Rule {
            table: "channel_deliveries",
            key: "id",
            column: "delivered_at",
            window: day * settings.channel_deliveries_days,
        },
        // Single-use stream tickets live seconds; after that they are only clutter.
        Rule {
            table: "stream_tickets",
            key: "hash",
            column: "expires_at",
            window: Duration::from_secs(3_600) * settings.stream_ticket_hours,
        },
    ];
    let mut counts = [0u64; 6];
    for (rule, count) in rules.iter().zip(counts.iter_mut()) {
        *count = prune_table(db, rule, settings.batch_size).await?;
    }
    Ok(Pruned {
        outbox: counts[0],
        consumed_events: counts[1],
        console_feed: counts[2],
        idempotency_keys: counts[3],
        channel_deliveries: counts[4],
        stream_tickets: counts[5],
    })
}

async fn prune_table(db: &DatabaseConnection, rule: &Rule, batch: u32) -> Result<u64, DbErr> {
    // Table and column names are the constants above, never input. SKIP LOCKED lets replicas
    // (and live traffic) proceed; `column IS NOT NULL` keeps unpublished outbox rows. The
    // subquery lists the key columns bare: `SELECT (a, b)` would be one record-typed column,
    // which PostgreSQL refuses to compare with `(a, b)` ("subquery has too few columns").
    let sql = format!(
        "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} \
         WHERE {column} IS NOT NULL AND {column} < now() - make_interval(secs => $1) \
         ORDER BY {column} LIMIT $2 FOR UPDATE SKIP LOCKED)",
        table = rule.table,
        key = rule.key,
        column = rule.column,
    );
    let mut total = 0;
    loop {
        let deleted = db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql.as_str(),
                [rule.window.as_secs_f64().into(), i64::from(batch).into()],
            ))
            .await?
            .rows_affected();
        total += deleted;
        if deleted < u64::from(batch) {
            return Ok(total);
        }
    }
}

/// Prunes every `retention.interval_secs` until `shutdown` fires.
pub async fn run(db: DatabaseConnection, settings: RetentionSettings, shutdown: CancellationToken) {
    let every = Duration::from_secs(settings.interval_secs);
    loop {
        // A long first pass must not hold up shutdown: each batch is its own statement, so
        // stopping between (or during) them leaves nothing half done.
        let pass = tokio::select! {
            _ = shutdown.cancelled() => return,
            pass = prune(&db, &settings) => pass,
        };
        match pass {
            Ok(pruned) if pruned != Pruned::default() => info!(?pruned, "Retention pruned rows"),
            Ok(_) => debug!("Retention found nothing to prune"),
            // The next pass tries again; nothing is lost by waiting.
            Err(e) => warn!(error = %e, "Retention pass failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
