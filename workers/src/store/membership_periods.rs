//! `membership_periods`: one `[starts_at, ends_at)` period per order (`UNIQUE (order_id)`); a
//! permanent membership is a period without an end. Expiry is derived from these rows.

use super::{insert_once, one, statement};
use chrono::{DateTime, Utc};
use memberline_schema::ids::{BuyerId, OrderId};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};

/// Adds order `order_id`'s period `[starts_at, ends_at)`, permanent when `ends_at` is `None`;
/// `false` when the order already has its period.
pub async fn add(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    order_id: OrderId,
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO membership_periods (user_id, order_id, starts_at, ends_at, permanent) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING RETURNING id",
        [
            user_id.into(),
            order_id.into(),
            starts_at.into(),
            ends_at.into(),
            ends_at.is_none().into(),
        ],
    )
    .await
}

/// A period as a reversal sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub removed: bool,
}

/// Order `order_id`'s period, if it has one.
pub async fn of_order(
    txn: &DatabaseTransaction,
    order_id: OrderId,
) -> Result<Option<Period>, DbErr> {
    let Some(row) = one(
        txn,
        "SELECT starts_at, ends_at, removed_at IS NOT NULL AS removed FROM membership_periods \
         WHERE order_id = $1",
        [order_id.into()],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Period {
        starts_at: row.try_get("", "starts_at")?,
        ends_at: row.try_get("", "ends_at")?,
        removed: row.try_get("", "removed")?,
    }))
}

/// Records that order `order_id` (refunded before its period was added) has no period: a
/// removed placeholder, so a late `order.paid.v1` of the order adds nothing. `false` when the
/// order has a period after all.
pub async fn add_removed(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    order_id: OrderId,
) -> Result<bool, DbErr> {
    insert_once(
        txn,
        "INSERT INTO membership_periods (user_id, order_id, starts_at, ends_at, permanent, \
         removed_at, removed_by) VALUES ($1, $2, now(), NULL, true, now(), 'placeholder') \
         ON CONFLICT (order_id) DO NOTHING RETURNING id",
        [user_id.into(), order_id.into()],
    )
    .await
}

/// Removes order `order_id`'s period and moves the periods stacked on it earlier by its
/// length: the chain of timed periods of the buyer that starts exactly where it ended, each at
/// the end of the one before. A period after a gap (bought once the membership had lapsed)
/// was never stacked on it and stays where it is, as does everything after it.
pub async fn remove_and_close_gap(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    order_id: OrderId,
    period: Period,
) -> Result<(), DbErr> {
    txn.execute_raw(statement(
        "UPDATE membership_periods SET removed_at = now(), removed_by = 'refund' \
         WHERE order_id = $1",
        [order_id.into()],
    ))
    .await?;
    let Some(mut chain_end) = period.ends_at else {
        return Ok(());
    };
    let length = chain_end - period.starts_at;
    let later = txn
        .query_all_raw(statement(
            "SELECT id, starts_at, ends_at FROM membership_periods \
             WHERE user_id = $1 AND removed_at IS NULL AND NOT permanent AND starts_at >= $2 \
             ORDER BY starts_at, id",
            [user_id.into(), chain_end.into()],
        ))
        .await?;
    for row in later {
        let starts_at: DateTime<Utc> = row.try_get("", "starts_at")?;
        if starts_at != chain_end {
            break;
        }
        let id: i64 = row.try_get("", "id")?;
        let ends_at: DateTime<Utc> = row.try_get("", "ends_at")?;
        txn.execute_raw(statement(
            "UPDATE membership_periods SET starts_at = $2, ends_at = $3 WHERE id = $1",
            [
                id.into(),
                (starts_at - length).into(),
                (ends_at - length).into(),
            ],
        ))
        .await?;
        chain_end = ends_at;
    }
    Ok(())
}

/// Ends the buyer's membership at `at`: the periods of orders paid by then that run at `at`
/// end then (a permanent one too) and, like those that start later, are removed; periods that
/// ended before stay as they were, and so do periods of orders paid after `at` (a revocation
/// applied late never takes a later purchase). `at` is remembered on the buyer, so a period of
/// an order paid before it that is applied only now adds nothing ([`revoked_since`]). Returns
/// the membership time taken away, in seconds (a permanent period counts for nothing).
pub async fn revoke(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    at: DateTime<Utc>,
) -> Result<i64, DbErr> {
    let removed: i64 = one(
        txn,
        "SELECT coalesce(sum(extract(epoch FROM p.ends_at - greatest(p.starts_at, $2)))::bigint, 0) \
         AS secs FROM membership_periods p JOIN orders o ON o.id = p.order_id \
         WHERE p.user_id = $1 AND p.removed_at IS NULL AND p.ends_at > $2 AND o.paid_at <= $2",
        [user_id.into(), at.into()],
    )
    .await?
    .map(|r| r.try_get("", "secs"))
    .transpose()?
    .unwrap_or(0);
    // A running period keeps its shortened end for the record.
    txn.execute_raw(statement(
        "UPDATE membership_periods p SET removed_at = now(), \
         removed_by = CASE WHEN p.starts_at < $2 THEN 'revoke' ELSE 'revoke_unserved' END, \
         ends_at = CASE WHEN p.starts_at < $2 THEN $2 ELSE p.ends_at END, \
         permanent = p.permanent AND p.starts_at >= $2 \
         FROM orders o WHERE o.id = p.order_id AND o.paid_at <= $2 \
           AND p.user_id = $1 AND p.removed_at IS NULL AND (p.permanent OR p.ends_at > $2)",
        [user_id.into(), at.into()],
    ))
    .await?;
    txn.execute_raw(statement(
        "UPDATE users SET membership_revoked_at = greatest(membership_revoked_at, $2) \
         WHERE id = $1",
        [user_id.into(), at.into()],
    ))
    .await?;
    Ok(removed)
}

/// The buyer's membership as it stands: its latest end, and whether a permanent period remains.
pub async fn standing(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
) -> Result<(Option<DateTime<Utc>>, bool), DbErr> {
    let row = one(
        txn,
        "SELECT max(ends_at) AS end, coalesce(bool_or(permanent), false) AS permanent \
         FROM membership_periods WHERE user_id = $1 AND removed_at IS NULL",
        [user_id.into()],
    )
    .await?;
    Ok(match row {
        Some(r) => (r.try_get("", "end")?, r.try_get("", "permanent")?),
        None => (None, false),
    })
}

/// Whether the buyer's membership was revoked at or after `paid_at` (so an order paid then
/// grants no membership time).
pub async fn revoked_since(
    txn: &DatabaseTransaction,
    user_id: BuyerId,
    paid_at: DateTime<Utc>,
) -> Result<bool, DbErr> {
    Ok(one(
        txn,
        "SELECT 1 AS revoked FROM users WHERE id = $1 AND membership_revoked_at >= $2",
        [user_id.into(), paid_at.into()],
    )
    .await?
    .is_some())
}
