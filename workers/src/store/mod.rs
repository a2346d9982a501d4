//! Every SQL statement the workers run, one module per table, each statement behind a function
//! named for what it does (`users::lock`, `point_ledger::credit_reward`, …). Functions take the
//! effect's transaction (the channel sender's take the pool: see [`channel_deliveries`]) and
//! return `DbErr`; deciding whether a missing row is permanent or an error transient is the
//! handlers' job (and `HandlerError`'s `From<DbErr>`), not this module's.
//!
//! Inserts that enforce exactly-once return `false` when their business key already existed
//! (`ON CONFLICT … DO NOTHING RETURNING`), so a handler can report the effect as already applied.

pub mod channel_deliveries;
pub mod console_feed;
pub mod consumed_events;
pub mod levels;
pub mod membership_periods;
pub mod notifications;
pub mod orders;
pub mod point_ledger;
pub mod savings_entries;
pub mod user_passes;
pub mod users;

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, QueryResult, Statement};

/// A PostgreSQL statement with positional (`$n`) values.
fn statement(sql: &str, values: impl IntoIterator<Item = sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Runs a query that returns at most one row.
async fn one(
    txn: &DatabaseTransaction,
    sql: &str,
    values: impl IntoIterator<Item = sea_orm::Value>,
) -> Result<Option<QueryResult>, DbErr> {
    txn.query_one_raw(statement(sql, values)).await
}

/// Runs an `INSERT … ON CONFLICT DO NOTHING RETURNING`; `false` when the business key existed.
async fn insert_once(
    txn: &DatabaseTransaction,
    sql: &str,
    values: impl IntoIterator<Item = sea_orm::Value>,
) -> Result<bool, DbErr> {
    Ok(one(txn, sql, values).await?.is_some())
}
