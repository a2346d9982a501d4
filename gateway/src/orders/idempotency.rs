//! Idempotency keys, per user (a buyer's order, an admin's refund or grant): claimed inside the
//! transaction that does the work, with the request's hash, and answered from the response
//! stored with them. A balance, points or free purchase reads and writes its key within its own
//! statements (`super::statements`); the provider checkout, refunds and admin grants use these.

use super::OrderError;
use super::placement::Placed;
use super::statements::StoredKey;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};

/// An idempotency key and the request it was sent with (hashed), per user: a buyer's order, an
/// admin's refund or grant.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyRef<'a> {
    pub user_id: i64,
    pub key: &'a str,
    pub request_hash: &'a str,
}

/// What claiming an idempotency key found.
pub(crate) enum Claim {
    /// The key is ours: go on.
    Claimed,
    /// An earlier request with the same key and body answered this; replay it.
    Replay(Placed),
    /// An earlier request with the same key committed its order but stored no answer yet (a
    /// provider checkout between its two transactions, or one that crashed there).
    InFlight { order_id: Option<i64> },
}

/// Claims the idempotency key inside the transaction; a different body under a used key is
/// refused.
pub(crate) async fn claim_key(
    txn: &DatabaseTransaction,
    cmd: KeyRef<'_>,
) -> Result<Claim, OrderError> {
    let claimed = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING user_id",
            [cmd.user_id.into(), cmd.key.into(), cmd.request_hash.into()],
        ))
        .await?;
    if claimed.is_some() {
        return Ok(Claim::Claimed);
    }
    // A committed row under the same key: this is a retry.
    let first = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT request_hash, status_code, response_body, order_id FROM idempotency_keys \
             WHERE user_id = $1 AND key = $2",
            [cmd.user_id.into(), cmd.key.into()],
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("idempotency row vanished"))?;
    StoredKey {
        request_hash: first.try_get("", "request_hash")?,
        status_code: first.try_get("", "status_code")?,
        response_body: first.try_get("", "response_body")?,
        order_id: first.try_get("", "order_id")?,
    }
    .into_claim(cmd)
}

impl StoredKey {
    /// What a request under this key gets: the first answer, or 422 for another body.
    pub(crate) fn into_claim(self, cmd: KeyRef<'_>) -> Result<Claim, OrderError> {
        if self.request_hash != cmd.request_hash {
            return Err(OrderError::IdempotencyKeyReused);
        }
        match (self.status_code, self.response_body) {
            (Some(status), Some(body)) => Ok(Claim::Replay(Placed::Replayed {
                status: status as u16,
                body,
            })),
            _ => Ok(Claim::InFlight {
                order_id: self.order_id,
            }),
        }
    }
}

/// Stores the response an idempotent retry will replay.
pub(crate) async fn store_response<C: ConnectionTrait>(
    txn: &C,
    cmd: KeyRef<'_>,
    status: i16,
    body: &serde_json::Value,
) -> Result<(), OrderError> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE idempotency_keys SET status_code = $3, response_body = $4 \
         WHERE user_id = $1 AND key = $2",
        [
            cmd.user_id.into(),
            cmd.key.into(),
            status.into(),
            body.clone().into(),
        ],
    ))
    .await?;
    Ok(())
}
