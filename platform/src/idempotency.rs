//! Idempotency keys: the one store of every request that takes an `Idempotency-Key` (a buyer's
//! order, an admin's refund or grant). A key is claimed inside the transaction that does the
//! work, with a hash of the request, so the work and its claim commit together or not at all;
//! the answer is stored with it, and a retry under the same key and body is answered from it.
//! The same key with another body is refused ([`Reused`]).
//!
//! Statements that do their work in one round trip (the purchases) embed the same reads and
//! writes through [`lookup_sql`] and [`insert_answered_sql`], so the table is spelled here only.

use memberline_schema::ids::OrderId;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement};

/// Whose key spaces are apart: a buyer's and a staff member's, whatever their numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerKind {
    Buyer,
    Staff,
}

impl OwnerKind {
    /// The text of `idempotency_keys.owner_kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Buyer => "buyer",
            OwnerKind::Staff => "staff",
        }
    }
}

/// A key as one request sent it: whose it is, the key, and the hash of the request.
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    /// Whose key space: the caller's kind and id.
    pub owner_kind: OwnerKind,
    pub owner: i64,
    pub key: &'a str,
    pub request_hash: &'a str,
}

/// What a request under an idempotency key is answered: a status and a JSON body, done now or
/// replayed from the first request with the key.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    /// Whether this replays the answer stored by an earlier request.
    pub replayed: bool,
}

impl Answer {
    /// An answer of work done now.
    pub fn fresh(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            body,
            replayed: false,
        }
    }
}

/// The key was used before with another request body.
#[derive(Debug, thiserror::Error)]
#[error("this Idempotency-Key was already used with a different request body")]
pub struct Reused;

/// Why a key could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Reused(#[from] Reused),
    #[error(transparent)]
    Database(#[from] DbErr),
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Claim {
    /// The key is ours: do the work.
    Claimed,
    /// An earlier request with the same key and body was answered: this is its answer.
    Replay(Answer),
    /// An earlier request with the same key committed its work but stored no answer yet (a
    /// provider checkout between its two transactions, or one cut off there); `order_id` is
    /// the order it [`link`]ed.
    InFlight { order_id: Option<OrderId> },
}

/// A key as stored.
#[derive(Clone, Debug)]
pub struct Stored {
    pub request_hash: String,
    pub status_code: Option<i16>,
    pub response_body: Option<serde_json::Value>,
    pub order_id: Option<OrderId>,
}

impl Stored {
    /// The columns of [`lookup_sql`] read with `prefix`; `None` when no key was found.
    pub fn from_row(row: &QueryResult, prefix: &str) -> Result<Option<Self>, DbErr> {
        let column = |c: &str| format!("{prefix}{c}");
        let Some(request_hash) = row.try_get::<Option<String>>("", &column("request_hash"))? else {
            return Ok(None);
        };
        Ok(Some(Self {
            request_hash,
            status_code: row.try_get("", &column("status_code"))?,
            response_body: row.try_get("", &column("response_body"))?,
            order_id: row.try_get("", &column("order_id"))?,
        }))
    }

    /// What a request under this key gets: the first answer, or [`Reused`] for another body.
    pub fn claim(self, key: Key<'_>) -> Result<Claim, Reused> {
        if self.request_hash != key.request_hash {
            return Err(Reused);
        }
        Ok(match (self.status_code, self.response_body) {
            (Some(status), Some(body)) => Claim::Replay(Answer {
                status: status as u16,
                body,
                replayed: true,
            }),
            _ => Claim::InFlight {
                order_id: self.order_id,
            },
        })
    }
}

/// The key `key` of the `kind` owner `owner` (SQL expressions) as a subquery of at most one
/// row, for a `LEFT JOIN LATERAL`; read its columns with [`Stored::from_row`].
pub fn lookup_sql(kind: OwnerKind, owner: &str, key: &str) -> String {
    format!(
        "(SELECT request_hash, status_code, response_body, order_id FROM idempotency_keys \
          WHERE owner_kind = '{}' AND user_id = {owner} AND key = {key} LIMIT 1)",
        kind.as_str()
    )
}

/// Claims keys of `kind` owners with their answers already, one per row of `select` (which
/// yields owner, key, request hash, status, body and order id, in that order); `RETURNING 1`
/// per key claimed, so a key taken meanwhile shows as a missing row.
pub fn insert_answered_sql(kind: OwnerKind, select: &str) -> String {
    format!(
        "INSERT INTO idempotency_keys (owner_kind, user_id, key, request_hash, status_code, \
         response_body, order_id) SELECT '{}', s.* FROM ({select}) s \
         ON CONFLICT DO NOTHING RETURNING 1",
        kind.as_str()
    )
}

/// Claims `key` inside the caller's transaction `txn`.
pub async fn claim<C: ConnectionTrait>(txn: &C, key: Key<'_>) -> Result<Claim, ClaimError> {
    let claimed = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys (user_id, key, request_hash, owner_kind) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING user_id",
            [
                key.owner.into(),
                key.key.into(),
                key.request_hash.into(),
                key.owner_kind.as_str().into(),
            ],
        ))
        .await?;
    if claimed.is_some() {
        return Ok(Claim::Claimed);
    }
    // A committed row under the same key: this is a retry.
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT k.* FROM {} k",
                lookup_sql(key.owner_kind, "$1", "$2")
            ),
            [key.owner.into(), key.key.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("idempotency row vanished".into()))?;
    let stored = Stored::from_row(&row, "")?
        .ok_or_else(|| DbErr::Custom("idempotency row vanished".into()))?;
    Ok(stored.claim(key)?)
}

/// Links the claimed `key` to the order its request created, so a retry that finds no answer
/// yet can go on with that order.
pub async fn link<C: ConnectionTrait>(
    txn: &C,
    key: Key<'_>,
    order_id: OrderId,
) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE idempotency_keys SET order_id = $3 \
         WHERE user_id = $1 AND key = $2 AND owner_kind = $4",
        [
            key.owner.into(),
            key.key.into(),
            order_id.into(),
            key.owner_kind.as_str().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Stores the answer that a retry under `key` will replay.
pub async fn store<C: ConnectionTrait>(
    txn: &C,
    key: Key<'_>,
    answer: &Answer,
) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE idempotency_keys SET status_code = $3, response_body = $4 \
         WHERE user_id = $1 AND key = $2 AND owner_kind = $5",
        [
            key.owner.into(),
            key.key.into(),
            (answer.status as i16).into(),
            answer.body.clone().into(),
            key.owner_kind.as_str().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Releases `key`, so the same request can be sent again (its work was undone: a provider
/// checkout that failed).
pub async fn release<C: ConnectionTrait>(txn: &C, key: Key<'_>) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND owner_kind = $3",
        [
            key.owner.into(),
            key.key.into(),
            key.owner_kind.as_str().into(),
        ],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hash: &str) -> Key<'_> {
        Key {
            owner_kind: OwnerKind::Buyer,
            owner: 1,
            key: "k",
            request_hash: hash,
        }
    }

    fn stored(status: Option<i16>) -> Stored {
        Stored {
            request_hash: "h".into(),
            status_code: status,
            response_body: status.map(|_| serde_json::json!({"id": 7})),
            order_id: Some(OrderId(7)),
        }
    }

    #[test]
    fn a_stored_answer_is_replayed_for_the_same_body() {
        let Ok(Claim::Replay(answer)) = stored(Some(201)).claim(key("h")) else {
            panic!("expected a replay");
        };
        assert_eq!(answer.status, 201);
        assert!(answer.replayed);
        assert_eq!(answer.body["id"], 7);
    }

    #[test]
    fn another_body_under_the_same_key_is_refused() {
        assert!(matches!(stored(Some(201)).claim(key("other")), Err(Reused)));
    }

    #[test]
    fn a_key_without_an_answer_is_in_flight_with_its_order() {
        assert!(matches!(
            stored(None).claim(key("h")),
            Ok(Claim::InFlight {
                order_id: Some(OrderId(7))
            })
        ));
    }
}
