//! `channel_deliveries`: template/SMS/webhook messages waiting to leave, one per message id
//! (`UNIQUE (message_id)`: event id and kind). The notifier records a message in its effect
//! transaction, with the inbox note it repeats (`notifications::add_with_message`); the channel
//! sender (`sender`) claims due ones, sends them outside any transaction and records
//! how each attempt went. Each of the sender's statements runs on its
//! own (a short transaction), so no row lock outlives a statement.

use memberline_schema::ids::BuyerId;
use memberline_schema::states::NotificationKind;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use std::time::Duration;

/// What a message says; stored as the row's `payload`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Content {
    pub title: String,
    pub body: String,
}

/// A message a sender claimed: its own until the lease runs out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub id: i64,
    pub message_id: String,
    pub user_id: BuyerId,
    pub kind: NotificationKind,
    pub content: Content,
    /// Attempts including this one.
    pub attempts: i32,
}

/// A claimed row this release cannot read: its payload is not a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub id: i64,
    pub attempts: i32,
    pub error: String,
}

/// Claims up to `batch` due messages, oldest due first: counts the attempt and pushes
/// `next_attempt_at` forward by `lease`, so no other sender takes them while this one sends,
/// and another does once the lease ran out (a sender that died). `SKIP LOCKED` lets replicas
/// claim side by side. Only kinds this release knows are claimed: a message of a kind a newer
/// release wrote (a rolling deploy) waits for a sender of that release. Each row is read on its
/// own: one that cannot be read is answered as [`Unreadable`], never holding up the others.
pub async fn claim(
    db: &DatabaseConnection,
    batch: u32,
    lease: Duration,
) -> Result<Vec<Result<Claimed, Unreadable>>, DbErr> {
    let known: Vec<String> = NotificationKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE channel_deliveries SET attempts = attempts + 1, \
             next_attempt_at = now() + make_interval(secs => $1) \
             WHERE id IN (SELECT id FROM channel_deliveries \
                 WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now() \
                   AND kind = ANY($3) \
                 ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id, message_id, user_id, kind, payload, attempts",
            [
                lease.as_secs_f64().into(),
                i64::from(batch).into(),
                known.into(),
            ],
        ))
        .await?;
    rows.iter().map(read).collect()
}

/// One claimed row: `Err(DbErr)` only when the row itself is not what the query returns.
fn read(row: &sea_orm::QueryResult) -> Result<Result<Claimed, Unreadable>, DbErr> {
    let id: i64 = row.try_get("", "id")?;
    let attempts: i32 = row.try_get("", "attempts")?;
    let kind: String = row.try_get("", "kind")?;
    let payload: serde_json::Value = row.try_get("", "payload")?;
    let unreadable = |error: String| {
        Ok(Err(Unreadable {
            id,
            attempts,
            error,
        }))
    };
    let Some(kind) = NotificationKind::parse(&kind) else {
        return unreadable(format!("unknown kind {kind}"));
    };
    let content = match serde_json::from_value(payload) {
        Ok(content) => content,
        Err(e) => return unreadable(format!("unreadable payload: {e}")),
    };
    Ok(Ok(Claimed {
        id,
        message_id: row.try_get("", "message_id")?,
        user_id: row.try_get("", "user_id")?,
        kind,
        content,
        attempts,
    }))
}

/// Marks message `id` delivered.
pub async fn delivered(db: &DatabaseConnection, id: i64) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE channel_deliveries SET delivered_at = now(), failed_at = NULL \
         WHERE id = $1 AND delivered_at IS NULL",
        [id.into()],
    )
    .await
}

/// Records a failed attempt of message `id` and makes it due again after `backoff`. Only the
/// sender that made attempt `attempts` may: after a lease ran out, the newer claim decides.
pub async fn retry_later(
    db: &DatabaseConnection,
    id: i64,
    attempts: i32,
    error: &str,
    backoff: Duration,
) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE channel_deliveries SET last_error = $3, \
         next_attempt_at = now() + make_interval(secs => $4) \
         WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL AND failed_at IS NULL",
        [
            id.into(),
            attempts.into(),
            error.into(),
            backoff.as_secs_f64().into(),
        ],
    )
    .await
}

/// Records the last failed attempt of message `id` and gives up on it; `false` when a newer
/// claim (or a delivery) got there first.
pub async fn give_up(
    db: &DatabaseConnection,
    id: i64,
    attempts: i32,
    error: &str,
) -> Result<bool, DbErr> {
    Ok(db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE channel_deliveries SET last_error = $3, failed_at = now() \
             WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL AND failed_at IS NULL",
            [id.into(), attempts.into(), error.into()],
        ))
        .await?
        .rows_affected()
        == 1)
}

async fn execute(
    db: &DatabaseConnection,
    sql: &str,
    values: impl IntoIterator<Item = sea_orm::Value>,
) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await?;
    Ok(())
}
